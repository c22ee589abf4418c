//! The accept loop: one task per client connection.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::app::App;
use crate::client;

/// Binds the configured address.
pub async fn bind(app: &App) -> std::io::Result<TcpListener> {
    let p = &app.config.pooler;
    TcpListener::bind((p.listen_addr.as_str(), p.listen_port)).await
}

/// Accepts clients until the task is dropped. `max_client_conn` is enforced inside each
/// session, after the startup packet, so the refusal reaches the client as an ErrorResponse.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        match listener.accept().await {
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
    pub app: Arc<App>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(app: App) -> std::io::Result<Running> {
        let app = Arc::new(app);
        let listener = bind(&app).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(app.clone(), listener));
        Ok(Running {
            addr,
            app,
            task: Some(task),
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
    }
}
