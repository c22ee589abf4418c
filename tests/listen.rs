//! Where the pooler listens: `listen_addr = "*"` and comma lists (each address served),
//! PgBouncer's Unix socket in `unix_socket_dir` (tokio-postgres and `psql -h DIR` log in
//! through it), and a port clash that names the address and what it was for.

mod common;

use common::*;
use std::time::Duration;

fn toml(pg: &PgServer, db: &str, listen: &str) -> String {
    format!(
        "[pooler]\n{listen}\nlisten_port = 0\nmetrics_port = 0\nauth_file = \"userlist.txt\"\n\
         log_connections = 0\nlog_disconnections = 0\n\
         [databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    )
}

async fn query_on(host: &str, port: u16, db: &str) -> String {
    let url =
        format!("host={host} port={port} user={APP_USER} password={APP_PASSWORD} dbname={db}");
    let client = tokio::time::timeout(Duration::from_secs(20), connect(&url))
        .await
        .unwrap_or_else(|_| panic!("connect {url}: timed out"));
    first_value(&client, "SELECT current_database()").await
}

#[tokio::test]
async fn listen_addr_star_listens_everywhere() {
    let pg = PgServer::shared();
    let db = pg.create_db("listen_star").await;
    let config = toml(pg, &db, "listen_addr = \"*\"");
    let pooler = Pooler::start_from_files(&db, "pooler.toml", &[("pooler.toml", &config)]).await;
    let addrs = &pooler.running.addrs;
    assert!(
        addrs.iter().any(|a| a.ip().is_unspecified() && a.is_ipv4()),
        "{addrs:?}"
    );
    assert_eq!(query_on("127.0.0.1", pooler.port(), &db).await, db);
}

#[tokio::test]
async fn listen_addr_list_serves_each_address_on_one_port() {
    let pg = PgServer::shared();
    let db = pg.create_db("listen_list").await;
    // All of 127/8 is loopback on Linux.
    let config = toml(pg, &db, "listen_addr = \"127.0.0.1, 127.0.0.2\"");
    let pooler = Pooler::start_from_files(&db, "pooler.toml", &[("pooler.toml", &config)]).await;
    let addrs = &pooler.running.addrs;
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0].port(), addrs[1].port());
    for host in ["127.0.0.1", "127.0.0.2"] {
        assert_eq!(query_on(host, pooler.port(), &db).await, db, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_dir_serves_psql_h_dir() {
    let pg = PgServer::shared();
    let db = pg.create_db("listen_unix").await;
    let sockets = std::env::temp_dir().join(format!("pooler-sock-{}", std::process::id()));
    std::fs::create_dir_all(&sockets).expect("mkdir");
    let config = toml(
        pg,
        &db,
        &format!(
            "listen_addr = \"127.0.0.1\"\nunix_socket_dir = \"{}\"",
            sockets.display()
        ),
    );
    let pooler = Pooler::start_from_files(&db, "pooler.toml", &[("pooler.toml", &config)]).await;
    let port = pooler.port();
    let path = sockets.join(format!(".s.PGSQL.{port}"));
    assert_eq!(pooler.running.unix_socket.as_deref(), Some(path.as_path()));
    assert!(path.exists());

    // A libpq-style client given the directory as host.
    let dir = sockets.display().to_string();
    assert_eq!(query_on(&dir, port, &db).await, db);

    // psql itself, as an operator would type it.
    let out = tokio::task::spawn_blocking({
        let (dir, db) = (dir.clone(), db.clone());
        move || {
            std::process::Command::new("timeout")
                .arg("30")
                .arg("psql")
                .args([
                    "-X",
                    "-At",
                    "-h",
                    &dir,
                    "-p",
                    &port.to_string(),
                    "-U",
                    APP_USER,
                ])
                .args(["-d", &db, "-c", "SELECT 40 + 2"])
                .env("PGPASSWORD", APP_PASSWORD)
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .expect("run psql")
        }
    })
    .await
    .expect("psql task");
    assert!(
        out.status.success(),
        "psql -h {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // The socket goes away with the pooler.
    drop(pooler);
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&sockets);
}

#[tokio::test]
async fn a_port_clash_names_the_address_and_the_listener() {
    let pg = PgServer::shared();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let text = format!(
        "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nauth_type = \"trust\"\n\
         metrics_port = {port}\n[databases.x]\nport = {}\n",
        pg.port
    );
    let config = pooler::config::Config::parse(&text, "clash.toml").expect("config");
    let app = pooler::app::App::new(config).expect("app");
    let err = match pooler::listener::Running::start(app).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        format!("cannot listen on 127.0.0.1:{port} (metrics): address in use")
    );
}
