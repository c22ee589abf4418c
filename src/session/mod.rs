//! One client connection, from startup packet to goodbye, as one task.
//!
//! Login: the pooler answers SSL/GSS requests with 'N', checks the startup parameters and the
//! password itself, then greets the client with the pool's server parameters and its own
//! BackendKeyData. After that the session loops: wait for a request, check a server out,
//! make the server's session parameters match the client's, relay, give the server back.

mod auth_query;
mod cancel;
mod parts;
pub mod relay;
mod settings;
pub mod watchdog;

use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::admin::{self, Console};
use crate::app::App;
use crate::auth::hba::{Method, Origin};
use crate::auth::{self, Secret, User};
use crate::config::{AuthType, Config, PoolMode, secs};
use crate::engine::{self, ClientSide, Flow, ServerSide, Statements};
use crate::error::{PoolerError, Result};
use crate::logging::Addr;
use crate::pool::{Pool, PooledServer};
use crate::prepared::ClientStatements;
use crate::recycled::RecycledBox;
use crate::registry::{Registration, Relayed};
use crate::server::{Params, ServerConn, ServerCredential, SessionState};
use crate::wire::{self, StartupRequest};
use relay::{Relay, RelayEnd};
use watchdog::Watchdog;

/// A logged-in client.
///
/// Its user and database names are its registration's (`client.info`).
struct Session {
    pool: Arc<Pool>,
    /// This client in SHOW CLIENTS; dropped (unregistered) before the socket closes.
    client: Registration,
}

/// The login's read buffer: a startup packet and a password message fit.
const LOGIN_READ: usize = 1024;

/// What a login leads to.
// Not boxed: a login's result lives only until the session starts, and a box would be one
// more allocation per login.
#[allow(clippy::large_enum_variant)]
enum Login {
    Pool(Session, Between),
    Console(Console),
}

/// Serves one accepted connection to the end. Never panics on client input; every refusal
/// is a FATAL ErrorResponse with a SQLSTATE.
///
/// Not an `async fn`: an async fn keeps its arguments for as long as it runs, and this future
/// lives as long as the client. The login, which needs the client's origin, and everything
/// but the logged-in session is one boxed future, gone once the client is in.
pub fn serve(
    app: Arc<App>,
    stream: TcpStream,
    origin: Origin,
) -> impl std::future::Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use tokio_util::either::Either;
    // `then`, not an async block awaiting one future after the other: the block would keep
    // room for the admitted client beside the session future that owns it.
    Box::pin(admit(app, stream, origin)).then(|admitted| match admitted {
        Some((admitted, kept)) => Either::Left(admitted.run(kept)),
        None => Either::Right(std::future::ready(())),
    })
}

/// A client that logged in to a pool, with what the end of its session needs.
struct Admitted {
    app: Arc<App>,
    stream: TcpStream,
    session: Session,
    /// The client's place in the connection count, given back when the session ends.
    _slot: crate::app::ClientSlot,
}

/// The login, to its end: `None` when the connection was not a pool login or was refused
/// (the refusal written), or was the console's (run to its end here).
async fn admit(
    app: Arc<App>,
    mut stream: TcpStream,
    origin: Origin,
) -> Option<(Admitted, Between)> {
    let _ = stream.set_nodelay(true);
    let peer = origin.addr;
    let (slot, count) = app.client_connected();
    let login = login(&app, &mut stream, count, &origin);
    let config = app.config();
    let login = match secs(config.pooler.client_login_timeout) {
        Some(t) => tokio::time::timeout(t, login)
            .await
            .unwrap_or(Err(PoolerError::ClientLoginTimeout)),
        None => login.await,
    };
    let (session, kept) = match login {
        // Logged in while the pooler started shutting down: let it go now.
        Ok(Some(Login::Pool(..))) if app.control.is_shutting_down() => {
            refuse(&mut stream, &PoolerError::ShuttingDown).await;
            return None;
        }
        Ok(Some(Login::Pool(session, kept))) => (session, kept),
        Ok(Some(Login::Console(console))) => {
            if let Err(e) = Box::pin(console.run(&app, &mut stream)).await {
                app.metrics.error(&e);
                refuse(&mut stream, &e).await;
            }
            return None;
        }
        Ok(None) => return None,
        Err(e) => {
            tracing::info!(peer = %Addr(peer), error = %e, "login refused");
            app.metrics.error(&e);
            refuse(&mut stream, &e).await;
            return None;
        }
    };
    if config.pooler.log_connections {
        tracing::info!(peer = %Addr(peer), db = %session.client.info.database, user = %session.client.info.user, "login");
    }
    Some((
        Admitted {
            app,
            stream,
            session,
            _slot: slot,
        },
        kept,
    ))
}

impl Admitted {
    /// The logged-in session to its end. (An async block, not an `async fn`: the fn would
    /// keep a second copy of `self`.) `kept` is held once, as the block's own value; the
    /// session loop works on it by reference.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, mut kept: Between) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let result = run_session(&self.app, &mut self.stream, &self.session, &mut kept).await;
            drop(kept);
            // Boxed, with everything it needs moved in: what the end needs would otherwise
            // take room in this future, which lives as long as the client.
            Box::pin(self.end(result)).await;
        }
    }

    /// The session's end: its error to the client, the disconnection logged.
    async fn end(mut self, result: Result<()>) {
        let Admitted {
            app,
            stream,
            session,
            ..
        } = &mut self;
        // Taken from the registry, not kept beside it: every idle client's future would hold
        // a second copy.
        let info = &session.client.info;
        let peer = info
            .addr
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Err(e) = &result {
            tracing::debug!(peer = %Addr(peer), error = %e, kind = e.kind(), "session ended with an error");
            app.metrics.error(e);
            refuse(stream, e).await;
        }
        let config = app.config();
        if config.pooler.log_disconnections {
            let reason = match &result {
                Ok(()) => "client close request".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::info!(
                peer = %Addr(peer), db = %session.client.info.database, user = %session.client.info.user,
                age_s = crate::clock::between(info.connected_us, crate::clock::now_us()).as_secs_f64(),
                %reason, "closing"
            );
        }
    }
}

async fn refuse(stream: &mut TcpStream, e: &PoolerError) {
    if matches!(e, PoolerError::Io(_)) {
        return;
    }
    let msg = e.to_fatal();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(&msg).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Runs the login exchange; `Ok(None)` for connections that were not logins (cancel requests).
async fn login(
    app: &Arc<App>,
    socket: &mut TcpStream,
    client_count: usize,
    origin: &Origin,
) -> Result<Option<Login>> {
    // The login's messages are read through a buffer: read a field at a time, a message that
    // filled each read exactly left the socket's readiness set, and the next read was a
    // system call answering "would block" (five per login, PgBouncer's count of reads is
    // half the pooler's). Anything the client sent past the login goes to the session.
    let mut reader = tokio::io::BufReader::with_capacity(LOGIN_READ, socket);
    let stream = &mut reader;
    let mut packet = wire::read_startup_buffered(stream).await?;
    let params = loop {
        match wire::parse_startup(&packet)? {
            StartupRequest::Startup { params } => break params,
            StartupRequest::Cancel { pid, secret } => {
                cancel::forward_cancel(app, pid, secret).await;
                return Ok(None);
            }
            // No TLS yet: 'N' tells the client to go on in cleartext (or give up if it insists).
            StartupRequest::Ssl | StartupRequest::GssEnc => {}
        }
        stream.write_all(b"N").await?;
        packet = wire::read_startup_buffered(stream).await?;
    };
    let config = app.config();
    if client_count > config.pooler.max_client_conn {
        return Err(PoolerError::TooManyClients);
    }
    let mut user_name = None;
    let mut database = None;
    let mut requested = Params::default();
    // Settings that are not tracked parameters: carried per client like a SET.
    let mut startup_settings = Params::default();
    let mut take_setting = |name: &str, value: &str| {
        if let Some(canonical) = app.tracked_name(name) {
            requested.set(canonical, value);
        } else if !app.is_ignored(name) {
            startup_settings.set(&name.to_ascii_lowercase(), value);
        }
    };
    for (name, value) in params {
        match name {
            "user" => user_name = Some(value),
            "database" => database = Some(value),
            "options" if !app.is_ignored("options") => {
                for (name, value) in settings::parse_options(value)? {
                    take_setting(&name, &value);
                }
            }
            // Not settings: a replication connection or a protocol extension the pooler does
            // not speak.
            _ if name == "replication" || name.starts_with("_pq_.") => {
                if !app.is_ignored(name) {
                    return Err(PoolerError::UnsupportedStartupParameter(name.to_string()));
                }
            }
            _ => take_setting(name, value),
        }
    }
    settings::check_bounds(&startup_settings)?;
    if config.pooler.application_name_add_host {
        // PgBouncer's format: "<name> - <address>:<port>", "app" when the client gave none.
        let name = requested.get("application_name").unwrap_or("app");
        let tagged = format!("{name} - {}", origin.addr);
        requested.set("application_name", &tagged);
    }
    let user_name = user_name
        .filter(|u| !u.is_empty())
        .ok_or_else(|| PoolerError::protocol("no user name specified in startup packet"))?;
    let database = database.filter(|d| !d.is_empty()).unwrap_or(user_name);

    let auth_type = auth_method(app, &config, origin, database, user_name)?;
    let mut user = app.users().get(user_name);
    // Only a password method needs the secret; trust and cert logins do not look it up.
    let needs_secret = matches!(
        auth_type,
        AuthType::Plain | AuthType::Md5 | AuthType::ScramSha256
    );
    if user.is_none()
        && needs_secret
        && !admin::is_console(database)
        && auth_query::settings(&config, database).is_some()
    {
        user = auth_query::lookup(app, &config, database, user_name).await?;
    }
    // The login's one write buffer: the password exchange's messages, then the greeting.
    let mut out = BytesMut::with_capacity(512);
    let keys = if auth_type == AuthType::Cert {
        // The certificate the TLS handshake verified must name this user.
        if origin.cert_name.as_deref() != Some(user_name) {
            return Err(PoolerError::CertAuthFailed);
        }
        None
    } else {
        auth::authenticate_client(stream, &mut out, auth_type, user_name, user.as_deref()).await?
    };
    let user = match user {
        Some(u) => u,
        // trust: a user not in the auth file may still log in; the server decides.
        None => Arc::new(User::new(user_name, Secret::Plain(String::new()))),
    };
    if admin::is_console(database) {
        if !stream.buffer().is_empty() {
            return Err(PoolerError::protocol(
                "data sent before the login completed",
            ));
        }
        // The console greets the client itself: SCRAM's SASLFinal goes first.
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        let console = Console::login(app, stream.get_mut(), user_name, database).await?;
        return Ok(Some(Login::Console(console)));
    }
    // Authenticated: from here on, telling which databases exist reveals nothing.
    let Some(db) = config.database(database) else {
        return Err(PoolerError::NoSuchDatabase(database.to_string()));
    };
    // The console's DISABLE: refused after authentication, like an unknown database.
    if app.control.is_disabled(database) {
        return Err(PoolerError::DatabaseDisabled(database.to_string()));
    }
    let pool = app.pool(database, &db, &user);
    if let Some(keys) = keys
        && db.user.is_none()
    {
        pool.offer_credential(ServerCredential::ScramKeys(keys));
    }
    if pool.defaults().is_none() {
        // First client of this pool: learn the server's parameters to greet it with.
        let server = pool.checkout().await?;
        pool.checkin(server);
    }
    let no_defaults = Params::default();
    let defaults = pool.defaults().unwrap_or(&no_defaults);

    // The client's values of the tracked parameters: the pool's shared copy when the last
    // client had the same (the common case: nothing to build), else built here.
    let no_tracked_defaults: Vec<(String, Option<String>)>;
    let tracked = match pool.tracked_defaults(&app.tracked) {
        Some(tracked) => tracked,
        None => {
            no_tracked_defaults = app.tracked.iter().map(|n| (n.clone(), None)).collect();
            &no_tracked_defaults
        }
    };
    let wanted = tracked.iter().filter_map(|(name, default)| {
        Some((name.as_str(), requested.get(name).or(default.as_deref())?))
    });
    let mut session_params = match pool.shared_params_equal_to(wanted.clone()) {
        Some(shared) => shared,
        None => {
            let mut built = Params::default();
            for (name, value) in wanted {
                built.set(name, value);
            }
            Arc::new(built)
        }
    };
    // Postgres refuses a login with an invalid startup value (`TimeZone=nowhere`): so does
    // the pooler, by applying the client's values on a server before greeting it. That also
    // gives the greeting Postgres's spelling of them. Any string is a valid application_name.
    let needs_check = requested.0.iter().any(|(name, value)| {
        !name.eq_ignore_ascii_case("application_name")
            && defaults
                .get(name)
                .is_none_or(|d| !d.eq_ignore_ascii_case(value))
    });
    // Startup settings this pool's servers accepted before need no server now.
    let remembered = if startup_settings.0.is_empty() {
        None
    } else {
        pool.accepted_settings(&startup_settings)
    };
    if let Some(spelled) = remembered.filter(|_| !needs_check) {
        startup_settings = spelled;
    } else if needs_check || !startup_settings.0.is_empty() {
        let asked = startup_settings.clone();
        let mut server = pool.checkout().await?;
        let mut checked = settings::sync(
            app,
            &mut server,
            &mut session_params,
            &startup_settings,
            &mut None,
        )
        .await;
        if checked.is_ok() && !startup_settings.0.is_empty() {
            // Postgres's spelling of the values (`8MB` for `8192`), so later comparisons match.
            let names: Vec<String> = startup_settings.0.iter().map(|(n, _)| n.clone()).collect();
            checked = settings::read_back(
                app,
                &mut server,
                &names,
                false,
                Arc::make_mut(&mut session_params),
                &mut startup_settings,
            )
            .await;
        }
        match checked {
            Ok(()) => {
                pool.checkin(server);
                pool.accept_settings(&asked, &startup_settings);
            }
            Err(e) => {
                pool.discard(server);
                return Err(e);
            }
        }
    }
    // What RESET returns to: the tracked parameters and the settings, as the client gave them.
    for (name, value) in &startup_settings.0 {
        requested.set(name, value);
    }
    let params = pool.share(session_params);
    wire::auth_ok(&mut out);
    pool.greeting(&params, &mut out);
    let app_name = params.get("application_name").unwrap_or_default();
    let client = app.clients_registry.register(
        stream.get_ref(),
        // The client's own address, also behind TLS (where the stream is the bridge's).
        Some(origin.addr),
        user_name,
        database,
        app_name,
        Some(pool.clone()),
    );
    let (pid, secret) = client.cancel_key;
    wire::backend_key_data(&mut out, pid, secret);
    wire::ready_for_query(&mut out, wire::STATUS_IDLE);
    stream.write_all(&out).await?;
    let startup = pool.share_startup(requested.0);
    let mut up = Flow::default();
    if !stream.buffer().is_empty() {
        // What the client sent past its login before it was answered.
        up.inbuf = BytesMut::from(stream.buffer());
    }
    let kept = Between {
        params,
        settings: startup_settings.shrunk(),
        state: None,
        up,
        client_side: ClientSide::of_client(
            (pool.settings.mode == PoolMode::Transaction).then_some(pool.settings.session_state),
            startup,
            client.info.id,
        ),
        client_statements: ClientStatements::default(),
    };
    Ok(Some(Login::Pool(Session { pool, client }, kept)))
}

/// The method this login is authenticated with: `auth_type`, or under `auth_type = hba` the
/// first matching line's (`reject` and no match refuse the login, with PgBouncer's texts).
fn auth_method(
    app: &App,
    config: &Config,
    origin: &Origin,
    database: &str,
    user: &str,
) -> Result<AuthType> {
    match config.pooler.auth_type {
        AuthType::Hba => match app.hba().method(origin, database, user) {
            Some(Method::Auth(t)) => Ok(t),
            // The kernel vouches for the client: nothing more to ask it.
            Some(Method::Peer) if origin.unix && origin.peer_user.as_deref() == Some(user) => {
                Ok(AuthType::Trust)
            }
            Some(Method::Peer) => Err(PoolerError::PeerRejected),
            Some(Method::Reject) => Err(PoolerError::LoginRejected),
            None => Err(PoolerError::NoHbaMatch),
        },
        t => Ok(t),
    }
}

/// What a logged-in client keeps between transactions: its side of the engine and the
/// session values the pooler carries for it to every server.
struct Between {
    /// The values this client expects of the tracked parameters (shared until it changes
    /// one).
    params: Arc<Params>,
    /// The client's other session settings (see `settings.rs`).
    settings: Params,
    /// `params` and `settings` as one comparable value; `None` after either changes.
    state: Option<Arc<SessionState>>,
    /// What the client sent: a request may arrive with the last one's reply still going out.
    up: Flow,
    client_side: ClientSide,
    client_statements: ClientStatements,
}

/// How this session's pool works, fixed at login.
struct Mode {
    release_on_idle: bool,
    rewrite_statements: bool,
    reset_always: bool,
    max_prepared: usize,
}

/// After a transaction: wait for the next request, or end the session.
enum Step {
    Next,
    End,
}

/// The session loop: one checkout per transaction (or one for the session).
///
/// Its future lives as long as the client, idle or not, so it holds only what waiting for
/// the next request needs; everything from the checkout to the server's release runs in a
/// future of its own (`transaction`), boxed in a recycled block while it runs. What the
/// client keeps between transactions is the caller's (`c`): built in here, the values moved
/// into it kept room of their own in this future beside it.
async fn run_session(
    app: &App,
    stream: &mut TcpStream,
    session: &Session,
    c: &mut Between,
) -> Result<()> {
    let pool = &session.pool;
    let release_on_idle = pool.settings.mode == PoolMode::Transaction;
    let max_prepared = app.config().pooler.max_prepared_statements;
    let mode = Mode {
        release_on_idle,
        rewrite_statements: release_on_idle && max_prepared > 0,
        // `server_reset_query_always`: every transaction leaves its server reset.
        reset_always: release_on_idle && app.config().pooler.server_reset_query_always,
        max_prepared,
    };
    let mut watchdog = Watchdog::new(app, &session.client);
    loop {
        c.up.shrink_if_empty();
        if !watchdog.next_request(stream, &mut c.up).await? {
            return Ok(());
        }
        if mode.rewrite_statements {
            let mut down = Flow::default();
            if engine::answer_locally(
                &mut c.up,
                &mut down,
                &app.statements,
                &mut c.client_statements,
            ) {
                session
                    .client
                    .set_prepared_statements(c.client_statements.len());
                down.flush(stream).await?;
                continue;
            }
        }
        let asked = session.client.waiting();
        let next = transaction(app, stream, session, &mode, c, &mut watchdog, asked);
        match RecycledBox::new(next).await? {
            Step::Next => {}
            Step::End => return Ok(()),
        }
    }
}

/// One transaction (or, in session mode, the session's whole stretch on its server): check
/// a server out, make its session values the client's, relay, give the server back.
async fn transaction(
    app: &App,
    stream: &mut TcpStream,
    session: &Session,
    mode: &Mode,
    c: &mut Between,
    watchdog: &mut Watchdog<'_>,
    asked: u64,
) -> Result<Step> {
    let pool = &session.pool;
    let Some((mut server, attached)) = watchdog.checkout(pool, stream, &mut c.up, asked).await?
    else {
        // The client left while queued: what it asked for never runs.
        return Ok(Step::End);
    };
    // The server's side of the relay and the requests in flight on it are the transaction's
    // (an idle client holds neither, nor does a queued one: with thousands of clients on a
    // pool of 150, taken before the checkout they held a set and its buffers per waiting
    // client): it ends with both flushed and empty.
    let mut lease = parts::Lease::take();
    let parts::Parts { down, tracker } = &mut *lease;
    session.client.attached(&server);
    if c.state.is_none() {
        c.state = pool.shared_state(&c.params, &c.settings);
    }
    if let Err(e) = settings::sync(app, &mut server, &mut c.params, &c.settings, &mut c.state).await
    {
        pool.discard(server);
        return Err(e);
    }
    let mut server_side = ServerSide::default();
    let ServerConn {
        stream: server_stream,
        params: server_params,
        statements: server_statements,
        synced: server_synced,
        ..
    } = &mut *server;
    let mut on_param = |name: &str, value: &str| {
        server_params.set(name, value);
        *server_synced = None;
        if let Some(canonical) = app.tracked_name(name) {
            if c.params.get(canonical) != Some(value) {
                Arc::make_mut(&mut c.params).set(canonical, value);
            }
            c.state = None;
        }
    };
    let statements = mode.rewrite_statements.then_some(Statements {
        registry: &app.statements,
        client: &mut c.client_statements,
        server: server_statements,
        max: mode.max_prepared,
    });
    let mut relay = Relay {
        client: stream,
        server: server_stream,
        up: &mut c.up,
        down,
        client_side: &mut c.client_side,
        server_side: &mut server_side,
        tracker,
        statements,
        client_info: Some(&session.client.info),
    };
    let end = watchdog
        .relay(&mut relay, mode.release_on_idle, &mut on_param)
        .await;
    tracker.drain_unprepared(&mut c.client_statements);
    session
        .client
        .set_prepared_statements(c.client_statements.len());
    if std::mem::take(&mut c.client_side.params_touched) {
        server.params_uncertain = true;
    }
    // Settings the transaction changed: read back before anyone else can get the server.
    let touched = std::mem::take(&mut c.client_side.settings_touched);
    let all = std::mem::take(&mut c.client_side.settings_all);
    let clean = matches!(
        end,
        Ok(RelayEnd::Idle | RelayEnd::ClientGone { server_clean: true })
    );
    if (all || !touched.is_empty())
        && mode.release_on_idle
        && clean
        && c.client_side.pinned.is_none()
    {
        let gone = !matches!(end, Ok(RelayEnd::Idle));
        let read = if gone {
            // Only what the server keeps matters now.
            let (mut p, mut s) = (Params::default(), Params::default());
            Box::pin(settings::read_back(
                app,
                &mut server,
                &touched,
                all,
                &mut p,
                &mut s,
            ))
            .await
        } else {
            // The client has its reply; the read costs it no latency.
            down.flush(stream).await?;
            c.state = None;
            Box::pin(settings::read_back(
                app,
                &mut server,
                &touched,
                all,
                Arc::make_mut(&mut c.params),
                &mut c.settings,
            ))
            .await
        };
        if let Err(e) = read {
            pool.discard(server);
            return if gone { Ok(Step::End) } else { Err(e) };
        }
    }
    let xact_done = mode.release_on_idle && matches!(end, Ok(RelayEnd::Idle));
    let counts = Relayed {
        bytes_in: std::mem::take(&mut c.up.bytes_read),
        bytes_out: std::mem::take(&mut down.bytes_read),
        queries: std::mem::take(&mut c.client_side.queries),
        warned: std::mem::take(&mut c.client_side.warned),
        refused: std::mem::take(&mut c.client_side.refused),
    };
    // The transaction's one clock read after its checkout: its duration, the server's idle
    // time from now on.
    let now = crate::clock::now_us();
    session
        .client
        .relayed(pool, counts, (attached, now), xact_done);
    // A cancel for this client still on its way could hit the next client's query.
    if session.client.cancels_in_flight()
        && !Box::pin(session.client.cancels_settled(cancel::cancel_limit(app))).await
    {
        pool.discard(server);
        match end {
            Ok(RelayEnd::Idle) => {
                down.flush(stream).await?;
                return Ok(Step::Next);
            }
            Ok(RelayEnd::ClientGone { .. }) => return Ok(Step::End),
            Ok(RelayEnd::ServerGone) => return Err(PoolerError::ServerGone),
            Err(e) => return Err(e),
        }
    }
    match end {
        Ok(RelayEnd::Idle) if !mode.release_on_idle || c.client_side.pinned.is_some() => {
            // Session mode or a pinned client, the pooler is shutting down: the server is
            // reset and given back between transactions; the next request is refused.
            Box::pin(release_after_client(
                pool,
                server,
                c.client_side.pinned.is_some(),
            ))
            .await;
            down.flush(stream).await?;
        }
        Ok(RelayEnd::Idle) if mode.reset_always => {
            // The client has its reply first; the reset is the pooler's time, not its.
            let flushed = down.flush(stream).await;
            Box::pin(release_after_client(pool, server, true)).await;
            flushed?;
        }
        Ok(RelayEnd::Idle) => {
            pool.checkin_at(server, now);
            down.flush(stream).await?;
        }
        Ok(RelayEnd::ClientGone { server_clean: true }) => {
            let reset = c.client_side.pinned.is_some() || mode.reset_always;
            Box::pin(release_after_client(pool, server, reset)).await;
            return Ok(Step::End);
        }
        Ok(RelayEnd::ClientGone {
            server_clean: false,
        }) => {
            // Mid-transaction: closing the server makes Postgres roll back, and no other
            // client can ever see this transaction.
            Box::pin(cancel::close_busy(app, pool, server, !tracker.is_idle())).await;
            return Ok(Step::End);
        }
        Ok(RelayEnd::ServerGone) => {
            pool.discard(server);
            let _ = down.flush(stream).await;
            return Err(PoolerError::ServerGone);
        }
        Err(e) => {
            pool.discard(server);
            return Err(e);
        }
    }
    Ok(Step::Next)
}

/// A clean server whose client left: in session mode it is reset before anyone else gets it.
async fn release_after_client(pool: &Arc<Pool>, mut server: PooledServer, pinned: bool) {
    let reset = pool.settings.mode == PoolMode::Session || pinned;
    if reset && !pool.settings.reset_query.is_empty() {
        match server.run_internal(&pool.settings.reset_query).await {
            Ok(None) => {}
            Ok(Some((code, message))) => {
                tracing::warn!(%code, %message, "server_reset_query failed; closing server");
                pool.discard(server);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "server_reset_query failed; closing server");
                pool.discard(server);
                return;
            }
        }
        // DISCARD ALL resets every parameter to the server's defaults and deallocates
        // every prepared statement.
        if let Some(defaults) = pool.defaults() {
            server.params = defaults.clone();
        }
        server.settings = Params::default();
        server.synced = None;
        server.statements.clear();
    }
    pool.checkin(server);
}
