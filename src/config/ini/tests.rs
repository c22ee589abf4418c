//! `pgbouncer.ini` reading, against the TOML it must turn into.

use super::*;
use crate::config::{Config, PoolMode};
use std::collections::HashMap;

fn parse_files(files: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    let map: HashMap<PathBuf, String> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    let read = move |p: &Path| {
        map.get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    let (first, text) = files[0];
    parse(Path::new(first), text, &read)
}

fn config(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    let parsed = parse_files(&[("/etc/pgbouncer/pgbouncer.ini", text)])?;
    Ok((
        Config::from_table(parsed.table, "pgbouncer.ini", &[])?,
        parsed.warnings,
    ))
}

const TUTORIAL: &str = "\
;; a tutorial's pgbouncer.ini
[databases]
app = host=127.0.0.1 port=5433 dbname=appdb pool_size=50 pool_mode=session
forced = host=db.internal user=svc password='it\\'s a \\'secret\\'' reserve_pool=3
* = host=10.0.0.9

[pgbouncer]
listen_addr = *
listen_port = 6432
auth_type = md5
auth_file = userlist.txt
# comments with either character
pool_mode = transaction
log_connections = 0
log_disconnections = no
max_client_conn = 10000
default_pool_size = 150
reserve_pool_size = 10
reserve_pool_timeout = 5
server_idle_timeout = 600.0
query_wait_timeout = 0.5
admin_users = admin, ops
logfile = /var/log/pgbouncer/pgbouncer.log

[users]
batch = pool_mode=session max_user_connections=4 pool_size=2
";

#[test]
fn tutorial_ini_becomes_the_same_config() {
    let (c, warnings) = config(TUTORIAL).unwrap();
    let p = &c.pooler;
    assert_eq!(p.listen_addr, "*");
    assert_eq!(p.auth_type, crate::config::AuthType::Md5);
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert!(!p.log_connections && !p.log_disconnections);
    assert_eq!(p.max_client_conn, 10000);
    assert_eq!(p.default_pool_size, 150);
    assert_eq!(p.reserve_pool_size, 10);
    assert_eq!(p.reserve_pool_timeout, 5.0);
    assert_eq!(p.server_idle_timeout, 600.0);
    assert_eq!(p.query_wait_timeout, 0.5);
    assert_eq!(p.admin_users.names(), vec!["admin", "ops"]);
    let app = &c.databases["app"];
    assert_eq!(
        (app.host.as_str(), app.port.to_string()),
        ("127.0.0.1", "5433".into())
    );
    assert_eq!(app.dbname.as_deref(), Some("appdb"));
    assert_eq!(app.pool_size, Some(50));
    assert_eq!(app.pool_mode, Some(PoolMode::Session));
    let forced = &c.databases["forced"];
    assert_eq!(forced.user.as_deref(), Some("svc"));
    assert_eq!(forced.password.as_deref(), Some("it's a 'secret'"));
    assert_eq!(forced.reserve_pool_size, Some(3));
    let batch = &c.users["batch"];
    assert_eq!(batch.pool_mode, Some(PoolMode::Session));
    assert_eq!(batch.max_user_connections, Some(4));
    assert_eq!(c.pool_size_for(app, "batch"), 2);
    assert_eq!(c.pool_size_for(app, "other"), 50);
    assert_eq!(c.pool_mode(forced, "batch"), PoolMode::Session);
    assert_eq!(c.pool_mode(forced, "other"), PoolMode::Transaction);
    assert_eq!(c.max_user_connections("batch"), 4);
    // The fallback serves any other name as that database.
    let other = c.database("reports").unwrap();
    assert_eq!(other.host, "10.0.0.9");
    assert_eq!(other.dbname.as_deref(), Some("reports"));
    assert!(c.database("*").is_none());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("logfile") && warnings[0].contains("line 23"),
        "{warnings:?}"
    );
}

#[test]
fn every_boolean_spelling() {
    for (v, want) in [
        ("1", true),
        ("0", false),
        ("yes", true),
        ("No", false),
        ("on", true),
        ("off", false),
        ("true", true),
        ("FALSE", false),
    ] {
        let (c, _) = config(&format!(
            "[pgbouncer]\nauth_type = trust\nlog_connections = {v}\n"
        ))
        .unwrap();
        assert_eq!(c.pooler.log_connections, want, "{v}");
    }
    let e = config("[pgbouncer]\nlog_connections = maybe\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("log_connections") && e.contains("line 2"), "{e}");
}

#[test]
fn include_is_read_relative_to_the_including_file() {
    let parsed = parse_files(&[
        (
            "/etc/pgbouncer/pgbouncer.ini",
            "[pgbouncer]\nauth_type = trust\nlisten_port = 7000\n%include conf.d/pools.ini\n",
        ),
        (
            "/etc/pgbouncer/conf.d/pools.ini",
            "default_pool_size = 7\n[databases]\napp = host=db\n",
        ),
    ])
    .unwrap();
    let c = Config::from_table(parsed.table, "x", &[]).unwrap();
    assert_eq!(c.pooler.default_pool_size, 7);
    assert_eq!(c.pooler.listen_port, 7000);
    assert_eq!(c.databases["app"].host, "db");
    let e = parse_files(&[("/a.ini", "%include /missing.ini\n")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/missing.ini") && e.contains("line 1"), "{e}");
    let e = parse_files(&[("/a.ini", "%include /a.ini\n")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested"), "{e}");
}

#[test]
fn keys_that_would_change_behaviour_are_refused() {
    for (line, key) in [
        ("[pgbouncer]\nauth_type = pam\n", "auth_type"),
        ("[pgbouncer]\nauth_type = hba\n", "auth_hba_file"),
        ("[pgbouncer]\nauth_type = cert\n", "client_tls_ca_file"),
        ("[pgbouncer]\ndisable_pqexec = 1\n", "disable_pqexec"),
        (
            "[databases]\napp = host=db connect_query='set x=1'\n",
            "connect_query",
        ),
        ("[databases]\napp = host=db timezone=UTC\n", "timezone"),
        (
            "[pgbouncer]\nauth_type = trust\n[databases]\napp = host=a,b port=1,2,3\n",
            "3 ports for 2 hosts",
        ),
        (
            "[databases]\napp = host=/var/run/postgresql\n",
            "Unix socket",
        ),
        ("[pgbouncer]\npool_sise = 3\n", "pool_sise"),
        ("[users]\nbob = pool_sise=3\n", "pool_sise"),
        ("[nonsense]\n", "nonsense"),
        ("key = 1\n", "outside"),
    ] {
        let e = config(line).unwrap_err().to_string();
        assert!(e.contains(key), "{line}: {e}");
    }
    // The off value of a refused key changes nothing: a warning only.
    let (_, w) = config("[pgbouncer]\nauth_type = trust\ndisable_pqexec = 0\n").unwrap();
    assert!(w[0].contains("disable_pqexec"), "{w:?}");
}

#[test]
fn values_the_config_refuses_are_named() {
    let e = config("[pgbouncer]\nauth_type = trust\npool_mode = statement\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("statement"), "{e}");
    let e = config("[pgbouncer]\nauth_type = trust\ndefault_pool_size = lots\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_pool_size"), "{e}");
}

#[test]
fn unsupported_keys_are_warnings_naming_them() {
    let (_, w) = config(
        "[pgbouncer]\nauth_type = trust\ntcp_defer_accept = 1\npidfile = /run/p.pid\n\
             [databases]\nlocal = dbname=x\n[users]\nbob = max_user_client_connections=5\n",
    )
    .unwrap();
    let all = w.join("\n");
    for name in [
        "tcp_defer_accept",
        "pidfile",
        "no host",
        "max_user_client_connections",
    ] {
        assert!(all.contains(name), "{name} not in {all}");
    }
}

#[test]
fn peers_and_peer_id_in_pgbouncer_form() {
    let (c, w) = config(
        "[pgbouncer]\nauth_type = trust\npeer_id = 1\nso_reuseport = 1\nworkers = 3\n\
             [peers]\n1 = host=10.0.0.1\n2 = host=/tmp/pooler-2 port=5555 pool_size=3\n",
    )
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.pooler.peer_id, 1);
    assert!(c.pooler.so_reuseport);
    assert_eq!(c.pooler.workers, 3);
    assert_eq!(c.peers["1"].port, 6432);
    let peers = c.peers();
    // The own entry is allowed and left out.
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(peers[&2].host, "/tmp/pooler-2");
    assert_eq!((peers[&2].port, peers[&2].pool_size), (5555, Some(3)));
    for (text, needle) in [
        ("[peers]\n2 = port=1\n", "host is required"),
        ("[peers]\n2 = host=a dbname=x\n", "dbname"),
        ("[peers]\n0 = host=a\n", "peers.0"),
        ("[peers]\nx = host=a\n", "peers.x"),
        ("[pgbouncer]\npeer_id = 16384\n", "peer_id"),
    ] {
        let e = config(&format!("[pgbouncer]\nauth_type = trust\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn connection_strings() {
    assert_eq!(
        connstr(" host = db  port=5 password='a b\\\\c' dbname=x").unwrap(),
        vec![
            ("host".to_string(), "db".to_string()),
            ("port".into(), "5".into()),
            ("password".into(), "a b\\c".into()),
            ("dbname".into(), "x".into()),
        ]
    );
    assert!(connstr("host").is_err());
    assert!(connstr("password='open").is_err());
}

#[test]
fn detection_by_extension_or_content() {
    assert!(is_ini(Path::new("x.ini"), ""));
    assert!(!is_ini(Path::new("x.toml"), "[pgbouncer]"));
    assert!(is_ini(
        Path::new("pgbouncer.conf"),
        "[pgbouncer]\nlisten_port = 1\n"
    ));
    assert!(is_ini(Path::new("conf"), "[databases]\napp = host=x\n"));
    assert!(!is_ini(
        Path::new("conf"),
        "[databases.app]\nhost = \"x\"\n"
    ));
    assert!(!is_ini(
        Path::new("conf"),
        "[databases]\napp = { host = \"x\" }\n"
    ));
}

#[test]
fn converted_toml_parses_to_the_same_config() {
    let parsed = parse_files(&[("/etc/pgbouncer/pgbouncer.ini", TUTORIAL)]).unwrap();
    let toml = to_toml(&parsed, Path::new("/etc/pgbouncer/pgbouncer.ini")).unwrap();
    assert!(
        toml.contains("# warning:") && toml.contains("logfile"),
        "{toml}"
    );
    let from_toml = Config::parse(&toml, "converted.toml").unwrap();
    let from_ini = Config::from_table(parsed.table, "x", &[]).unwrap();
    assert_eq!(from_toml.pooler.entries(), from_ini.pooler.entries());
    assert_eq!(
        format!("{:?}", from_toml.databases),
        format!("{:?}", from_ini.databases)
    );
    assert_eq!(
        format!("{:?}", from_toml.users),
        format!("{:?}", from_ini.users)
    );
}

#[test]
fn several_hosts_libpq_style() {
    let (c, w) = config(
        "[pgbouncer]\nauth_type = trust\n[databases]\napp = host=10.0.0.1,10.0.0.2 port=5432,5433 dbname=app \
         target_session_attrs=read-write load_balance_hosts=disable max_replica_lag=2.5\n",
    )
    .unwrap();
    assert!(w.iter().all(|w| !w.contains("load_balance_hosts")), "{w:?}");
    let app = &c.databases["app"];
    assert_eq!(
        app.hosts(),
        vec![
            ("10.0.0.1".to_string(), 5432),
            ("10.0.0.2".to_string(), 5433)
        ]
    );
    assert_eq!(
        app.target_session_attrs(),
        crate::config::TargetSessionAttrs::ReadWrite
    );
    assert_eq!(
        app.load_balance_hosts,
        Some(crate::config::LoadBalance::Disable)
    );
    assert_eq!(app.max_replica_lag, Some(2.5));
    let e = config(
        "[pgbouncer]\nauth_type = trust\n[databases]\napp = host=a target_session_attrs=sometimes\n",
    ).unwrap_err();
    assert!(e.to_string().contains("target_session_attrs"), "{e}");
}

#[test]
fn auth_timeout_and_socket_keys_are_read() {
    let (c, w) = config(
        "[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\nauth_file = users.txt\n\
         auth_user = pgbouncer\nauth_dbname = authdb\n\
         auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1\n\
         server_reset_query_always = 1\napplication_name_add_host = yes\n\
         transaction_timeout = 30\nquery_wait_notify = 0\nstats_period = 15\n\
         tcp_keepalive = 1\ntcp_keepcnt = 3\ntcp_keepidle = 60\ntcp_keepintvl = 10\n\
         tcp_user_timeout = 5000\n\
         [databases]\napp = host=db auth_user=lookup auth_dbname=authdb \
         auth_query='SELECT a, b FROM f($1)'\n\
         [users]\nbob = query_timeout=5 idle_transaction_timeout=2.5 client_idle_timeout=-1 \
         transaction_timeout=9 reserve_pool_size=2 query_wait_timeout=7\n",
    )
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    let p = &c.pooler;
    assert_eq!(p.auth_type, crate::config::AuthType::Hba);
    assert!(p.auth_hba_file.as_ref().unwrap().ends_with("hba.conf"));
    assert_eq!(p.auth_user, "pgbouncer");
    assert_eq!(p.auth_dbname, "authdb");
    assert!(p.auth_query.contains("pg_shadow"));
    assert!(p.server_reset_query_always && p.application_name_add_host);
    assert_eq!(
        (p.transaction_timeout, p.query_wait_notify, p.stats_period),
        (30.0, 0.0, 15.0)
    );
    assert_eq!(
        (
            p.tcp_keepcnt,
            p.tcp_keepidle,
            p.tcp_keepintvl,
            p.tcp_user_timeout
        ),
        (3, 60, 10, 5000)
    );
    let app = &c.databases["app"];
    assert_eq!(app.auth_user.as_deref(), Some("lookup"));
    assert_eq!(app.auth_dbname.as_deref(), Some("authdb"));
    assert_eq!(app.auth_query.as_deref(), Some("SELECT a, b FROM f($1)"));
    let bob = &c.users["bob"];
    assert_eq!(bob.query_timeout, Some(5.0));
    assert_eq!(bob.idle_transaction_timeout, Some(2.5));
    // PgBouncer's -1: not set.
    assert_eq!(bob.client_idle_timeout, None);
    assert_eq!(bob.transaction_timeout, Some(9.0));
    assert_eq!(bob.reserve_pool_size, Some(2));
    assert_eq!(bob.query_wait_timeout, Some(7.0));
}
