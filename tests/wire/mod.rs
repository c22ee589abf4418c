//! A raw wire-protocol client for the reliability tests: what a driver never sends (garbage,
//! truncated packets, absurd lengths, a COPY abandoned halfway) needs bytes written by hand.
//! Also the small process helpers those tests share (fd limit, RSS).
#![allow(dead_code)]

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound on any single wait on the pooler: long enough for a loaded 2-core CI
/// machine, short enough that a hang fails the test instead of stalling the suite.
pub const HANG: Duration = Duration::from_secs(60);

/// A startup packet for protocol 3.0.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).expect("startup packet");
    buf.to_vec()
}

/// One typed message: tag, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + body.len());
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

/// Parse + Bind + Execute of `sql` (unnamed statement and portal, no parameters), no Sync.
pub fn extended(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut m = msg(b'P', &parse);
    m.extend(msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    m.extend(msg(b'E', &[0, 0, 0, 0, 0]));
    m
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

/// Splits complete backend messages off the front of `buf`.
pub fn messages(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 5 {
        let tag = buf[pos];
        let len = i32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap());
        if len < 4 || buf.len() - pos < 1 + len as usize {
            break;
        }
        out.push((tag, buf[pos + 5..pos + 1 + len as usize].to_vec()));
        pos += 1 + len as usize;
    }
    out
}

/// The SQLSTATE of every ErrorResponse in `buf`.
pub fn error_codes(buf: &[u8]) -> Vec<String> {
    messages(buf)
        .into_iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| pooler::wire::error_fields(&body).0)
        .collect()
}

/// The messages of every ErrorResponse in `buf`.
pub fn error_messages(buf: &[u8]) -> Vec<String> {
    messages(buf)
        .into_iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| pooler::wire::error_fields(&body).1)
        .collect()
}

/// How a connection ended from the client's side.
#[derive(Debug)]
pub struct Ending {
    /// Everything read before the end.
    pub bytes: Vec<u8>,
    /// EOF or a reset (true), or still open when `limit` passed (false).
    pub closed: bool,
}

/// Reads until the pooler closes the connection (EOF or reset), at most `limit`.
pub async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Ending {
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                return Ending {
                    bytes,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ending {
                    bytes,
                    closed: true,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads messages until one with `tag` arrives (included); panics after `HANG`.
pub async fn read_until(s: &mut TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let msgs = messages(&buf);
        if let Some(i) = msgs.iter().position(|(t, _)| *t == tag) {
            return msgs[..=i].to_vec();
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no '{}' from the pooler", tag as char))
            .expect("read");
        assert!(n > 0, "closed while waiting for '{}'", tag as char);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects and logs in (md5, cleartext or SCRAM, whatever the server asks), up to
/// ReadyForQuery; panics if the login fails.
pub async fn login(addr: SocketAddr, user: &str, password: &str, db: &str) -> TcpStream {
    match login_params(addr, user, password, db, &[]).await {
        Ok((s, _)) => s,
        Err(e) => panic!("login refused: {e}"),
    }
}

/// Raises this process's soft open-files limit to its hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`); `None` for self.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A tiny deterministic PRNG (xorshift64*): reproducible garbage without API churn.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Up to `max` random bytes.
    pub fn some_bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
        let n = min + self.below((max - min + 1) as u64) as usize;
        self.bytes(n)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Writes a u32 length-prefixed blob: helpers for building broken packets.
pub fn with_length(len: i32, rest: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32(len);
    b.put_slice(rest);
    b.to_vec()
}

/// Reads messages until `done` holds for everything read so far; panics after `HANG`.
pub async fn read_messages(
    s: &mut TcpStream,
    mut done: impl FnMut(&[(u8, Vec<u8>)]) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let msgs = messages(&buf);
        if done(&msgs) {
            return msgs;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("timed out; read so far: {:?}", tags_of(&msgs)))
            .expect("read");
        assert!(n > 0, "closed; read so far: {:?}", tags_of(&msgs));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn tags_of(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// Connects and logs in with extra startup parameters (md5, cleartext or SCRAM), up to
/// ReadyForQuery; returns the stream and the ParameterStatus values the server sent.
pub async fn login_params(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    params: &[(&str, &str)],
) -> Result<(TcpStream, Vec<(String, String)>), String> {
    use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut all = vec![("user", user), ("database", db)];
    all.extend_from_slice(params);
    s.write_all(&startup_packet(&all))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + HANG;
    let mut scram: Option<ScramSha256> = None;
    let mut status = Vec::new();
    loop {
        let mut consumed = 0;
        for (tag, body) in messages(&buf) {
            consumed += 5 + body.len();
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password.as_bytes(), &mut out).unwrap(),
                        5 => {
                            let salt = body[4..8].try_into().unwrap();
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out).unwrap();
                        }
                        10 => {
                            let sc = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut out)
                                .unwrap();
                            scram = Some(sc);
                        }
                        11 => {
                            let sc = scram.as_mut().expect("SASL started");
                            sc.update(&body[4..]).map_err(|e| e.to_string())?;
                            frontend::sasl_response(sc.message(), &mut out).unwrap();
                        }
                        12 => {
                            let sc = scram.as_mut().expect("SASL started");
                            sc.finish(&body[4..]).map_err(|e| e.to_string())?;
                            continue;
                        }
                        other => panic!("raw login: auth request {other} not supported"),
                    }
                    s.write_all(&out).await.map_err(|e| e.to_string())?;
                }
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let name =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let value =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    status.push((name, value));
                }
                b'E' => {
                    let (code, msg) = pooler::wire::error_fields(&body);
                    return Err(format!("{code} {msg}"));
                }
                b'Z' => return Ok((s, status)),
                _ => {}
            }
        }
        buf.drain(..consumed);
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .map_err(|_| "login timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during login".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a client saw in answer to one request, up to its ReadyForQuery: the parts a
/// differential test compares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    pub rows: Vec<Vec<Option<String>>>,
    /// SQLSTATEs of errors, in order.
    pub errors: Vec<String>,
    /// Command tags.
    pub tags: Vec<String>,
    /// ReadyForQuery status.
    pub status: char,
}

/// A raw client that keeps its read buffer between requests.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Every ParameterStatus seen after login, in order.
    pub params: Vec<(String, String)>,
}

impl Raw {
    pub fn new(s: TcpStream) -> Raw {
        Raw {
            s,
            buf: Vec::new(),
            params: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(HANG, self.s.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Reads up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Seen {
        let mut seen = Seen::default();
        let mut chunk = [0u8; 16384];
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let tag = self.buf[0];
                let body: Vec<u8> = self.buf[5..1 + len].to_vec();
                self.buf.drain(..1 + len);
                match tag {
                    b'D' => seen.rows.push(data_row(&body)),
                    b'E' => seen.errors.push(pooler::wire::error_fields(&body).0),
                    b'C' => seen.tags.push(
                        String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body))
                            .into_owned(),
                    ),
                    b'S' => {
                        let mut parts = body.split(|&b| b == 0);
                        let n =
                            String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                        let v =
                            String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                        self.params.push((n, v));
                    }
                    b'Z' => {
                        seen.status = body[0] as char;
                        return seen;
                    }
                    _ => {}
                }
            }
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no ReadyForQuery; so far {seen:?}"))
                .expect("read");
            assert!(n > 0, "connection closed; so far {seen:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A simple query and what it returned.
    pub async fn simple(&mut self, sql: &str) -> Seen {
        self.send(&query(sql)).await;
        self.until_ready().await
    }
}

/// The values of a DataRow body.
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(
                String::from_utf8_lossy(&body[pos..pos + len]).into_owned(),
            ));
            pos += len;
        }
    }
    out
}
