//! Real client tools through the pooler: psql and pgbench.

mod common;

use common::*;
use std::process::Command;

fn tool(pooler: &Pooler, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "30")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pooler.port().to_string(),
            "-U",
            APP_USER,
        ]);
    c
}

fn output(mut cmd: Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_queries_through_the_pooler() {
    let pg = PgServer::shared();
    let db = pg.create_db("psql").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nauth_type = \"scram-sha-256\"",
    )
    .await;
    let mut cmd = tool(&pooler, "psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &db, "-c"])
        .arg("SELECT current_database() || ':' || current_setting('application_name')");
    assert_eq!(output(cmd).trim(), format!("{db}:psql"));

    // A script with a transaction, COPY from stdin and a failing statement.
    let mut cmd = tool(&pooler, "psql");
    cmd.args(["-X", "-A", "-t", "-d", &db, "-f", "-"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"CREATE TABLE p (v int);\nBEGIN;\nCOPY p FROM STDIN;\n1\n2\n3\n\\.\nCOMMIT;\n\
              SELECT 1/0;\nSELECT 'sum=' || sum(v) FROM p;\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("sum=6"), "{stdout}\n{stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
}

fn count(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_many_clients_small_pool_no_failures() {
    let pg = PgServer::shared();
    let db = pg.create_db("pgbench").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 5\nmax_client_conn = 500\n\
         auth_type = \"md5\"",
    )
    .await;
    // Initialisation runs through the pooler too (DDL, COPY, VACUUM).
    let mut init = tool(&pooler, "pgbench");
    init.args(["-i", "-q", "-s", "1", &db]);
    output(init);

    for args in [
        &["-S"][..],
        &["-S", "-M", "extended"][..],
        &["-S", "-M", "prepared"][..],
        &["-M", "prepared"][..],
        &[][..],
    ] {
        let mut run = tool(&pooler, "pgbench");
        run.args(["-n", "-c", "60", "-j", "2", "-t", "30"])
            .args(args)
            .arg(&db);
        let text = output(run);
        assert_eq!(
            count(&text, "number of transactions actually processed:").as_deref(),
            Some("1800/1800"),
            "{args:?}\n{text}"
        );
        let failed = count(&text, "number of failed transactions:").unwrap_or_default();
        assert!(failed.starts_with("0 "), "{args:?}: {failed}\n{text}");
    }
    assert!(pooler.server_pids(pg).await.len() <= 5);
}
