//! Client → server: the client's messages, read as far as the pooler must, into what goes to
//! the server; session-state detection, resets, statement-name rewriting.

use bytes::{Buf, BufMut, BytesMut};
use std::sync::Arc;

use crate::error::{PoolerError, Result};
use crate::prepared::{self, ServerStatement};
use crate::session_state::{self, Kind, Policy, Reset};
use crate::wire::{
    self, Backend, Frontend, Frontend as F, cstr_end, frame_header as header, invalid_type,
    malformed,
};

use super::tracker::{Expect, Request};
use super::{Flow, MAX_INSPECTED, Statements, Tracker};

/// Client → server state.
#[derive(Default)]
pub struct ClientSide {
    /// Messages since the last sync point that leave state on the server (Parse, Bind, ...).
    unsynced: bool,
    /// The client sent Terminate.
    pub terminated: bool,
    /// The client's id (its registry id; 0 in tests): who owns the server's unnamed statement.
    pub id: u64,
    /// Simple and extended queries seen (for statistics).
    pub queries: u64,
    /// Session-state detection (transaction mode only).
    pub policy: Option<Policy>,
    /// The client created session state under `pin`: it keeps its server from now on.
    pub pinned: Option<Kind>,
    /// A pin the session has not reported yet (SHOW CLIENTS, metrics): the engine tells, the
    /// session driver makes it visible.
    pub newly_pinned: Option<Kind>,
    /// Session-state statements let through under `warn`, and refused under `error`.
    pub warned: u64,
    pub refused: u64,
    /// The client's startup values of tracked parameters: what `RESET` returns to on a
    /// dedicated connection. The server's own defaults are the pool's, so after a `RESET` the
    /// pooler sets these again (a hidden query after the sync point).
    /// Shared by the clients of a pool that gave the same (see `Pool::share`).
    pub startup: Arc<[(String, String)]>,
    /// Bit i: `startup[i]` was reset since the last sync point and must be set again.
    restore: u64,
    /// A message waits, unread, for replies to earlier requests: process again after them.
    pub deferred: bool,
    /// A `RESET` ran on the server: the session re-checks every tracked parameter of this
    /// server before it serves the next client (what the pooler recorded may be stale).
    pub params_touched: bool,
    /// Settings the client's texts changed since checkout (`SET`, `RESET`, `set_config`), in
    /// lower case: the session reads their values back once the transaction is over and
    /// carries them with the client, instead of pinning it.
    pub settings_touched: Vec<String>,
    /// `RESET ALL` or `DISCARD ALL`: every setting the session carries must be read back.
    pub settings_all: bool,
    /// The settings the client's unnamed statement changes, noted again at each Bind of it.
    unnamed_settings: Vec<String>,
}

impl ClientSide {
    /// Processes the client's input into `up.out`, rewriting statement names when `stmts` is
    /// given. Stops at a partial message it must see whole.
    pub fn process(
        &mut self,
        up: &mut Flow,
        tracker: &mut Tracker,
        mut stmts: Option<&mut Statements<'_>>,
    ) -> Result<()> {
        up.ready_out();
        loop {
            if !up.continue_message() || self.terminated {
                return Ok(());
            }
            if let Some(s) = stmts.as_deref_mut() {
                tracker.drain_unprepared(s.client);
                // Statements whose plans went stale are closed before anything else.
                while let Some(stale) = s.server.to_close.pop() {
                    prepared::close_message(&mut up.out, &stale);
                    tracker.push(Expect::Hide(Request::Close, None));
                }
            }
            let Some((tag, total)) = header(&up.inbuf, false)? else {
                return Ok(());
            };
            let Some(kind) = Frontend::of(tag) else {
                return Err(invalid_type(tag));
            };
            match kind {
                F::Query if self.reads_text(stmts.is_some()) && total <= MAX_INSPECTED => {
                    if up.inbuf.len() < total {
                        return Ok(());
                    }
                    self.queries += 1;
                    self.unsynced = false;
                    // A simple query destroys the unnamed statement.
                    if let Some(s) = stmts.as_deref_mut() {
                        s.server.unnamed_owner = 0;
                    }
                    tracker.push(Expect::Pass(Request::Query, None));
                    // The text without its terminator (absent from a malformed empty Query).
                    let text_end = total - usize::from(total > 5 && up.inbuf[total - 1] == 0);
                    // Most texts contain no word the scanners look for: one cheap pass. The
                    // terminator stays out: after a final `;` it would look like the start of
                    // a statement the prefilter cannot judge.
                    let matters = session_state::may_matter(&up.inbuf[5..text_end]);
                    if matters
                        && self.needs_inspection()
                        && let Some(kind) = self.scan(&up.inbuf[5..total], None)
                        && self.on_session_state(kind)? == Policy::Error
                    {
                        up.inbuf.advance(total);
                        refusal_query(&mut up.out, kind);
                        continue;
                    }
                    let dealloc = if matters {
                        self.on_resets(&up.inbuf[5..text_end], stmts.as_deref_mut(), true)
                    } else {
                        None
                    };
                    match dealloc {
                        Some(stmt) => {
                            // `DEALLOCATE name` of a protocol-level statement: the server
                            // knows it by the pooler's name.
                            up.inbuf.advance(total);
                            let sql = format!("DEALLOCATE \"{}\"", stmt.name);
                            wire::query(&mut up.out, &sql);
                        }
                        None => up.pass(total, false),
                    }
                    self.restore_after_sync(&mut up.out, tracker);
                }
                F::Query | F::FunctionCall => {
                    if kind == F::Query && self.reads_text(stmts.is_some()) {
                        // Larger than MAX_INSPECTED: streamed unread.
                        self.unread_text()?;
                    }
                    self.queries += u64::from(kind == F::Query);
                    self.unsynced = false;
                    if kind == F::Query
                        && let Some(s) = stmts.as_deref_mut()
                    {
                        s.server.unnamed_owner = 0;
                    }
                    tracker.push(Expect::Pass(Request::Query, None));
                    up.pass(total, false);
                }
                F::Sync => {
                    self.unsynced = false;
                    tracker.push(Expect::Pass(Request::Sync, None));
                    up.pass(total, false);
                    self.restore_after_sync(&mut up.out, tracker);
                }
                F::Flush => {
                    self.unsynced = true;
                    up.pass(total, false);
                }
                F::Execute => {
                    self.queries += 1;
                    self.unsynced = true;
                    tracker.push(Expect::Pass(Request::Execute, None));
                    up.pass(total, false);
                }
                // COPY data belongs to the request that started the COPY; outside one the
                // server ignores it, so it must not look like a clean boundary either.
                F::CopyData | F::CopyDone | F::CopyFail => {
                    self.unsynced |= tracker.is_idle();
                    if kind != F::CopyData {
                        tracker.copy_end();
                    }
                    up.pass(total, false);
                }
                F::Parse if total > MAX_INSPECTED => {
                    // Too large to keep whole. Only the name is needed: an unnamed Parse
                    // streams through, its text unread (so, to be safe, it pins); a named one
                    // would have to be kept to be prepared again elsewhere: refused.
                    let Some(&first) = up.inbuf.get(5) else {
                        return Ok(());
                    };
                    if first != 0 && stmts.is_some() {
                        return Err(PoolerError::StatementTooLarge(MAX_INSPECTED >> 20));
                    }
                    self.unsynced = true;
                    self.unread_text()?;
                    if let Some(s) = stmts.as_deref_mut() {
                        s.server.unnamed_owner = self.id;
                    }
                    tracker.push(Expect::Pass(Request::Parse, None));
                    up.pass(total, false);
                }
                F::Parse | F::Describe | F::Close => {
                    if total > MAX_INSPECTED {
                        return Err(PoolerError::protocol("oversized extended-protocol message"));
                    }
                    if up.inbuf.len() < total {
                        return Ok(());
                    }
                    self.unsynced = true;
                    if kind == F::Parse && self.reads_text(stmts.is_some()) {
                        let name_end =
                            cstr_end(&up.inbuf[..total], 5).ok_or_else(|| malformed("Parse"))?;
                        let query_end = cstr_end(&up.inbuf[..total], name_end + 1)
                            .ok_or_else(|| malformed("Parse"))?;
                        let matters = session_state::may_matter(&up.inbuf[name_end + 1..query_end]);
                        if !matters && name_end == 5 {
                            // Nothing set by this unnamed statement.
                            self.unnamed_settings.clear();
                        }
                        if matters
                            && self.needs_inspection()
                            && let Some(kind) = self.scan(
                                &up.inbuf[name_end + 1..query_end],
                                Some((name_end == 5, stmts.is_some())),
                            )
                            && self.on_session_state(kind)? == Policy::Error
                        {
                            // Mid-pipeline there is no clean way to refuse one message.
                            return Err(PoolerError::SessionState(kind.as_str()));
                        }
                        let unnamed = name_end == 5;
                        if matters
                            && let Some(stmt) = self.on_resets(
                                &up.inbuf[name_end + 1..query_end],
                                stmts.as_deref_mut(),
                                unnamed,
                            )
                        {
                            // An unnamed `DEALLOCATE name`: the same Parse with the
                            // pooler's name in the text, parameter types unchanged.
                            let sql = format!("DEALLOCATE \"{}\"", stmt.name);
                            let rest = &up.inbuf[query_end + 1..total];
                            wire::parse(&mut up.out, "", &[sql.as_bytes(), &[0], rest]);
                            up.inbuf.advance(total);
                            tracker.push(Expect::Pass(Request::Parse, None));
                            if let Some(s) = stmts.as_deref_mut() {
                                s.server.unnamed_owner = self.id;
                            }
                            continue;
                        }
                    }
                    match kind {
                        F::Parse => {
                            // An unnamed Parse: the server's unnamed statement is this client's.
                            if up.inbuf.get(5) == Some(&0)
                                && let Some(s) = stmts.as_deref_mut()
                            {
                                s.server.unnamed_owner = self.id;
                            }
                            match parse(up, total, tracker, stmts.as_deref_mut())? {
                                ParseOutcome::Done => {}
                                ParseOutcome::Deferred => {
                                    self.deferred = true;
                                    return Ok(());
                                }
                            }
                        }
                        F::Describe => {
                            // Describe of the unnamed statement ('S' and an empty name).
                            if up.inbuf.get(5..7) == Some(&b"S\0"[..]) {
                                self.guard_unnamed(up, tracker, stmts.as_deref_mut());
                            }
                            describe(up, total, tracker, stmts.as_deref_mut())?
                        }
                        _ => close(up, total, tracker, stmts.as_deref_mut())?,
                    }
                }
                F::Bind => {
                    self.unsynced = true;
                    // Only the portal and statement names (the start) are needed whole.
                    let Some(portal_end) = cstr_end(&up.inbuf[..up.inbuf.len().min(total)], 5)
                    else {
                        if up.inbuf.len() >= total.min(5 + MAX_INSPECTED) {
                            return Err(malformed("Bind"));
                        }
                        return Ok(());
                    };
                    let Some(stmt_end) =
                        cstr_end(&up.inbuf[..up.inbuf.len().min(total)], portal_end + 1)
                    else {
                        if up.inbuf.len() >= total.min(5 + MAX_INSPECTED) {
                            return Err(malformed("Bind"));
                        }
                        return Ok(());
                    };
                    if stmt_end == portal_end + 1 {
                        self.guard_unnamed(up, tracker, stmts.as_deref_mut());
                        note_settings(&mut self.settings_touched, &self.unnamed_settings);
                    }
                    let bound = bind(
                        up,
                        total,
                        portal_end,
                        stmt_end,
                        tracker,
                        stmts.as_deref_mut(),
                    );
                    if let Some(stmt) = bound {
                        note_settings(&mut self.settings_touched, &stmt.settings);
                    }
                }
                F::Terminate => {
                    self.terminated = true;
                    up.inbuf.advance(total.min(up.inbuf.len()));
                    return Ok(());
                } // The relay checked the type before: every Frontend kind is handled above.
            }
        }
    }

    /// `policy`: session-state detection, for transaction mode.
    pub fn new(policy: Option<Policy>) -> ClientSide {
        ClientSide {
            policy,
            ..Default::default()
        }
    }

    /// The same, for the client with this registry id and these startup values.
    pub fn of_client(
        policy: Option<Policy>,
        startup: Arc<[(String, String)]>,
        id: u64,
    ) -> ClientSide {
        ClientSide {
            policy,
            startup,
            id,
            ..Default::default()
        }
    }

    /// Before a Bind or Describe of the unnamed statement: if the server's unnamed statement
    /// is another client's (a previous transaction on this server), close it first, hidden,
    /// so the server answers `26000` as Postgres would this client, instead of running it.
    /// (A client whose own unnamed statement was prepared on another server gets the same
    /// error: the pooler does not carry unnamed statements between servers.)
    fn guard_unnamed(
        &mut self,
        up: &mut Flow,
        tracker: &mut Tracker,
        stmts: Option<&mut Statements<'_>>,
    ) {
        if let Some(s) = stmts
            && s.server.unnamed_owner != self.id
        {
            put_named(&mut up.out, F::Close.byte(), wire::TARGET_STATEMENT, "");
            tracker.push(Expect::Hide(Request::Close, None));
            s.server.unnamed_owner = self.id;
        }
    }

    /// Scans a query text for session state, noting the settings it changes. For a Parse,
    /// `parse` tells whether it is unnamed and whether the pooler follows named statements.
    fn scan(&mut self, sql: &[u8], parse: Option<(bool, bool)>) -> Option<Kind> {
        let mut names = Vec::new();
        let kind = session_state::scan(sql, &mut |name| names.push(name));
        match parse {
            Some((true, _)) => self.unnamed_settings.clone_from(&names),
            // A named statement the pooler does not follow (max_prepared_statements = 0)
            // could run again in a later transaction, unseen: kept on its server.
            Some((false, false)) if kind.is_none() && !names.is_empty() => {
                return Some(Kind::Prepare);
            }
            _ => {}
        }
        for name in names {
            note_setting(&mut self.settings_touched, name);
        }
        kind
    }

    pub(crate) fn needs_inspection(&self) -> bool {
        self.policy.is_some() && self.pinned.is_none()
    }

    /// A query text too large to read passes unread: it may create session state (pinned,
    /// the safe side) or reset parameters (re-checked at the next checkout).
    pub(crate) fn unread_text(&mut self) -> Result<()> {
        self.params_touched = true;
        if self.needs_inspection() && self.on_session_state(Kind::Unclassified)? == Policy::Error {
            return Err(PoolerError::SessionState(Kind::Unclassified.as_str()));
        }
        Ok(())
    }

    /// Whether query texts are read at all: for session-state detection, and for the resets
    /// the pooler must follow (startup parameters to restore, statement names it rewrites).
    pub(crate) fn reads_text(&self, rewriting: bool) -> bool {
        self.needs_inspection() || rewriting || !self.startup.is_empty()
    }

    /// Follows the resets in a query text. Statements deallocated go from the client's names
    /// and, since the server loses them for every client, from the server's cache; reset
    /// parameters are queued for restoring. Returns the statement to deallocate under its
    /// server name when `sql` is exactly `DEALLOCATE name` of a protocol-level statement
    /// and `rewritable`.
    pub(crate) fn on_resets(
        &mut self,
        sql: &[u8],
        mut stmts: Option<&mut Statements<'_>>,
        rewritable: bool,
    ) -> Option<Arc<ServerStatement>> {
        let mut count = 0usize;
        let mut target = None;
        let startup = &self.startup;
        let mut restore = 0u64;
        let mut touched = false;
        let mut all = false;
        let settings = &mut self.settings_touched;
        session_state::resets(sql, |r| {
            count += 1;
            match r {
                Reset::AllParams => {
                    touched = true;
                    all = true;
                    restore = u64::MAX;
                }
                Reset::Param(word) => {
                    touched = true;
                    let name = session_state::identifier(word);
                    note_setting(settings, name.to_ascii_lowercase());
                    if let Some(i) = startup
                        .iter()
                        .position(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        restore |= 1u64.checked_shl(i as u32).unwrap_or(u64::MAX);
                    }
                }
                Reset::AllStatements => {
                    if let Some(s) = stmts.as_deref_mut() {
                        s.client.clear();
                        s.server.clear();
                    }
                }
                Reset::Statement(word) => {
                    let name = session_state::identifier(word);
                    if let Some(s) = stmts.as_deref_mut()
                        && let Some(stmt) = s.client.remove(&name)
                    {
                        s.server.remove(stmt.id);
                        target = Some(stmt);
                    }
                }
            }
        });
        self.restore |= restore;
        self.params_touched |= touched;
        self.settings_all |= all;
        // Only a query that is nothing but the DEALLOCATE can be replaced whole.
        let single = count == 1 && {
            let trimmed = sql.trim_ascii();
            let body = trimmed.strip_suffix(b";").unwrap_or(trimmed);
            !body.contains(&b';')
        };
        target.filter(|_| single && rewritable)
    }

    /// After a sync point, sets again the startup parameters a RESET took back: one hidden
    /// query, only when a RESET was seen. It changes only parameters that are at the server's
    /// own reset value now, so a RESET that did not happen (rolled back, failed) changes
    /// nothing, and inside a transaction the fix shares the transaction's fate.
    pub(crate) fn restore_after_sync(&mut self, out: &mut BytesMut, tracker: &mut Tracker) {
        if self.restore == 0 {
            return;
        }
        let mut values = String::new();
        let mut any = false;
        for (i, (name, value)) in self.startup.iter().enumerate() {
            let bit = 1u64.checked_shl(i as u32).unwrap_or(0);
            if self.restore & bit == 0 && !(i >= 64 && self.restore == u64::MAX) {
                continue;
            }
            if any {
                values.push_str(", ");
            }
            any = true;
            values.push_str(&format!(
                "({}, {})",
                wire::quote_literal(&name.to_ascii_lowercase()),
                wire::quote_literal(value)
            ));
        }
        // A custom setting (`app.x`) is not in pg_settings: once reset it reads ''.
        let sql = format!(
            "SELECT pg_catalog.set_config(v.name, v.value, false) \
             FROM (VALUES {values}) AS v(name, value) \
             LEFT JOIN pg_catalog.pg_settings s ON pg_catalog.lower(s.name) = v.name \
             WHERE CASE WHEN s.name IS NULL \
             THEN coalesce(pg_catalog.current_setting(v.name, true), '') = '' \
             ELSE s.setting IS NOT DISTINCT FROM s.reset_val END"
        );
        self.restore = 0;
        if any {
            wire::query(out, &sql);
            tracker.push(Expect::HideQuery);
        }
    }

    /// Applies the policy to a detected statement; returns the policy applied.
    pub(crate) fn on_session_state(&mut self, kind: Kind) -> Result<Policy> {
        let policy = self.policy.unwrap_or_default();
        match policy {
            Policy::Pin => {
                tracing::info!(
                    kind = kind.as_str(),
                    "client creates session state: pinned to its server"
                );
                self.pinned = Some(kind);
                self.newly_pinned = Some(kind);
            }
            Policy::Warn => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "client creates session state in transaction pooling"
                );
                self.warned += 1;
            }
            Policy::Error => self.refused += 1,
        }
        Ok(policy)
    }

    /// True when everything forwarded is a complete request up to a sync point.
    pub fn at_boundary(&self, up: &Flow) -> bool {
        !self.unsynced && up.at_boundary()
    }
}

/// Adds a setting name to those touched, once.
fn note_setting(touched: &mut Vec<String>, name: String) {
    if !touched.contains(&name) {
        touched.push(name);
    }
}

/// Notes the settings a statement being bound changes (its own, found once at Parse).
fn note_settings(touched: &mut Vec<String>, names: &[String]) {
    for name in names {
        if !touched.contains(name) {
            touched.push(name.clone());
        }
    }
}

/// A query that makes the server itself refuse the client's statement, so the error arrives
/// in order and a transaction block fails exactly as it would on any error.
pub(crate) fn refusal_query(out: &mut BytesMut, kind: Kind) {
    let message = PoolerError::SessionState(kind.as_str()).to_string();
    let sql = format!(
        "DO $pooler$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}; END$pooler$",
        wire::quote_literal(&message)
    );
    wire::query(out, &sql);
}

/// Has the server raise an error in the extended protocol (unnamed statement and portal,
/// their replies hidden), so its transaction fails and it skips to Sync as after any error;
/// the error itself goes to the client.
fn raise_on_server(out: &mut BytesMut, tracker: &mut Tracker, code: &str, message: &str) {
    let sql = format!(
        "DO $pooler$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = {}; END$pooler$",
        wire::quote_literal(message)
    );
    // The text's terminator, then no parameter types.
    wire::parse(out, "", &[sql.as_bytes(), &[0, 0, 0]]);
    tracker.push(Expect::Hide(Request::Parse, None));
    // Bind: unnamed portal and statement, no parameter formats, no parameters, no results.
    out.put_slice(&[F::Bind.byte(), 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
    tracker.push(Expect::Hide(Request::Bind, None));
    out.put_slice(&[F::Execute.byte(), 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    tracker.push(Expect::Pass(Request::Execute, None));
}

/// Makes sure the server has `stmt`, injecting its Parse (reply hidden) when it does not.
pub(crate) fn ensure_prepared(
    stmt: &Arc<ServerStatement>,
    s: &mut Statements<'_>,
    tracker: &mut Tracker,
    out: &mut BytesMut,
) {
    if tracker.skipping || s.server.contains(stmt.id) {
        return;
    }
    make_room(s, tracker, out);
    close_then_parse(out, stmt, tracker);
    s.server.insert(stmt);
    tracker.push(Expect::Hide(Request::Parse, Some(stmt.clone())));
}

/// Writes the Parse of a pooler statement, preceded by a hidden Close of its name. Closing a
/// statement that does not exist is no error, and it makes the Parse succeed even where the
/// cache is wrong about the server (a Close that Postgres skipped after an error, a
/// `DEALLOCATE ALL` that failed): `42P05 already exists` cannot happen.
pub(crate) fn close_then_parse(out: &mut BytesMut, stmt: &ServerStatement, tracker: &mut Tracker) {
    prepared::close_message(out, stmt);
    tracker.push(Expect::Hide(Request::Close, None));
    out.extend_from_slice(&stmt.parse);
}

/// Evicts the least recently used statement (with a hidden Close) when the cache is full.
pub(crate) fn make_room(s: &mut Statements<'_>, tracker: &mut Tracker, out: &mut BytesMut) {
    if let Some(old) = s.server.evict_for(s.max) {
        prepared::close_message(out, &old);
        tracker.push(Expect::Hide(Request::Close, None));
    }
}

pub(crate) fn parse(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<ParseOutcome> {
    let name_end = cstr_end(&up.inbuf[..total], 5).ok_or_else(|| malformed("Parse"))?;
    let (Some(s), false) = (stmts, name_end == 5) else {
        tracker.push(Expect::Pass(Request::Parse, None));
        up.pass(total, false);
        return Ok(ParseOutcome::Done);
    };
    let name = std::str::from_utf8(&up.inbuf[5..name_end]).map_err(|_| malformed("Parse"))?;
    if tracker.skipping {
        // Skipped by Postgres too: nothing is prepared.
        up.inbuf.advance(total);
        return Ok(ParseOutcome::Done);
    }
    if s.client.contains_key(name) && tracker.parse_pending_across_sync(name) {
        // Whether the name exists depends on replies still to come: wait for them, with
        // the Parse left unread (the relay processes the client again after them).
        return Ok(ParseOutcome::Deferred);
    }
    if s.client.contains_key(name) {
        // As Postgres: a name is not silently replaced.
        let message = format!("prepared statement \"{name}\" already exists");
        up.inbuf.advance(total);
        // The server raises it, so that its transaction fails and it skips to Sync exactly
        // as Postgres would (whether a transaction is open may not be known yet, with
        // replies still in flight).
        raise_on_server(&mut up.out, tracker, "42P05", &message);
        s.server.unnamed_owner = 0;
        return Ok(ParseOutcome::Done);
    }
    let name: Box<str> = name.into();
    let stmt = s.registry.statement(&up.inbuf[name_end + 1..total]);
    up.inbuf.advance(total);
    s.client.insert(name.to_string(), stmt.clone());
    let cached = s.server.contains(stmt.id);
    // In a failed transaction the server must answer (25P02), even for a statement it has.
    let forwarded = !cached || tracker.failed_tx;
    if forwarded {
        if !cached {
            make_room(s, tracker, &mut up.out);
        }
        close_then_parse(&mut up.out, &stmt, tracker);
        s.server.insert(&stmt);
    }
    tracker.push(Expect::Prepared {
        name,
        stmt,
        forwarded,
    });
    Ok(ParseOutcome::Done)
}

/// What became of a client's Parse.
#[derive(PartialEq, Eq)]
pub(crate) enum ParseOutcome {
    Done,
    /// Not processed yet: it waits for replies to earlier requests.
    Deferred,
}

/// Writes a Describe or Close of a server statement.
pub(crate) fn put_named(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

pub(crate) fn describe(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<()> {
    let kind = *up.inbuf.get(5).ok_or_else(|| malformed("Describe"))?;
    let name_end = cstr_end(&up.inbuf[..total], 6).ok_or_else(|| malformed("Describe"))?;
    let known = match stmts {
        Some(s) if kind == wire::TARGET_STATEMENT && name_end > 6 => {
            let name = &up.inbuf[6..name_end];
            let found = std::str::from_utf8(name)
                .ok()
                .and_then(|n| s.client.get(n))
                .cloned();
            found.map(|stmt| (stmt, s))
        }
        _ => None,
    };
    match known {
        Some((stmt, s)) => {
            up.inbuf.advance(total);
            ensure_prepared(&stmt, s, tracker, &mut up.out);
            put_named(
                &mut up.out,
                F::Describe.byte(),
                wire::TARGET_STATEMENT,
                &stmt.name,
            );
            tracker.push(Expect::Pass(Request::Describe, Some(stmt)));
        }
        None => {
            tracker.push(Expect::Pass(Request::Describe, None));
            up.pass(total, false);
        }
    }
    Ok(())
}

pub(crate) fn close(
    up: &mut Flow,
    total: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Result<()> {
    let kind = *up.inbuf.get(5).ok_or_else(|| malformed("Close"))?;
    let name_end = cstr_end(&up.inbuf[..total], 6).ok_or_else(|| malformed("Close"))?;
    match stmts {
        Some(s) if kind == wire::TARGET_STATEMENT && name_end > 6 => {
            // The server keeps the statement for other clients; the client's name goes.
            if !tracker.skipping {
                if let Ok(name) = std::str::from_utf8(&up.inbuf[6..name_end]) {
                    s.client.remove(name);
                }
                tracker.push(Expect::Synth(Backend::CloseComplete));
            }
            up.inbuf.advance(total);
        }
        _ => {
            tracker.push(Expect::Pass(Request::Close, None));
            up.pass(total, false);
        }
    }
    Ok(())
}

pub(crate) fn bind(
    up: &mut Flow,
    total: usize,
    portal_end: usize,
    stmt_end: usize,
    tracker: &mut Tracker,
    stmts: Option<&mut Statements<'_>>,
) -> Option<Arc<ServerStatement>> {
    let known = match stmts {
        Some(s) if stmt_end > portal_end + 1 => {
            let found = std::str::from_utf8(&up.inbuf[portal_end + 1..stmt_end])
                .ok()
                .and_then(|n| s.client.get(n))
                .cloned();
            found.map(|stmt| (stmt, s))
        }
        _ => None,
    };
    let Some((stmt, s)) = known else {
        // Unnamed, session mode, or a name the client never prepared (the server says so).
        tracker.push(Expect::Pass(Request::Bind, None));
        up.pass(total, false);
        return None;
    };
    ensure_prepared(&stmt, s, tracker, &mut up.out);
    let old_name_len = stmt_end - portal_end - 1;
    let new_total = total - old_name_len + stmt.name.len();
    up.out.put_u8(F::Bind.byte());
    up.out.put_i32((new_total - 1) as i32);
    up.out.extend_from_slice(&up.inbuf[5..=portal_end]);
    up.out.put_slice(stmt.name.as_bytes());
    up.out.put_u8(0);
    up.inbuf.advance(stmt_end + 1);
    tracker.push(Expect::Pass(Request::Bind, Some(stmt.clone())));
    // The parameters follow unchanged, however large.
    up.pass(total - stmt_end - 1, false);
    Some(stmt)
}
