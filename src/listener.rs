//! The accept loops: one task per client connection.
//!
//! `listen_addr` is PgBouncer's: one address, a comma-separated list, or `*` (every IPv4 and
//! IPv6 address). `unix_socket_dir` adds PgBouncer's Unix socket, `<dir>/.s.PGSQL.<port>`,
//! which is where `psql -h <dir>` looks. A Unix connection is bridged to a loopback TCP pair
//! (as TLS is, see `tls.rs`), so the session and the relay keep driving one `TcpStream` type.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream, UnixListener};

use crate::accept::AcceptErrors;
use crate::app::App;
use crate::auth::hba::Origin;
use crate::config::secs;
use crate::error::PoolerError;
use crate::http;
use crate::lifecycle::Phase;
use crate::session;
use crate::supervisor;
use crate::tls;
use crate::workers::Workers;

/// A listener that could not be opened, naming what it was for.
fn listen_error(what: &str, addr: impl std::fmt::Display, e: std::io::Error) -> std::io::Error {
    let reason = match e.kind() {
        std::io::ErrorKind::AddrInUse => "address in use".to_string(),
        _ => e.to_string(),
    };
    std::io::Error::new(
        e.kind(),
        format!("cannot listen on {addr} ({what}): {reason}"),
    )
}

/// The addresses `listen_addr` names: `*` is every IPv4 and IPv6 address; a list is split at
/// commas; names are resolved.
async fn listen_addrs(listen_addr: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for part in listen_addr
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if part == "*" {
            addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            continue;
        }
        // An IPv6 literal may come bracketed, as in a URL.
        let host = part.trim_start_matches('[').trim_end_matches(']');
        for addr in tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| listen_error("clients", part, e))?
        {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    Ok(addrs)
}

/// One TCP listener. IPv6 ones are IPv6-only, so `*` can hold `0.0.0.0` and `::` on one port.
/// With `reuse_port` (`so_reuseport`) other processes may bind the same port: the kernel
/// spreads connections among the listeners of one user.
fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `copies` listeners on one address (at least one: the first is always bound), one per
/// accepting thread. More than one share the port as an `SO_REUSEPORT` group: the kernel
/// hashes each new connection to one of them, so the thread that accepts it serves it, and
/// only that thread wakes (one listener handing its connections to the threads cost the
/// accepting thread a wake-up and a hand-over per login). A process that does not set
/// `SO_REUSEPORT` still cannot bind the port; with `so_reuseport` off, one that does could
/// join the group.
fn bind_tcp_group(
    mut addr: SocketAddr,
    reuse_port: bool,
    copies: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_tcp(addr, reuse_port || copies > 1)?;
    // With port 0 (tests) the others take the port the first was given.
    addr.set_port(first.local_addr()?.port());
    let mut group = vec![first];
    for _ in 1..copies {
        group.push(bind_tcp(addr, true)?);
    }
    Ok(group)
}

/// Binds every address of `listen_addr`, `copies` listeners each (`bind_tcp_group`). With
/// `listen_port = 0` (tests) the first gets an ephemeral port and the others the same one.
pub async fn bind(app: &App, copies: usize) -> std::io::Result<Vec<Vec<std::net::TcpListener>>> {
    let config = app.config();
    let p = &config.pooler;
    let mut port = p.listen_port;
    let mut groups = Vec::new();
    let wildcard = p.listen_addr.split(',').any(|a| a.trim() == "*");
    for mut addr in listen_addrs(&p.listen_addr, port).await? {
        addr.set_port(port);
        let group = match bind_tcp_group(addr, p.so_reuseport, copies) {
            Ok(g) => g,
            // `*` on a host without IPv6: IPv4 alone, as PgBouncer does.
            Err(e) if wildcard && addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                tracing::warn!(error = %e, "listen_addr = *: no IPv6, listening on IPv4 only");
                continue;
            }
            Err(e) => return Err(listen_error("clients", addr, e)),
        };
        if let Some(first) = group.first() {
            port = first.local_addr()?.port();
        }
        groups.push(group);
    }
    Ok(groups)
}

/// The Unix socket PgBouncer would open: `<unix_socket_dir>/.s.PGSQL.<port>`. A socket file
/// left by a pooler that is gone is replaced; one that answers is in use.
fn bind_unix(dir: &Path, port: u16) -> std::io::Result<(UnixListener, PathBuf)> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(listen_error(
                "clients",
                path.display(),
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener =
        UnixListener::bind(&path).map_err(|e| listen_error("clients", path.display(), e))?;
    Ok((listener, path))
}

/// Accepts clients until the task is dropped or SHUTDOWN, and runs their sessions on the
/// runtime it runs on (a worker thread's with `workers` above one: each accepts on a
/// listener of its own, see `bind_tcp_group`). `max_client_conn` is enforced inside each
/// session, after the startup packet, so the refusal reaches the client as an ErrorResponse.
/// The loops of one address share `errors`: at the descriptor limit they all fail at once,
/// and the log gets one line for them, not one per loop.
pub async fn accept_loop(
    app: Arc<App>,
    listener: std::net::TcpListener,
    errors: Arc<std::sync::Mutex<AcceptErrors>>,
) {
    // Registered here, with this thread's I/O driver: the sockets it accepts are too.
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            // Its socket closes with it, so the kernel hashes no connection to it.
            tracing::error!(error = %e, "a client listener could not be polled");
            return;
        }
    };
    let errors = || {
        errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    // Whether this loop's last accept failed: only then does a success touch the shared
    // record (the common accept takes no lock).
    let mut failing = false;
    let mut phase = app.control.phase_signal();
    // One wait for the drain, made once: a new one per accept cost a watch-channel
    // registration each time. Polled first, so a stream of connections cannot hold it off.
    let draining = phase.wait_for(|p| *p >= Phase::Draining);
    tokio::pin!(draining);
    loop {
        let pause = tokio::select! {
            biased;
            _ = &mut draining => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut failing) {
                        errors().accepted();
                    }
                    tokio::spawn(serve(app.clone(), stream, peer));
                    continue;
                }
                // EMFILE and friends: the connection stays in the backlog and the next accept
                // would fail at once; wait (see `accept`), a shutdown still ends the wait.
                Err(e) => {
                    failing = true;
                    errors().failed(&e)
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut draining => break,
        }
    }
    // Closing the socket takes it out of the kernel's list, and with so_reuseport out of the
    // port's group, so new connections are refused or go to the other listeners. The ones the
    // kernel has already queued here would be reset by the close: accept them first (a
    // non-blocking sweep, then the close at once), so they get what every client of a
    // draining pooler gets, 57P01 (reconnect), instead of a reset.
    if let Ok(listener) = listener.into_std() {
        while let Ok((stream, peer)) = listener.accept() {
            // Accepted sockets do not inherit the listener's non-blocking mode.
            let registered = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            match registered {
                Ok(stream) => drop(tokio::spawn(serve(app.clone(), stream, peer))),
                Err(e) => tracing::warn!(
                    peer = %crate::logging::Addr(peer), error = %e, "accepted socket lost"
                ),
            }
        }
    }
    app.control.set_listening(false);
}

/// Serves an accepted TCP connection: TLS negotiation first when client TLS is on (see
/// `tls::negotiate`), then the ordinary session (`session::serve`). It lives here, not in
/// `tls.rs`, because it reaches up to the App and the session: `tls.rs` stays a layer the
/// server side (below the pool) can use.
///
/// Not an `async fn`, so that a plain session's task is the session's future alone (an async
/// fn would keep its arguments beside it for the client's lifetime).
fn serve(
    app: Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send {
    use tokio_util::either::Either;
    crate::keepalive::apply(&stream);
    if app.client_tls.is_none() {
        return Either::Left(session::serve(app, stream, Origin::tcp(peer)));
    }
    // Boxed: the TLS path's states (the handshake, a second session future) would otherwise
    // size every plain session's future too.
    Either::Right(Box::pin(serve_tls(app, stream, peer)))
}

async fn serve_tls(app: Arc<App>, stream: TcpStream, peer: SocketAddr) {
    let Some(tls) = app.client_tls.as_ref() else {
        return;
    };
    let timeout = secs(app.config().pooler.client_login_timeout);
    let negotiated = tls::negotiate(tls, stream);
    let negotiated = match timeout {
        Some(t) => tokio::time::timeout(t, negotiated)
            .await
            .unwrap_or(Err(PoolerError::ClientLoginTimeout)),
        None => negotiated.await,
    };
    match negotiated {
        Ok(Some(n)) => {
            let origin = Origin {
                addr: peer,
                unix: false,
                tls: n.tls,
                cert_name: n.cert_name,
                peer_user: None,
            };
            session::serve(app, n.stream, origin).await
        }
        Ok(None) => {}
        Err(e) => {
            tracing::info!(peer = %crate::logging::Addr(peer), error = %e, "TLS negotiation failed");
            app.metrics.error(&e);
        }
    }
}

/// The Unix socket's accept loop. Unix clients skip TLS negotiation (an SSLRequest gets 'N',
/// and `client_tls_sslmode = require` does not apply), as in PgBouncer: the socket never
/// leaves the host.
async fn accept_unix(app: Arc<App>, listener: UnixListener, path: PathBuf) {
    let mut phase = app.control.phase_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p >= Phase::Draining) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let app = app.clone();
                // For HBA `peer` lines: who is on the other end, as the kernel says.
                let peer_user = stream
                    .peer_cred()
                    .ok()
                    .and_then(|cred| user_name(cred.uid()));
                tokio::spawn(async move {
                    match tls::bridge(stream).await {
                        Ok(tcp) => {
                            // The session sees the loopback end; SHOW CLIENTS shows that address.
                            let peer = tcp
                                .local_addr()
                                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
                            let origin = Origin {
                                addr: peer,
                                unix: true,
                                tls: false,
                                cert_name: None,
                                peer_user,
                            };
                            session::serve(app, tcp, origin).await
                        }
                        Err(e) => tracing::warn!(error = %e, "unix socket client: bridge failed"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (unix socket)");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// The name of a uid in the system's user database (`getpwuid_r`), for HBA `peer`.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: `passwd` is plain data written by getpwuid_r, `buf` outlives the call and its
    // length is given; `result` is non-null only when `passwd` was filled in, and its
    // `pw_name` then points into `buf`, a NUL-terminated string.
    unsafe {
        let mut passwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut passwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || passwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(passwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// A pooler serving in the background of the current runtime (used by tests and `main`).
pub struct Running {
    /// The first client address listened on (`addrs` has them all).
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    /// The Unix socket's path, with `unix_socket_dir` set.
    pub unix_socket: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (None: `metrics_port = 0`).
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The shutdown supervisor: it ends when a shutdown is complete.
    supervisor: Option<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The session threads (None: sessions run on the caller's runtime); they stop when this
    /// is dropped, after the accept loops.
    workers: Option<Arc<Workers>>,
}

impl Running {
    pub async fn start(app: App) -> std::io::Result<Running> {
        let app = Arc::new(app);
        let config = app.config();
        let p = &config.pooler;
        // One session thread: sessions run on the runtime this is called on (the main
        // thread's, in the binary); more: on worker threads of their own (`workers.rs`).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = crate::workers::session_threads(p.workers, cores)
            .map(Workers::start)
            .transpose()?
            .map(Arc::new);
        let groups = bind(&app, workers.as_ref().map_or(1, |w| w.len())).await?;
        let addrs = groups
            .iter()
            .filter_map(|g| g.first())
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        let unix = match p.unix_socket_dir.trim() {
            "" => None,
            dir => {
                // PgBouncer names the socket after the port; with port 0 (tests), the TCP one.
                let port = addrs.first().map(|a| a.port()).unwrap_or(p.listen_port);
                Some(bind_unix(Path::new(dir), port)?)
            }
        };
        let Some(&addr) = addrs.first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("listen_addr = {:?} names no address", p.listen_addr),
            ));
        };
        let mut background = Vec::new();
        let mut metrics_addr = None;
        if p.metrics_port != 0 {
            let where_ = format!("{}:{}", p.metrics_addr, p.metrics_port);
            let http = TcpListener::bind((p.metrics_addr.as_str(), p.metrics_port))
                .await
                .map_err(|e| listen_error("metrics", &where_, e))?;
            metrics_addr = Some(http.local_addr()?);
            background.push(tokio::spawn(http::serve_http(app.clone(), http)));
        }
        app.control.set_listening(true);
        // Each worker accepts on its own listener of every group and serves what it accepts.
        let mut tasks = Vec::new();
        for group in groups {
            let errors = Arc::new(std::sync::Mutex::new(AcceptErrors::new("clients")));
            for (i, listener) in group.into_iter().enumerate() {
                let accept = accept_loop(app.clone(), listener, errors.clone());
                tasks.push(match &workers {
                    Some(w) => w.handle(i).spawn(accept),
                    None => tokio::spawn(accept),
                });
            }
        }
        let unix_socket = unix.map(|(listener, path)| {
            tasks.push(tokio::spawn(accept_unix(
                app.clone(),
                listener,
                path.clone(),
            )));
            path
        });
        let supervisor = tokio::spawn(supervisor::supervise(app.clone()));
        Ok(Running {
            addr,
            addrs,
            unix_socket,
            metrics_addr,
            app,
            tasks,
            supervisor: Some(supervisor),
            background,
            workers,
        })
    }

    /// How many threads run sessions (0: the caller's runtime).
    pub fn workers(&self) -> usize {
        self.workers.as_ref().map_or(0, |w| w.len())
    }

    /// Starts a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.app.control.shutdown();
    }

    /// Waits until a shutdown (signal, `shutdown()` or the console's SHUTDOWN) is complete.
    pub async fn wait(&mut self) {
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.supervisor) {
            task.abort();
        }
        // An aborted accept loop cannot remove its socket file.
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        for task in &self.background {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of listeners on one port: the kernel spreads connections over all of them
    /// (each worker accepts its own), and a process that does not set SO_REUSEPORT still
    /// cannot bind the port, as with one listener.
    #[test]
    fn a_listener_group_shares_one_port_and_each_listener_gets_connections() {
        let group =
            bind_tcp_group("127.0.0.1:0".parse().expect("addr"), false, 2).expect("a group");
        let addr = group[0].local_addr().expect("addr");
        assert_eq!(group[1].local_addr().expect("addr"), addr);
        let plain = std::net::TcpListener::bind(addr)
            .map(|_| ())
            .map_err(|e| e.kind());
        assert_eq!(plain, Err(std::io::ErrorKind::AddrInUse));
        const N: usize = 32;
        let clients: Vec<_> = (0..N)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut accepted = [0usize; 2];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while accepted.iter().sum::<usize>() < N && std::time::Instant::now() < deadline {
            for (i, l) in group.iter().enumerate() {
                while l.accept().is_ok() {
                    accepted[i] += 1;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(accepted.iter().sum::<usize>(), N, "{accepted:?}");
        // Hashed per connection: all 32 on one listener has odds 2^-31.
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
        drop(clients);
    }

    /// Every connected client holds one session future for as long as it stays connected,
    /// idle or not: its size is most of the pooler's memory per idle client (PgBouncer's is
    /// about 1 KiB all told). Everything but waiting for the next request is boxed (the
    /// login, TLS, a transaction in a recycled block, the session's end) so that it does not
    /// size it; this fails when one creeps back in (it was 7 KiB, then 3.3 KiB, 928 bytes;
    /// the transaction alone is about 1 KiB). Tokio's task adds 96 bytes and rounds up to
    /// 128: at most 672 bytes keeps the task at 768.
    #[tokio::test]
    async fn a_session_future_stays_small() {
        let config = crate::config::Config::parse(
            "[pooler]\nauth_type = \"trust\"\n[databases.db]\nport = 5432\n",
            "t.toml",
        )
        .expect("config");
        let app = Arc::new(App::new(config).expect("app"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let session = serve(app, stream, addr);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 672, "a session future is {size} bytes");
    }
}
