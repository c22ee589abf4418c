//! Session settings a client carries from server to server.
//!
//! Tracked parameters (the reported ones, `search_path`, `track_extra_parameters`) live in the
//! client's `params`. Every other setting the client changed — a `SET`, a
//! `set_config(.., false)`, a startup parameter, `options=-c name=value` — lives in its
//! `settings`. Before the client's transaction the server is brought to both in one query,
//! only for what differs. After a transaction that changed settings (the engine names them),
//! the pooler reads their values back from the server: what it carries is then exactly what
//! Postgres kept, so a rolled-back `SET`, `SET LOCAL` and `ROLLBACK TO` follow Postgres's own
//! rules without the pooler modelling them.

use crate::app::App;
use crate::error::{PoolerError, Result};
use crate::server::{Params, ServerConn, SessionState};
use crate::session_state::is_reported;
use crate::wire;
use std::sync::Arc;

/// At most this many settings per client, and this many bytes of names and values: a client
/// past it is refused (54000), the pooler's memory per client stays bounded.
pub const MAX_SETTINGS: usize = 256;
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// Makes the server's tracked parameters equal the client's `wanted`, and its settings equal
/// the client's `settings`, in one round trip when anything differs.
///
/// `state` is the client's `SessionState` of `wanted` and `settings` (built here when `None`;
/// whoever changes either sets it back to `None`). A server whose recorded state equals it
/// already matches: nothing to compare name by name, nothing to send.
pub(super) async fn sync(
    app: &App,
    server: &mut ServerConn,
    wanted: &mut Arc<Params>,
    settings: &Params,
    state: &mut Option<Arc<SessionState>>,
) -> Result<()> {
    if !server.params_uncertain
        && let (Some(mine), Some(its)) = (state.as_ref(), server.synced.as_ref())
    {
        if Arc::ptr_eq(mine, its) {
            return Ok(());
        }
        if mine == its {
            share_equal(state, &mut server.synced);
            return Ok(());
        }
    }
    let previous = server.synced.take();
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut resets: Vec<String> = Vec::new();
    // After a RESET on this server, what the pooler recorded may be stale: set everything.
    let uncertain = std::mem::take(&mut server.params_uncertain);
    for name in &app.tracked {
        match (wanted.get(name), server.params.get(name)) {
            (Some(w), have) if uncertain || have != Some(w) => {
                sets.push((name.clone(), w.to_string()))
            }
            (None, Some(_)) => resets.push(name.clone()),
            (None, None) if uncertain && !is_reported(name) => resets.push(name.clone()),
            _ => {}
        }
    }
    let tracked_sets = sets.len();
    for (name, value) in &settings.0 {
        if uncertain || server.settings.get(name) != Some(value.as_str()) {
            sets.push((name.clone(), value.clone()));
        }
    }
    for (name, _) in &server.settings.0 {
        if settings.get(name).is_none() {
            resets.push(name.clone());
        }
    }
    if sets.is_empty() && resets.is_empty() {
        state.get_or_insert_with(|| SessionState::of(wanted, settings));
        // What the server recorded is equal: shared, as above.
        server.synced = previous;
        if server.synced != *state {
            server.synced = state.clone();
        } else {
            share_equal(state, &mut server.synced);
        }
        return Ok(());
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        for (i, (name, value)) in sets.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "pg_catalog.set_config({}, {}, false)",
                wire::quote_literal(name),
                wire::quote_literal(value)
            ));
        }
        sql.push(';');
    }
    for name in &resets {
        sql.push_str(&format!("RESET \"{}\";", name.replace('"', "\"\"")));
    }
    // Recorded as asked before the query runs: a parameter Postgres reports arrives as
    // ParameterStatus in Postgres's spelling and overwrites it; one it does not report keeps
    // the value set here, never a previous client's.
    for (i, (name, value)) in sets.iter().enumerate() {
        if i < tracked_sets {
            server.params.set(name, value);
        } else {
            server.settings.set(name, value);
        }
    }
    for name in &resets {
        server.params.remove(name);
        server.settings.remove(name);
    }
    if let Some((code, message)) = server.run_internal(&sql).await? {
        tracing::warn!(%code, %message, "could not apply client parameters on server");
        // The server's state is unknown now: the next client sets everything again.
        server.params_uncertain = true;
        return Err(PoolerError::ServerLogin { code, message });
    }
    for (name, _) in &sets[..tracked_sets] {
        // The client adopts Postgres's spelling so the next comparison matches.
        if let Some(v) = server.params.get(name)
            && wanted.get(name) != Some(v)
        {
            let v = v.to_string();
            Arc::make_mut(wanted).set(name, &v);
        }
    }
    let now = SessionState::of(wanted, settings);
    server.synced = Some(now.clone());
    *state = Some(now);
    Ok(())
}

/// A client's state and a server's that are equal become one copy: the one more holders
/// share (the pool's shared state, which most clients hold, see `Pool::shared_state`). So the
/// servers converge on the copy the clients hold, and the next check is a pointer comparison;
/// a client with a copy of its own gives it up for the server's (memory per client).
fn share_equal(client: &mut Option<Arc<SessionState>>, server: &mut Option<Arc<SessionState>>) {
    let (Some(mine), Some(its)) = (client.as_ref(), server.as_ref()) else {
        return;
    };
    if Arc::strong_count(its) > Arc::strong_count(mine) {
        *client = server.clone();
    } else {
        *server = client.clone();
    }
}

/// After a transaction that changed the settings `touched` (lower case; `all` for `RESET ALL`
/// or `DISCARD ALL`), reads their values from the server into the client's `wanted` and
/// `settings` and into what the pooler knows of the server. A setting back at the server's
/// default leaves `settings`.
pub(super) async fn read_back(
    app: &App,
    server: &mut ServerConn,
    touched: &[String],
    all: bool,
    wanted: &mut Params,
    settings: &mut Params,
) -> Result<()> {
    server.synced = None;
    let mut names: Vec<String> = touched.to_vec();
    if all {
        // Tracked parameters Postgres does not report (search_path) must be read too: the
        // client's value of them is what RESET ALL left.
        let unreported = app.tracked.iter().filter(|n| !is_reported(n));
        for name in settings
            .0
            .iter()
            .chain(server.settings.0.iter())
            .map(|(n, _)| n)
            .chain(unreported)
        {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let rows = match server.query_rows(&read_query(&names)).await? {
        Ok(rows) => rows,
        Err((code, message)) => {
            tracing::warn!(%code, %message, "could not read back session settings");
            server.params_uncertain = true;
            return Err(PoolerError::SettingsUnknown(message));
        }
    };
    for row in rows {
        let [Some(name), value, Some(kept)] = &row[..] else {
            return Err(PoolerError::SettingsUnknown("unexpected row".into()));
        };
        if let Some(canonical) = app.tracked_name(name) {
            if let Some(v) = value {
                wanted.set(canonical, v);
                server.params.set(canonical, v);
            }
            continue;
        }
        match value {
            Some(v) if kept == "t" => {
                settings.set(name, v);
                server.settings.set(name, v);
            }
            _ => {
                settings.remove(name);
                server.settings.remove(name);
            }
        }
    }
    check_bounds(settings)
}

/// The query reading settings back: each name with its value (`SHOW`'s spelling, which
/// `set_config` accepts back) and whether the session changed it. A name Postgres does not
/// know gives NULL; one the role may not read is treated as unknown rather than failing the
/// query (`current_setting` would raise). Custom names (`app.tenant`) are not in
/// `pg_settings`: they are kept as the session's.
fn read_query(names: &[String]) -> String {
    let mut values = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            values.push_str(", ");
        }
        values.push('(');
        values.push_str(&wire::quote_literal(name));
        values.push(')');
    }
    format!(
        "SELECT v.name, CASE WHEN s.name IS NOT NULL OR pg_catalog.strpos(v.name, '.') > 0 \
         THEN pg_catalog.current_setting(v.name, true) END, \
         s.name IS NULL OR s.source = 'session' \
         FROM (VALUES {values}) AS v(name) \
         LEFT JOIN pg_catalog.pg_settings s ON pg_catalog.lower(s.name) = v.name"
    )
}

/// Refuses a client carrying more settings than the bound.
pub(super) fn check_bounds(settings: &Params) -> Result<()> {
    let bytes: usize = settings.0.iter().map(|(n, v)| n.len() + v.len()).sum();
    if settings.0.len() > MAX_SETTINGS || bytes > MAX_SETTINGS_BYTES {
        return Err(PoolerError::TooManySettings(
            MAX_SETTINGS,
            MAX_SETTINGS_BYTES,
        ));
    }
    Ok(())
}

/// The settings in a startup packet's `options` (`-c name=value`, `-cname=value`,
/// `--name=value`; a backslash escapes the next character), as Postgres reads them. Any other
/// switch is refused: the pooler cannot apply it per client.
pub(super) fn parse_options(options: &str) -> Result<Vec<(String, String)>> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    let mut in_arg = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                in_arg = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    let unsupported = || PoolerError::UnsupportedStartupParameter("options".into());
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let setting = if let Some(rest) = arg.strip_prefix("--") {
            rest.to_string()
        } else if arg == "-c" {
            args.next().ok_or_else(unsupported)?
        } else if let Some(rest) = arg.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(unsupported());
        };
        let (name, value) = setting.split_once('=').ok_or_else(unsupported)?;
        if name.is_empty() {
            return Err(unsupported());
        }
        // Postgres reads `-c work-mem=1` as work_mem.
        out.push((
            name.replace('-', "_").to_ascii_lowercase(),
            value.to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_options_as_postgres_does() {
        assert_eq!(
            parse_options("-c work_mem=8MB --search-path=a,b -cstatement_timeout=5").unwrap(),
            vec![
                ("work_mem".to_string(), "8MB".to_string()),
                ("search_path".to_string(), "a,b".to_string()),
                ("statement_timeout".to_string(), "5".to_string()),
            ]
        );
        assert_eq!(
            parse_options(r"-c search_path=my\ schema").unwrap(),
            vec![("search_path".to_string(), "my schema".to_string())]
        );
        assert!(parse_options("").unwrap().is_empty());
        for bad in ["-B 100", "-c", "-c work_mem", "--=1", "junk"] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_states_become_the_copy_more_holders_share() {
        let mut params = Params::default();
        params.set("search_path", "app");
        let shared = SessionState::of(&params, &Params::default());
        let _other_clients = [shared.clone(), shared.clone()];
        // A server that kept a copy of its own takes the one the clients share...
        let mut client = Some(shared.clone());
        let mut server = Some(SessionState::of(&params, &Params::default()));
        share_equal(&mut client, &mut server);
        assert!(Arc::ptr_eq(server.as_ref().unwrap(), &shared));
        assert!(Arc::ptr_eq(client.as_ref().unwrap(), &shared));
        // ...and a client with its own copy gives it up for the server's shared one.
        let mut client = Some(SessionState::of(&params, &Params::default()));
        share_equal(&mut client, &mut server);
        assert!(Arc::ptr_eq(client.as_ref().unwrap(), &shared));
        assert!(Arc::ptr_eq(server.as_ref().unwrap(), &shared));
    }

    #[test]
    fn bounds_the_settings_per_client() {
        let mut p = Params::default();
        for i in 0..MAX_SETTINGS {
            p.set(&format!("app.s{i}"), "1");
        }
        assert!(check_bounds(&p).is_ok());
        p.set("app.one_more", "1");
        assert!(matches!(
            check_bounds(&p),
            Err(PoolerError::TooManySettings(..))
        ));
        let mut big = Params::default();
        big.set("app.big", &"x".repeat(MAX_SETTINGS_BYTES + 1));
        assert!(check_bounds(&big).is_err());
    }
}
