//! The accept loop: one task per client connection.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::accept::AcceptErrors;
use crate::app::App;
use crate::lifecycle::{self, Phase};
use crate::metrics;
use crate::tls;

/// Binds the configured address.
pub async fn bind(app: &App) -> std::io::Result<TcpListener> {
    let config = app.config();
    let p = &config.pooler;
    TcpListener::bind((p.listen_addr.as_str(), p.listen_port)).await
}

/// Accepts clients until the task is dropped or SHUTDOWN. `max_client_conn` is enforced
/// inside each session, after the startup packet, so the refusal reaches the client as an
/// ErrorResponse.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    let mut phase = app.control.phase_signal();
    let mut errors = AcceptErrors::new("clients");
    loop {
        let pause = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    errors.accepted();
                    tokio::spawn(tls::serve(app.clone(), stream, peer));
                    continue;
                }
                // EMFILE and friends: the connection stays in the backlog and the next accept
                // would fail at once; wait (see `accept`), a shutdown still ends the wait.
                Err(e) => errors.failed(&e),
            },
            _ = phase.wait_for(|p| *p >= Phase::Draining) => break,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = phase.wait_for(|p| *p >= Phase::Draining) => break,
        }
    }
    // Dropping the listener (on return) closes the socket: new connections are refused.
    app.control.set_listening(false);
}

/// A pooler serving in the background of the current runtime (used by tests and `main`).
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (None: `metrics_port = 0`).
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The shutdown supervisor: it ends when a shutdown is complete.
    supervisor: Option<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(app: App) -> std::io::Result<Running> {
        let app = Arc::new(app);
        let listener = bind(&app).await?;
        let addr = listener.local_addr()?;
        let config = app.config();
        let p = &config.pooler;
        let mut background = vec![tokio::spawn(metrics::upkeep(Arc::downgrade(&app)))];
        let mut metrics_addr = None;
        if p.metrics_port != 0 {
            let http = TcpListener::bind((p.metrics_addr.as_str(), p.metrics_port)).await?;
            metrics_addr = Some(http.local_addr()?);
            background.push(tokio::spawn(metrics::serve_http(app.clone(), http)));
        }
        app.control.set_listening(true);
        let task = tokio::spawn(accept_loop(app.clone(), listener));
        let supervisor = tokio::spawn(lifecycle::supervise(app.clone()));
        Ok(Running {
            addr,
            metrics_addr,
            app,
            task: Some(task),
            supervisor: Some(supervisor),
            background,
        })
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
        for task in self.task.iter().chain(&self.supervisor) {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
    }
}
