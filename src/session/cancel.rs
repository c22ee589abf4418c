//! CancelRequests: a client's pooler-issued key, forwarded with the real backend's key to
//! the server that client holds at that moment (or to the peer pooler that owns the key).

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::App;
use crate::config::secs;
use crate::pool::{Pool, PooledServer};

/// Passes a client's CancelRequest on to the server running its query, with that server's
/// own key. A key that matches no client, or a client with no server right now, cancels
/// nothing; the requester is told nothing either way, as with Postgres.
pub(super) async fn forward_cancel(app: &App, pid: i32, secret: i32) {
    // Another pooler's key goes to that pooler (`peers`); only this pooler's are looked up.
    let peer_limit = cancel_limit(app) - std::time::Duration::from_secs(1);
    let Some(secret) = app.peers.cancel(pid, secret, peer_limit).await else {
        return;
    };
    let Some(target) = app.clients_registry.cancel_target(pid, secret) else {
        tracing::debug!(pid, "cancel request matches no active client");
        return;
    };
    let mut msg = BytesMut::with_capacity(16);
    postgres_protocol::message::frontend::cancel_request(
        target.backend_pid,
        target.backend_secret,
        &mut msg,
    );
    // Postgres closes the connection once it has signalled the backend: only then may the
    // client's server go to someone else (`target` holds it until dropped).
    let send = send_cancel(&target.host, target.port, &msg);
    let limit = cancel_limit(app) - std::time::Duration::from_secs(1);
    match tokio::time::timeout(limit, send).await {
        Ok(Ok(())) => tracing::debug!(backend_pid = target.backend_pid, "cancel forwarded"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
        Err(_) => tracing::warn!("timed out forwarding cancel request"),
    }
}

/// Sends a CancelRequest and waits until Postgres closes the connection (it has signalled
/// the backend by then).
async fn send_cancel(host: &str, port: u16, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect((host, port)).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Closes a server whose client left in the middle of a transaction. Its query may still be
/// running (Postgres notices a closed client only when it next reads or writes), so it is
/// cancelled, and the backend told to terminate and waited for, before the slot is given
/// back: Postgres never holds more of the pool's backends than the pool's bound (issue 12).
/// Bounded like a cancel; past the bound the server is closed anyway.
pub(super) async fn close_busy(app: &App, pool: &Pool, mut server: PooledServer, running: bool) {
    let cancel = async {
        if running {
            let mut msg = BytesMut::with_capacity(16);
            postgres_protocol::message::frontend::cancel_request(
                server.backend_pid,
                server.backend_secret,
                &mut msg,
            );
            let (host, port) = pool.target.address(server.host);
            send_cancel(host, port, &msg).await?;
        }
        server
            .stream
            .write_all(&crate::wire::Frontend::Terminate.empty())
            .await?;
        // The backend closes its socket as it exits: its replies until then are dropped.
        let mut sink = [0u8; 4096];
        while server.stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(cancel_limit(app), cancel)
        .await
        .is_err()
    {
        tracing::warn!(
            backend_pid = server.backend_pid,
            "backend of a departed client did not end in time"
        );
    }
    pool.discard(server);
}

/// How long a session waits for its cancels to reach Postgres before it closes its server
/// instead: a cancel is bounded by `server_connect_timeout` (see `forward_cancel`).
pub(super) fn cancel_limit(app: &App) -> std::time::Duration {
    secs(app.config().pooler.server_connect_timeout).unwrap_or(std::time::Duration::from_secs(15))
        + std::time::Duration::from_secs(1)
}
