//! The accept loop: one task per client connection.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::app::App;
use crate::client;
use crate::metrics;

/// Binds the configured address.
pub async fn bind(app: &App) -> std::io::Result<TcpListener> {
    let p = &app.config.pooler;
    TcpListener::bind((p.listen_addr.as_str(), p.listen_port)).await
}

/// Accepts clients until the task is dropped or SHUTDOWN. `max_client_conn` is enforced
/// inside each session, after the startup packet, so the refusal reaches the client as an
/// ErrorResponse.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    let mut shutdown = app.control.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => {
                app.control.set_listening(false);
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(client::serve(app.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A pooler serving in the background of the current runtime (used by tests and `main`).
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (None: `metrics_port = 0`).
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    task: Option<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(app: App) -> std::io::Result<Running> {
        let app = Arc::new(app);
        let listener = bind(&app).await?;
        let addr = listener.local_addr()?;
        let p = &app.config.pooler;
        let mut background = vec![tokio::spawn(metrics::upkeep(Arc::downgrade(&app)))];
        let mut metrics_addr = None;
        if p.metrics_port != 0 {
            let http = TcpListener::bind((p.metrics_addr.as_str(), p.metrics_port)).await?;
            metrics_addr = Some(http.local_addr()?);
            background.push(tokio::spawn(metrics::serve_http(app.clone(), http)));
        }
        app.control.set_listening(true);
        let task = tokio::spawn(accept_loop(app.clone(), listener));
        Ok(Running {
            addr,
            metrics_addr,
            app,
            task: Some(task),
            background,
        })
    }

    /// Waits for the accept loop (it only ends if the task is aborted).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
    }
}
