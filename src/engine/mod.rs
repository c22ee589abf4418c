//! The protocol engine: a sans-IO state machine per client/server pair.
//!
//! Fed bytes in any segmentation (`ClientSide::process`, `ServerSide::process` over a `Flow`
//! of buffers), it returns the bytes to write and keeps the state that decides everything a
//! pooler must decide: which requests are in flight (`Tracker`), which replies to hide or to
//! synthesise, which statement names to rewrite, what session state the client created or
//! reset. It does no IO, takes no locks, reads no clock and never calls up into the pools or
//! registries: the session driver (`session/`) reads the sockets, feeds the engine and acts
//! on what it reports (`ClientSide::pinned`, `params_touched`, the `on_param` callback).
//!
//! Each direction moves bytes from an input buffer to an output buffer, parsing only 5-byte
//! headers, except for the few messages the pooler acts on: `ReadyForQuery`,
//! `ParameterStatus` and `ErrorResponse` from the server; `Query`, `Parse`, `Bind`,
//! `Describe` and `Close` from the client (texts for session state and resets, names of
//! statements rewritten in transaction mode, see `prepared.rs`).
//!
//! A `Tracker` queues one entry per request sent to the server that the server will answer,
//! in order, and consumes them as the answers come back. That is what lets the pooler hide
//! the reply to a `Parse` it injected, answer a `Parse` or `Close` it did not forward, and
//! know when every request has been answered: a server is released only then, when it
//! says idle and no partial message is in flight, so a pipelined client can never leave
//! work on a server another client gets.

mod client;
mod flow;
mod local;
mod server;
#[cfg(test)]
mod tests;
mod tracker;

pub use client::ClientSide;
pub use flow::Flow;
pub(crate) use flow::spare_buffers;
pub use local::answer_locally;
pub use server::ServerSide;
pub use tracker::Tracker;

use crate::prepared::{ClientStatements, Registry, ServerCache};

/// Stop reading a side when this much is waiting for the other: backpressure, bounded memory.
pub const BUFFER_CAP: usize = 64 * 1024;
/// Stop reading a client with this many requests awaiting replies (bounded memory).
pub const MAX_IN_FLIGHT: usize = 8192;
/// How much room to make before each read.
pub const READ_CHUNK: usize = 16 * 1024;
/// Messages the pooler reads whole (Parse, Describe, Close, ParameterStatus,
/// ErrorResponse) are streamed unread above this size.
pub const MAX_INSPECTED: usize = 16 * 1024 * 1024;

/// What the relay needs to rewrite statement names (transaction mode only).
pub struct Statements<'a> {
    pub registry: &'a Registry,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerCache,
    pub max: usize,
}
