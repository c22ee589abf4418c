//! Configuration from the environment, which is how containers are configured: every
//! `[pooler]` key can be overridden by `POOLER_<KEY>` (`POOLER_DEFAULT_POOL_SIZE=50`), and a
//! database entry's key by `POOLER_DATABASES__<NAME>__<KEY>` (`POOLER_DATABASES__APP__HOST=db`).
//! Overrides win over the file.
//!
//! A `POOLER_*` variable that names no key is sorted by one rule, so that a typo cannot
//! silently leave the file's value in force while the variables Kubernetes injects for a
//! Service named `pooler` (`POOLER_PORT=tcp://10.0.0.1:6432`, `POOLER_SERVICE_HOST`, ...)
//! cannot stop the process:
//! 1. the shape of a Kubernetes service link (`*_SERVICE_HOST`, `*_SERVICE_PORT[_NAME]`,
//!    `*_PORT=tcp://...`, `*_PORT_<n>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`): a warning, ignored;
//! 2. otherwise, a name that looks like a key (its first word starts a key, as `MAX_` or
//!    `SERVER_` do, or it is within two edits of one): an error naming it;
//! 3. anything else: a warning, ignored.

use crate::config::{KeyKind, PoolerSettings};

/// The config file's path (also `--config`).
pub const CONFIG_VAR: &str = "POOLER_CONFIG";
/// The log filter.
pub const LOG_VAR: &str = "POOLER_LOG";
const PREFIX: &str = "POOLER_";
const DATABASES: &str = "DATABASES__";

/// The `POOLER_*` variables that are config overrides, in a stable order.
pub fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k != CONFIG_VAR && k != LOG_VAR)
        .collect();
    list.sort();
    list
}

/// The overrides in this process's environment (variables that are not UTF-8 are skipped).
pub fn from_process() -> Vec<(String, String)> {
    overrides(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

/// Database entry keys whose values are text.
const DATABASE_TEXT_KEYS: &[&str] = &[
    "host",
    "dbname",
    "user",
    "password",
    "pool_mode",
    "target_session_attrs",
    "load_balance_hosts",
    "session_state",
    "auth_user",
    "auth_query",
    "auth_dbname",
];

/// Whether a variable has the shape of the ones Kubernetes injects for each Service
/// (`<NAME>_SERVICE_HOST`, `<NAME>_PORT=tcp://...`, ...); `name` is without `POOLER_`.
fn is_service_link(name: &str, value: &str) -> bool {
    let full = format!("{PREFIX}{name}");
    if full.ends_with("_SERVICE_HOST")
        || full.ends_with("_SERVICE_PORT")
        || full.contains("_SERVICE_PORT_")
    {
        return true;
    }
    if full.ends_with("_PORT")
        && ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| value.starts_with(p))
    {
        return true;
    }
    // <NAME>_PORT_<number>_<protocol>[_PROTO|_PORT|_ADDR]
    let parts: Vec<&str> = full.split('_').collect();
    parts.windows(3).enumerate().any(|(i, w)| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
            && match &parts[i + 3..] {
                [] => true,
                [last] => matches!(*last, "PROTO" | "PORT" | "ADDR"),
                _ => false,
            }
    })
}

/// Whether an unknown key (lower case) looks like one of ours: a typo, not someone else's.
fn looks_like_a_key(key: &str, keys: &[&str]) -> bool {
    let first = key.split('_').next().unwrap_or(key);
    keys.iter()
        .any(|k| k.split('_').next() == Some(first) || edit_distance(key, k) <= 2)
}

/// Levenshtein distance, for spotting typos.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Writes the overrides into a parsed config file; returns a warning for each variable that
/// is ignored (see the module comment for which those are).
pub fn apply(
    table: &mut toml::Table,
    overrides: &[(String, String)],
) -> Result<Vec<String>, String> {
    let settings = PoolerSettings::default().entries();
    let keys: Vec<&str> = settings.iter().map(|(k, _, _)| *k).collect();
    let mut warnings = Vec::new();
    for (var, raw) in overrides {
        let name = var.strip_prefix(PREFIX).unwrap_or(var);
        let (section, key, kind) = match name.strip_prefix(DATABASES) {
            Some(rest) => {
                let Some((db, key)) = rest.split_once("__") else {
                    return Err(format!("{var}: expected POOLER_DATABASES__<NAME>__<KEY>"));
                };
                let key = key.to_ascii_lowercase();
                // A port list (`5432,5433`) is text, as in the file.
                let port_list = key == "port" && raw.contains(',');
                let kind = if DATABASE_TEXT_KEYS.contains(&key.as_str()) || port_list {
                    KeyKind::Text
                } else {
                    KeyKind::Value
                };
                let databases = table
                    .entry("databases")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(databases) = databases.as_table_mut() else {
                    return Err("databases: must be a table".into());
                };
                let entry = databases
                    .entry(db.to_ascii_lowercase())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                (entry, key, kind)
            }
            None => {
                let key = name.to_ascii_lowercase();
                let Some((_, _, kind)) = settings.iter().find(|(k, _, _)| *k == key) else {
                    if is_service_link(name, raw) {
                        warnings.push(format!(
                            "{var}: ignored (a Kubernetes service variable, not a setting)"
                        ));
                        continue;
                    }
                    if looks_like_a_key(&key, &keys) {
                        return Err(format!("{var}: no such setting `{key}`"));
                    }
                    warnings.push(format!("{var}: ignored (no setting is called `{key}`)"));
                    continue;
                };
                let section = table
                    .entry("pooler")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                (section, key, *kind)
            }
        };
        let value = match kind {
            KeyKind::Text => toml::Value::String(raw.clone()),
            KeyKind::Value => parse_value(raw)
                .ok_or_else(|| format!("{var}: `{raw}` is not a valid value for {key}"))?,
            KeyKind::Bool => match raw.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => toml::Value::Boolean(true),
                "0" | "false" | "off" | "no" => toml::Value::Boolean(false),
                _ => return Err(format!("{var}: `{raw}` is not a boolean (1/0, true/false)")),
            },
        };
        let Some(section) = section.as_table_mut() else {
            return Err(format!("{var}: the section it belongs to is not a table"));
        };
        section.insert(key, value);
    }
    Ok(warnings)
}

/// A number or boolean written as TOML would write it.
fn parse_value(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    t.remove("v")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        overrides(list.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn overrides_skip_the_path_and_log_variables() {
        let o = vars(&[
            ("POOLER_CONFIG", "x"),
            ("POOLER_LOG", "debug"),
            ("HOME", "/root"),
            ("POOLER_LISTEN_PORT", "7000"),
        ]);
        assert_eq!(o, vec![("POOLER_LISTEN_PORT".into(), "7000".into())]);
    }

    #[test]
    fn every_key_kind_overrides_the_file() {
        let mut t: toml::Table =
            toml::from_str("[pooler]\ndefault_pool_size = 3\n[databases.app]\nport = 1\n").unwrap();
        apply(
            &mut t,
            &vars(&[
                ("POOLER_DEFAULT_POOL_SIZE", "7"),
                ("POOLER_LISTEN_ADDR", "0.0.0.0"),
                ("POOLER_LOG_CONNECTIONS", "false"),
                ("POOLER_QUERY_TIMEOUT", "1.5"),
                ("POOLER_ADMIN_USERS", "a, b"),
                ("POOLER_DATABASES__APP__HOST", "db.internal"),
                ("POOLER_DATABASES__APP__PORT", "5433"),
            ]),
        )
        .unwrap();
        let c: Config = t.try_into().unwrap();
        assert_eq!(c.pooler.default_pool_size, 7);
        assert_eq!(c.pooler.listen_addr, "0.0.0.0");
        assert!(!c.pooler.log_connections);
        assert_eq!(c.pooler.query_timeout, 1.5);
        assert_eq!(c.pooler.admin_users.names(), vec!["a", "b"]);
        assert_eq!(c.databases["app"].host, "db.internal");
        assert_eq!(c.databases["app"].port, 5433);
    }

    #[test]
    fn several_hosts_from_the_environment() {
        let mut t: toml::Table = toml::from_str("[databases.app]\nport = 1\n").unwrap();
        apply(
            &mut t,
            &vars(&[
                ("POOLER_DATABASES__APP__HOST", "a,b"),
                ("POOLER_DATABASES__APP__PORT", "5432,5433"),
                ("POOLER_DATABASES__APP__TARGET_SESSION_ATTRS", "read-write"),
            ]),
        )
        .unwrap();
        let c: Config = t.try_into().unwrap();
        let app = &c.databases["app"];
        assert_eq!(
            app.hosts(),
            vec![("a".to_string(), 5432), ("b".to_string(), 5433)]
        );
        assert_eq!(
            app.target_session_attrs(),
            crate::config::TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn unknown_or_bad_overrides_are_named() {
        let mut t = toml::Table::new();
        let e = apply(&mut t, &vars(&[("POOLER_DEFAULT_POOL_SISE", "7")])).unwrap_err();
        assert!(
            e.contains("POOLER_DEFAULT_POOL_SISE") && e.contains("default_pool_sise"),
            "{e}"
        );
        let e = apply(&mut t, &vars(&[("POOLER_DEFAULT_POOL_SIZE", "many")])).unwrap_err();
        assert!(e.contains("POOLER_DEFAULT_POOL_SIZE"), "{e}");
    }

    #[test]
    fn kubernetes_service_variables_are_ignored_and_typos_still_refused() {
        // What Kubernetes injects for Services named `pooler` and `pooler-server`.
        let injected = vars(&[
            ("POOLER_PORT", "tcp://10.96.0.12:6432"),
            ("POOLER_PORT_6432_TCP", "tcp://10.96.0.12:6432"),
            ("POOLER_PORT_6432_TCP_PROTO", "tcp"),
            ("POOLER_PORT_6432_TCP_PORT", "6432"),
            ("POOLER_PORT_6432_TCP_ADDR", "10.96.0.12"),
            ("POOLER_SERVICE_HOST", "10.96.0.12"),
            ("POOLER_SERVICE_PORT", "6432"),
            ("POOLER_SERVICE_PORT_METRICS", "9127"),
            ("POOLER_SERVER_SERVICE_HOST", "10.96.0.13"),
            ("POOLER_SERVER_PORT", "tcp://10.96.0.13:5432"),
            ("POOLER_LISTEN_PORT", "7000"),
        ]);
        let mut t = toml::Table::new();
        let warnings = apply(&mut t, &injected).unwrap();
        assert_eq!(warnings.len(), injected.len() - 1, "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.starts_with("POOLER_PORT:")),
            "{warnings:?}"
        );
        assert_eq!(t["pooler"]["listen_port"].as_integer(), Some(7000));
        // Unrelated names are warnings too; names like our keys stay errors.
        let w = apply(&mut t, &vars(&[("POOLER_IMAGE_TAG", "1.2")])).unwrap();
        assert!(w[0].contains("POOLER_IMAGE_TAG"), "{w:?}");
        for typo in [
            "POOLER_DEFUALT_POOL_SIZE",
            "POOLER_MAX_CLIENT_CONNECTIONS",
            "POOLER_SERVER_IDLE_TIMEOUT_S",
            "POOLER_LISTEN_PROT",
            "POOLER_POOLMODE",
        ] {
            let e = apply(&mut t, &vars(&[(typo, "5")])).unwrap_err();
            assert!(e.contains(typo), "{e}");
        }
        // A bare *_PORT is a service link only with a URL value.
        assert!(apply(&mut t, &vars(&[("POOLER_LISTEN_PORTS", "tcp://x:1")])).is_err());
    }

    #[test]
    fn every_setting_can_be_overridden_with_its_own_default() {
        let d = PoolerSettings::default();
        for (key, value, _) in d.entries() {
            let var = format!("POOLER_{}", key.to_ascii_uppercase());
            let mut t = toml::Table::new();
            if value.is_empty() {
                continue; // unset paths
            }
            apply(&mut t, &[(var.clone(), value.clone())]).unwrap();
            let r: Result<Config, _> = t.try_into();
            assert!(r.is_ok(), "{var}={value}: {:?}", r.err());
        }
    }
}
