//! Statements that leave session state behind on a server, detected in transaction mode.
//!
//! In transaction mode the next client may get this server. Settings (`SET`, `RESET`,
//! `set_config`) are state the pooler can carry: `scan` names them, the session reads their
//! values back after the transaction and replays them on the client's next server. What it
//! cannot carry — `LISTEN`, session advisory locks, temporary tables, SQL `PREPARE`,
//! `DECLARE ... WITH HOLD`, `SET ROLE` / `SET SESSION AUTHORIZATION` (never replayed: who the
//! session is), a `DO` block or a `set_config` whose name is not a literal — falls under
//! `session_state`: `pin` the client to its server, `warn`, or `error`.
//!
//! This is a lexical scan, not a parser: it looks at statement starts and a few function
//! names outside quoted strings and comments, allocating only for the names of settings it
//! finds. Parameters Postgres reports (`TimeZone`) are followed through ParameterStatus.

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
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`: who the session is. Never replayed.
    Role,
    /// `set_config` with a name the scanner cannot read (`$1`).
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
        Kind::Role,
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
            Kind::Role => "role",
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

// Past a statement's first word, the bytes worth a look are the first two letters of the
// words that matter anywhere in a statement (`se`t_config, `te`mp, `ad`visory, either case)
// and `;`: a bit per first letter in FIRST, the first letters each second letter can follow
// in SECOND. Two table lookups a byte. On x86_64 `pairs_in_block` looks for the same pairs
// sixteen at a time, and the tables are the tests' reference.
#[cfg(any(test, not(target_arch = "x86_64")))]
const SEMICOLON: u8 = 0x80;
#[cfg(any(test, not(target_arch = "x86_64")))]
const FIRST: [u8; 256] = {
    let mut table = [0u8; 256];
    let letters = b"sta";
    let mut i = 0;
    while i < letters.len() {
        table[letters[i] as usize] = 1 << i;
        table[letters[i].to_ascii_uppercase() as usize] = 1 << i;
        i += 1;
    }
    table[b';' as usize] = SEMICOLON;
    table
};
#[cfg(any(test, not(target_arch = "x86_64")))]
const SECOND: [u8; 256] = {
    // (second letter, first letters it follows: bits of "sta")
    let pairs: [(u8, u8); 2] = [
        (b'e', 0b011), // se(t_config), te(mp)
        (b'd', 0b100), // ad(visory)
    ];
    let mut table = [SEMICOLON; 256];
    let mut i = 0;
    while i < pairs.len() {
        let (c, first) = pairs[i];
        table[c as usize] |= first;
        table[c.to_ascii_uppercase() as usize] |= first;
        i += 1;
    }
    table
};

/// Where in `bytes` the first pair worth a look starts (see FIRST and SECOND): sixteen pairs
/// at a time with SSE2 (part of every x86_64). The last block overlaps the one before it
/// rather than leaving a tail to the tables (its pairs already looked at held nothing), and a
/// text shorter than a block is looked at in a zero-padded copy.
#[cfg(target_arch = "x86_64")]
fn next_pair(bytes: &[u8]) -> Option<usize> {
    let n = bytes.len();
    if n < 2 {
        return None;
    }
    if n < 17 {
        let mut block = [0u8; 17];
        block[..n].copy_from_slice(bytes);
        // Only the n - 1 pairs inside the text (a pad byte pairs with nothing, but a last
        // `;` would count on its own).
        let found = pairs_in_block(&block) & ((1 << (n - 1)) - 1);
        return (found != 0).then(|| found.trailing_zeros() as usize);
    }
    // Sixteen pair starts need seventeen bytes.
    let mut k = 0;
    loop {
        let found = pairs_in_block(&bytes[k..k + 17]);
        if found != 0 {
            return Some(k + found.trailing_zeros() as usize);
        }
        if k + 17 == n {
            return None;
        }
        k = (k + 16).min(n - 17);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn next_pair(bytes: &[u8]) -> Option<usize> {
    next_pair_by_table(bytes)
}

/// Bit `t` set: the pair at `block[t]`, `block[t + 1]` is one of FIRST and SECOND's (for
/// `t` < 16; `block` has 17 bytes). The same pairs as the tables, compared a letter at a time
/// over sixteen bytes: ~20 instructions where the tables take ~80.
#[cfg(target_arch = "x86_64")]
fn pairs_in_block(block: &[u8]) -> u32 {
    use std::arch::x86_64::*;
    assert!(block.len() >= 17);
    // SAFETY: SSE2 is part of the x86_64 baseline; both unaligned 16-byte loads, at 0 and 1,
    // lie within the 17 bytes asserted above.
    unsafe {
        let first = _mm_loadu_si128(block.as_ptr().cast());
        let second = _mm_loadu_si128(block.as_ptr().add(1).cast());
        // Letters only differ from their capitals in bit 5.
        let case = _mm_set1_epi8(0x20);
        let (f, s) = (_mm_or_si128(first, case), _mm_or_si128(second, case));
        let is = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let either = |a: __m128i, b: __m128i| _mm_or_si128(a, b);
        let both = |a: __m128i, b: __m128i| _mm_and_si128(a, b);
        let hits = either(
            either(
                both(either(is(f, b's'), is(f, b't')), is(s, b'e')),
                both(is(f, b'a'), is(s, b'd')),
            ),
            is(first, b';'),
        );
        _mm_movemask_epi8(hits) as u32
    }
}

/// `next_pair` by the tables. Eight pairs are tested with one branch: two table lookups a
/// byte, and no loop overhead between. (On x86_64 the reference the tests hold SSE2 to.)
#[cfg(any(test, not(target_arch = "x86_64")))]
fn next_pair_by_table(bytes: &[u8]) -> Option<usize> {
    let mut k = 0;
    while let Some(block) = bytes.get(k..k + 9) {
        let mut any = 0;
        for t in 0..8 {
            any |= FIRST[block[t] as usize] & SECOND[block[t + 1] as usize];
        }
        if any != 0 {
            break;
        }
        k += 8;
    }
    while k + 1 < bytes.len() {
        if FIRST[bytes[k] as usize] & SECOND[bytes[k + 1] as usize] != 0 {
            return Some(k);
        }
        k += 1;
    }
    None
}

/// Whether `rest` starts with `word`, ignoring ASCII case.
fn starts_with_word(rest: &[u8], word: &[u8]) -> bool {
    rest.get(..word.len())
        .is_some_and(|r| r.eq_ignore_ascii_case(word))
}

/// First words of the statements `scan` and `resets` look at by their first word (`SET`,
/// `RESET`, `LISTEN`, `PREPARE`, `DECLARE ... WITH HOLD`, `DISCARD`, `DEALLOCATE`; `DO` is
/// looked at apart, as a whole word). A prefix is enough: a longer word only costs a lexer run.
const FIRST_WORDS: [&[u8]; 7] = [
    b"set",
    b"reset",
    b"listen",
    b"prepare",
    b"declare",
    b"discard",
    b"deallocate",
];

/// Whether `scan` or `resets` could find anything in `sql`: false when no statement starts
/// with one of their first words or `DO`, and the text has none of the words that matter
/// anywhere in a statement (`set_config`, `temp`, `advisory`), case-insensitively. A `SET`
/// inside a statement (`UPDATE t SET x = 1`) is nothing to either. One pass over the bytes,
/// so the common query costs about two instructions a byte instead of a lexer run; anything
/// unsure says true.
///
/// Every `;` counts as a statement's end, even one in a string: the lexer sees no more
/// statement starts than this does, and at each it sees the same first word.
pub fn may_matter(sql: &[u8]) -> bool {
    let mut i = 0;
    loop {
        // A statement's start: blanks, `;` and a query's terminator (NUL) end nothing the
        // lexer would look at.
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b';' | b'\0') = sql.get(i) {
            i += 1;
        }
        let Some(&c) = sql.get(i) else {
            return false;
        };
        // Anything else before the first word (a comment, a quote, punctuation the lexer
        // skips): let the lexer decide.
        if !c.is_ascii_alphabetic() {
            return true;
        }
        let word_end = sql
            .get(i + 2)
            .is_none_or(|&n| !(n.is_ascii_alphanumeric() || n == b'_' || n == b'$' || n >= 0x80));
        if starts_with_word(&sql[i..], b"do") && word_end {
            return true;
        }
        // (The first letter first: most statements start with none of them.)
        let lower = c | 0x20;
        if FIRST_WORDS
            .iter()
            .any(|w| w[0] == lower && starts_with_word(&sql[i..], w))
        {
            return true;
        }
        // The rest of the statement, a pair at a time. The last byte alone matters to nothing:
        // no word has one letter, and a final `;` starts no statement.
        loop {
            let Some(j) = next_pair(&sql[i..]) else {
                return false;
            };
            i += j;
            let rest = &sql[i..];
            let hit = match rest[0] | 0x20 {
                b';' => break,
                b's' => starts_with_word(rest, b"set_config"),
                b't' => starts_with_word(rest, b"temp"),
                b'a' => starts_with_word(rest, b"advisory"),
                _ => false,
            };
            if hit {
                return true;
            }
            i += 1;
        }
        i += 1;
    }
}

/// The first session-state statement in `sql`, if any (settings changes ignored).
pub fn detect(sql: &[u8]) -> Option<Kind> {
    scan(sql, &mut |_| {})
}

/// Settings a `SET` names that are not session settings: transaction-scoped ones, and those
/// Postgres reports with ParameterStatus (the pooler follows those without reading them).
fn untracked_setting(name: &str) -> bool {
    is_reported(name)
        || name.eq_ignore_ascii_case("transaction_isolation")
        || name.eq_ignore_ascii_case("transaction_read_only")
        || name.eq_ignore_ascii_case("transaction_deferrable")
}

/// Settings that change who the session is: never carried to another server.
fn identity_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
}

/// The string a plain SQL literal (`'...'`, quotes included) denotes, if `word` is one.
fn plain_literal(word: &[u8]) -> Option<String> {
    match word {
        [b'\'', inner @ .., b'\''] if word.len() >= 2 => {
            Some(String::from_utf8_lossy(inner).replace("''", "'"))
        }
        _ => None,
    }
}

/// The setting names a `SET` statement's first word after `SET [SESSION]` stands for, or an
/// identity change (`SET ROLE`, `SET SESSION AUTHORIZATION`).
fn set_target(word: &[u8], found: &mut dyn FnMut(String)) -> Option<Kind> {
    // The SQL-standard spellings first: SET TIME ZONE, SET SCHEMA, SET XML OPTION, SET
    // SESSION CHARACTERISTICS AS TRANSACTION ...
    let name = if is(word, "time") {
        "timezone".to_string()
    } else if is(word, "schema") {
        "search_path".to_string()
    } else if is(word, "xml") {
        "xmloption".to_string()
    } else if is(word, "names") || is(word, "constraints") {
        // client_encoding is reported; constraints are transaction-scoped.
        return None;
    } else if is(word, "authorization") {
        return Some(Kind::Role);
    } else if is(word, "characteristics") {
        for name in [
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
        ] {
            found(name.to_string());
        }
        return None;
    } else {
        identifier(word)
    };
    if identity_setting(&name) {
        return Some(Kind::Role);
    }
    if !untracked_setting(&name) {
        found(name);
    }
    None
}

/// The first session-state statement in `sql` that the pooler cannot carry to another
/// server, if any. Settings the text changes for the session (`SET`, `set_config(.., false)`)
/// are not such state: their names go to `found`, and the pooler reads their values back
/// once the transaction is over (which also gives Postgres's own semantics for `SET LOCAL`,
/// rollbacks and savepoints).
pub fn scan(sql: &[u8], found: &mut dyn FnMut(String)) -> Option<Kind> {
    let mut lx = Lexer { sql, pos: 0 };
    let mut at_start = true;
    let mut first: Option<&[u8]> = None;
    let mut words_in_stmt = 0usize;
    let mut prev: Option<&[u8]> = None;
    let mut depth = 0usize;
    let mut hold_seen = false;
    // Inside `set_config(`: its depth, which argument, tokens in that argument, and the name
    // when the first argument is exactly one plain literal.
    let mut in_set_config: Option<usize> = None;
    let mut sc_arg = 0usize;
    let mut sc_tokens = 0usize;
    let mut sc_name: Option<String> = None;
    let mut last_arg_true = false;
    while let Some(tok) = lx.next() {
        let at_sc_depth = in_set_config.is_some() && in_set_config == Some(depth);
        match tok {
            Token::End => {
                at_start = true;
                first = None;
                words_in_stmt = 0;
                prev = None;
                hold_seen = false;
            }
            Token::Punct(b'(') => {
                if at_sc_depth {
                    sc_tokens += 1;
                    last_arg_true = false;
                    if sc_arg == 0 {
                        sc_name = None;
                    }
                }
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
                        sc_arg = 0;
                        sc_tokens = 0;
                        sc_name = None;
                        last_arg_true = false;
                    }
                }
                prev = None;
            }
            Token::Punct(b')') => {
                if at_sc_depth {
                    // Only a literal `true` is sure to be transaction-local; a bound `$3` may
                    // be false, so it counts as a session setting (the safe side).
                    if !(sc_arg == 2 && last_arg_true) {
                        match sc_name.take() {
                            Some(name) if identity_setting(&name) => return Some(Kind::Role),
                            Some(name) => {
                                if !untracked_setting(&name) {
                                    found(name.to_ascii_lowercase());
                                }
                            }
                            // A name the scanner cannot read (`$1`, an expression).
                            None => return Some(Kind::SetConfig),
                        }
                    }
                    in_set_config = None;
                }
                depth = depth.saturating_sub(1);
                prev = None;
            }
            Token::Punct(c) => {
                if at_sc_depth {
                    if c == b',' {
                        sc_arg += 1;
                        sc_tokens = 0;
                    } else {
                        sc_tokens += 1;
                        if sc_arg == 0 {
                            sc_name = None;
                        }
                    }
                }
                last_arg_true = false;
                prev = None;
            }
            Token::Word(w) => {
                if at_sc_depth {
                    sc_tokens += 1;
                    if sc_arg == 0 {
                        sc_name = if sc_tokens == 1 {
                            plain_literal(w)
                        } else {
                            None
                        };
                    }
                    last_arg_true = sc_tokens == 1 && is(w, "true");
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
                        } else {
                            if let Some(kind) = set_target(w, found) {
                                return Some(kind);
                            }
                            // The rest of the statement is the value.
                            first = None;
                            prev = Some(w);
                            continue;
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
mod tests;
