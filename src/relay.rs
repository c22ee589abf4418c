//! The hot path: bytes between a client and its server, in both directions, driven from the
//! client's own task.
//!
//! Each direction moves bytes from an input buffer to an output buffer, parsing only 5-byte
//! headers, except for the few messages the pooler acts on: `ReadyForQuery`,
//! `ParameterStatus` and `ErrorResponse` from the server; `Parse`, `Bind`, `Describe` and
//! `Close` of named statements from the client, whose names are rewritten in transaction mode
//! (see `prepared.rs`).
//!
//! A `Tracker` queues one entry per request sent to the server that the server will answer,
//! in order, and consumes them as the answers come back. That is what lets the pooler hide
//! the reply to a `Parse` it injected, answer a `Parse` or `Close` it did not forward, and
//! know when every request has been answered: a server is released only then, when it
//! says idle and no partial message is in flight, so a pipelined client can never leave
//! work on a server another client gets.

use bytes::{Buf, BufMut, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::error::{PoolerError, Result};
use crate::prepared::{self, ClientStatements, Registry, ServerCache, ServerStatement};
use crate::protocol::{self, MAX_MESSAGE_LEN};
use crate::registry::ClientInfo;
use crate::session_state::{self, Kind, Policy, Reset};

/// Stop reading a side when this much is waiting for the other: backpressure, bounded memory.
pub const BUFFER_CAP: usize = 64 * 1024;
/// Stop reading a client with this many requests awaiting replies (bounded memory).
const MAX_IN_FLIGHT: usize = 8192;
/// How much room to make before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Messages the pooler reads whole (Parse, Describe, Close, ParameterStatus,
/// ErrorResponse) are refused above this size: no real client or server sends such.
const MAX_INSPECTED: usize = 16 * 1024 * 1024;

/// The reply that completes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// Sync: answered by ReadyForQuery; ends the server's skipping after an error.
    Sync,
    /// Query, FunctionCall: answered by ReadyForQuery, but ignored (no reply at all) by a
    /// server skipping to the next Sync after an extended-protocol error.
    Query,
}

impl Request {
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Request::Parse => tag == b'1',
            Request::Bind => tag == b'2',
            Request::Close => tag == b'3',
            Request::Describe => tag == b'T' || tag == b'n',
            Request::Execute => matches!(tag, b'C' | b'I' | b's'),
            Request::Sync | Request::Query => tag == b'Z',
        }
    }
}

#[derive(Debug)]
enum Expect {
    /// A request whose replies go to the client. The statement, for Parse/Bind/Describe of a
    /// pooler-managed statement: a failure may mean the server does not have it.
    Pass(Request, Option<Arc<ServerStatement>>),
    /// A request the pooler injected: its replies are not the client's.
    Hide(Request, Option<Arc<ServerStatement>>),
    /// A request the pooler answered itself: this reply goes to the client in its turn.
    Synth(u8),
    /// An error the pooler raised itself (a complete ErrorResponse), in its turn; the client's
    /// messages after it up to Sync are dropped, as Postgres skips them.
    SynthError(Box<[u8]>),
    /// The client's Parse of a named statement: ParseComplete from the server (`forwarded`)
    /// or from the pooler. Should the server skip it after an earlier error, the client's
    /// name must not exist either (see `Tracker::unprepared`).
    Prepared {
        name: Box<str>,
        stmt: Arc<ServerStatement>,
        forwarded: bool,
    },
    /// The client ended a COPY IN (CopyDone/CopyFail): Syncs before it, sent while the server
    /// was copying, are ignored by the server and get no reply.
    CopyEnd,
    /// A simple query the pooler injected (restoring startup parameters after a `RESET`):
    /// every reply up to its ReadyForQuery is hidden, except ParameterStatus, which tells the
    /// client its parameters' values as on a dedicated connection.
    HideQuery,
}

/// The requests in flight on the server, oldest first.
#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// The server hit an error in an extended-protocol batch and discards everything up to
    /// the next Sync; requests sent meanwhile get no reply.
    skipping: bool,
    /// The server is in COPY IN mode and the client has not ended it: Syncs are ignored.
    in_copy_in: bool,
    /// Client statement names whose Parse failed or was skipped, with the statement each was
    /// to name: the client side forgets them before it looks at another name.
    unprepared: Vec<(Box<str>, u64)>,
}

impl Tracker {
    fn push(&mut self, e: Expect) {
        let is_sync = matches!(e, Expect::Pass(Request::Sync, _));
        // While skipping, the server ignores everything but Sync (queries included).
        if (self.skipping && !is_sync) || (self.in_copy_in && is_sync) {
            return;
        }
        if is_sync {
            self.skipping = false;
        }
        self.queue.push_back(e);
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Forgets the client's names whose Parse did not happen on the server.
    pub fn drain_unprepared(&mut self, client: &mut ClientStatements) {
        for (name, id) in self.unprepared.drain(..) {
            if client.get(&*name).is_some_and(|s| s.id == id) {
                client.remove(&*name);
            }
        }
    }

    /// The client sent CopyDone or CopyFail.
    fn copy_end(&mut self) {
        if self.in_copy_in {
            self.in_copy_in = false;
        } else if !self.queue.is_empty() {
            self.queue.push_back(Expect::CopyEnd);
        }
    }

    /// CopyInResponse: until the client's CopyDone/CopyFail the server ignores Syncs, so
    /// the ones the client already sent in that stretch will get no reply.
    fn on_copy_in(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                Expect::Pass(Request::Sync, _) => {
                    self.queue.remove(i);
                }
                _ => i += 1,
            }
        }
        self.in_copy_in = true;
    }

    /// Drops CopyEnd markers that reached the head: their COPY never started.
    fn drop_stale_markers(&mut self) {
        while matches!(self.queue.front(), Some(Expect::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    /// Emits replies the pooler owes the client, once everything before them is answered.
    fn emit_synthetic(&mut self, out: &mut BytesMut) {
        self.drop_stale_markers();
        loop {
            match self.queue.front() {
                Some(Expect::Synth(tag)) => {
                    out.put_u8(*tag);
                    out.put_i32(4);
                }
                Some(Expect::Prepared {
                    forwarded: false, ..
                }) => {
                    out.put_slice(&[b'1', 0, 0, 0, 4]);
                }
                Some(Expect::SynthError(msg)) => out.put_slice(msg),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// A reply arrived: returns true when it must be hidden from the client.
    fn on_reply(&mut self, tag: u8) -> bool {
        self.drop_stale_markers();
        match self.queue.front() {
            Some(Expect::HideQuery) => true,
            Some(Expect::Pass(r, _)) if r.completed_by(tag) => {
                self.queue.pop_front();
                false
            }
            Some(Expect::Hide(r, _)) if r.completed_by(tag) => {
                self.queue.pop_front();
                true
            }
            Some(Expect::Prepared {
                forwarded: true, ..
            }) if tag == b'1' => {
                self.queue.pop_front();
                false
            }
            _ => false,
        }
    }

    /// ReadyForQuery: the oldest sync point is answered (and anything still before it was
    /// skipped by the server).
    /// Returns true when the ReadyForQuery ends a query the pooler injected (hidden).
    fn on_ready(&mut self, cache: &mut Option<&mut ServerCache>) -> bool {
        self.drop_stale_markers();
        if matches!(self.queue.front(), Some(Expect::HideQuery)) {
            self.queue.pop_front();
            return true;
        }
        while let Some(e) = self.queue.pop_front() {
            if matches!(e, Expect::Pass(Request::Sync | Request::Query, _)) {
                return false;
            }
            self.forget_unprepared(&e, cache);
        }
        false
    }

    /// ErrorResponse: in an extended batch the failing request and everything up to the next
    /// Sync get no further reply. Returns the statement the failing request used, if any.
    fn on_error(&mut self, cache: &mut Option<&mut ServerCache>) -> ErrorFate {
        // An error ends COPY IN mode; the server then skips to the next Sync.
        self.in_copy_in = false;
        self.drop_stale_markers();
        match self.queue.front() {
            // A Sync's or a query's own error: no skipping follows.
            None | Some(Expect::Pass(Request::Sync | Request::Query, _)) => {
                return ErrorFate::Pass(None);
            }
            // The pooler's own query failed: the client never asked for it.
            Some(Expect::HideQuery) => return ErrorFate::Hide,
            _ => {}
        }
        let failed = self.queue.pop_front();
        let stmt = match &failed {
            Some(Expect::Pass(Request::Bind | Request::Describe, s)) => s.clone(),
            _ => None,
        };
        if let Some(e) = &failed {
            self.forget_unprepared(e, cache);
        }
        while let Some(e) = self.queue.front() {
            if matches!(e, Expect::Pass(Request::Sync, _)) {
                return ErrorFate::Pass(stmt);
            }
            let e = self.queue.pop_front().expect("front exists");
            self.forget_unprepared(&e, cache);
        }
        self.skipping = true;
        ErrorFate::Pass(stmt)
    }
}

/// What becomes of an ErrorResponse.
enum ErrorFate {
    /// It goes to the client; the statement the failing request used, if any.
    Pass(Option<Arc<ServerStatement>>),
    /// It answers a query the pooler injected.
    Hide,
}

impl Tracker {
    /// A Parse that failed or was skipped did not prepare its statement on the server, nor
    /// the client's name for it.
    fn forget_unprepared(&mut self, e: &Expect, cache: &mut Option<&mut ServerCache>) {
        let (stmt, on_server) = match e {
            Expect::Hide(Request::Parse, Some(s)) => (s, true),
            Expect::Prepared {
                name,
                stmt,
                forwarded,
            } => {
                self.unprepared.push((name.clone(), stmt.id));
                (stmt, *forwarded)
            }
            _ => return,
        };
        if on_server && let Some(c) = cache.as_deref_mut() {
            c.remove(stmt.id);
        }
    }
}

/// What the relay needs to rewrite statement names (transaction mode only).
pub struct Statements<'a> {
    pub registry: &'a Registry,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerCache,
    pub max: usize,
}

/// One direction's buffers.
#[derive(Debug, Default)]
pub struct Flow {
    /// Read from the source, not yet processed.
    pub inbuf: BytesMut,
    /// Processed, to be written to the destination.
    pub out: BytesMut,
    /// Bytes of the current message still to move (or drop) as they arrive.
    remaining: usize,
    /// The current message is being dropped rather than moved.
    dropping: bool,
    /// The last write would have blocked: wait for writability before trying again.
    blocked: bool,
    /// Bytes read from the source since the statistics last took them.
    pub bytes_read: u64,
}

impl Flow {
    /// Reads what the socket has; `Ok(None)` when it has nothing right now, `Ok(Some(0))` on EOF.
    ///
    /// A read that did not fill the buffer drained the socket, so its readiness is cleared
    /// at once (as tokio's own `poll_read` does): otherwise the next wait would return at
    /// once and cost a read that only says "would block" — two wasted syscalls per
    /// transaction. Data arriving later raises a new readiness event, which tokio keeps.
    fn read_from(&mut self, stream: &TcpStream) -> io::Result<Option<usize>> {
        if self.inbuf.capacity() == 0 {
            self.inbuf = spare_buffers::take();
        }
        self.inbuf.reserve(READ_CHUNK);
        let spare = self.inbuf.capacity() - self.inbuf.len();
        let mut got = 0;
        let result = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = stream.try_read_buf(&mut self.inbuf)?;
            got = n;
            if n > 0 && n < spare {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match result {
            Ok(n) => {
                self.bytes_read += n as u64;
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                self.bytes_read += got as u64;
                Ok(Some(got))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes as much as the socket takes without blocking.
    fn write_to(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.out.is_empty() {
            match stream.try_write(&self.out) {
                Ok(n) => self.out.advance(n),
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

    /// Writes everything processed, waiting as needed.
    pub async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        loop {
            self.write_to(stream)?;
            if self.out.is_empty() {
                return Ok(());
            }
            stream.writable().await?;
        }
    }

    fn wants_read(&self) -> bool {
        self.out.len() < BUFFER_CAP && self.inbuf.len() < BUFFER_CAP + MAX_INSPECTED
    }

    /// True between messages with nothing half-moved.
    fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Moves (or drops) the rest of the current message as far as it has arrived.
    /// Returns false while more of it is still to come.
    fn continue_message(&mut self) -> bool {
        if self.remaining == 0 {
            return true;
        }
        let n = self.remaining.min(self.inbuf.len());
        if self.dropping {
            self.inbuf.advance(n);
        } else {
            self.out.extend_from_slice(&self.inbuf[..n]);
            self.inbuf.advance(n);
        }
        self.remaining -= n;
        if self.remaining == 0 {
            self.dropping = false;
        }
        self.remaining == 0
    }

    /// Starts moving a message of `total` bytes; the part not yet read follows later.
    fn pass(&mut self, total: usize, drop_it: bool) {
        self.remaining = total;
        self.dropping = drop_it;
        self.continue_message();
    }

    /// Gives the buffers' memory back when they are empty: idle clients hold no buffers.
    pub fn shrink_if_empty(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.inbuf));
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.out));
        }
    }

    /// Gives `out` a buffer from the cache before anything is written to it.
    fn ready_out(&mut self) {
        if self.out.capacity() == 0 {
            self.out = spare_buffers::take();
        }
    }
}

/// Buffers of idle clients, kept per worker thread for the next active one: idle clients hold
/// no buffer, yet a busy client does not pay a malloc/free pair per transaction for them.
mod spare_buffers {
    use super::READ_CHUNK;
    use bytes::BytesMut;
    use std::cell::RefCell;

    /// Enough for the clients one worker switches between; beyond it, memory goes back.
    const KEEP: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> BytesMut {
        SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
    }

    pub(super) fn give(mut buf: BytesMut) {
        buf.clear();
        // Buffers grown by a large message are not worth keeping around.
        if buf.capacity() < READ_CHUNK || buf.capacity() > 4 * READ_CHUNK {
            return;
        }
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(buf);
            }
        });
    }
}

fn header(buf: &[u8], from_server: bool) -> Result<Option<(u8, usize)>> {
    let Some((tag, len)) = protocol::header(buf) else {
        return Ok(None);
    };
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        let msg = format!(
            "invalid message length {len} for message type '{}'",
            tag.escape_ascii()
        );
        return Err(if from_server {
            PoolerError::ServerProtocol(msg)
        } else {
            PoolerError::Protocol(msg)
        });
    }
    Ok(Some((tag, 1 + len as usize)))
}

fn cstr_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|&b| b == 0)
        .map(|p| from + p)
}

/// Every message type a client may send after login.
const FRONTEND_TAGS: &[u8] = b"QFSHEdcfPDCBX";

fn invalid_type(tag: u8) -> PoolerError {
    PoolerError::protocol(format!(
        "invalid frontend message type '{}'",
        tag.escape_ascii()
    ))
}

fn malformed(what: &str) -> PoolerError {
    PoolerError::protocol(format!("malformed {what} message"))
}

/// Client → server state.
#[derive(Default)]
pub struct ClientSide {
    /// Messages since the last sync point that leave state on the server (Parse, Bind, ...).
    unsynced: bool,
    /// The client sent Terminate.
    pub terminated: bool,
    /// Simple and extended queries seen (for statistics).
    pub queries: u64,
    /// Session-state detection (transaction mode only).
    pub policy: Option<Policy>,
    /// The client created session state under `pin`: it keeps its server from now on.
    pub pinned: Option<Kind>,
    /// Where a pin is made visible (SHOW CLIENTS, metrics).
    pub info: Option<Arc<ClientInfo>>,
    /// Session-state statements let through under `warn`, and refused under `error`.
    pub warned: u64,
    pub refused: u64,
    /// The client's startup values of tracked parameters: what `RESET` returns to on a
    /// dedicated connection. The server's own defaults are the pool's, so after a `RESET` the
    /// pooler sets these again (a hidden query after the sync point).
    pub startup: Vec<(String, String)>,
    /// Bit i: `startup[i]` was reset since the last sync point and must be set again.
    restore: u64,
    /// The pooler refused a message of the current batch: the rest up to Sync is dropped.
    discarding: bool,
    /// A `RESET` ran on the server: the session re-checks every tracked parameter of this
    /// server before it serves the next client (what the pooler recorded may be stale).
    pub params_touched: bool,
}

impl ClientSide {
    /// Processes the client's input into `up.out`, rewriting statement names when `stmts` is
    /// given. Stops at a partial message it must see whole.
    pub fn process(
        &mut self,
        up: &mut Flow,
        tracker: &mut Tracker,
        mut stmts: Option<&mut Statements<'_>>,
    ) -> Result<()> {
        up.ready_out();
        loop {
            if !up.continue_message() || self.terminated {
                return Ok(());
            }
            if let Some(s) = stmts.as_deref_mut() {
                tracker.drain_unprepared(s.client);
                // Statements whose plans went stale are closed before anything else.
                while let Some(stale) = s.server.to_close.pop() {
                    prepared::close_message(&mut up.out, &stale);
                    tracker.push(Expect::Hide(Request::Close, None));
                }
            }
            let Some((tag, total)) = header(&up.inbuf, false)? else {
                return Ok(());
            };
            if self.discarding && tag != b'S' && tag != b'X' {
                if !FRONTEND_TAGS.contains(&tag) {
                    return Err(invalid_type(tag));
                }
                up.pass(total, true);
                continue;
            }
            self.discarding = false;
            match tag {
                b'Q' if self.reads_text(stmts.is_some()) && total <= MAX_INSPECTED => {
                    if up.inbuf.len() < total {
                        return Ok(());
                    }
                    self.queries += 1;
                    self.unsynced = false;
                    tracker.push(Expect::Pass(Request::Query, None));
                    if self.needs_inspection()
                        && let Some(kind) = session_state::detect(&up.inbuf[5..total])
                        && self.on_session_state(kind)? == Policy::Error
                    {
                        up.inbuf.advance(total);
                        refusal_query(&mut up.out, kind);
                        continue;
                    }
                    // The text without its terminator (absent from a malformed empty Query).
                    let text_end = total - usize::from(total > 5 && up.inbuf[total - 1] == 0);
                    match self.on_resets(&up.inbuf[5..text_end], stmts.as_deref_mut(), true) {
                        Some(stmt) => {
                            // `DEALLOCATE name` of a protocol-level statement: the server
                            // knows it by the pooler's name.
                            up.inbuf.advance(total);
                            let sql = format!("DEALLOCATE \"{}\"", stmt.name);
                            protocol::query(&mut up.out, &sql);
                        }
                        None => up.pass(total, false),
                    }
                    self.restore_after_sync(&mut up.out, tracker);
                }
                b'Q' | b'F' => {
                    if tag == b'Q' && self.reads_text(stmts.is_some()) {
                        // Larger than MAX_INSPECTED: streamed unread.
                        self.unread_text()?;
                    }
                    self.queries += u64::from(tag == b'Q');
                    self.unsynced = false;
                    tracker.push(Expect::Pass(Request::Query, None));
                    up.pass(total, false);
                }
                b'S' => {
                    self.unsynced = false;
                    tracker.push(Expect::Pass(Request::Sync, None));
                    up.pass(total, false);
                    self.restore_after_sync(&mut up.out, tracker);
                }
                b'H' => {
                    self.unsynced = true;
                    up.pass(total, false);
                }
                b'E' => {
                    self.queries += 1;
                    self.unsynced = true;
                    tracker.push(Expect::Pass(Request::Execute, None));
                    up.pass(total, false);
                }
                // COPY data belongs to the request that started the COPY; outside one the
                // server ignores it, so it must not look like a clean boundary either.
                b'd' | b'c' | b'f' => {
                    self.unsynced |= tracker.is_idle();
                    if tag != b'd' {
                        tracker.copy_end();
                    }
                    up.pass(total, false);
                }
                b'P' if total > MAX_INSPECTED => {
                    // Too large to keep whole. Only the name is needed: an unnamed Parse
                    // streams through, its text unread (so, to be safe, it pins); a named one
                    // would have to be kept to be prepared again elsewhere: refused.
                    let Some(&first) = up.inbuf.get(5) else {
                        return Ok(());
                    };
                    if first != 0 && stmts.is_some() {
                        return Err(PoolerError::StatementTooLarge(MAX_INSPECTED >> 20));
                    }
                    self.unsynced = true;
                    self.unread_text()?;
                    tracker.push(Expect::Pass(Request::Parse, None));
                    up.pass(total, false);
                }
                b'P' | b'D' | b'C' => {
                    if total > MAX_INSPECTED {
                        return Err(PoolerError::protocol("oversized extended-protocol message"));
                    }
                    if up.inbuf.len() < total {
                        return Ok(());
                    }
                    self.unsynced = true;
                    if tag == b'P' && self.reads_text(stmts.is_some()) {
                        let name_end =
                            cstr_end(&up.inbuf[..total], 5).ok_or_else(|| malformed("Parse"))?;
                        let query_end = cstr_end(&up.inbuf[..total], name_end + 1)
                            .ok_or_else(|| malformed("Parse"))?;
                        if self.needs_inspection()
                            && let Some(kind) =
                                session_state::detect(&up.inbuf[name_end + 1..query_end])
                            && self.on_session_state(kind)? == Policy::Error
                        {
                            // Mid-pipeline there is no clean way to refuse one message.
                            return Err(PoolerError::SessionState(kind.as_str()));
                        }
                        let unnamed = name_end == 5;
                        if let Some(stmt) = self.on_resets(
                            &up.inbuf[name_end + 1..query_end],
                            stmts.as_deref_mut(),
                            unnamed,
                        ) {
                            // An unnamed `DEALLOCATE name`: the same Parse with the
                            // pooler's name in the text, parameter types unchanged.
                            let sql = format!("DEALLOCATE \"{}\"", stmt.name);
                            let rest = &up.inbuf[query_end + 1..total];
                            up.out.put_u8(b'P');
                            up.out.put_i32((4 + 1 + sql.len() + 1 + rest.len()) as i32);
                            up.out.put_u8(0);
                            up.out.put_slice(sql.as_bytes());
                            up.out.put_u8(0);
                            up.out.put_slice(rest);
                            up.inbuf.advance(total);
                            tracker.push(Expect::Pass(Request::Parse, None));
                            continue;
                        }
                    }
                    match tag {
                        b'P' => {
                            // Refused by the pooler: like Postgres after an error, the rest
                            // of the batch up to Sync is skipped.
                            self.discarding = parse(up, total, tracker, stmts.as_deref_mut())?;
                        }
                        b'D' => describe(up, total, tracker, stmts.as_deref_mut())?,
                        _ => close(up, total, tracker, stmts.as_deref_mut())?,
                    }
                }
                b'B' => {
                    self.unsynced = true;
                    // Only the portal and statement names (the start) are needed whole.
                    let Some(portal_end) = cstr_end(&up.inbuf[..up.inbuf.len().min(total)], 5)
                    else {
                        if up.inbuf.len() >= total.min(5 + MAX_INSPECTED) {
                            return Err(malformed("Bind"));
                        }
                        return Ok(());
                    };
                    let Some(stmt_end) =
                        cstr_end(&up.inbuf[..up.inbuf.len().min(total)], portal_end + 1)
                    else {
                        if up.inbuf.len() >= total.min(5 + MAX_INSPECTED) {
                            return Err(malformed("Bind"));
                        }
                        return Ok(());
                    };
                    bind(
                        up,
                        total,
                        portal_end,
                        stmt_end,
                        tracker,
                        stmts.as_deref_mut(),
                    );
                }
                b'X' => {
                    self.terminated = true;
                    up.inbuf.advance(total.min(up.inbuf.len()));
                    return Ok(());
                }
                other => return Err(invalid_type(other)),
            }
        }
    }

    /// `policy`: session-state detection, for transaction mode.
    pub fn new(policy: Option<Policy>, info: Option<Arc<ClientInfo>>) -> ClientSide {
        ClientSide {
            policy,
            info,
            ..Default::default()
        }
    }

    fn needs_inspection(&self) -> bool {
        self.policy.is_some() && self.pinned.is_none()
    }

    /// A query text too large to read passes unread: it may create session state (pinned,
    /// the safe side) or reset parameters (re-checked at the next checkout).
    fn unread_text(&mut self) -> Result<()> {
        self.params_touched = true;
        if self.needs_inspection() && self.on_session_state(Kind::Unclassified)? == Policy::Error {
            return Err(PoolerError::SessionState(Kind::Unclassified.as_str()));
        }
        Ok(())
    }

    /// Whether query texts are read at all: for session-state detection, and for the resets
    /// the pooler must follow (startup parameters to restore, statement names it rewrites).
    fn reads_text(&self, rewriting: bool) -> bool {
        self.needs_inspection() || rewriting || !self.startup.is_empty()
    }

    /// Follows the resets in a query text. Statements deallocated go from the client's names
    /// and, since the server loses them for every client, from the server's cache; reset
    /// parameters are queued for restoring. Returns the statement to deallocate under its
    /// server name when `sql` is exactly `DEALLOCATE name` of a protocol-level statement
    /// and `rewritable`.
    fn on_resets(
        &mut self,
        sql: &[u8],
        mut stmts: Option<&mut Statements<'_>>,
        rewritable: bool,
    ) -> Option<Arc<ServerStatement>> {
        let mut count = 0usize;
        let mut target = None;
        let startup = &self.startup;
        let mut restore = 0u64;
        let mut touched = false;
        session_state::resets(sql, |r| {
            count += 1;
            match r {
                Reset::AllParams => {
                    touched = true;
                    restore = u64::MAX;
                }
                Reset::Param(word) => {
                    touched = true;
                    let name = session_state::identifier(word);
                    if let Some(i) = startup
                        .iter()
                        .position(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        restore |= 1u64.checked_shl(i as u32).unwrap_or(u64::MAX);
                    }
                }
                Reset::AllStatements => {
                    if let Some(s) = stmts.as_deref_mut() {
                        s.client.clear();
                        s.server.clear();
                    }
                }
                Reset::Statement(word) => {
                    let name = session_state::identifier(word);
                    if let Some(s) = stmts.as_deref_mut()
                        && let Some(stmt) = s.client.remove(&name)
                    {
                        s.server.remove(stmt.id);
                        target = Some(stmt);
                    }
                }
            }
        });
        self.restore |= restore;
        self.params_touched |= touched;
        // Only a query that is nothing but the DEALLOCATE can be replaced whole.
        let single = count == 1 && {
            let trimmed = sql.trim_ascii();
            let body = trimmed.strip_suffix(b";").unwrap_or(trimmed);
            !body.contains(&b';')
        };
        target.filter(|_| single && rewritable)
    }

    /// After a sync point, sets again the startup parameters a RESET took back: one hidden
    /// query, only when a RESET was seen. It changes only parameters that are at the server's
    /// own reset value now, so a RESET that did not happen (rolled back, failed) changes
    /// nothing, and inside a transaction the fix shares the transaction's fate.
    fn restore_after_sync(&mut self, out: &mut BytesMut, tracker: &mut Tracker) {
        if self.restore == 0 {
            return;
        }
        let mut values = String::new();
        let mut any = false;
        for (i, (name, value)) in self.startup.iter().enumerate() {
            let bit = 1u64.checked_shl(i as u32).unwrap_or(0);
            if self.restore & bit == 0 && !(i >= 64 && self.restore == u64::MAX) {
                continue;
            }
            if any {
                values.push_str(", ");
            }
            any = true;
            values.push_str(&format!(
                "({}, {})",
                protocol::quote_literal(&name.to_ascii_lowercase()),
                protocol::quote_literal(value)
            ));
        }
        let sql = format!(
            "SELECT pg_catalog.set_config(s.name, v.value, false) \
             FROM pg_catalog.pg_settings s JOIN (VALUES {values}) AS v(name, value) \
             ON pg_catalog.lower(s.name) = v.name WHERE s.setting IS NOT DISTINCT FROM s.reset_val"
        );
        self.restore = 0;
        if any {
            protocol::query(out, &sql);
            tracker.push(Expect::HideQuery);
        }
    }

    /// Applies the policy to a detected statement; returns the policy applied.
    fn on_session_state(&mut self, kind: Kind) -> Result<Policy> {
        let policy = self.policy.unwrap_or_default();
        match policy {
            Policy::Pin => {
                tracing::info!(
                    kind = kind.as_str(),
                    "client creates session state: pinned to its server"
                );
                self.pinned = Some(kind);
                if let Some(info) = &self.info {
                    info.mark_pinned(kind);
                }
            }
            Policy::Warn => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "client creates session state in transaction pooling"
                );
                self.warned += 1;
            }
            Policy::Error => self.refused += 1,
        }
        Ok(policy)
    }

    /// True when everything forwarded is a complete request up to a sync point.
    pub fn at_boundary(&self, up: &Flow) -> bool {
        !self.unsynced && up.at_boundary()
    }
}

/// A query that makes the server itself refuse the client's statement, so the error arrives
/// in order and a transaction block fails exactly as it would on any error.
fn refusal_query(out: &mut BytesMut, kind: Kind) {
    let message = PoolerError::SessionState(kind.as_str()).to_string();
    let sql = format!(
        "DO $pooler$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}; END$pooler$",
        protocol::quote_literal(&message)
    );
    protocol::query(out, &sql);
}

/// Makes sure the server has `stmt`, injecting its Parse (reply hidden) when it does not.
fn ensure_prepared(
    stmt: &Arc<ServerStatement>,
    s: &mut Statements<'_>,
    tracker: &mut Tracker,
    out: &mut BytesMut,
) {
    if tracker.skipping || s.server.contains(stmt.id) {
        return;
    }
    make_room(s, tracker, out);
    close_then_parse(out, stmt, tracker);
    s.server.insert(stmt);
    tracker.push(Expect::Hide(Request::Parse, Some(stmt.clone())));
}

/// Writes the Parse of a pooler statement, preceded by a hidden Close of its name. Closing a
/// statement that does not exist is no error, and it makes the Parse succeed even where the
/// cache is wrong about the server (a Close that Postgres skipped after an error, a
/// `DEALLOCATE ALL` that failed): `42P05 already exists` cannot happen.
fn close_then_parse(out: &mut BytesMut, stmt: &ServerStatement, tracker: &mut Tracker) {
    prepared::close_message(out, stmt);
    tracker.push(Expect::Hide(Request::Close, None));
    out.extend_from_slice(&stmt.parse);
}

/// Evicts the least recently used statement (with a hidden Close) when the cache is full.
fn make_room(s: &mut Statements<'_>, tracker: &mut Tracker, out: &mut BytesMut) {
    if let Some(old) = s.server.evict_for(s.max) {
        prepared::close_message(out, &old);
        tracker.push(Expect::Hide(Request::Close, None));
    }
}

fn parse(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<bool> {
    let name_end = cstr_end(&up.inbuf[..total], 5).ok_or_else(|| malformed("Parse"))?;
    let (Some(s), false) = (stmts, name_end == 5) else {
        tracker.push(Expect::Pass(Request::Parse, None));
        up.pass(total, false);
        return Ok(false);
    };
    let name = std::str::from_utf8(&up.inbuf[5..name_end]).map_err(|_| malformed("Parse"))?;
    if tracker.skipping {
        // Skipped by Postgres too: nothing is prepared.
        up.inbuf.advance(total);
        return Ok(false);
    }
    if s.client.contains_key(name) {
        // As Postgres: a name is not silently replaced.
        let mut err = BytesMut::new();
        protocol::error_response(
            &mut err,
            "ERROR",
            "42P05",
            &format!("prepared statement \"{name}\" already exists"),
        );
        up.inbuf.advance(total);
        tracker.push(Expect::SynthError(err.to_vec().into_boxed_slice()));
        return Ok(true);
    }
    let name: Box<str> = name.into();
    let stmt = s.registry.statement(&up.inbuf[name_end + 1..total]);
    up.inbuf.advance(total);
    s.client.insert(name.to_string(), stmt.clone());
    let forwarded = !s.server.contains(stmt.id);
    if forwarded {
        make_room(s, tracker, &mut up.out);
        close_then_parse(&mut up.out, &stmt, tracker);
        s.server.insert(&stmt);
    }
    tracker.push(Expect::Prepared {
        name,
        stmt,
        forwarded,
    });
    Ok(false)
}

/// Writes a Describe or Close of a server statement.
fn put_named(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

fn describe(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<()> {
    let kind = *up.inbuf.get(5).ok_or_else(|| malformed("Describe"))?;
    let name_end = cstr_end(&up.inbuf[..total], 6).ok_or_else(|| malformed("Describe"))?;
    let known = match stmts {
        Some(s) if kind == b'S' && name_end > 6 => {
            let name = &up.inbuf[6..name_end];
            let found = std::str::from_utf8(name)
                .ok()
                .and_then(|n| s.client.get(n))
                .cloned();
            found.map(|stmt| (stmt, s))
        }
        _ => None,
    };
    match known {
        Some((stmt, s)) => {
            up.inbuf.advance(total);
            ensure_prepared(&stmt, s, tracker, &mut up.out);
            put_named(&mut up.out, b'D', b'S', &stmt.name);
            tracker.push(Expect::Pass(Request::Describe, Some(stmt)));
        }
        None => {
            tracker.push(Expect::Pass(Request::Describe, None));
            up.pass(total, false);
        }
    }
    Ok(())
}

fn close(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<()> {
    let kind = *up.inbuf.get(5).ok_or_else(|| malformed("Close"))?;
    let name_end = cstr_end(&up.inbuf[..total], 6).ok_or_else(|| malformed("Close"))?;
    match stmts {
        Some(s) if kind == b'S' && name_end > 6 => {
            // The server keeps the statement for other clients; the client's name goes.
            if !tracker.skipping {
                if let Ok(name) = std::str::from_utf8(&up.inbuf[6..name_end]) {
                    s.client.remove(name);
                }
                tracker.push(Expect::Synth(b'3'));
            }
            up.inbuf.advance(total);
        }
        _ => {
            tracker.push(Expect::Pass(Request::Close, None));
            up.pass(total, false);
        }
    }
    Ok(())
}

fn bind(
    up: &mut Flow,
    total: usize,
    portal_end: usize,
    stmt_end: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) {
    let known = match stmts {
        Some(s) if stmt_end > portal_end + 1 => {
            let found = std::str::from_utf8(&up.inbuf[portal_end + 1..stmt_end])
                .ok()
                .and_then(|n| s.client.get(n))
                .cloned();
            found.map(|stmt| (stmt, s))
        }
        _ => None,
    };
    let Some((stmt, s)) = known else {
        // Unnamed, session mode, or a name the client never prepared (the server says so).
        tracker.push(Expect::Pass(Request::Bind, None));
        up.pass(total, false);
        return;
    };
    ensure_prepared(&stmt, s, tracker, &mut up.out);
    let old_name_len = stmt_end - portal_end - 1;
    let new_total = total - old_name_len + stmt.name.len();
    up.out.put_u8(b'B');
    up.out.put_i32((new_total - 1) as i32);
    up.out.extend_from_slice(&up.inbuf[5..=portal_end]);
    up.out.put_slice(stmt.name.as_bytes());
    up.out.put_u8(0);
    up.inbuf.advance(stmt_end + 1);
    tracker.push(Expect::Pass(Request::Bind, Some(stmt)));
    // The parameters follow unchanged, however large.
    up.pass(total - stmt_end - 1, false);
}

/// Server → client state.
#[derive(Debug, Clone)]
pub struct ServerSide {
    /// Status byte of the last ReadyForQuery: `I` idle, `T` in transaction, `E` failed.
    pub status: u8,
}

impl Default for ServerSide {
    fn default() -> Self {
        ServerSide { status: b'I' }
    }
}

/// The SQLSTATE Postgres uses when DDL changed a prepared statement's result type.
const CACHED_PLAN_CHANGED: &[u8] = b"0A000";

impl ServerSide {
    /// Processes the server's input into `down.out`.
    pub fn process(
        &mut self,
        down: &mut Flow,
        tracker: &mut Tracker,
        mut cache: Option<&mut ServerCache>,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<()> {
        down.ready_out();
        loop {
            if !down.continue_message() {
                return Ok(());
            }
            tracker.emit_synthetic(&mut down.out);
            let Some((tag, total)) = header(&down.inbuf, true)? else {
                return Ok(());
            };
            match tag {
                b'Z' => {
                    if total != 6 {
                        return Err(PoolerError::ServerProtocol("bad ReadyForQuery".into()));
                    }
                    if down.inbuf.len() < total {
                        return Ok(());
                    }
                    self.status = down.inbuf[5];
                    let hide = tracker.on_ready(&mut cache);
                    down.pass(total, hide);
                }
                b'S' | b'E' if total > MAX_INSPECTED => {
                    // Too large to read whole (an error quoting a huge input): streamed. Its
                    // place in the request flow is all that matters; the fields go unread.
                    let hide =
                        tag == b'E' && matches!(tracker.on_error(&mut cache), ErrorFate::Hide);
                    down.pass(total, hide);
                }
                b'S' | b'E' => {
                    if down.inbuf.len() < total {
                        return Ok(());
                    }
                    let mut hide = false;
                    if tag == b'S' {
                        let mut body = &down.inbuf[5..total];
                        if let (Ok(name), Ok(value)) = (
                            protocol::take_cstr(&mut body),
                            protocol::take_cstr(&mut body),
                        ) {
                            on_param(&name, &value);
                        }
                    } else {
                        match tracker.on_error(&mut cache) {
                            ErrorFate::Hide => {
                                hide = true;
                                tracing::warn!(
                                    "restoring startup parameters after RESET failed: {}",
                                    protocol::error_fields(&down.inbuf[5..total]).1
                                );
                            }
                            ErrorFate::Pass(Some(stmt))
                                if error_code_is(&down.inbuf[5..total], CACHED_PLAN_CHANGED) =>
                            {
                                // DDL changed the result type: re-prepare it next time it is used.
                                if let Some(c) = cache.as_deref_mut() {
                                    c.remove(stmt.id);
                                    c.to_close.push(stmt);
                                }
                            }
                            ErrorFate::Pass(_) => {}
                        }
                    }
                    down.pass(total, hide);
                }
                _ => {
                    if tag == b'G' {
                        tracker.on_copy_in();
                    }
                    let hide = tracker.on_reply(tag);
                    down.pass(total, hide);
                }
            }
        }
    }
}

fn error_code_is(mut body: &[u8], code: &[u8]) -> bool {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return false;
        }
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return false;
        };
        if field == b'C' {
            return &rest[..end] == code;
        }
        body = &rest[end + 1..];
    }
    false
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
pub struct Relay<'a, 's> {
    pub client: &'a TcpStream,
    pub server: &'a TcpStream,
    /// Client → server.
    pub up: &'a mut Flow,
    /// Server → client.
    pub down: &'a mut Flow,
    pub client_side: &'a mut ClientSide,
    pub server_side: &'a mut ServerSide,
    pub tracker: &'a mut Tracker,
    /// Present in transaction mode: statement names are rewritten.
    pub statements: Option<Statements<'s>>,
}

impl Relay<'_, '_> {
    fn clean(&self) -> bool {
        self.tracker.is_idle()
            && self.client_side.at_boundary(self.up)
            // A message of which only a part has arrived belongs to this server too: releasing
            // it here would send the session back for a server with nothing new to read.
            && self.up.inbuf.is_empty()
            && self.down.at_boundary()
            && self.down.inbuf.is_empty()
            && self.up.out.is_empty()
            && self.server_side.status == b'I'
    }

    fn process_client(&mut self) -> Result<()> {
        self.client_side
            .process(self.up, self.tracker, self.statements.as_mut())?;
        if self.down.at_boundary() {
            self.down.ready_out();
            self.tracker.emit_synthetic(&mut self.down.out);
        }
        Ok(())
    }

    /// Relays until the server is idle at a boundary (`release_on_idle`), or one side leaves.
    /// On `Idle`, bytes for the client may remain in `down.out`: the caller flushes them after
    /// giving the server back, so the next client does not wait on this one's socket.
    pub async fn run(
        &mut self,
        release_on_idle: bool,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<RelayEnd> {
        let mut client_eof = false;
        let mut flush_asked = false;
        // Input read before the server was attached.
        self.process_client()?;
        loop {
            // Too many requests in flight (most likely ones the pooler answers itself, queued
            // behind a reply Postgres keeps buffered): stop reading the client, between
            // messages only, and ask Postgres to flush so the queue drains.
            let crowded = self.tracker.queue.len() >= MAX_IN_FLIGHT && self.up.at_boundary();
            if crowded && !flush_asked {
                self.up.out.extend_from_slice(&[b'H', 0, 0, 0, 4]);
            }
            flush_asked = crowded;
            if !self.up.out.is_empty() && !self.up.blocked && self.up.write_to(self.server).is_err()
            {
                return Ok(RelayEnd::ServerGone);
            }
            // Released before the reply is written: the next client gets the server without
            // waiting for this one's socket, and the transaction is counted before its client
            // can see the reply.
            if release_on_idle && self.client_side.pinned.is_none() && self.clean() {
                return Ok(RelayEnd::Idle);
            }
            if !self.down.out.is_empty()
                && !self.down.blocked
                && self.down.write_to(self.client).is_err()
            {
                return Ok(RelayEnd::ClientGone {
                    server_clean: self.clean(),
                });
            }
            if (client_eof || self.client_side.terminated) && self.up.out.is_empty() {
                return Ok(RelayEnd::ClientGone {
                    server_clean: self.clean(),
                });
            }
            // Replies the pooler writes itself (CloseComplete, ParseComplete) go to `down.out`
            // without a server in between: a client that sends but never reads must stop being
            // read once that buffer is full, as with a server's replies.
            let read_client = !client_eof
                && !self.client_side.terminated
                && self.up.wants_read()
                && self.down.out.len() < BUFFER_CAP
                && !crowded;
            let read_server = self.down.wants_read();
            tokio::select! {
                r = self.server.readable(), if read_server => {
                    if r.is_err() {
                        return Ok(RelayEnd::ServerGone);
                    }
                    match self.down.read_from(self.server) {
                        Ok(Some(0)) | Err(_) => return Ok(RelayEnd::ServerGone),
                        Ok(Some(_)) => {
                            let cache = self.statements.as_mut().map(|s| &mut *s.server);
                            self.server_side.process(self.down, self.tracker, cache, on_param)?;
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
                        Ok(Some(_)) => self.process_client()?,
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

/// Reads client bytes while no server is attached, until the first message is complete (or,
/// for one larger than `BUFFER_CAP`, its header is there) or the client leaves. Returns false
/// on EOF or Terminate. A message still arriving takes no server: a slow client cannot hold
/// one while it trickles a query in.
pub async fn read_request(client: &TcpStream, up: &mut Flow) -> Result<bool> {
    loop {
        // Bad framing is refused before a server is taken (and then discarded) for it.
        if let Some((tag, total)) = header(&up.inbuf, false)? {
            if !FRONTEND_TAGS.contains(&tag) {
                return Err(invalid_type(tag));
            }
            if tag == b'X' {
                return Ok(false);
            }
            if up.inbuf.len() >= total || total > BUFFER_CAP {
                return Ok(true);
            }
        }
        client.readable().await?;
        match up.read_from(client) {
            Ok(Some(0)) => return Ok(false),
            Ok(Some(_)) => {}
            // Nothing after all (stale readiness): do not wait holding a buffer.
            Ok(None) => up.shrink_if_empty(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Answers, without a server, a batch that only names statements: `Parse` of named
/// statements and `Close` of statements, ending with `Sync` (libpq's `PQprepare`,
/// tokio-postgres dropping a statement). The statements are prepared on a server when first
/// used (see `ensure_prepared`), so a syntax error surfaces at first execution instead.
/// Holding no server here is also what keeps a single-threaded client with many connections
/// (pgbench -j 1 -M prepared) from deadlocking: its blocking prepare does not wait for a
/// server that its own other connections hold. Returns false when the batch needs a server.
pub fn answer_locally(
    up: &mut Flow,
    down: &mut Flow,
    registry: &Registry,
    client: &mut ClientStatements,
) -> bool {
    // Check the whole batch first: all complete, all of the two kinds, ending at a Sync.
    let mut pos = 0;
    let mut ends_at = None;
    while let Some((tag, len)) = protocol::header(&up.inbuf[pos..]) {
        // A bad length is the framer's to refuse (08P01), not ours to interpret.
        if len < 4 {
            return false;
        }
        let total = 1 + len as usize;
        if up.inbuf.len() - pos < total || total > MAX_INSPECTED {
            return false;
        }
        let body = &up.inbuf[pos + 5..pos + total];
        let named = match tag {
            // A statement that leaves session state or resets some must meet the server's
            // path, where it is seen (pin, restore); answered here it would slip by.
            b'P' if leaves_state(body) => return false,
            // A name in use is refused in order, on the server's path (42P05).
            b'P' if cstr_end(body, 0)
                .and_then(|end| std::str::from_utf8(&body[..end]).ok())
                .is_some_and(|name| client.contains_key(name)) =>
            {
                return false;
            }
            b'P' => body.first().is_some_and(|&b| b != 0),
            b'C' => body.first() == Some(&b'S') && body.get(1).is_some_and(|&b| b != 0),
            b'S' => {
                ends_at = Some(pos + total);
                break;
            }
            _ => false,
        };
        if !named || cstr_end(body, 0).is_none() {
            return false;
        }
        pos += total;
    }
    let Some(end) = ends_at else {
        return false;
    };
    down.ready_out();
    let mut pos = 0;
    while pos < end {
        let (tag, len) = protocol::header(&up.inbuf[pos..]).expect("checked above");
        let total = 1 + len as usize;
        let body = &up.inbuf[pos + 5..pos + total];
        match tag {
            b'P' => {
                let name_end = cstr_end(body, 0).expect("checked above");
                let stmt = registry.statement(&body[name_end + 1..]);
                client.insert(
                    String::from_utf8_lossy(&body[..name_end]).into_owned(),
                    stmt,
                );
                down.out.extend_from_slice(&[b'1', 0, 0, 0, 4]);
            }
            b'C' => {
                if let Some(name_end) = cstr_end(body, 1) {
                    client.remove(String::from_utf8_lossy(&body[1..name_end]).as_ref());
                }
                down.out.extend_from_slice(&[b'3', 0, 0, 0, 4]);
            }
            _ => protocol::ready_for_query(&mut down.out, b'I'),
        }
        pos += total;
    }
    up.inbuf.advance(end);
    true
}

/// Whether a Parse body's query text creates or resets session state.
fn leaves_state(parse_body: &[u8]) -> bool {
    let Some(name_end) = cstr_end(parse_body, 0) else {
        return false;
    };
    let Some(query_end) = cstr_end(parse_body, name_end + 1) else {
        return false;
    };
    let sql = &parse_body[name_end + 1..query_end];
    let mut resets = false;
    session_state::resets(sql, |_| resets = true);
    resets || session_state::detect(sql).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn tags(mut buf: &[u8]) -> String {
        let mut out = String::new();
        while let Some((tag, len)) = protocol::header(buf) {
            out.push(tag as char);
            buf = &buf[1 + len as usize..];
        }
        out
    }

    /// One client and one server, driven by hand.
    struct Rig {
        up: Flow,
        down: Flow,
        client: ClientSide,
        server: ServerSide,
        tracker: Tracker,
        stmts: ClientStatements,
        cache: ServerCache,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                up: Flow::default(),
                down: Flow::default(),
                client: ClientSide::default(),
                server: ServerSide::default(),
                tracker: Tracker::default(),
                stmts: ClientStatements::new(),
                cache: ServerCache::default(),
            }
        }

        /// Client bytes in; what goes to the server out.
        fn send(&mut self, registry: &Registry, bytes: &[u8]) -> Vec<u8> {
            self.up.inbuf.extend_from_slice(bytes);
            let mut s = Statements {
                registry,
                client: &mut self.stmts,
                server: &mut self.cache,
                max: 10,
            };
            self.client
                .process(&mut self.up, &mut self.tracker, Some(&mut s))
                .unwrap();
            if self.down.at_boundary() {
                self.tracker.emit_synthetic(&mut self.down.out);
            }
            self.up.out.split().to_vec()
        }

        /// Server bytes in; what goes to the client out.
        fn reply(&mut self, bytes: &[u8]) -> Vec<u8> {
            self.down.inbuf.extend_from_slice(bytes);
            self.server
                .process(
                    &mut self.down,
                    &mut self.tracker,
                    Some(&mut self.cache),
                    &mut |_, _| {},
                )
                .unwrap();
            self.down.out.split().to_vec()
        }
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        frontend::parse(name, sql, [], &mut b).unwrap();
        b.to_vec()
    }

    fn bind_execute_sync(stmt: &str) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        frontend::bind(
            "",
            stmt,
            [],
            [0i32; 0],
            |_: i32, _: &mut bytes::BytesMut| -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                Ok(postgres_protocol::IsNull::No)
            },
            [],
            &mut b,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut b).unwrap();
        frontend::sync(&mut b);
        b.to_vec()
    }

    #[test]
    fn injected_parse_is_hidden_and_known_parse_is_answered_in_order() {
        let registry = Registry::default();
        let mut a = Rig::new();
        let mut batch = parse("s1", "select 1");
        batch.extend(msg(b'S', b""));
        let to_server = a.send(&registry, &batch);
        assert_eq!(tags(&to_server), "CPS");
        assert!(to_server.windows(8).any(|w| w == b"POOLER_1"));
        let mut replies = msg(b'3', b"");
        replies.extend(msg(b'1', b""));
        replies.extend(msg(b'Z', b"I"));
        assert_eq!(tags(&a.reply(&replies)), "1Z");

        // The client moves to a server that never saw the statement: Parse is injected.
        let mut b = Rig {
            stmts: std::mem::take(&mut a.stmts),
            ..Rig::new()
        };
        let to_server = b.send(&registry, &bind_execute_sync("s1"));
        assert_eq!(tags(&to_server), "CPBES");
        let mut replies = msg(b'3', b"");
        replies.extend(msg(b'1', b""));
        replies.extend(msg(b'2', b""));
        replies.extend(msg(b'C', b"SELECT 1\0"));
        replies.extend(msg(b'Z', b"I"));
        assert_eq!(
            tags(&b.reply(&replies)),
            "2CZ",
            "the injected ParseComplete is hidden"
        );
        assert!(b.tracker.is_idle());

        // Parsing it again where it exists, and closing it: answered by the pooler, in turn.
        let mut batch = parse("s2", "select 1");
        let mut close = bytes::BytesMut::new();
        frontend::close(b'S', "s2", &mut close).unwrap();
        batch.extend_from_slice(&close);
        batch.extend(msg(b'S', b""));
        let to_server = b.send(&registry, &batch);
        assert_eq!(
            tags(&to_server),
            "S",
            "neither Parse nor Close reaches the server"
        );
        assert_eq!(tags(&b.reply(&msg(b'Z', b"I"))), "13Z");
    }

    #[test]
    fn an_error_skips_the_rest_of_the_batch_and_forgets_unprepared_statements() {
        let registry = Registry::default();
        let mut a = Rig::new();
        a.send(&registry, &parse("s1", "select 1"));
        a.send(&registry, &msg(b'S', b""));
        a.reply(&[msg(b'3', b""), msg(b'1', b""), msg(b'Z', b"I")].concat());
        // On a fresh server: a failing unnamed Bind, then a Bind that injects s1, then Sync.
        let mut b = Rig {
            stmts: std::mem::take(&mut a.stmts),
            ..Rig::new()
        };
        let mut batch = bind_execute_sync("");
        batch.truncate(batch.len() - 5); // drop the Sync
        batch.extend(bind_execute_sync("s1"));
        let to_server = b.send(&registry, &batch);
        assert_eq!(tags(&to_server), "BECPBES");
        let mut err = bytes::BytesMut::new();
        protocol::error_response(&mut err, "ERROR", "26000", "no such statement");
        let out = b.reply(&[err.to_vec(), msg(b'Z', b"I")].concat());
        assert_eq!(tags(&out), "EZ");
        assert!(b.tracker.is_idle());
        // The injected Parse was skipped by the server: it must be injected again next time.
        let to_server = b.send(&registry, &bind_execute_sync("s1"));
        assert_eq!(tags(&to_server), "CPBES");
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_reply() {
        let registry = Registry::default();
        let mut r = Rig::new();
        // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
        let mut batch = bind_execute_sync("");
        batch.extend(msg(b'd', b"1\n"));
        batch.extend(msg(b'c', b""));
        batch.extend(msg(b'S', b""));
        assert_eq!(tags(&r.send(&registry, &batch)), "BESdcS");
        let replies = [
            msg(b'2', b""),
            msg(b'G', b"\0\0\0"),
            msg(b'C', b"COPY 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(tags(&r.reply(&replies)), "2GCZ");
        assert!(
            r.tracker.is_idle(),
            "the Sync ignored in COPY mode is not awaited"
        );
    }

    #[test]
    fn bad_lengths_and_types_are_errors() {
        let registry = Registry::default();
        for bad in [
            &b"Q\x00\x00\x00\x02"[..],
            b"Q\x7f\xff\xff\xff",
            &msg(b'p', b"pw\0"),
            &msg(b'P', b"no-terminator"),
        ] {
            let mut r = Rig::new();
            r.up.inbuf.extend_from_slice(bad);
            let mut s = Statements {
                registry: &registry,
                client: &mut r.stmts,
                server: &mut r.cache,
                max: 10,
            };
            assert!(
                r.client
                    .process(&mut r.up, &mut r.tracker, Some(&mut s))
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
