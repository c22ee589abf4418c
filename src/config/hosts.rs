//! Several hosts for one database entry, libpq style: `host = "a,b,c"` with `port` one port
//! or a list of the same length, `target_session_attrs` (which of them a pool may use) and
//! `load_balance_hosts` (how new server connections spread over the usable ones).
//!
//! A single host with `target_session_attrs = any` (the default) is today's pooler exactly:
//! no role checks, no health checker.

use serde::{Deserialize, Serialize};

/// `port`: one port, or a libpq list (`"5432,5433"`), one per host (or one for all).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Ports {
    One(u16),
    List(String),
}

impl Default for Ports {
    fn default() -> Ports {
        Ports::One(5432)
    }
}

impl PartialEq<u16> for Ports {
    fn eq(&self, other: &u16) -> bool {
        matches!(self, Ports::One(p) if p == other)
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ports::One(p) => write!(f, "{p}"),
            Ports::List(s) => f.write_str(s),
        }
    }
}

/// libpq's `target_session_attrs`: which hosts a pool's server connections may go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any host that answers.
    #[default]
    Any,
    /// A host that accepts writes: not in recovery, `default_transaction_read_only` off.
    ReadWrite,
    /// A host that does not accept writes (a standby, or read-only by default).
    ReadOnly,
    /// A host not in recovery.
    Primary,
    /// A host in recovery.
    Standby,
    /// A standby if one is usable, else any host.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// PgBouncer's `load_balance_hosts`: how new server connections spread over usable hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalance {
    /// Each new server connection goes to the next usable host (PgBouncer's default).
    #[default]
    RoundRobin,
    /// The first usable host in the order listed.
    Disable,
}

impl LoadBalance {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalance::RoundRobin => "round-robin",
            LoadBalance::Disable => "disable",
        }
    }
}

/// The `(host, port)` pairs of an entry's `host` and `port`, libpq's rules: a port list has
/// one port per host, or a single port serves every host.
pub fn host_list(host: &str, port: &Ports) -> Result<Vec<(String, u16)>, String> {
    let hosts: Vec<String> = host.split(',').map(|h| h.trim().to_string()).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(format!("host: `{host}` has an empty host name"));
    }
    let ports: Vec<u16> = match port {
        Ports::One(p) => vec![*p],
        Ports::List(s) => s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("port: `{}` is not a port number", p.trim()))
            })
            .collect::<Result<_, _>>()?,
    };
    match ports.len() {
        1 => Ok(hosts.into_iter().map(|h| (h, ports[0])).collect()),
        n if n == hosts.len() => Ok(hosts.into_iter().zip(ports).collect()),
        n => Err(format!(
            "port: {n} ports for {} hosts (give one port, or one per host)",
            hosts.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_lists() {
        assert_eq!(
            host_list("a", &Ports::One(5433)).unwrap(),
            vec![("a".to_string(), 5433)]
        );
        assert_eq!(
            host_list("a, b", &Ports::One(1)).unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 1)]
        );
        assert_eq!(
            host_list("a,b", &Ports::List("1, 2".into())).unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );
        assert_eq!(
            host_list("a,b", &Ports::List("7".into())).unwrap(),
            vec![("a".to_string(), 7), ("b".to_string(), 7)]
        );
        for (h, p, needle) in [
            ("a,b,c", "1,2", "2 ports for 3 hosts"),
            ("a,,b", "1", "empty host"),
            ("a", "x", "`x` is not a port"),
            ("a", "70000", "not a port"),
        ] {
            let e = host_list(h, &Ports::List(p.into())).unwrap_err();
            assert!(e.contains(needle), "{h} {p}: {e}");
        }
    }
}
