//! One error type for everything that can end a client's session, and the one place where an
//! error becomes the SQLSTATE and message the client sees.
//!
//! Texts follow PgBouncer's (scripts grep for them); SQLSTATEs are Postgres's precise ones so
//! drivers raise the right exception class.

#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("unsupported startup parameter: {0}")]
    UnsupportedStartupParameter(String),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// A user not in `admin_users` or `stats_users` asked for the admin console (PgBouncer's text).
    #[error("not allowed")]
    NotAllowed,
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    #[error("no more connections allowed (max_client_conn)")]
    TooManyClients,
    #[error("query_wait_timeout")]
    QueryWaitTimeout,
    #[error("client_login_timeout")]
    ClientLoginTimeout,
    #[error("pooler cannot connect to server: {0}")]
    ServerConnect(String),
    /// The server refused the pooler's login; its own error is passed on.
    #[error("{message}")]
    ServerLogin { code: String, message: String },
    /// A statement creating session state, refused under `session_state = error`.
    #[error(
        "pooler: {0} creates session state, which transaction pooling cannot keep (session_state = error)"
    )]
    SessionState(&'static str),
    /// A named Parse too large for the pooler to keep (it must re-prepare it on other servers).
    #[error(
        "pooler: prepared statement text over {0} MB cannot be pooled; use an unnamed statement or the simple protocol"
    )]
    StatementTooLarge(usize),
    /// More session settings than the pooler carries for one client (`SET` of many names).
    #[error("pooler: too many session settings ({0} names or {1} bytes at most per client)")]
    TooManySettings(usize, usize),
    /// The server would not tell the values of the client's settings after its transaction.
    #[error("pooler: could not read back session settings: {0}")]
    SettingsUnknown(String),
    #[error("server conn crashed?")]
    ServerGone,
    #[error("server returned an unexpected response: {0}")]
    ServerProtocol(String),
    /// `server_login_retry`: the pool's last login failed a moment ago (PgBouncer's text).
    #[error("server login has been failing, cached error: {0} (server_login_retry)")]
    ServerLoginRetry(String),
    /// Graceful shutdown (SIGTERM, SIGINT, SHUTDOWN): PgBouncer's text, Postgres's SQLSTATE for
    /// an administrator-initiated termination, which drivers treat as "reconnect elsewhere".
    #[error("server shutting down")]
    ShuttingDown,
    #[error("client_idle_timeout")]
    ClientIdleTimeout,
    #[error("idle transaction timeout")]
    IdleTransactionTimeout,
    #[error("query timeout")]
    QueryTimeout,
    /// DISABLE on the console: new clients of the database are refused (PgBouncer's text).
    #[error("database \"{0}\" is disabled")]
    DatabaseDisabled(String),
    /// KILL_CLIENT on the console (PgBouncer's text).
    #[error("admin forced disconnect")]
    AdminKilled,
    /// `auth_query` failed in Postgres (or returned the wrong shape).
    #[error("auth_query failed: {0}")]
    AuthQuery(String),
    /// `auth_type = hba` and no line of `auth_hba_file` matches (PgBouncer's text).
    #[error("no authentication method is found")]
    NoHbaMatch,
    /// An HBA `reject` line matched (PgBouncer's text).
    #[error("login rejected")]
    LoginRejected,
    /// `cert`: no client certificate, or its CommonName is not the user (PgBouncer's text).
    #[error("certificate authentication failed")]
    CertAuthFailed,
    /// HBA `peer`: the Unix-socket client's OS user is not the user it asks for (PgBouncer's
    /// text).
    #[error("unix socket login rejected")]
    PeerRejected,
    /// A client queued longer than `transaction_timeout` allows in a transaction.
    #[error("transaction timeout")]
    TransactionTimeout,
    /// `client_tls_sslmode = require` and the client did not ask for TLS.
    #[error("SSL required")]
    SslRequired,
}

impl PoolerError {
    /// The SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            PoolerError::Io(_) | PoolerError::ServerGone => "08006",
            PoolerError::Protocol(_)
            | PoolerError::UnsupportedStartupParameter(_)
            | PoolerError::QueryWaitTimeout
            | PoolerError::ClientLoginTimeout
            | PoolerError::ServerProtocol(_)
            | PoolerError::ServerLoginRetry(_)
            | PoolerError::ClientIdleTimeout
            | PoolerError::IdleTransactionTimeout
            | PoolerError::QueryTimeout
            | PoolerError::DatabaseDisabled(_)
            | PoolerError::AdminKilled
            | PoolerError::AuthQuery(_)
            | PoolerError::TransactionTimeout => "08P01",
            PoolerError::NoHbaMatch
            | PoolerError::LoginRejected
            | PoolerError::CertAuthFailed
            | PoolerError::PeerRejected => "28000",
            PoolerError::ShuttingDown => "57P01",
            PoolerError::SslRequired => "28000",
            PoolerError::AuthFailed(_) => "28P01",
            PoolerError::SessionState(_) => "0A000",
            PoolerError::StatementTooLarge(_) | PoolerError::TooManySettings(..) => "54000",
            PoolerError::SettingsUnknown(_) => "08006",
            PoolerError::NotAllowed => "28000",
            PoolerError::NoSuchDatabase(_) => "3D000",
            PoolerError::TooManyClients => "53300",
            PoolerError::ServerConnect(_) => "08006",
            PoolerError::ServerLogin { code, .. } => code,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PoolerError::Io(_) => "io",
            PoolerError::Protocol(_) | PoolerError::UnsupportedStartupParameter(_) => {
                "protocol_violation"
            }
            PoolerError::AuthFailed(_)
            | PoolerError::NotAllowed
            | PoolerError::NoHbaMatch
            | PoolerError::LoginRejected
            | PoolerError::CertAuthFailed
            | PoolerError::PeerRejected => "auth_failed",
            PoolerError::AuthQuery(_) => "auth_query_failed",
            PoolerError::TransactionTimeout => "transaction_timeout",
            PoolerError::NoSuchDatabase(_) => "no_such_database",
            PoolerError::SessionState(_) => "session_state",
            PoolerError::StatementTooLarge(_) => "statement_too_large",
            PoolerError::TooManySettings(..) => "too_many_settings",
            PoolerError::SettingsUnknown(_) => "settings_unknown",
            PoolerError::TooManyClients => "max_client_conn",
            PoolerError::QueryWaitTimeout => "query_wait_timeout",
            PoolerError::ClientLoginTimeout => "client_login_timeout",
            PoolerError::ServerConnect(_) | PoolerError::ServerLogin { .. } => {
                "server_connect_failed"
            }
            PoolerError::ServerGone | PoolerError::ServerProtocol(_) => "server_gone",
            PoolerError::ServerLoginRetry(_) => "server_login_retry",
            PoolerError::ShuttingDown => "shutdown",
            PoolerError::ClientIdleTimeout => "client_idle_timeout",
            PoolerError::IdleTransactionTimeout => "idle_transaction_timeout",
            PoolerError::QueryTimeout => "query_timeout",
            PoolerError::SslRequired => "ssl_required",
            PoolerError::DatabaseDisabled(_) => "database_disabled",
            PoolerError::AdminKilled => "admin_killed",
        }
    }

    pub fn protocol(msg: impl Into<String>) -> PoolerError {
        PoolerError::Protocol(msg.into())
    }
}

pub type Result<T, E = PoolerError> = std::result::Result<T, E>;
