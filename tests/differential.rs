//! Differential tests: the same scenario of several clients, run once against Postgres directly
//! (one connection each) and once through the pooler (transaction mode, one server for all of
//! them), must show every client the same rows, SQLSTATEs, command tags and statuses.
//! Clients differ in their startup parameters, so a pooler that lets one client's settings or
//! statements reach another fails here. The scenarios live in `tests/scenario/`, shared with
//! `tests/chopped.rs`, which runs them with every byte stream chopped.

mod common;
mod scenario;
mod wire;

use scenario::Via;

/// Item 2: clients with different startup `search_path` share one server and each reads its
/// own schema, however their transactions interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_search_path_stays_with_each_client() {
    scenario::startup_search_path_stays_with_each_client(Via::Pooler).await;
}

/// Item 4: RESET ALL, DISCARD ALL, RESET x and SET x TO DEFAULT return to the client's startup
/// values (as on a dedicated connection), and the next client still gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_return_to_startup_values() {
    scenario::resets_return_to_startup_values(Via::Pooler).await;
}

/// Item 3: `DEALLOCATE ALL` / `DISCARD ALL` drop the client's own statements and nobody
/// else's; `DEALLOCATE name` of a protocol-level statement works as on Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_affects_only_its_client() {
    scenario::deallocate_affects_only_its_client(Via::Pooler).await;
}

/// Item 11: a Parse of a name in use is refused (42P05) and the rest of its batch skipped; a
/// named Parse that Postgres skipped after an error prepares nothing; a simple Query sent
/// while the server skips to Sync gets no answer and leaves nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_names_and_error_recovery_as_postgres() {
    scenario::statement_names_and_error_recovery_as_postgres(Via::Pooler).await;
}

/// Item 11: a startup value Postgres refuses refuses the login through the pooler too (with
/// Postgres's SQLSTATE), and an accepted one is reported in Postgres's spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_values_are_checked_at_login_as_by_postgres() {
    use common::*;
    let (pooler, db, direct, pooled) = direct_and_pooled("diff_login").await;
    for params in [
        &[("TimeZone", "nowhere/at_all")][..],
        &[("DateStyle", "bogus")],
        &[("client_encoding", "no_such_encoding")],
    ] {
        let d =
            wire::login_params(direct, common::APP_USER, common::APP_PASSWORD, &db, params).await;
        let p =
            wire::login_params(pooled, common::APP_USER, common::APP_PASSWORD, &db, params).await;
        let code = |r: &Result<_, String>| r.as_ref().err().map(|e| e[..5].to_string());
        assert!(d.is_err(), "{params:?}: Postgres refuses it");
        assert_eq!(code(&d), code(&p), "{params:?}: {:?}", p.as_ref().err());
    }
    let spelled = |status: &[(String, String)]| {
        status
            .iter()
            .find(|(n, _)| n == "TimeZone")
            .map(|(_, v)| v.clone())
    };
    let (_, d) = wire::login_params(
        direct,
        common::APP_USER,
        common::APP_PASSWORD,
        &db,
        &[("TimeZone", "utc")],
    )
    .await
    .unwrap();
    let (_, p) = wire::login_params(
        pooled,
        common::APP_USER,
        common::APP_PASSWORD,
        &db,
        &[("TimeZone", "utc")],
    )
    .await
    .unwrap();
    assert_eq!(spelled(&d), spelled(&p));
    // A refused login left the one server usable for everyone.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
}

/// The ParameterStatus messages a login is greeted with are Postgres's for that login's own
/// startup values, whatever the logins before it asked for: the pooler encodes the greeting
/// once for its pool's shared values and must not hand that copy to a client with others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_login_is_greeted_with_its_own_parameter_values() {
    use common::*;
    let (_pooler, db, direct, pooled) = direct_and_pooled("diff_greeting").await;
    let logins: [&[(&str, &str)]; 7] = [
        &[],
        &[],
        &[("application_name", "alpha")],
        &[],
        &[("application_name", "alpha")],
        &[("TimeZone", "Asia/Tokyo"), ("DateStyle", "SQL, DMY")],
        &[],
    ];
    let shown = [
        "application_name",
        "TimeZone",
        "DateStyle",
        "client_encoding",
    ];
    for (i, params) in logins.into_iter().enumerate() {
        let greeted = |status: Vec<(String, String)>| {
            let mut seen: Vec<(String, String)> = status
                .into_iter()
                .filter(|(n, _)| shown.contains(&n.as_str()))
                .collect();
            seen.sort();
            seen
        };
        let (_, d) = wire::login_params(direct, APP_USER, APP_PASSWORD, &db, params)
            .await
            .unwrap();
        let (_, p) = wire::login_params(pooled, APP_USER, APP_PASSWORD, &db, params)
            .await
            .unwrap();
        let (d, p) = (greeted(d), greeted(p));
        assert_eq!(d.len(), shown.len(), "login {i}: Postgres reports {d:?}");
        assert_eq!(d, p, "login {i} with {params:?}");
    }
}

/// Issue 13: settings changed by SET, set_config, startup parameters and `options` follow each
/// client with Postgres's transaction semantics while clients share one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_each_client() {
    scenario::session_settings_follow_each_client(Via::Pooler).await;
}

/// A fresh database, a transaction-mode pooler with one server in front of it, and the
/// addresses to log in to it directly and through the pooler.
async fn direct_and_pooled(
    prefix: &str,
) -> (
    common::Pooler,
    String,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    use std::net::SocketAddr;
    let pg = common::PgServer::shared();
    let db = pg.create_db(prefix).await;
    let pooler = common::Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let pooled = SocketAddr::from(([127, 0, 0, 1], pooler.port()));
    (pooler, db, direct, pooled)
}
