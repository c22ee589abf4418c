//! The `pooler` binary: parse flags, load the config (file plus environment), serve; turn
//! signals into a graceful shutdown (SIGTERM, SIGINT) or a reload (SIGHUP).

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

use pooler::app::App;
use pooler::config::{self, Config, env};
use pooler::listener::Running;
use pooler::{logging, supervisor};

/// jemalloc, not glibc's malloc: a login's allocations (tokio's cache-aligned task cell and
/// I/O registration, the startup strings) cost about 6,400 instructions in glibc, a sixth of
/// the login, most of it in `memalign` and in `free`'s consolidation; jemalloc takes 3,000
/// of them off (callgrind, `pgbench -S -C`). It also keeps 10,000 idle clients in 7-12 % less
/// memory. (mimalloc was as fast but held 40-60 % more memory per idle client.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A PgBouncer-compatible connection pooler for PostgreSQL",
    after_help = "\
Environment:
  POOLER_CONFIG                 the config file (same as --config)
  POOLER_<KEY>                  overrides a [pooler] key, e.g. POOLER_DEFAULT_POOL_SIZE=50
  POOLER_DATABASES__<DB>__<KEY> overrides a database entry's key, e.g.
                                POOLER_DATABASES__APP__HOST=db.internal
  POOLER_LOG                    log filter (tracing syntax), e.g. info or pooler=debug
  Kubernetes service variables (POOLER_PORT=tcp://..., POOLER_SERVICE_HOST, ...) and names
  unlike any key are ignored with a warning; other unknown POOLER_* names are errors.

Signals:
  SIGTERM, SIGINT  graceful shutdown: stop accepting, let transactions finish (at most
                   shutdown_timeout seconds), disconnect clients with 57P01, exit 0;
                   a second signal exits at once (status 1)
  SIGHUP           reload the config and auth files (like the console's RELOAD)"
)]
struct Cli {
    /// Path to the config file: TOML, or PgBouncer's pgbouncer.ini (read by its `.ini`
    /// extension or its content).
    #[arg(short, long, env = env::CONFIG_VAR, default_value = "pooler.toml")]
    config: PathBuf,
    /// Validate the config (with environment overrides) and the auth file, then exit:
    /// status 0 when valid, 2 with the file and key named when not.
    #[arg(long)]
    check: bool,
    /// Probe the pooler this config describes (GET /healthz on metrics_port, or a connection
    /// to listen_port when metrics_port = 0) and exit 0 if it answers, 1 if not: the
    /// container's HEALTHCHECK, with no curl needed in the image.
    #[arg(long)]
    health_check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the pooler.toml equivalent of a PgBouncer pgbouncer.ini (its %include files
    /// read), with what it ignores as comments; exit 2 if the ini cannot be used.
    Convert { file: PathBuf },
}

/// `pooler convert FILE`: the TOML goes to stdout, so `pooler convert a.ini > pooler.toml`.
fn convert(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pooler: {}: cannot read: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p);
    let converted = config::ini::parse(file, &text, &read).and_then(|parsed| {
        // The same checks a start would make, so what is printed is known to be valid.
        Config::from_table(parsed.table.clone(), &file.display().to_string(), &[])?;
        Ok(parsed)
    });
    let parsed = match converted {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pooler: {e}");
            return ExitCode::from(2);
        }
    };
    match config::ini::to_toml(&parsed, file) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pooler: cannot write TOML: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Convert { file }) = &cli.command {
        return convert(file);
    }
    // The config says how to log, so it is read first; its errors go to stderr as text.
    let config = match Config::load_with_overrides(&cli.config, env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pooler: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.health_check {
        return match pooler::healthcheck::probe(&config.pooler) {
            Ok(what) => {
                println!("pooler: healthy: {what}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("pooler: unhealthy: {why}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = std::env::var(env::LOG_VAR).ok();
    logging::init(config.pooler.log_format, filter.as_deref());
    let app = match App::new(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("pooler: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &app.config().warnings {
        tracing::warn!("{warning}");
    }
    if cli.check {
        println!("pooler: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pooler: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(app));
    // Tasks still running (sockets being closed) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The main thread's runtime: accept loops, signals, the supervisor, HTTP. With `workers = 1`
/// it runs the sessions too (everything on one thread, as PgBouncer); with more, sessions run
/// on that many worker threads of their own (`workers.rs`, started by `Running::start`).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn serve(app: App) -> ExitCode {
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("pooler: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let mut running = match Running::start(app).await {
        Ok(r) => r,
        Err(e) => {
            // The error names the address and what it was for (clients, metrics).
            eprintln!("pooler: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in &running.addrs {
        tracing::info!(%addr, "listening");
    }
    if let Some(path) = &running.unix_socket {
        tracing::info!(path = %path.display(), "listening on unix socket");
    }
    if let Some(addr) = running.metrics_addr {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    let app = running.app.clone();
    let control = running.app.clone();
    let reloads = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = supervisor::reload(&app, "SIGHUP");
        }
    });
    let mut signals = 0;
    let done = running.wait();
    tokio::pin!(done);
    loop {
        let name = tokio::select! {
            _ = &mut done => break,
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        signals += 1;
        if signals > 1 {
            tracing::warn!(signal = name, "second signal: exiting now");
            reloads.abort();
            return ExitCode::from(1);
        }
        tracing::info!(signal = name, "graceful shutdown");
        control.control.shutdown();
    }
    reloads.abort();
    ExitCode::SUCCESS
}
