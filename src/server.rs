//! One connection to Postgres: connect, log in as the pool's user, remember the server's
//! parameters, run the pooler's own housekeeping queries (`SET`, `DISCARD ALL`).
//!
//! Relaying client traffic is not here: the client session drives the socket directly
//! (see `relay.rs`), so a checked-out server is just a socket plus what we know about it.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{self, ScramKeys, scram::ScramKeyClient};
use crate::error::{PoolerError, Result};
use crate::prepared::ServerCache;

/// What the pooler knows to log in to Postgres as a pool's user.
#[derive(Clone, Default)]
pub enum ServerCredential {
    /// No password known yet (only a trust server will accept us).
    #[default]
    None,
    Password(String),
    /// An `md5…` secret: enough for md5 auth, not for SCRAM.
    Md5(String),
    /// Keys a client proved during its SCRAM login: enough for SCRAM.
    ScramKeys(ScramKeys),
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ServerTarget {
    /// TLS towards this server (`server_tls_sslmode`); None: plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// Every host of the database entry, in order; `host`/`port` are the first (see `at`).
    pub hosts: Vec<(String, u16)>,
}

impl ServerTarget {
    /// The same target on its `i`th host (the first when `i` is out of range).
    pub fn at(&self, i: usize) -> ServerTarget {
        let mut t = self.clone();
        if let Some((host, port)) = self.hosts.get(i) {
            t.host = host.clone();
            t.port = *port;
        }
        t
    }

    /// The address of the `i`th host, for cancels and SHOW SERVERS.
    pub fn address(&self, i: usize) -> (&str, u16) {
        self.hosts
            .get(i)
            .map(|(h, p)| (h.as_str(), *p))
            .unwrap_or((self.host.as_str(), self.port))
    }
}

/// Parameter names and values; names compare case-insensitively, as Postgres's GUCs do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

/// A client's whole session state (tracked parameters and settings) in one comparable form:
/// a server made to match it records it, so the next client with an equal state (most often
/// every client of a pool) needs no comparison name by name and no query.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionState {
    params: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

impl SessionState {
    pub fn of(params: &Params, settings: &Params) -> Arc<SessionState> {
        let sorted = |p: &Params| {
            let mut v = p.0.clone();
            v.sort_unstable();
            v
        };
        Arc::new(SessionState {
            params: sorted(params),
            settings: sorted(settings),
        })
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        // Names are nearly always in the one spelling (the canonical one, or Postgres's): an
        // exact pass first, which mostly compares lengths, then the case-insensitive one.
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(entry) => {
                if entry.1 != value {
                    entry.1 = value.to_string();
                }
            }
            None => self.0.push((name.to_string(), value.to_string())),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Without spare capacity: for values a client keeps for as long as it is connected.
    pub fn shrunk(mut self) -> Params {
        self.0.shrink_to_fit();
        self
    }
}

/// Rows of one of the pooler's own queries: text values, `None` for NULL.
pub type Rows = Vec<Vec<Option<String>>>;

fn data_row(body: &backend::DataRowBody) -> Result<Vec<Option<String>>> {
    use fallible_iterator::FallibleIterator;
    let buf = body.buffer();
    body.ranges()
        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
        .collect()
        .map_err(|e: std::io::Error| unexpected(&format!("bad DataRow: {e}")))
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

pub struct ServerConn {
    pub stream: TcpStream,
    pub id: u64,
    /// Current values of the server's reported parameters, plus those the pooler set itself.
    pub params: Params,
    /// Session settings (not tracked parameters) this server has away from its defaults, as
    /// the pooler set them or read them back after a client's transaction.
    pub settings: Params,
    /// Protocol-level prepared statements this server has (transaction mode).
    pub statements: ServerCache,
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub created_at: Instant,
    /// `created_at` as a `clock` stamp, worked out once: every transaction shows it (SHOW
    /// CLIENTS' linked server) and checks the server's age against it.
    pub created_us: u64,
    /// When the server was last given back (a `clock` stamp).
    pub last_used_us: u64,
    /// A `RESET` ran, or a parameter sync failed: `params` may not be what the server has,
    /// so the next sync sets every tracked parameter explicitly.
    pub params_uncertain: bool,
    /// The client state this server was last made to match; `None` once anything may have
    /// changed `params` or `settings` since (every change clears it).
    pub synced: Option<Arc<SessionState>>,
    /// How long one of the pooler's own queries (`run_internal`) may take; set by the pool.
    pub query_bound: Duration,
    /// Which of the target's hosts this server is on (`ServerTarget::at`); set by the pool.
    pub host: usize,
    /// A guard the pool attaches, dropped with the server: over several hosts, what counts it
    /// against its host's share (`pool::HostTicket`; opaque here, so that the server does not
    /// depend on the pool).
    pub host_ticket: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The worker thread whose I/O driver the socket is registered with (None: not a
    /// worker's; see `adopt`).
    home: Option<u32>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn#{}(pid {})", self.id, self.backend_pid)
    }
}

fn unexpected(what: &str) -> PoolerError {
    PoolerError::ServerProtocol(what.to_string())
}

/// Reads backend messages into `buf` until one is complete, and returns it.
async fn next_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<backend::Message> {
    loop {
        if let Some(msg) = backend::Message::parse(buf)? {
            return Ok(msg);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PoolerError::ServerGone);
        }
    }
}

/// The SQLSTATE and message of a server's ErrorResponse.
fn error_fields(body: &backend::ErrorResponseBody) -> (String, String) {
    use fallible_iterator::FallibleIterator;
    let (mut code, mut message) = (String::from("08006"), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

fn server_error(body: &backend::ErrorResponseBody) -> PoolerError {
    let (code, message) = error_fields(body);
    PoolerError::ServerLogin { code, message }
}

impl ServerConn {
    /// Opens and logs in a new server connection within `timeout`.
    pub async fn connect(
        target: &ServerTarget,
        credential: &ServerCredential,
        timeout: Option<Duration>,
    ) -> Result<ServerConn> {
        let attempt = ServerConn::connect_inner(target, credential);
        match timeout {
            Some(t) => tokio::time::timeout(t, attempt).await.map_err(|_| {
                PoolerError::ServerConnect(format!(
                    "timed out after {}s (server_connect_timeout) connecting to {}:{}",
                    t.as_secs_f64(),
                    target.host,
                    target.port
                ))
            })?,
            None => attempt.await,
        }
    }

    async fn connect_inner(
        target: &ServerTarget,
        credential: &ServerCredential,
    ) -> Result<ServerConn> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                PoolerError::ServerConnect(format!("{}:{}: {e}", target.host, target.port))
            })?;
        stream.set_nodelay(true)?;
        crate::keepalive::apply(&stream);
        let stream = match &target.tls {
            Some(tls) => crate::tls::connect_server(stream, tls, &target.host).await?,
            None => stream,
        };
        let created_at = Instant::now();
        let created_us = crate::clock::us_of(created_at);
        let mut conn = ServerConn {
            stream,
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            params: Params::default(),
            settings: Params::default(),
            statements: ServerCache::default(),
            backend_pid: 0,
            backend_secret: 0,
            created_at,
            created_us,
            last_used_us: created_us,
            params_uncertain: false,
            synced: None,
            query_bound: Duration::from_secs(15),
            host: 0,
            host_ticket: None,
            home: crate::workers::current(),
        };
        // An IO error here is the server's, not the client's: the client gets 08006.
        conn.login(target, credential).await.map_err(|e| match e {
            PoolerError::Io(e) => PoolerError::ServerConnect(format!(
                "{}:{}: login failed: {e}",
                target.host, target.port
            )),
            other => other,
        })?;
        Ok(conn)
    }

    async fn login(&mut self, target: &ServerTarget, credential: &ServerCredential) -> Result<()> {
        let mut out = BytesMut::with_capacity(256);
        frontend::startup_message(
            [
                ("user", target.user.as_str()),
                ("database", target.dbname.as_str()),
            ],
            &mut out,
        )?;
        self.send(&mut out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut scram: Option<ScramSha256> = None;
        let mut key_scram: Option<ScramKeyClient> = None;
        let no_password = || PoolerError::ServerLogin {
            code: "28P01".into(),
            message: format!(
                "the pooler has no password it can use to log in to the server as \"{}\"",
                target.user
            ),
        };
        loop {
            match next_message(&mut self.stream, &mut buf).await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let ServerCredential::Password(p) = credential else {
                        return Err(no_password());
                    };
                    frontend::password_message(p.as_bytes(), &mut out)?;
                    self.send(&mut out).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let secret = match credential {
                        ServerCredential::Password(p) => auth::md5_secret(&target.user, p),
                        ServerCredential::Md5(m) => m.clone(),
                        _ => return Err(no_password()),
                    };
                    let response = auth::md5_response(&secret, body.salt());
                    frontend::password_message(response.as_bytes(), &mut out)?;
                    self.send(&mut out).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    use fallible_iterator::FallibleIterator;
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next()? {
                        offered |= m == auth::scram::MECHANISM;
                    }
                    if !offered {
                        return Err(unexpected("server offers no SASL mechanism we support"));
                    }
                    let first = match credential {
                        ServerCredential::Password(p) => {
                            let client =
                                ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                            let first = client.message().to_vec();
                            scram = Some(client);
                            first
                        }
                        ServerCredential::ScramKeys(keys) => {
                            let (client, first) = ScramKeyClient::new(*keys);
                            key_scram = Some(client);
                            first
                        }
                        _ => return Err(no_password()),
                    };
                    frontend::sasl_initial_response(auth::scram::MECHANISM, &first, &mut out)?;
                    self.send(&mut out).await?;
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let response = if let Some(c) = scram.as_mut() {
                        c.update(body.data())?;
                        c.message().to_vec()
                    } else if let Some(c) = key_scram.as_mut() {
                        c.update(body.data())?
                    } else {
                        return Err(unexpected("SASLContinue out of order"));
                    };
                    frontend::sasl_response(&response, &mut out)?;
                    self.send(&mut out).await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    if let Some(c) = scram.as_mut() {
                        c.finish(body.data())?;
                    } else if let Some(c) = key_scram.as_ref() {
                        c.finish(body.data())?;
                    }
                }
                backend::Message::ParameterStatus(body) => {
                    self.params.set(body.name()?, body.value()?);
                    self.synced = None;
                }
                backend::Message::BackendKeyData(body) => {
                    self.backend_pid = body.process_id();
                    self.backend_secret = body.secret_key();
                }
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                backend::Message::NoticeResponse(_) => {}
                _ => return Err(unexpected("unexpected message during login")),
            }
        }
    }

    async fn send(&mut self, out: &mut BytesMut) -> Result<()> {
        self.stream.write_all(out).await?;
        out.clear();
        Ok(())
    }

    /// Runs the pooler's own simple query and swallows its result; parameter changes it
    /// causes are recorded. Returns the server's error, if the query failed. Bounded by
    /// `query_bound`: past it the result is `QueryTimeout` and the server, left mid-query,
    /// must be closed (every caller discards a server whose housekeeping failed).
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<(String, String)>> {
        let bound = self.query_bound;
        tokio::time::timeout(bound, self.run_internal_unbounded(sql))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    backend_pid = self.backend_pid,
                    sql,
                    bound_s = bound.as_secs_f64(),
                    "the pooler's own query timed out; closing server"
                );
                Err(PoolerError::QueryTimeout)
            })
    }

    /// Runs one of the pooler's own queries and returns its rows (text values, `None` for
    /// NULL), or the server's error (code, message).
    pub async fn query_rows(&mut self, sql: &str) -> Result<Result<Rows, (String, String)>> {
        let mut rows = Rows::new();
        let bound = self.query_bound;
        let run = self.run_collecting(sql, Some(&mut rows));
        match tokio::time::timeout(bound, run).await {
            Ok(Ok(None)) => Ok(Ok(rows)),
            Ok(Ok(Some(failure))) => Ok(Err(failure)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PoolerError::QueryTimeout),
        }
    }

    async fn run_internal_unbounded(&mut self, sql: &str) -> Result<Option<(String, String)>> {
        self.run_collecting(sql, None).await
    }

    async fn run_collecting(
        &mut self,
        sql: &str,
        mut rows: Option<&mut Rows>,
    ) -> Result<Option<(String, String)>> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        frontend::query(sql, &mut out)?;
        self.send(&mut out).await?;
        let mut buf = BytesMut::with_capacity(512);
        let mut failure = None;
        loop {
            match next_message(&mut self.stream, &mut buf).await? {
                backend::Message::ReadyForQuery(body) => {
                    if body.status() != b'I' {
                        return Err(unexpected("housekeeping query left a transaction open"));
                    }
                    if !buf.is_empty() {
                        return Err(unexpected("data after ReadyForQuery"));
                    }
                    return Ok(failure);
                }
                backend::Message::ParameterStatus(body) => {
                    self.params.set(body.name()?, body.value()?);
                    self.synced = None;
                }
                backend::Message::ErrorResponse(body) => {
                    failure = Some(error_fields(&body));
                }
                backend::Message::CopyInResponse(_) => {
                    return Err(unexpected("housekeeping query started COPY"));
                }
                backend::Message::DataRow(body) => {
                    if let Some(rows) = rows.as_deref_mut() {
                        rows.push(data_row(&body)?);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs one of the pooler's own queries and returns the first row's values (text, None
    /// for NULL); the server's error as an error. Bounded like `run_internal`.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        match self.query_rows(sql).await? {
            Ok(rows) => rows
                .into_iter()
                .next()
                .ok_or_else(|| unexpected("the pooler's own query returned no row")),
            Err((code, message)) => Err(PoolerError::ServerLogin { code, message }),
        }
    }

    /// True when the idle server has not sent anything and is still connected. A backend that
    /// was terminated while idle has left an error and EOF in the socket; this sees it without
    /// blocking and keeps the next client from inheriting a dead connection.
    pub fn is_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Moves the socket to the I/O driver of the worker thread this runs on, when it is
    /// registered with another's (a server opened or last used by a session of another
    /// thread): its readiness then wakes this thread's session directly, instead of another
    /// thread's driver waking it across threads on every reply.
    pub fn adopt(&mut self) -> std::io::Result<()> {
        crate::workers::adopt(&mut self.stream, &mut self.home)
    }

    /// The worker thread whose I/O driver the socket is registered with (see `adopt`).
    pub fn home(&self) -> Option<u32> {
        self.home
    }

    /// Says goodbye politely; errors do not matter, the socket is dropped either way.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::with_capacity(5);
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&out)).await;
    }
}
