//! Protocol-level prepared statements in transaction mode (PgBouncer 1.21's
//! `max_prepared_statements`).
//!
//! A client's named statement may be used in a later transaction on another server. The
//! pooler gives every distinct (query, parameter types) one pooler-wide server-side name, keeps
//! each client's name → statement map, and each server's set of statements it has prepared.
//! When a client binds a statement its server lacks, the relay injects the `Parse` into the
//! client's own pipeline and hides the reply (see `relay.rs`), so no extra round trip.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One statement as the servers know it.
#[derive(Debug)]
pub struct ServerStatement {
    pub id: u64,
    /// The server-side name, `POOLER_<id>`.
    pub name: String,
    /// A complete Parse message preparing it under `name`.
    pub parse: Bytes,
    /// The session settings its text changes (`SET work_mem = ...`): each execution makes
    /// the pooler read them back, as for a simple query (found once, here, not per Bind).
    pub settings: Box<[String]>,
}

/// Pooler-wide: one server-side statement per distinct (query, parameter types) that some
/// client or server still holds. The registry itself holds statements weakly: a statement no
/// client names and no server cache holds is forgotten, so memory follows what is in use, not
/// every text ever seen. Forgetting cannot break a server: a server can only have a statement
/// its cache holds (a strong reference), and ids are never reused, so a text that comes back
/// gets a new name no server has.
#[derive(Default)]
pub struct Registry {
    by_text: Mutex<Statements>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Statements {
    map: HashMap<Bytes, Weak<ServerStatement>>,
    /// Dead entries are swept when the map grows past this (amortised O(1) per insert).
    sweep_at: usize,
}

impl Registry {
    /// The statement for a Parse body's text part (query and parameter types, after the name).
    pub fn statement(&self, text: &[u8]) -> Arc<ServerStatement> {
        let mut guard = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        if let Some(s) = st.map.get(text).and_then(Weak::upgrade) {
            return s;
        }
        if st.map.len() >= st.sweep_at {
            st.map.retain(|_, w| w.strong_count() > 0);
            st.sweep_at = (st.map.len() * 2).max(1024);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("POOLER_{id}");
        let mut parse = BytesMut::with_capacity(1 + 4 + name.len() + 1 + text.len());
        crate::wire::parse(&mut parse, &name, &[text]);
        let query = text.split(|&b| b == 0).next().unwrap_or_default();
        let mut settings = Vec::new();
        crate::session_state::scan(query, &mut |n| settings.push(n));
        let stmt = Arc::new(ServerStatement {
            id,
            name,
            parse: parse.freeze(),
            settings: settings.into_boxed_slice(),
        });
        st.map
            .insert(Bytes::copy_from_slice(text), Arc::downgrade(&stmt));
        stmt
    }

    /// Statements some client or server still holds.
    pub fn len(&self) -> usize {
        let st = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        st.map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's statement names.
///
/// Hashed with fixed keys: a random hasher state takes 16 bytes in every session, idle or
/// not, and the names are the client's own (colliding them slows only its own lookups, over
/// at most `max_prepared_statements` of them).
pub type ClientStatements = HashMap<String, Arc<ServerStatement>, FixedState>;

/// SipHash with fixed keys (see `ClientStatements`).
pub type FixedState = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

/// The statements one server has prepared, bounded by `max_prepared_statements` (LRU).
#[derive(Debug, Default)]
pub struct ServerCache {
    /// Statement id → last use (a per-server counter).
    prepared: HashMap<u64, (u64, Arc<ServerStatement>)>,
    clock: u64,
    /// Statements to close on the server before the next request (invalidated plans).
    pub to_close: Vec<Arc<ServerStatement>>,
    /// The client (its id; 0: none) whose unnamed statement the server holds. Another
    /// client's Bind of the unnamed statement must not run it (see `engine::client`).
    pub unnamed_owner: u64,
}

impl ServerCache {
    pub fn contains(&mut self, id: u64) -> bool {
        self.clock += 1;
        let clock = self.clock;
        match self.prepared.get_mut(&id) {
            Some(entry) => {
                entry.0 = clock;
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, stmt: &Arc<ServerStatement>) {
        self.clock += 1;
        self.prepared.insert(stmt.id, (self.clock, stmt.clone()));
    }

    pub fn remove(&mut self, id: u64) {
        self.prepared.remove(&id);
    }

    /// The least recently used statement, removed, when the cache holds `max` or more.
    pub fn evict_for(&mut self, max: usize) -> Option<Arc<ServerStatement>> {
        if self.prepared.len() < max {
            return None;
        }
        let (&id, _) = self.prepared.iter().min_by_key(|(_, (used, _))| *used)?;
        self.prepared.remove(&id).map(|(_, s)| s)
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }

    /// Forgets everything (after `DISCARD ALL`, which deallocates every statement).
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.to_close.clear();
        self.unnamed_owner = 0;
    }
}

/// A Close message for a server statement.
pub fn close_message(out: &mut BytesMut, stmt: &ServerStatement) {
    out.put_u8(b'C');
    out.put_i32((4 + 1 + stmt.name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(stmt.name.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_statement_and_lru_eviction() {
        let r = Registry::default();
        let a = r.statement(b"select 1\0\0\0");
        let b = r.statement(b"select 1\0\0\0");
        let c = r.statement(b"select 2\0\0\0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.name, c.name);
        assert_eq!(&a.parse[5..5 + a.name.len()], a.name.as_bytes());
        let mut cache = ServerCache::default();
        cache.insert(&a);
        cache.insert(&c);
        assert!(cache.contains(a.id));
        assert_eq!(cache.evict_for(3).map(|s| s.id), None);
        assert_eq!(cache.evict_for(2).map(|s| s.id), Some(c.id));
    }

    #[test]
    fn statements_nobody_holds_are_forgotten_and_never_renamed_while_held() {
        let r = Registry::default();
        let held = r.statement(b"select 0\0\0\0");
        for i in 0..10_000 {
            let _ = r.statement(format!("select {i}\0\0\0").as_bytes());
        }
        assert_eq!(r.len(), 1, "only the held statement is live");
        assert!(
            r.by_text.lock().unwrap().map.len() < 3000,
            "dead entries are swept"
        );
        assert!(Arc::ptr_eq(&held, &r.statement(b"select 0\0\0\0")));
        let id = held.id;
        drop(held);
        assert_ne!(
            r.statement(b"select 0\0\0\0").id,
            id,
            "a forgotten id is never reused"
        );
    }
}
