//! A primary and a streaming standby (`pg_basebackup -R -c fast`), each a private cluster of
//! this test process, for the high-availability tests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{PgServer, chown, free_port, pg_bindir, pg_command, run, unique, watchdog};

/// A streaming standby of `primary`, started and accepting read-only connections.
pub fn start_standby(primary: &PgServer) -> PgServer {
    let bindir = pg_bindir();
    let dir = std::env::temp_dir().join(unique("pooler-pg-standby"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    chown(&dir);
    // Over the primary's Unix socket: trust, so no password is needed for replication.
    run(
        pg_command(&bindir.join("pg_basebackup"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-h")
            .arg(&primary.dir)
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-R", "-c", "fast", "-X", "stream", "--no-sync"]),
        "pg_basebackup",
    );
    let standby = PgServer {
        port: free_port(),
        dir,
        bindir,
        options: String::new(),
    };
    watchdog(&standby.dir, true);
    standby.pg_ctl_start();
    standby
}

impl PgServer {
    /// `pg_ctl stop -m immediate`: a crash, as far as clients and standbys can tell.
    pub fn crash(&self) {
        run(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-m", "immediate", "stop"]),
            "pg_ctl stop -m immediate",
        );
    }

    /// `pg_ctl promote`: a standby becomes a primary (waits until it is).
    pub fn promote(&self) {
        run(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        );
    }

    /// Starts this (stopped) cluster again as a standby of `primary`: what a demoted old
    /// primary looks like when it comes back.
    pub fn restart_as_standby_of(&self, primary: &PgServer) {
        let data = self.dir.join("data");
        write_owned(&data.join("standby.signal"), "");
        let conninfo = format!(
            "\nprimary_conninfo = 'host={} port={} user=postgres'\n",
            primary.dir.display(),
            primary.port
        );
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&conninfo);
        write_owned(&auto, &text);
        self.pg_ctl_start();
    }

    /// Waits (bounded) until a standby has replayed everything `primary` has written now.
    pub async fn caught_up_with(&self, primary: &PgServer) -> bool {
        let lsn: String = primary
            .superuser()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("primary lsn")
            .get(0);
        let su = self.superuser().await;
        super::eventually(Duration::from_secs(30), || {
            let su = &su;
            let lsn = lsn.clone();
            async move {
                su.query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            }
        })
        .await
    }
}

fn write_owned(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    if super::is_root() {
        run(
            Command::new("chown").arg("postgres").arg(path),
            "chown file",
        );
    }
}
