//! pooler: a PgBouncer-compatible connection pooler for PostgreSQL.
//!
//! See `docs/architecture.md` for the map of modules and the life of a transaction.

pub mod accept;
pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod keepalive;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod prepared;
pub mod recycled;
pub mod registry;
pub mod server;
pub mod session;
pub mod session_state;
pub mod stats;
pub mod supervisor;
pub mod tls;
pub mod wakeup;
pub mod wire;
pub mod workers;
