//! The IO driver of one client/server pairing: both sockets, non-blocking reads and writes
//! from the client's own task, the engine fed in between.

use bytes::Buf;
use std::io;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

use crate::engine::{
    BUFFER_CAP, ClientSide, Flow, MAX_IN_FLIGHT, READ_CHUNK, ServerSide, Statements, Tracker,
    spare_buffers,
};
use crate::error::Result;
use crate::registry::ClientInfo;
use crate::wire::{self, FRONTEND_TAGS, Frontend, frame_header as header, invalid_type};

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
    /// Where the engine's reports about the client are made visible (SHOW CLIENTS, metrics).
    pub client_info: Option<&'a ClientInfo>,
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
            && self.server_side.status == wire::STATUS_IDLE
    }

    fn process_client(&mut self) -> Result<()> {
        let processed = self
            .client_side
            .process(self.up, self.tracker, self.statements.as_mut());
        // A pin is counted at once: a pinned client's relay runs until it leaves.
        if let Some(kind) = self.client_side.newly_pinned.take()
            && let Some(info) = self.client_info
        {
            info.mark_pinned(kind);
        }
        processed?;
        if self.down.at_boundary() && self.tracker.owes_synthetic() {
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
        let mut server_first = false;
        // Input read before the server was attached.
        self.process_client()?;
        loop {
            // Too many requests in flight (most likely ones the pooler answers itself, queued
            // behind a reply Postgres keeps buffered): stop reading the client, between
            // messages only, and ask Postgres to flush so the queue drains.
            let crowded = self.tracker.queue.len() >= MAX_IN_FLIGHT && self.up.at_boundary();
            if crowded && !flush_asked {
                self.up.out.extend_from_slice(&Frontend::Flush.empty());
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
            // Readiness is polled directly (no `select!` over freshly built futures each
            // turn: that cost more than the relaying itself). The side polled first
            // alternates, so a side that is always ready cannot starve the other.
            server_first = !server_first;
            let woke = std::future::poll_fn(|cx| {
                let server = |cx: &mut Context<'_>| {
                    if read_server && let Poll::Ready(r) = self.server.poll_read_ready(cx) {
                        return Some(Woke::ServerReadable(r.is_ok()));
                    }
                    None
                };
                let client = |cx: &mut Context<'_>| {
                    if read_client && let Poll::Ready(r) = self.client.poll_read_ready(cx) {
                        return Some(Woke::ClientReadable(r.is_ok()));
                    }
                    None
                };
                let first = if server_first { server(cx) } else { client(cx) };
                let woke = first.or_else(|| if server_first { client(cx) } else { server(cx) });
                if let Some(w) = woke {
                    return Poll::Ready(w);
                }
                if self.up.blocked
                    && let Poll::Ready(r) = self.server.poll_write_ready(cx)
                {
                    return Poll::Ready(Woke::ServerWritable(r.is_ok()));
                }
                if self.down.blocked
                    && let Poll::Ready(r) = self.client.poll_write_ready(cx)
                {
                    return Poll::Ready(Woke::ClientWritable(r.is_ok()));
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::ServerReadable(false) | Woke::ServerWritable(false) => {
                    return Ok(RelayEnd::ServerGone);
                }
                Woke::ServerReadable(true) => match self.down.read_from(self.server) {
                    Ok(Some(0)) | Err(_) => return Ok(RelayEnd::ServerGone),
                    Ok(Some(_)) => {
                        let cache = self.statements.as_mut().map(|s| &mut *s.server);
                        self.server_side
                            .process(self.down, self.tracker, cache, on_param)?;
                        if std::mem::take(&mut self.client_side.deferred) {
                            self.process_client()?;
                        }
                    }
                    Ok(None) => {}
                },
                Woke::ClientReadable(false) => client_eof = true,
                Woke::ClientReadable(true) => match self.up.read_from(self.client) {
                    Ok(Some(0)) | Err(_) => client_eof = true,
                    Ok(Some(_)) => self.process_client()?,
                    Ok(None) => {}
                },
                Woke::ServerWritable(true) => self.up.blocked = false,
                Woke::ClientWritable(false) => {
                    return Ok(RelayEnd::ClientGone {
                        server_clean: self.clean(),
                    });
                }
                Woke::ClientWritable(true) => self.down.blocked = false,
            }
        }
    }
}

/// What the relay's wait saw first; `false` when the socket reported an error.
enum Woke {
    ServerReadable(bool),
    ClientReadable(bool),
    ServerWritable(bool),
    ClientWritable(bool),
}

/// Reads client bytes while no server is attached, until the first message is complete (or,
/// for one larger than `BUFFER_CAP`, its header is there) or the client leaves. Ready with
/// false on EOF or Terminate. A message still arriving takes no server: a slow client cannot
/// hold one while it trickles a query in.
///
/// A poll function, not a future: an idle client waits here, and its task keeps no future's
/// state for it (the socket's readiness keeps the waker).
pub fn poll_read_request(
    client: &TcpStream,
    up: &mut Flow,
    cx: &mut Context<'_>,
) -> Poll<Result<bool>> {
    loop {
        // Bad framing is refused before a server is taken (and then discarded) for it.
        match header(&up.inbuf, false) {
            Err(e) => return Poll::Ready(Err(e)),
            Ok(Some((tag, total))) => {
                if !FRONTEND_TAGS.contains(&tag) {
                    return Poll::Ready(Err(invalid_type(tag)));
                }
                if tag == Frontend::Terminate.byte() {
                    return Poll::Ready(Ok(false));
                }
                if up.inbuf.len() >= total || total > BUFFER_CAP {
                    return Poll::Ready(Ok(true));
                }
            }
            Ok(None) => {}
        }
        if let Err(e) = std::task::ready!(client.poll_read_ready(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        match up.read_from(client) {
            Ok(Some(0)) => return Poll::Ready(Ok(false)),
            Ok(Some(_)) => {}
            // Nothing after all (stale readiness): do not wait holding a buffer.
            Ok(None) => up.shrink_if_empty(),
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// The socket side of a `Flow`.
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
        } else if self.inbuf.is_empty() && !self.inbuf.try_reclaim(READ_CHUNK) {
            // A queued request's small buffer, come back from `out` by a swap: traded for a
            // read buffer, not grown into one (an allocation and a free each time).
            spare_buffers::give(std::mem::replace(&mut self.inbuf, spare_buffers::take()));
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
                // All of it: emptied in place, so the buffer keeps its whole room (an
                // advanced one would have to be moved back before it is reused).
                Ok(n) if n == self.out.len() => self.out.clear(),
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

    /// Writes everything processed, waiting as needed. (Polled on the socket's readiness,
    /// which keeps the waker: no wait future's state in the session's.)
    pub async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            loop {
                self.write_to(stream)?;
                if self.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                std::task::ready!(stream.poll_write_ready(cx))?;
            }
        })
        .await
    }
}

/// Whether the client has closed its end (FIN, even behind bytes not read yet) or reset the
/// connection, seen without reading and without blocking: from the readiness the I/O driver
/// already recorded (epoll's `EPOLLRDHUP`/`EPOLLHUP`), so no system call. A request whose
/// client is gone is dropped before it reaches a server: nobody would see its result, and a
/// client that gave up and retried would have its write run twice.
///
/// Most clients that waited are still there and silent: their socket has no read readiness
/// at all, which a readiness poll sees cheaply (the `ready()` future, which tells a closed
/// end from data, costs twice as much). That poll leaves a no-op waker behind; the relay's
/// next poll puts the session's back, and until then nothing waits on the client.
pub fn client_left(stream: &TcpStream) -> bool {
    use futures_util::FutureExt;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => return false,
        Poll::Ready(Err(_)) => return true,
        Poll::Ready(Ok(())) => {}
    }
    match stream.ready(tokio::io::Interest::READABLE).now_or_never() {
        Some(Ok(ready)) => ready.is_read_closed(),
        Some(Err(_)) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// After a waited checkout the request sits in a small buffer, which the relay's swaps
    /// can bring back to `inbuf`: the next read trades it for a read buffer instead of
    /// growing it (tpcb went from 0.4 to 2.1 allocations per transaction when it grew).
    #[tokio::test]
    async fn a_read_into_a_small_buffer_trades_it_for_a_read_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut writer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (reader, _) = listener.accept().await.expect("accept");
        writer.write_all(b"hello").await.expect("write");
        let mut flow = Flow::default();
        flow.inbuf = spare_buffers::take_small();
        let small = flow.inbuf.as_ptr();
        let kept_small = spare_buffers::kept_small();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                reader.readable().await.expect("readable");
                if let Some(n) = flow.read_from(&reader).expect("read") {
                    return n;
                }
            }
        })
        .await
        .expect("the bytes arrive");
        assert_eq!(got, 5);
        assert_eq!(&flow.inbuf[..], b"hello");
        assert!(flow.inbuf.capacity() >= READ_CHUNK);
        assert_ne!(flow.inbuf.as_ptr(), small, "the small buffer was grown");
        assert_eq!(spare_buffers::kept_small(), kept_small + 1);
    }
}
