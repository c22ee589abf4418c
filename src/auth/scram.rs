//! SCRAM-SHA-256 (RFC 5802/7677) as Postgres speaks it: the server side, which verifies a
//! client against a stored secret, and a key-based client for logging in to Postgres with the
//! keys a client proved it knows.
//!
//! `postgres-protocol` only ships the password-based client side, so the server side is here.
//! The verifier never runs PBKDF2: it works from StoredKey/ServerKey, which is why a SCRAM
//! secret in the auth file makes logins cheap.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::error::{PoolerError, Result};

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` secret, as in `pg_authid`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(<redacted>)")
    }
}

/// The keys a client proved during SCRAM: enough to log in to Postgres as that user.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn key32(b64: &str) -> Option<[u8; 32]> {
    B64.decode(b64).ok()?.try_into().ok()
}

impl ScramSecret {
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: key32(stored)?,
            server_key: key32(server)?,
        })
    }

    /// Derives a secret from a plain password (PBKDF2: costly; callers cache the result).
    pub fn from_password(password: &str) -> ScramSecret {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramSecret::parse(&text).expect("postgres-protocol writes well-formed secrets")
    }

    /// A secret that matches no password, for users that do not exist: the exchange looks the
    /// same as for a real user, so a failed login does not tell whether the user exists.
    pub fn decoy(user: &str) -> ScramSecret {
        let salt = sha256(format!("pooler-decoy-salt:{user}").as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        rand::rng().fill(&mut stored_key);
        ScramSecret {
            iterations: 4096,
            salt,
            stored_key,
            server_key: stored_key,
        }
    }
}

/// Parses `a=value` attributes of a SCRAM message.
fn attr(msg: &str, name: char) -> Option<&str> {
    msg.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

fn violation(what: &str) -> PoolerError {
    PoolerError::protocol(format!("malformed SCRAM message: {what}"))
}

/// Server side of one exchange, between the client-first and client-final messages.
pub struct ScramServer {
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first message, returns the state and the server-first message.
    pub fn start(client_first: &[u8], secret: &ScramSecret) -> Result<(ScramServer, String)> {
        let msg = std::str::from_utf8(client_first).map_err(|_| violation("not UTF-8"))?;
        // gs2 header: "n,," or "y,," (no channel binding); "p=..." asks for binding we lack.
        let (gs2_header, bare) = match msg.get(..3) {
            Some("n,,") | Some("y,,") => (&msg[..3], &msg[3..]),
            _ if msg.starts_with("p=") => {
                return Err(PoolerError::protocol(
                    "channel binding is not supported without TLS",
                ));
            }
            _ => return Err(violation("bad GS2 header")),
        };
        let client_nonce = attr(bare, 'r').ok_or_else(|| violation("no nonce"))?;
        if client_nonce.is_empty() {
            return Err(violation("empty nonce"));
        }
        let mut server_nonce = [0u8; 18];
        rand::rng().fill(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramServer {
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                gs2_header: gs2_header.to_string(),
                nonce,
            },
            server_first,
        ))
    }

    /// Verifies the client-final message. On success returns the server-final message and the
    /// client's keys; `None` means a wrong password.
    pub fn finish(
        self,
        client_final: &[u8],
        secret: &ScramSecret,
    ) -> Result<Option<(String, ScramKeys)>> {
        let msg = std::str::from_utf8(client_final).map_err(|_| violation("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| violation("no proof"))?;
        let binding = attr(without_proof, 'c').ok_or_else(|| violation("no channel binding"))?;
        if binding != B64.encode(&self.gs2_header) {
            return Err(violation("channel binding mismatch"));
        }
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(violation("nonce mismatch"));
        }
        let proof: [u8; 32] = match B64.decode(proof).ok().and_then(|p| p.try_into().ok()) {
            Some(p) => p,
            None => return Err(violation("bad proof")),
        };
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        if sha256(&client_key) != secret.stored_key {
            return Ok(None);
        }
        let server_signature = hmac(&secret.server_key, &[auth_message.as_bytes()]);
        Ok(Some((
            format!("v={}", B64.encode(server_signature)),
            ScramKeys {
                client_key,
                server_key: secret.server_key,
            },
        )))
    }
}

/// Client side with keys instead of a password: logs in to Postgres as a user whose
/// password the pooler never saw, using the keys that user's client proved (PgBouncer does
/// the same). Works when Postgres holds the same secret (same salt and iterations).
pub struct ScramKeyClient {
    keys: ScramKeys,
    client_first_bare: String,
    state: Option<String>,
}

impl ScramKeyClient {
    pub fn new(keys: ScramKeys) -> (ScramKeyClient, Vec<u8>) {
        let mut nonce = [0u8; 18];
        rand::rng().fill(&mut nonce);
        let client_first_bare = format!("n=,r={}", B64.encode(nonce));
        let first = format!("n,,{client_first_bare}").into_bytes();
        (
            ScramKeyClient {
                keys,
                client_first_bare,
                state: None,
            },
            first,
        )
    }

    /// Takes the server-first message, returns the client-final message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<Vec<u8>> {
        let msg = std::str::from_utf8(server_first).map_err(|_| violation("not UTF-8"))?;
        let nonce = attr(msg, 'r').ok_or_else(|| violation("no nonce"))?;
        if !nonce.starts_with(&self.client_first_bare[5..]) {
            return Err(violation("server nonce does not extend ours"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = self.keys.client_key[i] ^ signature[i];
        }
        self.state = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's signature, so a server that does not hold the secret is refused.
    pub fn finish(&self, server_final: &[u8]) -> Result<()> {
        let msg = std::str::from_utf8(server_final).map_err(|_| violation("not UTF-8"))?;
        let auth_message = self
            .state
            .as_ref()
            .ok_or_else(|| violation("out of order"))?;
        let expected = hmac(&self.keys.server_key, &[auth_message.as_bytes()]);
        match attr(msg, 'v').and_then(|v| B64.decode(v).ok()) {
            Some(v) if v == expected => Ok(()),
            _ => Err(PoolerError::ServerProtocol(
                "invalid SCRAM server signature".into(),
            )),
        }
    }
}

/// Checks a cleartext password against a secret by running the exchange in memory with
/// `postgres-protocol`'s client, which salts it with the secret's own salt and iterations.
pub fn verify_password(secret: &ScramSecret, password: &str) -> bool {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let Ok((server, first)) = ScramServer::start(client.message(), secret) else {
        return false;
    };
    if client.update(first.as_bytes()).is_err() {
        return false;
    }
    matches!(server.finish(client.message(), secret), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// The pooler's verifier against postgres-protocol's client, both ways round.
    #[test]
    fn verifier_accepts_right_password_and_rejects_wrong() {
        let secret = ScramSecret::from_password("s3cret");
        for (password, ok) in [("s3cret", true), ("wrong", false)] {
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let (server, first) = ScramServer::start(client.message(), &secret).unwrap();
            client.update(first.as_bytes()).unwrap();
            let out = server.finish(client.message(), &secret).unwrap();
            assert_eq!(out.is_some(), ok);
            if let Some((final_msg, keys)) = out {
                client.finish(final_msg.as_bytes()).unwrap();
                // The recovered keys log in through the key client against the same secret.
                let (mut kc, kfirst) = ScramKeyClient::new(keys);
                let (server, sfirst) = ScramServer::start(&kfirst, &secret).unwrap();
                let kfinal = kc.update(sfirst.as_bytes()).unwrap();
                let (sfinal, _) = server.finish(&kfinal, &secret).unwrap().unwrap();
                kc.finish(sfinal.as_bytes()).unwrap();
            }
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let secret = ScramSecret::from_password("x");
        for bad in [
            &b""[..],
            b"n,,",
            b"q,,n=,r=abc",
            b"\xff\xfe",
            b"p=tls-server-end-point,,n=,r=a",
        ] {
            assert!(ScramServer::start(bad, &secret).is_err());
        }
        let (server, _) = ScramServer::start(b"n,,n=,r=abc", &secret).unwrap();
        assert!(server.finish(b"c=biws,r=abc,p=!!", &secret).is_err());
        assert!(ScramSecret::parse("SCRAM-SHA-256$0:abc$x:y").is_none());
    }
}
