//! The `pooler` binary: parse flags, load the config, serve.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use pooler::app::App;
use pooler::config::Config;
use pooler::listener::Running;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A PgBouncer-compatible connection pooler for PostgreSQL"
)]
struct Cli {
    /// Path to the TOML config file.
    #[arg(short, long, env = "POOLER_CONFIG", default_value = "pooler.toml")]
    config: PathBuf,
    /// Validate the config (and auth file) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POOLER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let app = match Config::load(&cli.config).and_then(App::new) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("pooler: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("pooler: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pooler: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match Running::start(app).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pooler: cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %running.addr, "listening");
        if let Some(addr) = running.metrics_addr {
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        }
        tokio::select! {
            _ = running.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; exiting"),
        }
        ExitCode::SUCCESS
    })
}
