//! PgBouncer's HBA subset (`auth_type = hba`, `auth_hba_file`): which authentication method a
//! client gets, by how it connected, the database and user it asks for and its address.
//!
//! The format is `pg_hba.conf`'s, as PgBouncer reads it: one rule per line,
//! `TYPE DATABASE USER [ADDRESS [MASK]] METHOD`, `#` comments, the first matching line wins and
//! no match refuses the login. Types `local` (the Unix socket), `host`, `hostssl`, `hostnossl`;
//! database and user fields are comma lists of names (`"quoted"` allowed), `all`, and for the
//! database `sameuser` and `replication`; addresses are `all`, an IPv4 or IPv6 address with a
//! `/prefix` or a separate mask. Methods: `trust`, `reject`, `md5`, `password`,
//! `scram-sha-256`, `cert`, and `peer` (a Unix-socket client whose operating-system user, from
//! `SO_PEERCRED`, has the name it logs in as). Anything else (`ldap`, `@file`, `samehost`,
//! host names, `map=`) is refused when the file is loaded, naming the line, rather than read
//! some other way.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::config::{AuthType, ConfigError};

/// How a client reached the pooler: what an HBA rule and `cert` authentication look at.
#[derive(Debug, Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    /// Over the Unix socket (`local` rules).
    pub unix: bool,
    /// Over TLS (`hostssl` rules).
    pub tls: bool,
    /// The CommonName of the client certificate the TLS handshake verified.
    pub cert_name: Option<String>,
    /// The operating-system user of a Unix-socket client (`peer` lines).
    pub peer_user: Option<String>,
}

impl Origin {
    pub fn tcp(addr: SocketAddr) -> Origin {
        Origin {
            addr,
            unix: false,
            tls: false,
            cert_name: None,
            peer_user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// `replication` is accepted and matches nothing: replication connections are not
    /// supported, as in PgBouncer's transaction pooling.
    List {
        names: Vec<String>,
        sameuser: bool,
    },
}

impl Names {
    fn matches(&self, name: &str, pair: &str) -> bool {
        match self {
            Names::All => true,
            Names::List { names, sameuser } => {
                (*sameuser && name == pair) || names.iter().any(|n| n == name)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net { base: IpAddr, prefix: u8 },
}

impl Address {
    fn matches(&self, ip: IpAddr) -> bool {
        let (base, prefix) = match self {
            Address::All => return true,
            Address::Net { base, prefix } => (*base, *prefix),
        };
        // An IPv4 client on an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                masked(&a.octets(), prefix) == masked(&b.octets(), prefix)
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                masked(&a.octets(), prefix) == masked(&b.octets(), prefix)
            }
            _ => false,
        }
    }
}

fn masked(bytes: &[u8], prefix: u8) -> Vec<u8> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let bits = (prefix as usize).saturating_sub(i * 8).min(8);
            if bits == 0 {
                0
            } else {
                b & (0xffu8 << (8 - bits))
            }
        })
        .collect()
}

/// What a matching line says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Reject,
    /// `peer`: a Unix-socket client whose OS user name is the user name.
    Peer,
    /// Authenticate as this `auth_type` would (trust, plain, md5, scram-sha-256, cert).
    Auth(AuthType),
}

#[derive(Debug, Clone)]
struct Rule {
    kind: Kind,
    databases: Names,
    users: Names,
    address: Address,
    method: Method,
}

/// The rules of an `auth_hba_file`, in file order.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

impl Hba {
    pub fn load(path: &Path) -> Result<Hba, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Hba::parse(&text).map_err(|message| ConfigError::Invalid {
            file: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Hba, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let rule = parse_rule(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            rules.push(rule);
        }
        Ok(Hba { rules })
    }

    /// The method of the first line matching; None when no line does.
    pub fn method(&self, origin: &Origin, database: &str, user: &str) -> Option<Method> {
        self.rules
            .iter()
            .find(|r| {
                let kind_ok = match r.kind {
                    Kind::Local => origin.unix,
                    _ if origin.unix => false,
                    Kind::Host => true,
                    Kind::HostSsl => origin.tls,
                    Kind::HostNoSsl => !origin.tls,
                };
                kind_ok
                    && (origin.unix || r.address.matches(origin.addr.ip()))
                    && r.databases.matches(database, user)
                    && r.users.matches(user, database)
            })
            .map(|r| r.method)
    }
}

/// Splits at whitespace, keeping `"quoted, names"` (with `""` for a quote) together; a token
/// remembers whether it had quotes, since a quoted `"all"` is a name, not the keyword.
fn tokens(line: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut token = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c == '"' {
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            token.push('"');
                        }
                        Some('"') => break,
                        Some(c) => token.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            } else {
                token.push(c);
            }
        }
        out.push((token, quoted));
    }
}

fn names(field: &(String, bool), database: bool) -> Result<Names, String> {
    let (text, quoted) = field;
    if *quoted {
        // One quoted token may still hold a comma list; quoting only protects keywords.
        return Ok(Names::List {
            names: text.split(',').map(str::to_string).collect(),
            sameuser: false,
        });
    }
    let mut list = Vec::new();
    let mut sameuser = false;
    for name in text.split(',').filter(|n| !n.is_empty()) {
        match name {
            "all" => return Ok(Names::All),
            "sameuser" if database => sameuser = true,
            "replication" if database => {}
            n if n.starts_with('@') => return Err(format!("{n}: @file lists are not supported")),
            n if n.starts_with('+') => return Err(format!("{n}: +group is not supported")),
            "samerole" | "samegroup" => return Err(format!("{name} is not supported")),
            n => list.push(n.to_string()),
        }
    }
    Ok(Names::List {
        names: list,
        sameuser,
    })
}

fn address(tokens: &mut std::vec::IntoIter<(String, bool)>) -> Result<Address, String> {
    let (text, _) = tokens.next().ok_or("address missing")?;
    if text == "all" {
        return Ok(Address::All);
    }
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{text}: not an IP address"))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| format!("{text}: bad prefix length"))?;
            (ip, prefix)
        }
        None => {
            let ip: IpAddr = text.parse().map_err(|_| {
                format!(
                    "{text}: not an IP address (host names, samehost and samenet are not supported)"
                )
            })?;
            let (mask, _) = tokens
                .next()
                .ok_or_else(|| format!("{text}: mask missing"))?;
            let mask: IpAddr = mask.parse().map_err(|_| format!("{mask}: not a mask"))?;
            let bits = match mask {
                IpAddr::V4(m) => u32::from(m).leading_ones() as u8,
                IpAddr::V6(m) => u128::from(m).leading_ones() as u8,
            };
            (ip, bits)
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{text}: prefix longer than {max}"));
    }
    Ok(Address::Net { base: ip, prefix })
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut fields = tokens(line)?.into_iter();
    let (kind, _) = fields.next().ok_or("empty line")?;
    let kind = match kind.as_str() {
        "local" => Kind::Local,
        "host" => Kind::Host,
        "hostssl" => Kind::HostSsl,
        "hostnossl" => Kind::HostNoSsl,
        other => return Err(format!("unsupported connection type {other}")),
    };
    let databases = names(&fields.next().ok_or("database missing")?, true)?;
    let users = names(&fields.next().ok_or("user missing")?, false)?;
    let address = if kind == Kind::Local {
        Address::All
    } else {
        address(&mut fields)?
    };
    let (method, _) = fields.next().ok_or("method missing")?;
    let method = match method.as_str() {
        "reject" => Method::Reject,
        "trust" => Method::Auth(AuthType::Trust),
        "password" => Method::Auth(AuthType::Plain),
        "md5" => Method::Auth(AuthType::Md5),
        "scram-sha-256" => Method::Auth(AuthType::ScramSha256),
        "cert" => Method::Auth(AuthType::Cert),
        "peer" if kind == Kind::Local => Method::Peer,
        "peer" => return Err("peer is only for local lines".into()),
        other => return Err(format!("unsupported method {other}")),
    };
    if let Some((option, _)) = fields.next() {
        return Err(format!("unsupported option {option}"));
    }
    Ok(Rule {
        kind,
        databases,
        users,
        address,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(addr: &str, unix: bool, tls: bool) -> Origin {
        Origin {
            addr: addr.parse().unwrap(),
            unix,
            tls,
            cert_name: None,
            peer_user: None,
        }
    }

    #[test]
    fn first_matching_line_wins() {
        let hba = Hba::parse(
            "# comment\n\
             local all all trust\n\
             hostssl app alice 0.0.0.0/0 cert\n\
             host app,\"Other DB\" alice,bob 10.1.0.0/16 md5 # trailing\n\
             host sameuser all 192.168.1.0 255.255.255.0 scram-sha-256\n\
             host all bad all reject\n\
             hostnossl all all ::1/128 password\n\
             local all all peer\n",
        )
        .unwrap();
        let m = |o: &Origin, d: &str, u: &str| hba.method(o, d, u);
        let unix = origin("127.0.0.1:1", true, false);
        assert_eq!(m(&unix, "x", "y"), Some(Method::Auth(AuthType::Trust)));
        let tls = origin("10.1.2.3:5", false, true);
        assert_eq!(m(&tls, "app", "alice"), Some(Method::Auth(AuthType::Cert)));
        let plain = origin("10.1.2.3:5", false, false);
        assert_eq!(m(&plain, "app", "alice"), Some(Method::Auth(AuthType::Md5)));
        assert_eq!(
            m(&plain, "Other DB", "bob"),
            Some(Method::Auth(AuthType::Md5))
        );
        assert_eq!(m(&plain, "app", "carol"), None);
        assert_eq!(m(&origin("10.2.0.1:5", false, false), "app", "bob"), None);
        let lan = origin("192.168.1.77:5", false, false);
        assert_eq!(
            m(&lan, "bob", "bob"),
            Some(Method::Auth(AuthType::ScramSha256))
        );
        assert_eq!(m(&lan, "app", "bob"), None);
        assert_eq!(m(&lan, "app", "bad"), Some(Method::Reject));
        let v6 = origin("[::1]:5", false, false);
        assert_eq!(m(&v6, "z", "z"), Some(Method::Auth(AuthType::Plain)));
        assert_eq!(m(&origin("[::1]:5", false, true), "z", "z"), None);
        // An IPv4 client seen on an IPv6 socket.
        let mapped = origin("[::ffff:10.1.9.9]:5", false, false);
        assert_eq!(m(&mapped, "app", "bob"), Some(Method::Auth(AuthType::Md5)));
    }

    #[test]
    fn unsupported_parts_are_refused_with_the_line() {
        for (line, needle) in [
            ("host all all samehost md5", "samehost"),
            ("host all all db.example.com md5", "db.example.com"),
            ("host all all all peer", "peer"),
            ("host all all all ldap", "ldap"),
            ("host @dbs all all md5", "@dbs"),
            ("host all +admins all md5", "+admins"),
            ("hostgssenc all all all md5", "hostgssenc"),
            ("host all all all cert map=x", "map=x"),
            ("host all all 10.0.0.0/40 md5", "prefix"),
        ] {
            let e = Hba::parse(&format!("local all all trust\n{line}\n")).unwrap_err();
            assert!(
                e.starts_with("line 2:") && e.contains(needle),
                "{line}: {e}"
            );
        }
    }
}
