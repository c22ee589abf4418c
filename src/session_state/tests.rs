//! The scanner's cases.
use super::*;

#[test]
fn detects_each_kind() {
    let cases: &[(&str, Option<Kind>)] = &[
        ("SET search_path = app", None),
        ("SET ROLE admin", Some(Kind::Role)),
        ("SET SESSION AUTHORIZATION admin", Some(Kind::Role)),
        ("set session role none", Some(Kind::Role)),
        ("SELECT set_config('role', 'x', false)", Some(Kind::Role)),
        ("set work_mem to '8MB'", None),
        ("SET SESSION statement_timeout = 5", None),
        ("SET LOCAL work_mem = '8MB'", None),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
        ("SET TimeZone = 'UTC'", None),
        ("SET application_name = 'x'", None),
        ("select set_config('search_path', 'a', false)", None),
        ("select set_config($1, 'a', false)", Some(Kind::SetConfig)),
        (
            "select set_config('a' || 'b', 'c', false)",
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
        (
            "SELECT 1; SET search_path = a; LISTEN x",
            Some(Kind::Listen),
        ),
        ("-- SET x = 1\nSELECT 1", None),
        ("/* LISTEN x */ SELECT 1", None),
        ("UPDATE t SET x = 1", None),
        ("BEGIN; SELECT 1; COMMIT", None),
        // Quoting that used to fool the lexer into missing what follows.
        ("SELECT $$it's$$; SET role = b", Some(Kind::Role)),
        ("SELECT $q$it's $$ ; $q$; LISTEN x", Some(Kind::Listen)),
        ("SELECT E'it\\'s'; SET role = 'x'", Some(Kind::Role)),
        ("SELECT e'a\\\\'; LISTEN y", Some(Kind::Listen)),
        ("SELECT $1::text; SET role = x", Some(Kind::Role)),
        ("SELECT $$SET x = 1$$", None),
        ("DO $$BEGIN PERFORM 1; END$$", Some(Kind::Unclassified)),
        ("select set_config('search_path', $1, $2)", None),
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
fn names_the_settings_a_text_changes() {
    let cases: &[(&str, &[&str])] = &[
        ("SET work_mem = '8MB'", &["work_mem"]),
        (
            "set session \"Statement_Timeout\" to 5",
            &["Statement_Timeout"],
        ),
        ("SET LOCAL work_mem = '8MB'", &[]),
        ("SET TRANSACTION READ ONLY", &[]),
        ("SET TimeZone = 'UTC'", &[]),
        ("SET TIME ZONE 'UTC'", &[]),
        ("SET SCHEMA 'app'", &["search_path"]),
        ("SET XML OPTION DOCUMENT", &["xmloption"]),
        ("SET NAMES 'UTF8'", &[]),
        ("SET CONSTRAINTS ALL DEFERRED", &[]),
        ("SET transaction_isolation = 'serializable'", &[]),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            &[
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable",
            ],
        ),
        (
            "SET myapp.tenant = 42; SET search_path = a, b",
            &["myapp.tenant", "search_path"],
        ),
        (
            "select set_config('Search_Path', 'a', false)",
            &["search_path"],
        ),
        ("select set_config('myapp.tenant', '7', true)", &[]),
        (
            "select set_config('myapp.tenant', $1, $2)",
            &["myapp.tenant"],
        ),
        (
            "select pg_catalog.set_config('x.y', (select 'a'), false)",
            &["x.y"],
        ),
        ("select set_config('x.y', f(1, 2), true)", &[]),
        ("UPDATE t SET x = 1", &[]),
        ("SELECT 'SET x = 1'", &[]),
    ];
    for (sql, want) in cases {
        let mut got = Vec::new();
        assert_eq!(scan(sql.as_bytes(), &mut |n| got.push(n)), None, "{sql}");
        assert_eq!(&got[..], *want, "{sql}");
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

#[test]
fn the_prefilter_lets_through_everything_the_scanners_find() {
    let texts = [
        "SET work_mem = 1",
        "LISTEN x",
        "do $$begin end$$",
        "  DO $$begin end$$",
        "SELECT 1; do $$begin end$$",
        "PREPARE q AS SELECT 1",
        "CREATE TEMP TABLE t (x int)",
        "select * into temporary t from s",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "select set_config('a.b', 'c', false)",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "RESET ALL",
        "SET x TO DEFAULT",
        "/* c */ LISTEN x",
        "-- c\nLISTEN x",
        "(SELECT 1)",
        "UPDATE t SET x = 1; RESET ALL",
        "SELECT 1; set x = 1",
        "select pg_catalog.set_config('a.b', 'c', false)",
        "Set_Config('a.b', 'c', false)",
    ];
    for t in texts {
        assert!(may_matter(t.as_bytes()), "{t}");
    }
    for t in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
        // As it arrives in a Query message, terminator included (pgbench's texts end in `;`).
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7;\0",
        "INSERT INTO history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())",
        "BEGIN",
        "END;",
        "SELECT domain FROM docs",
        "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 7;\0",
        "update t set x = default",
        "",
    ] {
        assert!(!may_matter(t.as_bytes()), "{t}");
        let mut found = false;
        assert!(scan(t.as_bytes(), &mut |_| found = true).is_none() && !found);
        resets(t.as_bytes(), |_| found = true);
        assert!(!found);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
    /// Texts built from the scanners' own words and punctuation, in any case and order: when
    /// the prefilter says nothing can matter, neither scanner finds anything.
    #[test]
    fn the_prefilter_never_hides_what_the_scanners_find(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "SET", "set", "Local", "LISTEN", "do", "DO", "$$", "'", "\"", "E'", "\\", ";",
                " ", "\n", "--", "/*", "*/", "(", ")", ",", "=", "prepare", "create", "temp",
                "TEMPORARY", "into", "select", "with", "declare", "hold", "WITH", "pg_temp.x",
                "set_config", "pg_advisory_lock", "true", "false", "'a.b'", "$1", "reset",
                "ALL", "discard", "deallocate", "default", "session", "role", "x", "1", "do_it",
                "domain", "to", "pg_catalog.", "unlisten", "dollar", "update t", "UPDATE",
                "\0", "insert into t values", "pg_catalog.set_config",
            ]),
            0..12,
        )
    ) {
        let text = parts.concat();
        if !may_matter(text.as_bytes()) {
            let mut found = false;
            proptest::prop_assert!(scan(text.as_bytes(), &mut |_| found = true).is_none(), "{}", text);
            resets(text.as_bytes(), |_| found = true);
            proptest::prop_assert!(!found, "{}", text);
        }
    }
}

use proptest::strategy::Strategy as _;

/// `may_matter`'s rule written plainly: the text cut at every `;`, each piece's first word
/// compared, the piece searched for the words that matter anywhere. The byte-pair search must
/// change the speed only, never the answer.
fn may_matter_by_words(sql: &[u8]) -> bool {
    for piece in sql.split(|&b| b == b';') {
        let start = piece
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\0'));
        let Some(start) = start else { continue };
        let piece = &piece[start..];
        if !piece[0].is_ascii_alphabetic() {
            return true;
        }
        let first_word_len = piece
            .iter()
            .position(|&n| !(n.is_ascii_alphanumeric() || n == b'_' || n == b'$' || n >= 0x80))
            .unwrap_or(piece.len());
        if first_word_len == 2 && piece[..2].eq_ignore_ascii_case(b"do") {
            return true;
        }
        if FIRST_WORDS.iter().any(|w| starts_with_word(piece, w)) {
            return true;
        }
        if [&b"set_config"[..], b"temp", b"advisory"]
            .iter()
            .any(|w| contains_ci(piece, w))
        {
            return true;
        }
    }
    false
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
    #[test]
    fn the_pair_search_answers_as_the_plain_rule(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(vec![
                    "SET", "sEt", "LISTEN", "do", "DO", ";", " ", "prepare", "TEMP", "declare",
                    "HOLD", "pg_advisory_lock", "discard", "DeAllocate", "default", "s", "e",
                    "d", "a", "l", "t", "h", "p", "se", "di", "ad", "ho", "pr", "te", "li", "\0",
                    "select", "x", "/*", "'", "set_config", "SET_CONFIG(", "update t set",
                    "reset", "temporary", "pg_advisory_lock", "\t", "tem", "dO",
                ]).prop_map(String::from),
                "[ -~]{0,6}",
            ],
            0..16,
        )
    ) {
        let text = parts.concat();
        proptest::prop_assert_eq!(
            may_matter(text.as_bytes()),
            may_matter_by_words(text.as_bytes()),
            "{}", text
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
    /// The sixteen-at-a-time search finds the same first pair as the tables, in any bytes.
    #[test]
    fn next_pair_finds_what_the_tables_find(
        bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(b"sSeEtTdDlLiIpPrRaAhHoO;\x1b\x80 x".to_vec()),
                proptest::num::u8::ANY,
            ],
            0..80,
        )
    ) {
        proptest::prop_assert_eq!(next_pair(&bytes), next_pair_by_table(&bytes));
    }
}

#[test]
fn a_word_is_found_at_every_offset_of_a_block() {
    for at in 0..40 {
        let (x, y) = ("x".repeat(at), "y".repeat(40 - at));
        // A SET past a statement's first word is an UPDATE's: nothing to look at.
        let miss = format!("update t {x}set se te a; {y}");
        assert!(!may_matter(miss.as_bytes()), "{miss}");
        for word in ["set_config(", "TEMP", "advisory"] {
            let hit = format!("select {x}{word}{y}");
            assert!(may_matter(hit.as_bytes()), "{hit}");
        }
        let second = format!("select {x}; set a = 1 {y}");
        assert!(may_matter(second.as_bytes()), "{second}");
    }
}
