//! Statements that leave session state behind on a server, detected in transaction mode.
//!
//! In transaction mode the next client may get this server; a `SET`, `LISTEN`, session
//! advisory lock, temporary table, SQL `PREPARE` or `DECLARE ... WITH HOLD` would leak to it
//! (or vanish for this client). PgBouncer corrupts silently here; the pooler spots them and
//! applies `session_state`: `pin` the client to its server, `warn`, or `error`.
//!
//! This is a lexical scan, not a parser: it looks at statement starts and a few function
//! names outside quoted strings and comments, without allocating. Parameters the pooler
//! already keeps per client (reported ones such as `TimeZone`) do not count.

use serde::Deserialize;

/// What the pooler does on session state in transaction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Keep the client on its server until it disconnects; reset the server afterwards.
    #[default]
    Pin,
    /// Log and count, change nothing (PgBouncer's behaviour, made visible).
    Warn,
    /// Refuse the statement with an error (SQLSTATE 0A000).
    Error,
}

/// The kind of session state a statement creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Set,
    SetConfig,
    Listen,
    AdvisoryLock,
    TempTable,
    Prepare,
    DeclareWithHold,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Set,
        Kind::SetConfig,
        Kind::Listen,
        Kind::AdvisoryLock,
        Kind::TempTable,
        Kind::Prepare,
        Kind::DeclareWithHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Set => "set",
            Kind::SetConfig => "set_config",
            Kind::Listen => "listen",
            Kind::AdvisoryLock => "advisory_lock",
            Kind::TempTable => "temp_table",
            Kind::Prepare => "prepare",
            Kind::DeclareWithHold => "declare_with_hold",
        }
    }
}

/// Parameters Postgres reports with ParameterStatus: the pooler follows their changes per
/// client (see `client.rs`), so setting them is not session state that leaks.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "standard_conforming_strings",
];

/// Splits SQL into words outside strings and comments, with statement boundaries.
struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
}

enum Token<'a> {
    Word(&'a [u8]),
    /// `(`, `)`, `,`, `=` and the like.
    Punct(u8),
    /// End of a statement (`;`).
    End,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<Token<'a>> {
        let s = self.sql;
        loop {
            let c = *s.get(self.pos)?;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.pos += 1,
                b'-' if s.get(self.pos + 1) == Some(&b'-') => {
                    while self.pos < s.len() && s[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                b'/' if s.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    while self.pos + 1 < s.len()
                        && !(s[self.pos] == b'*' && s[self.pos + 1] == b'/')
                    {
                        self.pos += 1;
                    }
                    self.pos += 2;
                }
                b'\'' | b'"' => {
                    // A literal or quoted identifier: returned as a word (quotes included).
                    let start = self.pos;
                    self.pos += 1;
                    while self.pos < s.len() {
                        if s[self.pos] == c {
                            if s.get(self.pos + 1) == Some(&c) {
                                self.pos += 2;
                                continue;
                            }
                            break;
                        }
                        self.pos += 1;
                    }
                    self.pos = (self.pos + 1).min(s.len());
                    return Some(Token::Word(&s[start..self.pos]));
                }
                b';' => {
                    self.pos += 1;
                    return Some(Token::End);
                }
                c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                    let start = self.pos;
                    while self.pos < s.len()
                        && (s[self.pos].is_ascii_alphanumeric()
                            || s[self.pos] == b'_'
                            || s[self.pos] == b'$'
                            || s[self.pos] >= 0x80
                            || s[self.pos] == b'.')
                    {
                        self.pos += 1;
                    }
                    return Some(Token::Word(&s[start..self.pos]));
                }
                other => {
                    self.pos += 1;
                    return Some(Token::Punct(other));
                }
            }
        }
    }
}

fn is(word: &[u8], keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword.as_bytes())
}

/// Whether a word names `name` (lower case): quotes and a `pg_catalog.` prefix dropped,
/// compared without case (GUC and function names here are ASCII). No allocation: this runs
/// on every simple query in transaction mode.
fn names(word: &[u8], name: &str) -> bool {
    let w = match word {
        [b'"', inner @ .., b'"'] => inner,
        _ => word,
    };
    let w = match w.get(..11) {
        Some(p) if p.eq_ignore_ascii_case(b"pg_catalog.") => &w[11..],
        _ => w,
    };
    w.eq_ignore_ascii_case(name.as_bytes())
}

fn names_any(word: &[u8], list: &[&str]) -> bool {
    list.iter().any(|n| names(word, n))
}

/// The first session-state statement in `sql`, if any.
pub fn detect(sql: &[u8]) -> Option<Kind> {
    let mut lx = Lexer { sql, pos: 0 };
    let mut at_start = true;
    let mut first: Option<&[u8]> = None;
    let mut words_in_stmt = 0usize;
    let mut prev: Option<&[u8]> = None;
    let mut in_set_config: Option<usize> = None;
    let mut depth = 0usize;
    let mut last_arg_false = false;
    let mut set_config_reported = false;
    let mut hold_seen = false;
    while let Some(tok) = lx.next() {
        match tok {
            Token::End => {
                at_start = true;
                first = None;
                words_in_stmt = 0;
                prev = None;
                hold_seen = false;
            }
            Token::Punct(b'(') => {
                depth += 1;
                if in_set_config.is_none()
                    && let Some(p) = prev
                {
                    if names_any(
                        p,
                        &[
                            "pg_advisory_lock",
                            "pg_advisory_lock_shared",
                            "pg_try_advisory_lock",
                            "pg_try_advisory_lock_shared",
                        ],
                    ) {
                        return Some(Kind::AdvisoryLock);
                    }
                    if names(p, "set_config") {
                        in_set_config = Some(depth);
                        last_arg_false = false;
                        set_config_reported = false;
                    }
                }
                prev = None;
            }
            Token::Punct(b')') => {
                if in_set_config == Some(depth) {
                    if last_arg_false && !set_config_reported {
                        return Some(Kind::SetConfig);
                    }
                    in_set_config = None;
                }
                depth = depth.saturating_sub(1);
                prev = None;
            }
            Token::Punct(_) => {
                last_arg_false = false;
                prev = None;
            }
            Token::Word(w) => {
                if in_set_config == Some(depth) {
                    if let [b'\'', lit @ .., b'\''] = w {
                        set_config_reported |= names_any(lit, REPORTED);
                    }
                    last_arg_false = is(w, "false");
                }
                if at_start {
                    at_start = false;
                    first = Some(w);
                    words_in_stmt = 1;
                    if is(w, "listen") {
                        return Some(Kind::Listen);
                    }
                    prev = Some(w);
                    continue;
                }
                words_in_stmt += 1;
                if let Some(f) = first {
                    if is(f, "set") && words_in_stmt == 2 {
                        if names_any(w, &["local", "transaction"]) {
                            // SET LOCAL and SET TRANSACTION end with the transaction.
                            first = None;
                            prev = Some(w);
                            continue;
                        } else if names(w, "session") {
                            // SET SESSION x: the name is the next word.
                            words_in_stmt = 1;
                        } else if !names_any(w, REPORTED) {
                            return Some(Kind::Set);
                        }
                    }
                    if is(f, "prepare") && words_in_stmt == 2 && !is(w, "transaction") {
                        return Some(Kind::Prepare);
                    }
                    // CREATE [GLOBAL|LOCAL|OR REPLACE] TEMP[ORARY] ...
                    let after_create = words_in_stmt == 2
                        || prev
                            .is_some_and(|p| is(p, "global") || is(p, "local") || is(p, "replace"));
                    if is(f, "create") && after_create && (is(w, "temp") || is(w, "temporary")) {
                        return Some(Kind::TempTable);
                    }
                    if is(f, "declare") {
                        if is(w, "hold") && prev.is_some_and(|p| is(p, "with")) {
                            hold_seen = true;
                        }
                        if hold_seen {
                            return Some(Kind::DeclareWithHold);
                        }
                    }
                }
                prev = Some(w);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind() {
        let cases: &[(&str, Option<Kind>)] = &[
            ("SET search_path = app", Some(Kind::Set)),
            ("set work_mem to '8MB'", Some(Kind::Set)),
            ("SET SESSION statement_timeout = 5", Some(Kind::Set)),
            ("SET LOCAL work_mem = '8MB'", None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
            ("SET TimeZone = 'UTC'", None),
            ("SET application_name = 'x'", None),
            (
                "select set_config('search_path', 'a', false)",
                Some(Kind::SetConfig),
            ),
            ("select set_config('search_path', 'a', true)", None),
            (
                "SELECT pg_catalog.set_config('timezone', 'UTC', false)",
                None,
            ),
            ("LISTEN channel", Some(Kind::Listen)),
            ("select pg_advisory_lock(1)", Some(Kind::AdvisoryLock)),
            (
                "SELECT pg_try_advisory_lock_shared(1, 2)",
                Some(Kind::AdvisoryLock),
            ),
            ("select pg_advisory_xact_lock(1)", None),
            ("CREATE TEMP TABLE t (x int)", Some(Kind::TempTable)),
            (
                "create temporary table t as select 1",
                Some(Kind::TempTable),
            ),
            (
                "CREATE GLOBAL TEMPORARY TABLE t (x int)",
                Some(Kind::TempTable),
            ),
            ("CREATE TABLE temp (x int)", None),
            (
                "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                Some(Kind::TempTable),
            ),
            ("PREPARE q AS SELECT 1", Some(Kind::Prepare)),
            ("PREPARE TRANSACTION 'x'", None),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some(Kind::DeclareWithHold),
            ),
            ("DECLARE c CURSOR FOR SELECT 1", None),
            ("SELECT 'set x = 1; listen y'", None),
            ("SELECT 1; SET search_path = a", Some(Kind::Set)),
            ("-- SET x = 1\nSELECT 1", None),
            ("/* LISTEN x */ SELECT 1", None),
            ("UPDATE t SET x = 1", None),
            ("BEGIN; SELECT 1; COMMIT", None),
        ];
        for (sql, want) in cases {
            assert_eq!(detect(sql.as_bytes()), *want, "{sql}");
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for sql in [
            &b"'"[..],
            b"\"",
            b"/*",
            b"--",
            b"set",
            b"(((",
            b")))",
            b"\xff\xfe;;(",
        ] {
            let _ = detect(sql);
        }
    }
}
