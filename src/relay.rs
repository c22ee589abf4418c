//! The hot path: bytes between a client and its server, in both directions, driven from the
//! client's own task.
//!
//! Whole buffers are forwarded; only the 5-byte message headers are parsed, plus the bodies
//! of the two server messages the pooler acts on (`ReadyForQuery`, `ParameterStatus`). The
//! scanners count the client's sync points (Query, Sync, FunctionCall) against the server's
//! ReadyForQuery replies: a server is released only when every request has been answered,
//! the server says idle, and no partial message is in flight, so a pipelined client can never
//! leave work on a server another client gets.

use bytes::{Buf, BytesMut};
use std::io;
use tokio::net::TcpStream;

use crate::error::{PoolerError, Result};
use crate::protocol::{self, MAX_MESSAGE_LEN};

/// Stop reading a side when this much is buffered for the other: backpressure, bounded memory.
pub const BUFFER_CAP: usize = 64 * 1024;
/// How much room to make before each read.
const READ_CHUNK: usize = 16 * 1024;
/// `ParameterStatus` is read whole; a larger one is not a real server.
const MAX_PARAMETER_STATUS: usize = 64 * 1024;

/// Message boundaries and sync points of the client's stream.
#[derive(Debug, Default, Clone)]
pub struct ClientScan {
    /// Body bytes of the current message not yet scanned.
    remaining: usize,
    /// Sync points sent to the server whose ReadyForQuery has not come back yet.
    pub pending: u32,
    /// Messages since the last sync point that leave state on the server (Parse, Bind, ...).
    unsynced: bool,
    /// The client sent Terminate.
    pub terminated: bool,
    /// Queries (Query and Execute messages) seen; taken by the stats after each relay.
    pub queries: u64,
}

impl ClientScan {
    /// Scans `buf[from..]`; returns how far the buffer may be forwarded. A partial header
    /// stays behind; a Terminate is never forwarded.
    pub fn scan(&mut self, buf: &[u8], from: usize) -> Result<usize> {
        let mut pos = from;
        while !self.terminated {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.len() - pos);
                pos += n;
                self.remaining -= n;
                if self.remaining > 0 {
                    break;
                }
            }
            let Some((tag, len)) = protocol::header(&buf[pos..]) else {
                break;
            };
            if len < 4 || len as usize > MAX_MESSAGE_LEN {
                return Err(PoolerError::protocol(format!(
                    "invalid message length {len} for message type '{}'",
                    tag.escape_ascii()
                )));
            }
            self.queries += u64::from(tag == b'Q' || tag == b'E');
            match tag {
                b'Q' | b'S' | b'F' => {
                    self.pending += 1;
                    self.unsynced = false;
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
                // COPY data belongs to the request that started the COPY; outside one the
                // server ignores it, so it must not look like a clean boundary either.
                b'd' | b'c' | b'f' => self.unsynced |= self.pending == 0,
                b'X' => {
                    self.terminated = true;
                    break;
                }
                other => {
                    return Err(PoolerError::protocol(format!(
                        "invalid frontend message type '{}'",
                        other.escape_ascii()
                    )));
                }
            }
            pos += 5;
            self.remaining = len as usize - 4;
        }
        Ok(pos)
    }

    /// True when every message forwarded so far is complete and answered up to its sync point.
    pub fn at_boundary(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.remaining == 0
    }
}

/// Message boundaries of the server's stream and its last transaction status.
#[derive(Debug, Clone)]
pub struct ServerScan {
    remaining: usize,
    /// Status byte of the last ReadyForQuery: `I` idle, `T` in transaction, `E` failed.
    pub status: u8,
}

impl Default for ServerScan {
    fn default() -> Self {
        ServerScan {
            remaining: 0,
            status: b'I',
        }
    }
}

impl ServerScan {
    /// Scans `buf[from..]`, counting ReadyForQuery against the client's sync points and
    /// reporting ParameterStatus changes. Returns how far the buffer may be forwarded.
    pub fn scan(
        &mut self,
        buf: &[u8],
        from: usize,
        client: &mut ClientScan,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<usize> {
        let mut pos = from;
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.len() - pos);
                pos += n;
                self.remaining -= n;
                if self.remaining > 0 {
                    break;
                }
            }
            let Some((tag, len)) = protocol::header(&buf[pos..]) else {
                break;
            };
            if len < 4 || len as usize > MAX_MESSAGE_LEN {
                return Err(PoolerError::ServerProtocol(format!(
                    "invalid message length {len} from server"
                )));
            }
            let total = 1 + len as usize;
            match tag {
                b'Z' => {
                    if len != 5 {
                        return Err(PoolerError::ServerProtocol("bad ReadyForQuery".into()));
                    }
                    if buf.len() - pos < total {
                        break;
                    }
                    self.status = buf[pos + 5];
                    client.pending = client.pending.saturating_sub(1);
                    pos += total;
                    continue;
                }
                b'S' => {
                    if total > MAX_PARAMETER_STATUS {
                        return Err(PoolerError::ServerProtocol(
                            "oversized ParameterStatus".into(),
                        ));
                    }
                    if buf.len() - pos < total {
                        break;
                    }
                    let mut body = &buf[pos + 5..pos + total];
                    if let (Ok(name), Ok(value)) = (
                        protocol::take_cstr(&mut body),
                        protocol::take_cstr(&mut body),
                    ) {
                        on_param(&name, &value);
                    }
                    pos += total;
                    continue;
                }
                _ => {}
            }
            pos += 5;
            self.remaining = len as usize - 4;
        }
        Ok(pos)
    }

    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }
}

/// Bytes read from one side, scanned up to `ready`, waiting to be written to the other.
#[derive(Debug, Default)]
pub struct Flow {
    pub buf: BytesMut,
    /// `buf[..ready]` is scanned and may be written.
    pub ready: usize,
    /// The last write would have blocked: wait for writability before trying again.
    blocked: bool,
    /// Bytes read into this flow; taken by the stats after each relay.
    pub bytes_read: u64,
}

impl Flow {
    /// Reads what the socket has; `Ok(None)` when it has nothing right now, `Ok(Some(0))` on EOF.
    fn read_from(&mut self, stream: &TcpStream) -> io::Result<Option<usize>> {
        self.buf.reserve(READ_CHUNK);
        match stream.try_read_buf(&mut self.buf) {
            Ok(n) => {
                self.bytes_read += n as u64;
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes as much of the ready part as the socket takes without blocking.
    fn write_to(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.ready > 0 {
            match stream.try_write(&self.buf[..self.ready]) {
                Ok(n) => {
                    self.buf.advance(n);
                    self.ready -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.blocked = false;
        Ok(())
    }

    /// Writes everything that is ready, waiting as needed.
    pub async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        loop {
            self.write_to(stream)?;
            if self.ready == 0 {
                return Ok(());
            }
            stream.writable().await?;
        }
    }

    fn wants_read(&self) -> bool {
        self.buf.len() < BUFFER_CAP || self.ready == 0
    }

    /// Gives the buffer's memory back when nothing is in it: idle clients hold no buffers.
    pub fn shrink_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.ready = 0;
        }
    }
}

/// How a stretch of relaying ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The server is idle at a clean boundary: it may go back to the pool (transaction mode).
    Idle,
    /// The client left (EOF, reset, or Terminate); `server_clean` says the server is idle at a
    /// clean boundary and may be reused.
    ClientGone { server_clean: bool },
    /// The server connection broke.
    ServerGone,
}

/// Both directions of one client/server pairing.
pub struct Relay<'a> {
    pub client: &'a TcpStream,
    pub server: &'a TcpStream,
    /// Client → server.
    pub up: &'a mut Flow,
    /// Server → client.
    pub down: &'a mut Flow,
    pub client_scan: &'a mut ClientScan,
    pub server_scan: &'a mut ServerScan,
}

impl Relay<'_> {
    fn clean(&self) -> bool {
        self.client_scan.at_boundary()
            && self.server_scan.at_boundary()
            && self.server_scan.status == b'I'
    }

    /// Relays until the server is idle at a boundary (`release_on_idle`), or one side leaves.
    /// On `Idle`, bytes for the client may remain in `down`: the caller flushes them after
    /// giving the server back, so the next client does not wait on this one's socket.
    pub async fn run(
        &mut self,
        release_on_idle: bool,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<RelayEnd> {
        let mut client_eof = false;
        loop {
            if self.up.ready > 0 && !self.up.blocked && self.up.write_to(self.server).is_err() {
                return Ok(RelayEnd::ServerGone);
            }
            if self.down.ready > 0 && !self.down.blocked && self.down.write_to(self.client).is_err()
            {
                return Ok(RelayEnd::ClientGone {
                    server_clean: self.clean(),
                });
            }
            if release_on_idle && self.clean() && self.up.ready == 0 {
                return Ok(RelayEnd::Idle);
            }
            if (client_eof || self.client_scan.terminated) && self.up.ready == 0 {
                // Let the server's last replies drain first when the client said goodbye
                // after a complete request; otherwise the server is mid-work: not clean.
                return Ok(RelayEnd::ClientGone {
                    server_clean: self.clean(),
                });
            }
            let read_client = !client_eof && !self.client_scan.terminated && self.up.wants_read();
            let read_server = self.down.wants_read();
            tokio::select! {
                r = self.server.readable(), if read_server => {
                    if r.is_err() {
                        return Ok(RelayEnd::ServerGone);
                    }
                    match self.down.read_from(self.server) {
                        Ok(Some(0)) | Err(_) => return Ok(RelayEnd::ServerGone),
                        Ok(Some(_)) => {
                            let from = self.down.ready;
                            self.down.ready = self.server_scan.scan(&self.down.buf, from, self.client_scan, on_param)?;
                        }
                        Ok(None) => {}
                    }
                }
                r = self.client.readable(), if read_client => {
                    if r.is_err() {
                        client_eof = true;
                        continue;
                    }
                    match self.up.read_from(self.client) {
                        Ok(Some(0)) | Err(_) => client_eof = true,
                        Ok(Some(_)) => {
                            let from = self.up.ready;
                            self.up.ready = self.client_scan.scan(&self.up.buf, from)?;
                        }
                        Ok(None) => {}
                    }
                }
                r = self.server.writable(), if self.up.blocked => {
                    if r.is_err() {
                        return Ok(RelayEnd::ServerGone);
                    }
                    self.up.blocked = false;
                }
                r = self.client.writable(), if self.down.blocked => {
                    if r.is_err() {
                        return Ok(RelayEnd::ClientGone { server_clean: self.clean() });
                    }
                    self.down.blocked = false;
                }
            }
        }
    }
}

/// Reads client bytes while no server is attached, until a complete message header is there
/// (or the client leaves). Returns false on EOF or Terminate.
pub async fn read_request(
    client: &TcpStream,
    up: &mut Flow,
    scan: &mut ClientScan,
) -> Result<bool> {
    loop {
        if scan.terminated {
            return Ok(false);
        }
        if up.ready > 0 {
            return Ok(true);
        }
        client.readable().await?;
        match up.read_from(client) {
            Ok(Some(0)) => return Ok(false),
            Ok(Some(_)) => {
                let from = up.ready;
                up.ready = scan.scan(&up.buf, from)?;
            }
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.put_i32(4 + body.len() as i32);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn pipelined_queries_release_only_after_last_reply() {
        let mut c = ClientScan::default();
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'Q', b"select 2\0"));
        assert_eq!(c.scan(&stream, 0).unwrap(), stream.len());
        assert_eq!(c.pending, 2);
        let mut s = ServerScan::default();
        let mut replies = msg(b'C', b"SELECT 1\0");
        replies.extend(msg(b'Z', b"I"));
        let n = s.scan(&replies, 0, &mut c, &mut |_, _| {}).unwrap();
        assert_eq!(n, replies.len());
        assert!(!c.at_boundary(), "second query still pending");
        s.scan(&msg(b'Z', b"I"), 0, &mut c, &mut |_, _| {}).unwrap();
        assert!(c.at_boundary() && s.status == b'I');
    }

    #[test]
    fn partial_header_is_held_back_and_parse_without_sync_is_not_a_boundary() {
        let mut c = ClientScan::default();
        let p = msg(b'P', b"\0select 1\0\0\0");
        assert_eq!(c.scan(&p[..3], 0).unwrap(), 0);
        assert_eq!(c.scan(&p, 0).unwrap(), p.len());
        assert!(!c.at_boundary());
        let sync = msg(b'S', b"");
        c.scan(&sync, 0).unwrap();
        assert_eq!(c.pending, 1);
    }

    #[test]
    fn ready_for_query_split_across_reads_is_waited_for() {
        let mut c = ClientScan {
            pending: 1,
            ..Default::default()
        };
        let mut s = ServerScan::default();
        let z = msg(b'Z', b"T");
        assert_eq!(s.scan(&z[..5], 0, &mut c, &mut |_, _| {}).unwrap(), 0);
        assert_eq!(s.scan(&z, 0, &mut c, &mut |_, _| {}).unwrap(), 6);
        assert_eq!(s.status, b'T');
    }

    #[test]
    fn bad_lengths_and_tags_are_errors() {
        let mut c = ClientScan::default();
        assert!(c.scan(b"Q\x00\x00\x00\x02", 0).is_err());
        let mut c = ClientScan::default();
        assert!(c.scan(b"Q\x7f\xff\xff\xff", 0).is_err());
        let mut c = ClientScan::default();
        assert!(c.scan(&msg(b'p', b"pw\0"), 0).is_err());
        let mut c = ClientScan::default();
        assert_eq!(c.scan(&msg(b'X', b""), 0).unwrap(), 0);
        assert!(c.terminated);
    }
}
