//! Server → client: replies matched to the requests in flight, hidden or passed; the
//! server's status and parameters.

use crate::error::{PoolerError, Result};
use crate::prepared::ServerCache;
use crate::wire::{self, Backend, frame_header as header};

use super::tracker::ErrorFate;
use super::{Flow, MAX_INSPECTED, Tracker};

/// Server → client state.
#[derive(Debug, Clone)]
pub struct ServerSide {
    /// Status byte of the last ReadyForQuery: `I` idle, `T` in transaction, `E` failed.
    pub status: u8,
}

impl Default for ServerSide {
    fn default() -> Self {
        ServerSide {
            status: wire::STATUS_IDLE,
        }
    }
}

/// The SQLSTATE Postgres uses when DDL changed a prepared statement's result type.
pub(crate) const CACHED_PLAN_CHANGED: &[u8] = b"0A000";

impl ServerSide {
    /// Processes the server's input into `down.out`.
    ///
    /// Whole messages that pass unchanged are not copied one by one: they are held in
    /// `down.inbuf` and moved to `down.out` together (`Flow::commit`) when something else must
    /// be written or dropped in between, or when the input is used up. A reply that arrived
    /// whole while `down.out` was empty — the common case — changes buffers without a copy.
    pub fn process(
        &mut self,
        down: &mut Flow,
        tracker: &mut Tracker,
        cache: Option<&mut ServerCache>,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<()> {
        // `down.out` takes a buffer only when something is written to it: a reply that
        // passes whole trades buffers instead.
        let mut held = 0;
        let result = self.process_held(down, tracker, cache, on_param, &mut held);
        down.commit(held);
        result
    }

    fn process_held(
        &mut self,
        down: &mut Flow,
        tracker: &mut Tracker,
        mut cache: Option<&mut ServerCache>,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
        held: &mut usize,
    ) -> Result<()> {
        loop {
            if !down.continue_message() {
                return Ok(());
            }
            if tracker.owes_synthetic() {
                down.commit(std::mem::take(held));
                down.ready_out();
                tracker.emit_synthetic(&mut down.out);
            }
            let at = *held;
            let Some((tag, total)) = header(&down.inbuf[at..], true)? else {
                return Ok(());
            };
            let whole = down.inbuf.len() - at >= total;
            let kind = Backend::of(tag);
            let hide = match kind {
                Some(Backend::ReadyForQuery) => {
                    if total != 6 {
                        return Err(PoolerError::ServerProtocol("bad ReadyForQuery".into()));
                    }
                    if !whole {
                        return Ok(());
                    }
                    self.status = down.inbuf[at + 5];
                    tracker.failed_tx = self.status == wire::STATUS_FAILED;
                    tracker.on_ready(&mut cache)
                }
                Some(Backend::ParameterStatus | Backend::ErrorResponse)
                    if total > MAX_INSPECTED =>
                {
                    // Too large to read whole (an error quoting a huge input): streamed. Its
                    // place in the request flow is all that matters; the fields go unread.
                    kind == Some(Backend::ErrorResponse)
                        && matches!(tracker.on_error(&mut cache), ErrorFate::Hide)
                }
                Some(Backend::ParameterStatus | Backend::ErrorResponse) => {
                    if !whole {
                        return Ok(());
                    }
                    let body = &down.inbuf[at + 5..at + total];
                    let mut hide = false;
                    if kind == Some(Backend::ParameterStatus) {
                        let mut body = body;
                        if let (Ok(name), Ok(value)) =
                            (wire::take_cstr(&mut body), wire::take_cstr(&mut body))
                        {
                            on_param(&name, &value);
                        }
                    } else {
                        match tracker.on_error(&mut cache) {
                            ErrorFate::Hide => {
                                hide = true;
                                tracing::warn!(
                                    "restoring startup parameters after RESET failed: {}",
                                    wire::error_fields(body).1
                                );
                            }
                            ErrorFate::Pass(Some(stmt))
                                if error_code_is(body, CACHED_PLAN_CHANGED) =>
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
                    hide
                }
                _ => {
                    if kind == Some(Backend::CopyInResponse) {
                        tracker.on_copy_in();
                    }
                    tracker.on_reply(kind)
                }
            };
            if whole && !hide {
                *held += total;
            } else {
                // Dropped, or still arriving: what is held goes first, then this message
                // is moved or dropped as far as it has arrived (the rest follows later).
                down.commit(std::mem::take(held));
                down.pass(total, hide);
            }
        }
    }
}

pub(crate) fn error_code_is(mut body: &[u8], code: &[u8]) -> bool {
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
