//! Who may connect: PgBouncer's `userlist.txt`, and the client-side login exchange (the pooler
//! authenticates clients itself; Postgres never sees them).
//!
//! Secrets may be plain, `md5…` or `SCRAM-SHA-256$…`. As in PgBouncer, `auth_type = md5` falls
//! back to SCRAM for users whose secret is SCRAM, and SCRAM works with plain secrets too.

pub mod hba;
pub mod scram;

use bytes::BytesMut;
use md5::{Digest, Md5};
use rand::RngExt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthType, ConfigError};
use crate::error::{PoolerError, Result};
use crate::wire;
pub use scram::{ScramKeys, ScramSecret};

/// A password as stored in the auth file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// `md5` followed by 32 hex digits: md5(password || username).
    Md5(String),
    Scram(ScramSecret),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs, whatever prints them.
        let kind = match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram",
        };
        write!(f, "Secret({kind}, <redacted>)")
    }
}

impl Secret {
    pub fn parse(s: &str) -> Secret {
        if let Some(hex) = s.strip_prefix("md5")
            && hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Secret::Md5(s.to_ascii_lowercase());
        }
        if let Some(secret) = ScramSecret::parse(s) {
            return Secret::Scram(secret);
        }
        Secret::Plain(s.to_string())
    }
}

#[derive(Debug)]
pub struct User {
    pub name: String,
    pub secret: Secret,
    /// A SCRAM secret derived once from a plain password: PBKDF2 is too slow to run per login.
    scram_from_plain: OnceLock<ScramSecret>,
    /// md5(password || user) of a plain password, hashed once: it is the same every login,
    /// and an md5 login then hashes once (the salted response) instead of twice.
    md5_from_plain: OnceLock<[u8; MD5_HEX_LEN]>,
}

impl User {
    pub fn new(name: &str, secret: Secret) -> User {
        User {
            name: name.to_string(),
            secret,
            scram_from_plain: OnceLock::new(),
            md5_from_plain: OnceLock::new(),
        }
    }

    /// The 32 hex digits of md5(password || user) that an md5 response is salted from.
    fn md5_inner_hex(&self) -> Option<&[u8]> {
        match &self.secret {
            Secret::Plain(p) => Some(
                self.md5_from_plain
                    .get_or_init(|| md5_hex(&[p.as_bytes(), self.name.as_bytes()])),
            ),
            Secret::Md5(m) => m.as_bytes().get(3..),
            Secret::Scram(_) => None,
        }
    }

    fn scram_secret(&self) -> Option<&ScramSecret> {
        match &self.secret {
            Secret::Scram(s) => Some(s),
            Secret::Plain(p) => Some(
                self.scram_from_plain
                    .get_or_init(|| ScramSecret::from_password(p)),
            ),
            Secret::Md5(_) => None,
        }
    }
}

/// The users of the auth file, by name.
#[derive(Debug, Default)]
pub struct AuthFile {
    /// Looked up once per login by the name the client sent: foldhash, not SipHash (the
    /// names are the file's, so no client can choose what collides).
    users: HashMap<String, Arc<User>, foldhash::fast::RandomState>,
}

impl AuthFile {
    pub fn load(path: &Path) -> std::result::Result<AuthFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        AuthFile::parse(&text).map_err(|message| ConfigError::Invalid {
            file: path.display().to_string(),
            message,
        })
    }

    /// PgBouncer's format: `"user" "secret"` per line, `""` for a quote inside; lines that do
    /// not start with a quote are comments.
    pub fn parse(text: &str) -> std::result::Result<AuthFile, String> {
        let mut users = HashMap::default();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.starts_with('"') {
                continue;
            }
            let mut rest = line;
            let mut fields = Vec::new();
            while fields.len() < 2 {
                rest = rest.trim_start();
                let Some(after) = rest.strip_prefix('"') else {
                    break;
                };
                let (field, tail) = quoted(after)
                    .ok_or_else(|| format!("line {}: unterminated quote", lineno + 1))?;
                fields.push(field);
                rest = tail;
            }
            match fields.as_slice() {
                [user, secret] => {
                    users.insert(
                        user.clone(),
                        Arc::new(User::new(user, Secret::parse(secret))),
                    );
                }
                _ => {
                    return Err(format!(
                        "line {}: expected \"user\" \"password\"",
                        lineno + 1
                    ));
                }
            }
        }
        Ok(AuthFile { users })
    }

    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).cloned()
    }

    /// Every user name in the file (SHOW USERS).
    pub fn names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn insert(&mut self, user: User) {
        self.users.insert(user.name.clone(), Arc::new(user));
    }
}

/// The body of a quoted field up to its closing quote, and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some(&(_, '"')) = chars.peek() {
                chars.next();
                out.push('"');
            } else {
                return Some((out, &s[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// The length of an md5 digest in hex.
const MD5_HEX_LEN: usize = 32;

/// The hex digest of `parts`, on the stack.
fn md5_hex(parts: &[&[u8]]) -> [u8; MD5_HEX_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; MD5_HEX_LEN];
    for (i, b) in h.finalize().into_iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// `md5` followed by the hex digest of `parts`.
fn md5_prefixed_hex(parts: &[&[u8]]) -> String {
    let hex = md5_hex(parts);
    let mut out = String::with_capacity(3 + MD5_HEX_LEN);
    out.push_str("md5");
    // The digits are ASCII.
    out.extend(hex.iter().map(|&b| char::from(b)));
    out
}

/// Whether `given` is the client's md5 response, `md5` || md5(inner || salt), to `salt` for a
/// user whose inner hash is `inner_hex` (hex digits). Compared on the stack: no allocation.
fn md5_response_matches(inner_hex: &[u8], salt: [u8; 4], given: &[u8]) -> bool {
    let expected = md5_hex(&[inner_hex, &salt]);
    match given.strip_prefix(b"md5") {
        Some(digits) => constant_time_eq(&expected, digits),
        None => false,
    }
}

/// `md5` || md5(md5(password || user) || salt) given the inner `md5…` hash.
pub fn md5_response(md5_secret: &str, salt: [u8; 4]) -> String {
    md5_prefixed_hex(&[md5_secret.as_bytes().get(3..).unwrap_or_default(), &salt])
}

/// The `md5…` form of a plain password.
pub fn md5_secret(user: &str, password: &str) -> String {
    md5_prefixed_hex(&[password.as_bytes(), user.as_bytes()])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    buf.clear();
    Ok(())
}

/// The body of the client's next message, which must be a password message ('p'), handed
/// to `take` (read in place when it arrived whole: see `wire::with_message_buffered`).
async fn with_password<S, T>(stream: &mut S, take: impl FnOnce(&[u8]) -> T) -> Result<T>
where
    S: AsyncBufRead + Unpin,
{
    let taken = wire::with_message_buffered(stream, wire::MAX_LOGIN_MESSAGE_LEN, |tag, body| {
        (tag == b'p').then(|| take(body)).ok_or(tag)
    })
    .await?;
    taken.map_err(|tag| {
        PoolerError::protocol(format!(
            "expected password response, got message type '{}'",
            tag.escape_ascii()
        ))
    })
}

async fn read_password<S: AsyncBufRead + Unpin>(stream: &mut S) -> Result<Vec<u8>> {
    with_password(stream, <[u8]>::to_vec).await
}

/// Runs the login exchange with the client up to (not including) AuthenticationOk.
/// `user` is `None` when the name is not in the auth file: the exchange still runs, so an
/// outsider cannot tell an unknown user from a wrong password.
/// Returns the client's SCRAM keys when SCRAM was used. `out` is the login's write buffer,
/// left holding what is still to send with the greeting (SCRAM's SASLFinal), else empty.
pub async fn authenticate_client<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    auth_type: AuthType,
    name: &str,
    user: Option<&User>,
) -> Result<Option<ScramKeys>> {
    let failed = || PoolerError::AuthFailed(name.to_string());
    // An empty secret in the auth file is no password at all: as in Postgres and PgBouncer,
    // it never logs in under a password method (it fails like an unknown user).
    let user = user.filter(|u| !matches!(&u.secret, Secret::Plain(p) if p.is_empty()));
    let use_scram = match auth_type {
        AuthType::Trust => return Ok(None),
        AuthType::ScramSha256 => true,
        AuthType::Md5 => matches!(user.map(|u| &u.secret), Some(Secret::Scram(_))),
        AuthType::Plain => false,
        // Resolved before (`hba` to a line's method; `cert` needs no password exchange).
        AuthType::Hba | AuthType::Cert => return Err(failed()),
    };
    if use_scram {
        let decoy;
        let secret = match user.and_then(User::scram_secret) {
            Some(s) => s,
            None => {
                decoy = ScramSecret::decoy(name);
                &decoy
            }
        };
        wire::auth_sasl(out, scram::MECHANISM);
        send(stream, out).await?;
        let initial = read_password(stream).await?;
        let mut body = &initial[..];
        let mechanism = wire::take_cstr(&mut body)?;
        if mechanism != scram::MECHANISM {
            return Err(PoolerError::protocol(format!(
                "unsupported SASL mechanism {mechanism}"
            )));
        }
        if body.len() < 4 {
            return Err(PoolerError::protocol("malformed SASLInitialResponse"));
        }
        let data = &body[4..];
        let (server, server_first) = scram::ScramServer::start(data, secret)?;
        wire::auth_sasl_continue(out, server_first.as_bytes());
        send(stream, out).await?;
        let client_final = read_password(stream).await?;
        return match server.finish(&client_final, secret)? {
            // SASLFinal stays in `out`: it goes out with AuthenticationOk and the greeting,
            // one write instead of two (the client reads on to AuthenticationOk anyway).
            Some((server_final, keys)) if user.is_some() => {
                wire::auth_sasl_final(out, server_final.as_bytes());
                Ok(Some(keys))
            }
            _ => Err(failed()),
        };
    }
    if auth_type == AuthType::Plain {
        wire::auth_cleartext(out);
        send(stream, out).await?;
        let ok = with_password(stream, |body| {
            let given = body.strip_suffix(&[0]).unwrap_or(body);
            let Ok(given) = std::str::from_utf8(given) else {
                return false;
            };
            match user.map(|u| &u.secret) {
                Some(Secret::Plain(p)) => constant_time_eq(p.as_bytes(), given.as_bytes()),
                Some(Secret::Md5(m)) => {
                    constant_time_eq(m.as_bytes(), md5_secret(name, given).as_bytes())
                }
                Some(Secret::Scram(s)) => scram::verify_password(s, given),
                None => false,
            }
        })
        .await?;
        return if ok { Ok(None) } else { Err(failed()) };
    }
    // md5
    let salt: [u8; 4] = rand::rng().random();
    wire::auth_md5(out, salt);
    send(stream, out).await?;
    let inner = user.and_then(User::md5_inner_hex);
    let ok = with_password(stream, |body| {
        let given = body.strip_suffix(&[0]).unwrap_or(body);
        inner.is_some_and(|inner| md5_response_matches(inner, salt, given))
    })
    .await?;
    if ok { Ok(None) } else { Err(failed()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userlist_formats() {
        let f = AuthFile::parse(
            "; comment\n\"app\" \"app\"\n\"a\"\"b\" \"md5AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n\n\"s\" \"SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$eTT1VzE/mbe6+B3lRIBw9F2zWhUVIn1ayr8pBbMT0Us=:hiK7ZGnF/ZRklQFIUMAzhZjmbMVn5IsHYfJ7M1ZTzP8=\"\n",
        )
        .unwrap();
        assert!(matches!(f.get("app").unwrap().secret, Secret::Plain(ref p) if p == "app"));
        assert!(matches!(f.get("a\"b").unwrap().secret, Secret::Md5(_)));
        assert!(matches!(f.get("s").unwrap().secret, Secret::Scram(_)));
        assert!(AuthFile::parse("\"unterminated").is_err());
        assert!(AuthFile::parse("\"only-user\"").is_err());
    }

    #[test]
    fn md5_matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        let ours = md5_response(&md5_secret("u", "p"), salt);
        let theirs = postgres_protocol::authentication::md5_hash(b"u", b"p", salt);
        assert_eq!(ours, theirs);
        assert_eq!(
            md5_secret("u", "p"),
            postgres_protocol::password::md5(b"p", "u")
        );
    }

    /// A SCRAM login against a libpq-like client (postgres-protocol's): the exchange
    /// verifies, and SASLFinal is left in `out` for the greeting's write rather than sent
    /// alone (one write a login fewer); the client accepts the server signature in it.
    #[tokio::test]
    async fn scram_exchange_leaves_sasl_final_for_the_greeting() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        use tokio::io::{AsyncWriteExt, BufReader};
        let user = User::new("alice", Secret::Plain("s3cret".into()));
        let (pooler_end, mut client_end) = tokio::io::duplex(4096);
        let mut pooler_end = BufReader::new(pooler_end);
        let client = async move {
            let (tag, body) = wire::read_message(&mut client_end, 1024).await.unwrap();
            assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
            let mut scram = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
            let mut msg = BytesMut::new();
            postgres_protocol::message::frontend::sasl_initial_response(
                scram::MECHANISM,
                scram.message(),
                &mut msg,
            )
            .unwrap();
            client_end.write_all(&msg).await.unwrap();
            let (tag, body) = wire::read_message(&mut client_end, 1024).await.unwrap();
            assert_eq!((tag, &body[..4]), (b'R', &11i32.to_be_bytes()[..]));
            scram.update(&body[4..]).unwrap();
            msg.clear();
            postgres_protocol::message::frontend::sasl_response(scram.message(), &mut msg).unwrap();
            client_end.write_all(&msg).await.unwrap();
            (scram, client_end)
        };
        let mut out = BytesMut::new();
        let server = authenticate_client(
            &mut pooler_end,
            &mut out,
            AuthType::ScramSha256,
            "alice",
            Some(&user),
        );
        // Bounded: a pooler side that stopped early would leave the client reading forever.
        let exchange = async { tokio::join!(client, server) };
        let ((mut scram, _client_end), keys) =
            tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
                .await
                .expect("the exchange ends");
        assert!(keys.unwrap().is_some(), "the right password logs in");
        // What is left in `out` is SASLFinal, whole, with a signature the client accepts.
        let (tag, len) = wire::header(&out).unwrap();
        assert_eq!((tag, len as usize + 1), (b'R', out.len()));
        assert_eq!(&out[5..9], &12i32.to_be_bytes());
        scram.finish(&out[9..]).unwrap();
    }

    /// The login's check, with the inner hash cached for a plain password or read from an
    /// `md5…` secret, accepts what libpq's md5 sends and nothing else.
    #[test]
    fn md5_login_check_matches_postgres_protocol() {
        let salt = [9, 8, 7, 6];
        let response = postgres_protocol::authentication::md5_hash(b"alice", b"s3cret", salt);
        let plain = User::new("alice", Secret::Plain("s3cret".into()));
        let stored = User::new("alice", Secret::parse(&md5_secret("alice", "s3cret")));
        for user in [&plain, &stored] {
            let inner = user.md5_inner_hex().unwrap();
            // Twice: the second check reads the cached hash.
            for _ in 0..2 {
                assert!(md5_response_matches(inner, salt, response.as_bytes()));
            }
            assert!(!md5_response_matches(
                inner,
                [0, 0, 0, 0],
                response.as_bytes()
            ));
            assert!(!md5_response_matches(
                inner,
                salt,
                &response.as_bytes()[3..]
            ));
            assert!(!md5_response_matches(inner, salt, b""));
        }
        let other = User::new("bob", Secret::Plain("s3cret".into()));
        assert!(!md5_response_matches(
            other.md5_inner_hex().unwrap(),
            salt,
            response.as_bytes()
        ));
    }
}
