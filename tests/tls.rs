//! TLS with a CA made at test time (rcgen): psql through the pooler with sslmode=require and
//! verify-full, cleartext clients refused under `client_tls_sslmode = require`, and the
//! pooler to a Postgres started with `ssl=on` under each `server_tls_sslmode`.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a certificate it signed for localhost / 127.0.0.1, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    pki_and_clients(&[]).0
}

/// As `pki`, plus client certificates signed by the same CA with the given CommonNames
/// (PEM certificate and key each).
fn pki_and_clients(names: &[&str]) -> (Pki, Vec<(String, String)>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pooler test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let clients = names
        .iter()
        .map(|name| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        })
        .collect();
    (
        Pki {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        clients,
    )
}

fn write_pki(pki: &Pki, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, &pki.ca).unwrap();
    std::fs::write(&paths.1, &pki.cert).unwrap();
    std::fs::write(&paths.2, &pki.key).unwrap();
    (paths.0, paths.1, paths.2)
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pooler-tls-{name}-{}", std::process::id()))
}

/// psql with a connection string; (success, stdout + stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .env("PGCONNECT_TIMEOUT", "30")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_use_tls_and_require_refuses_cleartext() {
    let pg = PgServer::shared();
    let db = pg.create_db("tls_clients").await;
    let dir = temp_dir("clients");
    let (ca, cert, key) = write_pki(&pki(), &dir);
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\nclient_tls_sslmode = \"require\"\n\
             client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let base = format!(
        "port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        pooler.port()
    );
    // Encrypted, unverified.
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        "SELECT 40 + 2",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    // Encrypted and the pooler's certificate checked against the CA, name included.
    for host in ["localhost", "127.0.0.1"] {
        let (ok, out) = psql(
            &format!(
                "host={host} {base} sslmode=verify-full sslrootcert={}",
                ca.display()
            ),
            "SELECT current_database()",
        );
        assert!(ok, "{host}: {out}");
        assert_eq!(out.trim(), db);
    }
    // Cleartext clients are refused: psql, and tokio-postgres (which never asks for TLS).
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=disable"),
        "SELECT 1",
    );
    assert!(!ok);
    assert!(out.contains("SSL required"), "{out}");
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    assert_eq!(message(&err), "SSL required");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_serves_both_and_disable_says_no() {
    let pg = PgServer::shared();
    let db = pg.create_db("tls_allow").await;
    let dir = temp_dir("allow");
    let (_, cert, key) = write_pki(&pki(), &dir);
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "client_tls_sslmode = \"allow\"\nclient_tls_cert_file = \"{}\"\n\
             client_tls_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let base = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        pooler.port()
    );
    for mode in ["require", "disable", "prefer"] {
        let (ok, out) = psql(&format!("{base} sslmode={mode}"), "SELECT 'ok'");
        assert!(ok && out.trim() == "ok", "{mode}: {out}");
    }
    assert_eq!(first_value(&pooler.client().await, "SELECT 1").await, "1");

    // TLS off: a client that insists on it is told no.
    let plain = Pooler::start(pg, &db, "").await;
    let base = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        plain.port()
    );
    let (ok, out) = psql(&format!("{base} sslmode=require"), "SELECT 1");
    assert!(!ok, "{out}");
    assert!(out.contains("does not support SSL"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_reaches_a_postgres_with_ssl_on() {
    let pki = pki();
    let pg = PgServer::start_with(
        &[
            ("server.crt", pki.cert.as_bytes()),
            ("server.key", pki.key.as_bytes()),
        ],
        |dir| {
            format!(
                "-c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            )
        },
    );
    let db = pg.create_db("tls_server").await;
    let dir = temp_dir("server");
    let (ca, _, _) = write_pki(&pki, &dir);
    let other_ca = write_pki(&self::pki(), &temp_dir("other")).0;
    let ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (mode, ca_file, host) in [
        ("require", None, "127.0.0.1"),
        ("prefer", None, "127.0.0.1"),
        ("verify-ca", Some(&ca), "127.0.0.1"),
        ("verify-full", Some(&ca), "127.0.0.1"),
        ("verify-full", Some(&ca), "localhost"),
    ] {
        let ca_line = ca_file
            .map(|c| format!("server_tls_ca_file = \"{}\"", c.display()))
            .unwrap_or_default();
        // An alias entry reaches the same database under the host name to check.
        let pooler = Pooler::start_full(
            pg.port,
            &db,
            &format!("server_tls_sslmode = \"{mode}\"\n{ca_line}"),
            &format!(
                "[databases.alias]\nhost = \"{host}\"\nport = {}\ndbname = \"{db}\"",
                pg.port
            ),
            &Pooler::default_userlist(),
        )
        .await;
        let url = format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname=alias",
            pooler.port()
        );
        let c = connect(&url).await;
        assert_eq!(first_value(&c, ssl_in_use).await, "t", "{mode} {host}");
    }
    // A certificate from a CA the pooler does not trust is refused.
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        &format!(
            "server_tls_sslmode = \"verify-ca\"\nserver_tls_ca_file = \"{}\"",
            other_ca.display()
        ),
        "",
        &Pooler::default_userlist(),
    )
    .await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(message(&err).contains("TLS handshake"), "{}", message(&err));

    // A Postgres without TLS: `prefer` goes on in cleartext, `require` refuses.
    let plain = PgServer::shared();
    let db = plain.create_db("tls_server_plain").await;
    let pooler = Pooler::start(plain, &db, "server_tls_sslmode = \"prefer\"").await;
    let c = pooler.client().await;
    assert_eq!(first_value(&c, ssl_in_use).await, "f");
    let pooler = Pooler::start(plain, &db, "server_tls_sslmode = \"require\"").await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(
        message(&err).contains("does not support SSL"),
        "{}",
        message(&err)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(temp_dir("other"));
}

/// `auth_type = cert` with `client_tls_ca_file`: a client certificate signed by the CA whose
/// CommonName is the user logs in without a password; another user's name, no certificate,
/// or a certificate from another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_takes_the_user_from_the_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgServer::shared();
    let db = pg.create_db("tls_cert").await;
    let dir = temp_dir("cert");
    let (pki, clients) = pki_and_clients(&[APP_USER]);
    let (ca, cert, key) = write_pki(&pki, &dir);
    let (other, other_clients) = pki_and_clients(&[APP_USER]);
    drop(other);
    let write_client = |name: &str, (cert, key): &(String, String)| {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        // libpq refuses a key others can read.
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!("sslcert={} sslkey={}", c.display(), k.display())
    };
    let app_cert = write_client("app", &clients[0]);
    let forged = write_client("forged", &other_clients[0]);
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "auth_type = \"cert\"\nclient_tls_sslmode = \"require\"\n\
             client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
             client_tls_ca_file = \"{}\"",
            cert.display(),
            key.display(),
            ca.display()
        ),
    )
    .await;
    let base = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db} sslmode=require",
            pooler.port()
        )
    };
    // No password anywhere: the certificate is the proof.
    let (ok, out) = psql(
        &format!("{} {app_cert}", base(APP_USER)),
        "SELECT current_user",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), APP_USER);
    for (conninfo, what) in [
        (
            format!("{} {app_cert}", base("postgres")),
            "another user's name",
        ),
        (base(APP_USER), "no certificate"),
        (format!("{} {forged}", base(APP_USER)), "another CA"),
    ] {
        let (ok, out) = psql(&conninfo, "SELECT 1");
        assert!(!ok, "{what}: logged in: {out}");
        if what != "another CA" {
            assert!(
                out.contains("certificate authentication failed"),
                "{what}: {out}"
            );
        }
    }
    // client_tls_sslmode = verify-ca: a certificate is required of every client, on top of
    // the password; without one there is no handshake.
    let strict = Pooler::start(
        pg,
        &db,
        &format!(
            "auth_type = \"md5\"\nclient_tls_sslmode = \"verify-ca\"\n\
             client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
             client_tls_ca_file = \"{}\"",
            cert.display(),
            key.display(),
            ca.display()
        ),
    )
    .await;
    let base = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        strict.port()
    );
    let (ok, out) = psql(&format!("{base} sslmode=require {app_cert}"), "SELECT 1");
    assert!(ok, "{out}");
    for conninfo in [
        format!("{base} sslmode=require"),
        format!("{base} sslmode=disable"),
        format!("{base} sslmode=require {forged}"),
    ] {
        let (ok, out) = psql(&conninfo, "SELECT 1");
        assert!(!ok, "{conninfo}: logged in: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The local ports of established IPv4 connections to `port` on this host (/proc/net/tcp).
fn ports_connected_to(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            (*state == "01" && port_of(remote)? == port).then(|| port_of(local))?
        })
        .collect()
}

/// SHOW CLIENTS names a TLS client by its own address and port, not by the loopback pair the
/// session reads the decrypted stream through (it did, before the login passed the client's
/// address to the registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_names_a_tls_client_by_its_own_port() {
    let pg = PgServer::shared();
    let db = pg.create_db("tls_client_port").await;
    let dir = temp_dir("client_port");
    let (_ca, cert, key) = write_pki(&pki(), &dir);
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\nclient_tls_sslmode = \"allow\"\n\
             admin_users = \"postgres\"\n\
             client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db} \
         sslmode=require",
        pooler.port()
    );
    // A TLS client that stays connected while SHOW CLIENTS is read; killed at the end.
    let mut held = Command::new("psql")
        .env("PGCONNECT_TIMEOUT", "30")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &conninfo,
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let shown = loop {
        let clients = show(&console, "SHOW CLIENTS").await;
        let shown: Vec<String> = clients
            .iter()
            .filter(|c| c["database"] == db)
            .map(|c| c["port"].clone())
            .collect();
        if !shown.is_empty() {
            break shown;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS client never logged in"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let client_ports = ports_connected_to(pooler.port());
    let _ = held.kill();
    let _ = held.wait();
    assert_eq!(shown.len(), 1, "{shown:?}");
    let port: u16 = shown[0].parse().expect("a port number");
    assert!(
        client_ports.contains(&port),
        "SHOW CLIENTS says port {port}; the connections to the pooler come from {client_ports:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
