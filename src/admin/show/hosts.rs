//! `SHOW HOSTS` (beyond PgBouncer): each pool's hosts as its health check last saw them,
//! and the pool's servers on each (at most `pool_size` per host).

use super::{N, T, Table, s};
use crate::app::App;

pub(super) fn show_hosts(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("user", T),
        ("host", T),
        ("port", N),
        ("role", T),
        ("usable", N),
        ("read_only", N),
        ("lag_ms", N),
        ("down_count", N),
        ("target_session_attrs", T),
        ("error", T),
        ("timeline", N),
        ("split_brain", N),
        ("servers", N),
        ("pool_size", N),
    ]);
    for pool in app.pools() {
        let Some(hosts) = &pool.hosts else {
            // One host taken as it is: no role known or needed.
            let (host, port) = pool.target.address(0);
            t.rows.push(vec![
                s(&pool.database),
                s(&pool.user),
                s(host),
                s(port),
                s("unchecked"),
                s(1),
                None,
                None,
                s(0),
                s("any"),
                None,
                None,
                s(0),
                s(pool.counts().total),
                s(pool.limits().pool_size),
            ]);
            continue;
        };
        let split = hosts.split_brain();
        for (i, h) in hosts.snapshot().iter().enumerate() {
            let (host, port) = pool.target.address(i);
            t.rows.push(vec![
                s(&pool.database),
                s(&pool.user),
                s(host),
                s(port),
                s(h.role.as_str()),
                s(u8::from(hosts.acceptable(i))),
                s(u8::from(h.read_only)),
                s(h.lag.as_millis()),
                s(h.downs),
                s(hosts.policy.attrs.as_str()),
                h.error.clone(),
                h.timeline.and_then(s),
                s(u8::from(split && h.role == crate::pool::Role::Primary)),
                s(h.servers),
                s(hosts.base_size()),
            ]);
        }
    }
    t
}
