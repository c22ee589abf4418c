//! Requests the pooler answers without a server.

use bytes::Buf;

use crate::prepared::{ClientStatements, Registry};
use crate::session_state;
use crate::wire::{self, Backend, Frontend, cstr_end};

use super::{Flow, MAX_INSPECTED};

/// Answers, without a server, a batch that only names statements: `Parse` of named
/// statements and `Close` of statements, ending with `Sync` (libpq's `PQprepare`,
/// tokio-postgres dropping a statement). The statements are prepared on a server when first
/// used (see `ensure_prepared`), so a syntax error surfaces at first execution instead.
/// Holding no server here is also what keeps a single-threaded client with many connections
/// (pgbench -j 1 -M prepared) from deadlocking: its blocking prepare does not wait for a
/// server that its own other connections hold. Returns false when the batch needs a server.
pub fn answer_locally(
    up: &mut Flow,
    down: &mut Flow,
    registry: &Registry,
    client: &mut ClientStatements,
) -> bool {
    // Check the whole batch first: all complete, all of the two kinds, ending at a Sync, no
    // name parsed twice (the second is Postgres's 42P05, given on the server's path).
    let mut parsed: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    let mut ends_at = None;
    while let Some((tag, len)) = wire::header(&up.inbuf[pos..]) {
        // A bad length is the framer's to refuse (08P01), not ours to interpret.
        if len < 4 {
            return false;
        }
        let total = 1 + len as usize;
        if up.inbuf.len() - pos < total || total > MAX_INSPECTED {
            return false;
        }
        let body = &up.inbuf[pos + 5..pos + total];
        let named = match Frontend::of(tag) {
            // A statement that leaves session state or resets some must meet the server's
            // path, where it is seen (pin, restore); answered here it would slip by.
            Some(Frontend::Parse) if leaves_state(body) => return false,
            // A name in use is refused in order, on the server's path (42P05).
            Some(Frontend::Parse)
                if cstr_end(body, 0)
                    .and_then(|end| std::str::from_utf8(&body[..end]).ok())
                    .is_some_and(|name| client.contains_key(name)) =>
            {
                return false;
            }
            Some(Frontend::Parse) => {
                let name = &body[..cstr_end(body, 0).unwrap_or(0)];
                // The unnamed statement goes to a server: refused before the push, which
                // would allocate the list on every extended-protocol query.
                if name.is_empty() || parsed.contains(&name) {
                    return false;
                }
                parsed.push(name);
                true
            }
            Some(Frontend::Close) => {
                body.first() == Some(&wire::TARGET_STATEMENT)
                    && body.get(1).is_some_and(|&b| b != 0)
            }
            Some(Frontend::Sync) => {
                ends_at = Some(pos + total);
                break;
            }
            _ => false,
        };
        if !named || cstr_end(body, 0).is_none() {
            return false;
        }
        pos += total;
    }
    let Some(end) = ends_at else {
        return false;
    };
    down.ready_out();
    let mut pos = 0;
    while pos < end {
        let (tag, len) = wire::header(&up.inbuf[pos..]).expect("checked above");
        let total = 1 + len as usize;
        let body = &up.inbuf[pos + 5..pos + total];
        match Frontend::of(tag) {
            Some(Frontend::Parse) => {
                let name_end = cstr_end(body, 0).expect("checked above");
                let stmt = registry.statement(&body[name_end + 1..]);
                client.insert(
                    String::from_utf8_lossy(&body[..name_end]).into_owned(),
                    stmt,
                );
                down.out.extend_from_slice(&Backend::ParseComplete.empty());
            }
            Some(Frontend::Close) => {
                if let Some(name_end) = cstr_end(body, 1) {
                    client.remove(String::from_utf8_lossy(&body[1..name_end]).as_ref());
                }
                down.out.extend_from_slice(&Backend::CloseComplete.empty());
            }
            _ => wire::ready_for_query(&mut down.out, wire::STATUS_IDLE),
        }
        pos += total;
    }
    up.inbuf.advance(end);
    true
}

/// Whether a Parse body's query text creates or resets session state.
pub(crate) fn leaves_state(parse_body: &[u8]) -> bool {
    let Some(name_end) = cstr_end(parse_body, 0) else {
        return false;
    };
    let Some(query_end) = cstr_end(parse_body, name_end + 1) else {
        return false;
    };
    let sql = &parse_body[name_end + 1..query_end];
    let mut resets = false;
    session_state::resets(sql, |_| resets = true);
    let mut sets = false;
    let kind = session_state::scan(sql, &mut |_| sets = true);
    resets || sets || kind.is_some()
}
