//! Auth-file secret kinds end to end: the pooler checks the client with the secret it holds
//! and logs in to Postgres with what that secret allows.

mod common;
mod wire;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_secret_in_auth_file_logs_in_with_the_clients_keys() {
    let pg = PgServer::shared();
    let db = pg.create_db("scramsecret").await;
    let su = pg.superuser().await;
    let secret: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&APP_USER],
        )
        .await
        .unwrap()
        .get(0);
    assert!(secret.starts_with("SCRAM-SHA-256$"));
    // The pooler never sees the password: only Postgres's own secret.
    let admin_secret = postgres_protocol::password::scram_sha_256(b"admin-pw");
    for auth in ["scram-sha-256", "md5"] {
        let userlist = format!("\"{APP_USER}\" \"{secret}\"\n\"admin\" \"{admin_secret}\"\n");
        let pooler = Pooler::start_with_userlist(
            pg,
            &db,
            &format!(
                "auth_type = \"{auth}\"\npool_mode = \"transaction\"\nadmin_users = \"admin\""
            ),
            &userlist,
        )
        .await;
        let c = pooler.client().await;
        assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
        // The console greets a SCRAM login itself: the client (which checks the server's
        // signature in SASLFinal) gets in and is answered.
        let console = connect(&pooler.console_url("admin", "admin-pw")).await;
        let rows = console
            .simple_query("SHOW VERSION")
            .await
            .expect("SHOW VERSION");
        assert!(
            rows.iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
            "SHOW VERSION returned no row"
        );
        let err = try_connect(&pooler.url(APP_USER, "wrong"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_secret_in_auth_file_against_an_md5_role() {
    let pg = PgServer::shared();
    let db = pg.create_db("md5secret").await;
    let su = pg.superuser().await;
    let _ = su
        .batch_execute(
            "SET password_encryption = 'md5'; CREATE ROLE m5user LOGIN PASSWORD 'm5pass'",
        )
        .await;
    su.batch_execute(&format!("GRANT ALL ON DATABASE {db} TO m5user"))
        .await
        .unwrap();
    let secret: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'm5user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(secret.starts_with("md5"));
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "auth_type = \"md5\"",
        &format!("\"m5user\" \"{secret}\"\n"),
    )
    .await;
    let c = connect(&pooler.url("m5user", "m5pass")).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, "m5user");
    let err = try_connect(&pooler.url("m5user", "nope"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_user_on_database_entry() {
    let pg = PgServer::shared();
    let db = pg.create_db("forced").await;
    // Clients log in as "someone" (pooler-side); the server sees the database entry's user.
    let userlist = "\"someone\" \"pw\"\n".to_string();
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        "auth_type = \"md5\"",
        &format!("user = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\""),
        &userlist,
    )
    .await;
    let c = connect(&pooler.url("someone", "pw")).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
}

/// An auth-file user with an empty secret has no password: refused under every password
/// method (28P01), as by Postgres and PgBouncer; the empty password does not log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_secret_never_logs_in() {
    let pg = PgServer::shared();
    let db = pg.create_db("emptysecret").await;
    let userlist = format!("\"{APP_USER}\" \"\"\n");
    for auth in ["md5", "scram-sha-256", "plain"] {
        // The server login uses the entry's own credentials, so only the pooler's check
        // stands between the empty password and a session.
        let pooler = Pooler::start_full(
            pg.port,
            &db,
            &format!("auth_type = \"{auth}\""),
            &format!("user = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\""),
            &userlist,
        )
        .await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pooler.port()));
        let err = wire::login_params(addr, APP_USER, "", &db, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{auth}: logged in with an empty password"));
        assert!(err.starts_with("28P01"), "{auth}: {err}");
    }
}

/// `auth_user` + `auth_query`: users missing from the auth file are looked up in Postgres
/// with PgBouncer's default query. md5 and SCRAM secrets both log in (the server login too),
/// a wrong password and an expired role (`rolvaliduntil`) are refused, and a user name
/// crafted as SQL is only ever a parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_looks_up_users_missing_from_the_auth_file() {
    let pg = PgServer::shared();
    let db = pg.create_db("authquery").await;
    let su = pg.superuser().await;
    let (scram, md5, expired) = (
        format!("{db}_scram"),
        format!("{db}_md5"),
        format!("{db}_expired"),
    );
    su.batch_execute(&format!(
        "CREATE ROLE {scram} LOGIN PASSWORD 'scram-pw';\
         SET password_encryption = 'md5'; CREATE ROLE {md5} LOGIN PASSWORD 'md5-pw'; RESET password_encryption;\
         CREATE ROLE {expired} LOGIN PASSWORD 'old-pw' VALID UNTIL '2001-01-01';\
         GRANT ALL ON DATABASE {db} TO {scram}, {md5}, {expired}"
    ))
    .await
    .unwrap();
    // Only the auth_user is in the file (the superuser: it may read pg_authid).
    let userlist = format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n");
    for auth in ["md5", "scram-sha-256"] {
        let pooler = Pooler::start_with_userlist(
            pg,
            &db,
            &format!(
                "auth_type = \"{auth}\"\nauth_user = \"postgres\"\npool_mode = \"transaction\""
            ),
            &userlist,
        )
        .await;
        let c = connect(&pooler.url(&scram, "scram-pw")).await;
        assert_eq!(
            first_value(&c, "SELECT current_user").await,
            scram,
            "{auth}"
        );
        if auth == "md5" {
            // An md5 secret cannot answer SCRAM: only auth_type = md5 can use it.
            let c = connect(&pooler.url(&md5, "md5-pw")).await;
            assert_eq!(first_value(&c, "SELECT current_user").await, md5);
        }
        for (user, password) in [
            (scram.as_str(), "wrong"),
            (md5.as_str(), "wrong"),
            (expired.as_str(), "old-pw"),
            ("no_such_role_here", "x"),
        ] {
            let err = try_connect(&pooler.url(user, password)).await.unwrap_err();
            assert_eq!(
                sqlstate(&err).as_deref(),
                Some("28P01"),
                "{auth} {user}: {err}"
            );
        }
        // Were the name pasted into the SQL, this would find the superuser's row, and its
        // SCRAM secret does not depend on the name: the login would succeed.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pooler.port()));
        for evil in [
            "x' OR rolname = 'postgres",
            "x'; DROP DATABASE postgres; --",
        ] {
            let err = wire::login_params(addr, evil, SUPERUSER_PASSWORD, &db, &[])
                .await
                .err()
                .unwrap_or_else(|| panic!("{auth}: logged in as {evil:?}"));
            assert!(err.starts_with("28P01"), "{auth} {evil}: {err}");
        }
    }
    // The expired role is refused because of its date, not its password: Postgres itself
    // says the same.
    let err = try_connect(&pg.url(&expired, "old-pw", &db))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    su.batch_execute(&format!("ALTER ROLE {expired} VALID UNTIL 'infinity'"))
        .await
        .unwrap();
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "auth_type = \"scram-sha-256\"\nauth_user = \"postgres\"",
        &userlist,
    )
    .await;
    let c = connect(&pooler.url(&expired, "old-pw")).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, expired);
}

/// Without auth_user, a user missing from the auth file is refused even with the right
/// Postgres password (the lookup is what the test above relies on); with `auth_user` on the
/// database entry only, it is looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_user_none_then_on_the_database_entry() {
    let pg = PgServer::shared();
    let db = pg.create_db("noauthuser").await;
    let userlist = format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n");
    let pooler =
        Pooler::start_with_userlist(pg, &db, "auth_type = \"scram-sha-256\"", &userlist).await;
    let err = try_connect(&pooler.url(APP_USER, APP_PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    // auth_user on the database entry alone (PgBouncer's `db = host=... auth_user=...`).
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        "auth_type = \"scram-sha-256\"",
        "auth_user = \"postgres\"",
        &userlist,
    )
    .await;
    let c = connect(&pooler.url(APP_USER, APP_PASSWORD)).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
}

/// `auth_type = hba`: the first matching line of `auth_hba_file` decides, by connection type,
/// database, user and address; `reject` and no match refuse with PgBouncer's texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_lines_decide_the_method() {
    let pg = PgServer::shared();
    let db = pg.create_db("hba").await;
    let sockets = std::env::temp_dir().join(format!("pooler-hba-{}", std::process::id()));
    std::fs::create_dir_all(&sockets).expect("mkdir");
    let hba = format!(
        "# PgBouncer's subset\n\
         local all all trust\n\
         host all blocked 127.0.0.1/32 reject\n\
         hostssl all all 0.0.0.0/0 cert\n\
         host {db},other {APP_USER} 127.0.0.0 255.0.0.0 scram-sha-256\n\
         host all all 10.0.0.0/8 trust\n"
    );
    let config = format!(
        "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nmetrics_port = 0\n\
         unix_socket_dir = \"{}\"\nauth_type = \"hba\"\nauth_hba_file = \"pg_hba.conf\"\n\
         auth_file = \"userlist.txt\"\nlog_connections = 0\nlog_disconnections = 0\n\
         admin_users = \"postgres\"\n\
         [databases.{db}]\nport = {}\n",
        sockets.display(),
        pg.port
    );
    let userlist = format!("{}\"blocked\" \"pw\"\n", Pooler::default_userlist());
    let pooler = Pooler::start_from_files(
        &db,
        "pooler.toml",
        &[
            ("pooler.toml", &config),
            ("pg_hba.conf", &hba),
            ("userlist.txt", &userlist),
        ],
    )
    .await;
    // TCP from 127.0.0.1 as the app user: the scram-sha-256 line.
    let c = connect(&pooler.url(APP_USER, APP_PASSWORD)).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
    let err = try_connect(&pooler.url(APP_USER, "wrong"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    // reject.
    let err = try_connect(&pooler.url("blocked", "pw")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(message(&err).contains("login rejected"), "{err}");
    // No line for the superuser over TCP (the 10/8 trust line is for other addresses).
    let err = try_connect(&pooler.url("postgres", SUPERUSER_PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(
        message(&err).contains("no authentication method is found"),
        "{err}"
    );
    // The Unix socket: the local trust line, whatever the password.
    let url = format!(
        "host={} port={} user=postgres password=anything dbname={db}",
        sockets.display(),
        pooler.port()
    );
    let c = connect(&url).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, "postgres");
    // RELOAD reads the HBA file again: the app user is now rejected over TCP.
    std::fs::write(
        pooler.dir.join("pg_hba.conf"),
        format!("local all all trust\nhost all {APP_USER} 127.0.0.1/32 reject\n"),
    )
    .unwrap();
    let console = connect(&url.replace(&format!("dbname={db}"), "dbname=pgbouncer")).await;
    console.simple_query("RELOAD").await.expect("RELOAD");
    let err = try_connect(&pooler.url(APP_USER, APP_PASSWORD))
        .await
        .unwrap_err();
    assert!(message(&err).contains("login rejected"), "{err}");
}

/// PgBouncer's recommended setup: a non-superuser `auth_user` calling a SECURITY DEFINER
/// function that lives in one database only, named by `auth_dbname`; clients of another
/// database are looked up there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_dbname_and_a_security_definer_function() {
    let pg = PgServer::shared();
    let db = pg.create_db("authdbname").await;
    let authdb = pg.create_db("authdbname_lookup").await;
    let role = format!("{db}_user");
    let su = pg.superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'role-pw'; GRANT ALL ON DATABASE {db} TO {role}"
    ))
    .await
    .unwrap();
    let lookup = connect(&pg.url("postgres", SUPERUSER_PASSWORD, &authdb)).await;
    lookup
        .batch_execute(&format!(
            "CREATE FUNCTION public.user_lookup(i_username text, OUT uname name, OUT phash text) \
             RETURNS record AS $$ SELECT rolname, rolpassword FROM pg_authid \
             WHERE rolname = i_username AND rolcanlogin $$ LANGUAGE sql SECURITY DEFINER; \
             REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; \
             GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO {APP_USER}"
        ))
        .await
        .unwrap();
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        &format!(
            "auth_type = \"scram-sha-256\"\nauth_user = \"{APP_USER}\"\n\
             auth_dbname = \"{authdb}\"\n\
             auth_query = \"SELECT uname, phash FROM public.user_lookup($1)\""
        ),
        &format!("[databases.{authdb}]\nport = {}", pg.port),
        &Pooler::default_userlist(),
    )
    .await;
    let c = connect(&pooler.url(&role, "role-pw")).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, role);
    assert_eq!(first_value(&c, "SELECT current_database()").await, db);
    let err = try_connect(&pooler.url(&role, "nope")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    // Without auth_dbname the query runs in the client's database, which has no such
    // function: the login fails with the query's error, not as a wrong password.
    let elsewhere = Pooler::start_full(
        pg.port,
        &db,
        &format!(
            "auth_type = \"scram-sha-256\"\nauth_user = \"{APP_USER}\"\n\
             auth_query = \"SELECT uname, phash FROM public.user_lookup($1)\""
        ),
        "",
        &Pooler::default_userlist(),
    )
    .await;
    let err = try_connect(&elsewhere.url(&role, "role-pw"))
        .await
        .unwrap_err();
    assert!(message(&err).contains("auth_query failed"), "{err}");
}

/// HBA `peer`: over the Unix socket, the client's operating-system user (the kernel's
/// SO_PEERCRED) must be the user it logs in as; then no password is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_peer_takes_the_unix_user_from_the_kernel() {
    let pg = PgServer::shared();
    let db = pg.create_db("hbapeer").await;
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let su = pg.superuser().await;
    // The pooler logs in to Postgres as that user with the auth file's password.
    let _ = su
        .batch_execute(&format!("CREATE ROLE \"{me}\" LOGIN PASSWORD 'os-user-pw'"))
        .await;
    su.batch_execute(&format!("GRANT ALL ON DATABASE {db} TO \"{me}\""))
        .await
        .unwrap();
    let sockets = std::env::temp_dir().join(format!("pooler-peer-{}", std::process::id()));
    std::fs::create_dir_all(&sockets).expect("mkdir");
    let config = format!(
        "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nmetrics_port = 0\n\
         unix_socket_dir = \"{}\"\nauth_type = \"hba\"\nauth_hba_file = \"pg_hba.conf\"\n\
         auth_file = \"userlist.txt\"\nlog_connections = 0\nlog_disconnections = 0\n\
         [databases.{db}]\nport = {}\n",
        sockets.display(),
        pg.port
    );
    let userlist = format!("{}\"{me}\" \"os-user-pw\"\n", Pooler::default_userlist());
    let pooler = Pooler::start_from_files(
        &db,
        "pooler.toml",
        &[
            ("pooler.toml", &config),
            ("pg_hba.conf", "local all all peer\n"),
            ("userlist.txt", &userlist),
        ],
    )
    .await;
    let url = |user: &str| {
        format!(
            "host={} port={} user={user} dbname={db}",
            sockets.display(),
            pooler.port()
        )
    };
    let c = connect(&url(&me)).await;
    assert_eq!(first_value(&c, "SELECT current_user").await, me);
    let other = if me == "postgres" {
        APP_USER
    } else {
        "postgres"
    };
    let err = try_connect(&format!("{} password=x", url(other)))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(
        message(&err).contains("unix socket login rejected"),
        "{err}"
    );
    // TCP has no local line: no method for it.
    let err = try_connect(&pooler.url(&me, "os-user-pw"))
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("no authentication method is found"),
        "{err}"
    );
}
