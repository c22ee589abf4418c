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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
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
    /// A statement whose effect the scanner cannot know (a `DO` block): pinned to be safe.
    Unclassified,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Set,
        Kind::SetConfig,
        Kind::Listen,
        Kind::AdvisoryLock,
        Kind::TempTable,
        Kind::Prepare,
        Kind::DeclareWithHold,
        Kind::Unclassified,
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
            Kind::Unclassified => "unclassified",
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

/// Whether Postgres reports `name` with ParameterStatus (case-insensitive).
pub fn is_reported(name: &str) -> bool {
    REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

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
                b'$' if dollar_tag_len(&s[self.pos..]).is_some() => {
                    // A dollar-quoted string: `$tag$ ... $tag$`, nothing inside is SQL.
                    let start = self.pos;
                    let tag_len = dollar_tag_len(&s[self.pos..]).unwrap_or(1);
                    let tag = &s[self.pos..self.pos + tag_len];
                    self.pos += tag_len;
                    match s[self.pos..].windows(tag_len).position(|w| w == tag) {
                        Some(p) => self.pos += p + tag_len,
                        None => self.pos = s.len(),
                    }
                    return Some(Token::Word(&s[start..self.pos]));
                }
                b'e' | b'E' if s.get(self.pos + 1) == Some(&b'\'') => {
                    // An escape string: backslash escapes the next byte, including a quote.
                    let start = self.pos;
                    self.pos += 2;
                    while self.pos < s.len() {
                        match s[self.pos] {
                            b'\\' => self.pos += 2,
                            b'\'' if s.get(self.pos + 1) == Some(&b'\'') => self.pos += 2,
                            b'\'' => break,
                            _ => self.pos += 1,
                        }
                    }
                    self.pos = (self.pos + 1).min(s.len());
                    return Some(Token::Word(&s[start..self.pos]));
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

/// The length of a dollar-quote opening tag (`$$`, `$name$`) at the start of `s`, if one is.
/// A `$` after an identifier character is part of that identifier and never gets here.
fn dollar_tag_len(s: &[u8]) -> Option<usize> {
    let rest = s.get(1..)?;
    let end = rest
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))?;
    // `$1` is a parameter, not a tag: tags do not start with a digit.
    if rest[end] != b'$' || rest.first().is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(end + 2)
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
    let mut last_arg_true = false;
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
                        last_arg_true = false;
                        set_config_reported = false;
                    }
                }
                prev = None;
            }
            Token::Punct(b')') => {
                if in_set_config == Some(depth) {
                    // Only a literal `true` is sure to be transaction-local; a bound `$3` may be
                    // false, so it counts as session state (the safe side).
                    if !last_arg_true && !set_config_reported {
                        return Some(Kind::SetConfig);
                    }
                    in_set_config = None;
                }
                depth = depth.saturating_sub(1);
                prev = None;
            }
            Token::Punct(_) => {
                last_arg_true = false;
                prev = None;
            }
            Token::Word(w) => {
                if in_set_config == Some(depth) {
                    if let [b'\'', lit @ .., b'\''] = w {
                        set_config_reported |= names_any(lit, REPORTED);
                    }
                    last_arg_true = is(w, "true");
                }
                if at_start {
                    at_start = false;
                    first = Some(w);
                    words_in_stmt = 1;
                    if is(w, "listen") {
                        return Some(Kind::Listen);
                    }
                    // A DO block can do anything: the pooler cannot see what it leaves behind.
                    if is(w, "do") {
                        return Some(Kind::Unclassified);
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
                    // SELECT ... INTO TEMP t, CREATE TABLE pg_temp.t: temporary tables too.
                    if (is(f, "select") || is(f, "with"))
                        && (is(w, "temp") || is(w, "temporary"))
                        && prev.is_some_and(|p| is(p, "into"))
                    {
                        return Some(Kind::TempTable);
                    }
                    if is(f, "create")
                        && w.len() >= 7
                        && (w[..7].eq_ignore_ascii_case(b"pg_temp")
                            || w[..8.min(w.len())].eq_ignore_ascii_case(b"\"pg_temp"))
                    {
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

/// A statement that takes back session state Postgres gave the client: the pooler must
/// repair what it keeps per client (startup parameters, prepared statements) afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset<'a> {
    /// `RESET ALL` (and the parameter part of `DISCARD ALL`): every parameter goes back to the
    /// session's startup value.
    AllParams,
    /// `RESET name`, `SET [SESSION] name TO DEFAULT`: one parameter back to its startup value.
    Param(&'a [u8]),
    /// `DEALLOCATE ALL` (and the statement part of `DISCARD ALL`): every prepared statement of
    /// the session is gone, the protocol-level ones included.
    AllStatements,
    /// `DEALLOCATE [PREPARE] name`.
    Statement(&'a [u8]),
}

/// Calls `found` for every statement in `sql` that resets session state (see `Reset`).
/// Lexical like `detect`; quoted names come with their quotes.
pub fn resets<'a>(sql: &'a [u8], mut found: impl FnMut(Reset<'a>)) {
    // Cheap exit for the common case: no keyword that can start such a statement.
    if !contains_ci(sql, b"reset")
        && !contains_ci(sql, b"discard")
        && !contains_ci(sql, b"deallocate")
        && !contains_ci(sql, b"default")
    {
        return;
    }
    let mut lx = Lexer { sql, pos: 0 };
    // The words of the current statement, up to the few that matter.
    let mut words: [&[u8]; 5] = [b""; 5];
    let mut n = 0usize;
    let flush = |words: &[&'a [u8]], found: &mut dyn FnMut(Reset<'a>)| {
        let mut w = words;
        match w.first() {
            Some(f) if is(f, "reset") => match w.get(1) {
                Some(x) if is(x, "all") && w.len() == 2 => found(Reset::AllParams),
                Some(x) if w.len() == 2 && !is(x, "session") && !is(x, "role") => {
                    found(Reset::Param(x))
                }
                _ => {}
            },
            Some(f)
                if is(f, "discard") && w.len() == 2 && w.get(1).is_some_and(|x| is(x, "all")) =>
            {
                found(Reset::AllParams);
                found(Reset::AllStatements);
            }
            Some(f) if is(f, "deallocate") => {
                w = &w[1..];
                if w.first().is_some_and(|x| is(x, "prepare")) {
                    w = &w[1..];
                }
                match w {
                    [x] if is(x, "all") => found(Reset::AllStatements),
                    [x] => found(Reset::Statement(x)),
                    _ => {}
                }
            }
            Some(f) if is(f, "set") => {
                if w.get(1).is_some_and(|x| is(x, "session")) {
                    w = &w[1..];
                }
                // SET name TO DEFAULT / SET name = DEFAULT ('=' is dropped by the lexer loop).
                if let [_, name, to, d] = w
                    && (is(to, "to") || *to == b"=")
                    && is(d, "default")
                {
                    found(Reset::Param(name));
                }
            }
            _ => {}
        }
    };
    let mut too_long = false;
    while let Some(tok) = lx.next() {
        match tok {
            Token::End => {
                if !too_long {
                    flush(&words[..n], &mut found);
                }
                n = 0;
                too_long = false;
            }
            Token::Word(w) => {
                if n < words.len() {
                    words[n] = w;
                    n += 1;
                } else {
                    too_long = true;
                }
            }
            Token::Punct(b'=') if n < words.len() => {
                words[n] = b"=";
                n += 1;
            }
            Token::Punct(_) => too_long = true,
        }
    }
    if !too_long {
        flush(&words[..n], &mut found);
    }
}

/// The name an SQL identifier word denotes: a quoted one as written (`""` unescaped), an
/// unquoted one folded to lower case, as Postgres does.
pub fn identifier(word: &[u8]) -> String {
    match word {
        [b'"', inner @ .., b'"'] => String::from_utf8_lossy(inner).replace("\"\"", "\""),
        _ => String::from_utf8_lossy(word).to_ascii_lowercase(),
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
            // Quoting that used to fool the lexer into missing what follows.
            ("SELECT $$it's$$; SET search_path = b", Some(Kind::Set)),
            ("SELECT $q$it's $$ ; $q$; LISTEN x", Some(Kind::Listen)),
            ("SELECT E'it\\'s'; SET work_mem = '1MB'", Some(Kind::Set)),
            ("SELECT e'a\\\\'; LISTEN y", Some(Kind::Listen)),
            ("SELECT $1::text; SET work_mem = 1", Some(Kind::Set)),
            ("SELECT $$SET x = 1$$", None),
            ("DO $$BEGIN PERFORM 1; END$$", Some(Kind::Unclassified)),
            (
                "select set_config('search_path', $1, $2)",
                Some(Kind::SetConfig),
            ),
            ("SELECT 1 AS x INTO TEMP t", Some(Kind::TempTable)),
            (
                "select * into temporary table t from s",
                Some(Kind::TempTable),
            ),
            ("CREATE TABLE pg_temp.x (a int)", Some(Kind::TempTable)),
            ("INSERT INTO temp VALUES (1)", None),
        ];
        for (sql, want) in cases {
            assert_eq!(detect(sql.as_bytes()), *want, "{sql}");
        }
    }

    #[test]
    fn finds_resets() {
        let cases: &[(&str, &[Reset<'_>])] = &[
            ("RESET ALL", &[Reset::AllParams]),
            ("reset search_path", &[Reset::Param(b"search_path")]),
            (
                "SET search_path TO DEFAULT",
                &[Reset::Param(b"search_path")],
            ),
            (
                "set session timezone = default",
                &[Reset::Param(b"timezone")],
            ),
            ("DISCARD ALL", &[Reset::AllParams, Reset::AllStatements]),
            ("DISCARD PLANS", &[]),
            ("DEALLOCATE ALL", &[Reset::AllStatements]),
            ("deallocate prepare all;", &[Reset::AllStatements]),
            ("DEALLOCATE s1", &[Reset::Statement(b"s1")]),
            (
                "DEALLOCATE PREPARE \"S 1\"",
                &[Reset::Statement(b"\"S 1\"")],
            ),
            (
                "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
                &[Reset::AllParams],
            ),
            ("SELECT 'RESET ALL'", &[]),
            ("SET search_path = 'default'", &[]),
            ("SELECT default_value FROM t", &[]),
            ("RESET ROLE", &[]),
        ];
        for (sql, want) in cases {
            let mut got = Vec::new();
            resets(sql.as_bytes(), |r| got.push(r));
            assert_eq!(&got[..], *want, "{sql}");
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
            b"$$",
            b"$a$ reset all",
            b"E'\\",
            b"deallocate",
            b"reset",
        ] {
            let _ = detect(sql);
            resets(sql, |_| {});
        }
    }
}
