//! The requests in flight on a server, oldest first: what each reply completes, which
//! replies are hidden or synthesised, and how an error makes Postgres skip to the next Sync.

use bytes::{BufMut, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::prepared::{ClientStatements, ServerCache, ServerStatement};
use crate::wire::Backend;

/// The reply that completes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
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
    pub(crate) fn completed_by(self, reply: Option<Backend>) -> bool {
        use Backend as B;
        let Some(reply) = reply else {
            return false;
        };
        match self {
            Request::Parse => reply == B::ParseComplete,
            Request::Bind => reply == B::BindComplete,
            Request::Close => reply == B::CloseComplete,
            Request::Describe => matches!(reply, B::RowDescription | B::NoData),
            Request::Execute => matches!(
                reply,
                B::CommandComplete | B::EmptyQueryResponse | B::PortalSuspended
            ),
            Request::Sync | Request::Query => reply == B::ReadyForQuery,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Expect {
    /// A request whose replies go to the client. The statement, for Parse/Bind/Describe of a
    /// pooler-managed statement: a failure may mean the server does not have it.
    Pass(Request, Option<Arc<ServerStatement>>),
    /// A request the pooler injected: its replies are not the client's.
    Hide(Request, Option<Arc<ServerStatement>>),
    /// A request the pooler answered itself: this reply goes to the client in its turn.
    Synth(Backend),
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
    pub(crate) queue: VecDeque<Expect>,
    /// The server hit an error in an extended-protocol batch and discards everything up to
    /// the next Sync; requests sent meanwhile get no reply.
    pub(crate) skipping: bool,
    /// The server's last ReadyForQuery said `E`: a failed transaction, where Postgres refuses
    /// every Parse (25P02), so none may be answered by the pooler.
    pub(crate) failed_tx: bool,
    /// The server is in COPY IN mode and the client has not ended it: Syncs are ignored.
    in_copy_in: bool,
    /// Client statement names whose Parse failed or was skipped, with the statement each was
    /// to name: the client side forgets them before it looks at another name.
    unprepared: Vec<(Box<str>, u64)>,
    /// A CopyEnd marker may be in the queue (cleared once the queue is empty): the checks
    /// before every reply look at the queue only then.
    copy_end_queued: bool,
}

impl Tracker {
    pub(crate) fn push(&mut self, e: Expect) {
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

    /// As a new tracker: nothing in flight and no state left from the last server.
    pub fn is_pristine(&self) -> bool {
        self.queue.is_empty()
            && !self.skipping
            && !self.failed_tx
            && !self.in_copy_in
            && self.unprepared.is_empty()
            && !self.copy_end_queued
    }

    /// Whether the client's Parse of `name` is still unanswered with a Sync after it: whether
    /// it happened depends on the replies to come (an earlier error skips it).
    pub(crate) fn parse_pending_across_sync(&self, name: &str) -> bool {
        let mut found = false;
        for e in &self.queue {
            match e {
                Expect::Prepared { name: n, .. } if &**n == name => found = true,
                Expect::Pass(Request::Sync, _) if found => return true,
                _ => {}
            }
        }
        false
    }

    /// Forgets the client's names whose Parse did not happen on the server.
    #[inline]
    pub fn drain_unprepared(&mut self, client: &mut ClientStatements) {
        if !self.unprepared.is_empty() {
            self.forget_failed_parses(client);
        }
    }

    fn forget_failed_parses(&mut self, client: &mut ClientStatements) {
        for (name, id) in self.unprepared.drain(..) {
            if client.get(&*name).is_some_and(|s| s.id == id) {
                client.remove(&*name);
            }
        }
    }

    /// The client sent CopyDone or CopyFail.
    pub(crate) fn copy_end(&mut self) {
        if self.in_copy_in {
            self.in_copy_in = false;
        } else if !self.queue.is_empty() {
            self.queue.push_back(Expect::CopyEnd);
            self.copy_end_queued = true;
        }
    }

    /// CopyInResponse: until the client's CopyDone/CopyFail the server ignores Syncs, so
    /// the ones the client already sent in that stretch will get no reply.
    pub(crate) fn on_copy_in(&mut self) {
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
    #[inline]
    pub(crate) fn drop_stale_markers(&mut self) {
        if !self.copy_end_queued {
            return;
        }
        while matches!(self.queue.front(), Some(Expect::CopyEnd)) {
            self.queue.pop_front();
        }
        self.copy_end_queued = !self.queue.is_empty();
    }

    /// Whether `emit_synthetic` has something to write now.
    pub(crate) fn owes_synthetic(&mut self) -> bool {
        self.drop_stale_markers();
        matches!(
            self.queue.front(),
            Some(
                Expect::Synth(_)
                    | Expect::Prepared {
                        forwarded: false,
                        ..
                    }
            )
        )
    }

    /// Emits replies the pooler owes the client, once everything before them is answered.
    pub(crate) fn emit_synthetic(&mut self, out: &mut BytesMut) {
        self.drop_stale_markers();
        loop {
            match self.queue.front() {
                Some(Expect::Synth(reply)) => out.put_slice(&reply.empty()),
                Some(Expect::Prepared {
                    forwarded: false, ..
                }) => out.put_slice(&Backend::ParseComplete.empty()),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// A reply arrived: returns true when it must be hidden from the client.
    pub(crate) fn on_reply(&mut self, reply: Option<Backend>) -> bool {
        self.drop_stale_markers();
        match self.queue.front() {
            Some(Expect::HideQuery) => true,
            Some(Expect::Pass(r, _)) if r.completed_by(reply) => {
                self.queue.pop_front();
                false
            }
            Some(Expect::Hide(r, _)) if r.completed_by(reply) => {
                self.queue.pop_front();
                true
            }
            Some(Expect::Prepared {
                forwarded: true, ..
            }) if reply == Some(Backend::ParseComplete) => {
                self.queue.pop_front();
                false
            }
            _ => false,
        }
    }

    /// ReadyForQuery: the oldest sync point is answered (and anything still before it was
    /// skipped by the server).
    /// Returns true when the ReadyForQuery ends a query the pooler injected (hidden).
    pub(crate) fn on_ready(&mut self, cache: &mut Option<&mut ServerCache>) -> bool {
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
    pub(crate) fn on_error(&mut self, cache: &mut Option<&mut ServerCache>) -> ErrorFate {
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
pub(crate) enum ErrorFate {
    /// It goes to the client; the statement the failing request used, if any.
    Pass(Option<Arc<ServerStatement>>),
    /// It answers a query the pooler injected.
    Hide,
}

impl Tracker {
    /// A Parse that failed or was skipped did not prepare its statement on the server, nor
    /// the client's name for it.
    pub(crate) fn forget_unprepared(&mut self, e: &Expect, cache: &mut Option<&mut ServerCache>) {
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
