//! CancelRequests: a client's pooler-issued key, forwarded with the real backend's key to
//! the server that client holds at that moment (or to the peer pooler that owns the key).

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::App;
use crate::config::secs;

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
    let send = async {
        let mut s = TcpStream::connect((target.host.as_str(), target.port)).await?;
        s.write_all(&msg).await?;
        s.shutdown().await?;
        // Postgres closes the connection once it has signalled the backend: only then may
        // the client's server go to someone else (`target` holds it until dropped).
        let mut sink = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut s, &mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let limit = cancel_limit(app) - std::time::Duration::from_secs(1);
    match tokio::time::timeout(limit, send).await {
        Ok(Ok(())) => tracing::debug!(backend_pid = target.backend_pid, "cancel forwarded"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not forward cancel request"),
        Err(_) => tracing::warn!("timed out forwarding cancel request"),
    }
}

/// How long a session waits for its cancels to reach Postgres before it closes its server
/// instead: a cancel is bounded by `server_connect_timeout` (see `forward_cancel`).
pub(super) fn cancel_limit(app: &App) -> std::time::Duration {
    secs(app.config().pooler.server_connect_timeout).unwrap_or(std::time::Duration::from_secs(15))
        + std::time::Duration::from_secs(1)
}
