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
            let kind = Backend::of(tag);
            match kind {
                Some(Backend::ReadyForQuery) => {
                    if total != 6 {
                        return Err(PoolerError::ServerProtocol("bad ReadyForQuery".into()));
                    }
                    if down.inbuf.len() < total {
                        return Ok(());
                    }
                    self.status = down.inbuf[5];
                    tracker.failed_tx = self.status == wire::STATUS_FAILED;
                    let hide = tracker.on_ready(&mut cache);
                    down.pass(total, hide);
                }
                Some(Backend::ParameterStatus | Backend::ErrorResponse)
                    if total > MAX_INSPECTED =>
                {
                    // Too large to read whole (an error quoting a huge input): streamed. Its
                    // place in the request flow is all that matters; the fields go unread.
                    let hide = kind == Some(Backend::ErrorResponse)
                        && matches!(tracker.on_error(&mut cache), ErrorFate::Hide);
                    down.pass(total, hide);
                }
                Some(Backend::ParameterStatus | Backend::ErrorResponse) => {
                    if down.inbuf.len() < total {
                        return Ok(());
                    }
                    let mut hide = false;
                    if kind == Some(Backend::ParameterStatus) {
                        let mut body = &down.inbuf[5..total];
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
                                    wire::error_fields(&down.inbuf[5..total]).1
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
                    if kind == Some(Backend::CopyInResponse) {
                        tracker.on_copy_in();
                    }
                    let hide = tracker.on_reply(kind);
                    down.pass(total, hide);
                }
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
