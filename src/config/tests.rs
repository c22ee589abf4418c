//! Loading and validating configuration files.
use super::*;

#[test]
fn example_shape_parses_with_pgbouncer_defaults() {
    let c = Config::parse(
        r#"
        [pooler]
        pool_mode = "transaction"
        auth_type = "scram-sha-256"
        auth_file = "userlist.txt"
        ignore_startup_parameters = "extra_float_digits, options"
        [databases.app]
        port = 5433
        "#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.pooler.listen_port, 6432);
    assert_eq!(c.pooler.default_pool_size, 20);
    assert_eq!(c.pooler.pool_mode, PoolMode::Transaction);
    assert_eq!(
        c.pooler.ignore_startup_parameters.names(),
        vec!["extra_float_digits", "options"]
    );
    assert_eq!(c.databases["app"].host, "127.0.0.1");
    assert_eq!(c.databases["app"].port, 5433);
}

#[test]
fn shipped_example_is_valid() {
    let c = Config::parse(
        include_str!("../../pooler.toml.example"),
        "pooler.toml.example",
    )
    .unwrap();
    assert_eq!(c.pooler.default_pool_size, 150);
    assert_eq!(c.pooler.reserve_pool_size, 10);
    assert_eq!(c.pooler.reserve_pool_timeout, 5.0);
    assert_eq!(c.pooler.max_client_conn, 10000);
    assert_eq!(c.pooler.auth_type, AuthType::ScramSha256);
}

#[test]
fn shipped_example_documents_every_key() {
    let example = include_str!("../../pooler.toml.example");
    for (key, _, _) in PoolerSettings::default().entries() {
        assert!(
            example.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))),
            "pooler.toml.example does not document {key}"
        );
    }
}

#[test]
fn booleans_take_pgbouncer_spellings() {
    for (v, want) in [
        ("0", false),
        ("1", true),
        ("true", true),
        ("false", false),
        ("\"yes\"", true),
        ("\"off\"", false),
    ] {
        let c = Config::parse(
            &format!(
                "[pooler]\nauth_type = \"trust\"\nlog_connections = {v}\nlog_disconnections = {v}\n"
            ),
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(c.pooler.log_connections, want, "{v}");
        assert_eq!(c.pooler.log_disconnections, want, "{v}");
    }
    let e = Config::parse("[pooler]\nlog_connections = 2\n", "t.toml").unwrap_err();
    assert!(e.to_string().contains("log_connections"), "{e}");
}

#[test]
fn peers_table() {
    let c = Config::parse(
        "[pooler]\nauth_type = \"trust\"\npeer_id = 2\n\
         [peers.1]\nhost = \"10.0.0.1\"\n[peers.2]\nhost = \"10.0.0.2\"\nport = 7000\n",
        "t.toml",
    )
    .unwrap();
    let peers = c.peers();
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        (peers[&1].host.as_str(), peers[&1].port),
        ("10.0.0.1", 6432)
    );
    // Peering off: the list is not used.
    let off = Config::parse(
        "[pooler]\nauth_type = \"trust\"\n[peers.1]\nhost = \"a\"\n",
        "t.toml",
    )
    .unwrap();
    assert!(off.peers().is_empty());
    for (text, needle) in [
        ("[peers.1]\nport = 1\n", "host"),
        (
            "[peers.1]\nhost = \"a\"\npool_size = 0\n",
            "peers.1.pool_size",
        ),
        ("[peers.99999]\nhost = \"a\"\n", "peers.99999"),
        ("peer_id = 20000\n", "peer_id"),
    ] {
        let e = Config::parse(
            &format!("[pooler]\nauth_type = \"trust\"\n{text}"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn several_hosts() {
    let c = Config::parse(
        "[pooler]\nauth_type = \"trust\"\n\
         [databases.one]\nhost = \"db\"\nport = 6000\n\
         [databases.app]\nhost = \"a, b\"\nport = \"1,2\"\n\
         target_session_attrs = \"prefer-standby\"\nmax_replica_lag = 10\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.databases["one"].hosts(), vec![("db".to_string(), 6000)]);
    assert_eq!(
        c.databases["one"].target_session_attrs(),
        TargetSessionAttrs::Any
    );
    let app = &c.databases["app"];
    assert_eq!(
        app.hosts(),
        vec![("a".to_string(), 1), ("b".to_string(), 2)]
    );
    assert_eq!(
        app.target_session_attrs(),
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(app.max_replica_lag, Some(10.0));
    for (text, needle) in [
        ("host = \"a,b\"\nport = \"1,2,3\"\n", "databases.x.port"),
        (
            "target_session_attrs = \"master\"\n",
            "target_session_attrs",
        ),
        ("load_balance_hosts = \"random\"\n", "load_balance_hosts"),
        ("max_replica_lag = -1\n", "max_replica_lag"),
    ] {
        let e = Config::parse(
            &format!("[pooler]\nauth_type = \"trust\"\n[databases.x]\n{text}"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let err = Config::parse("[pooler]\ndefault_pool_sise = 3\n", "my.toml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("my.toml:"), "{msg}");
    assert!(msg.contains("default_pool_sise"), "{msg}");
}

#[test]
fn bad_value_is_named() {
    let err = Config::parse("[pooler]\npool_mode = \"statement\"\n", "x.toml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pool_mode"), "{msg}");
    let err = Config::parse(
        "[pooler]\nauth_type=\"trust\"\ndefault_pool_size = 0\n",
        "x.toml",
    )
    .unwrap_err();
    assert!(err.to_string().contains("default_pool_size"));
}

#[test]
fn workers_default_to_one_per_core_and_are_bounded() {
    let c = Config::parse("[pooler]\nauth_type = \"trust\"\n", "x.toml").unwrap();
    assert_eq!(c.pooler.workers, 0);
    let c = Config::parse("[pooler]\nauth_type = \"trust\"\nworkers = 1\n", "x.toml").unwrap();
    assert_eq!(c.pooler.workers, 1);
    let err = Config::parse(
        "[pooler]\nauth_type = \"trust\"\nworkers = 100000\n",
        "x.toml",
    )
    .unwrap_err();
    assert!(err.to_string().contains("workers: must be"), "{err}");
}
