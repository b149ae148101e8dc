//! Unit tests of the scanner: every lexing rule of scan.l it follows, the known attacks,
//! and the classification of statements.

use super::*;

const ALL: [Strings; 3] = [Strings::Standard, Strings::Escaped, Strings::Unknown];

fn fx(sql: &str) -> Effects {
    effects(sql.as_bytes(), Strings::Standard)
}

fn fx_in(sql: &str, strings: Strings) -> Effects {
    effects(sql.as_bytes(), strings)
}

fn pieces(sql: &str, strings: Strings) -> Vec<&str> {
    let mut out = Vec::new();
    for_each_statement(sql.as_bytes(), strings, |s| {
        out.push(std::str::from_utf8(s).unwrap())
    });
    out
}

fn acquires(sql: &str) -> Vec<Feature> {
    fx(sql).acquires.iter().collect()
}

/// `sql` runs a SET after a first statement under `strings`: the scanner must see it.
fn finds_set(sql: &str, strings: Strings) {
    let e = fx_in(sql, strings);
    assert!(e.settings, "{strings:?}: missed the SET in {sql:?}");
    assert!(pieces(sql, strings).len() >= 2, "{strings:?}: {sql:?}");
}

/// `sql` is one statement under `strings`, its `SET` inside a quote or comment.
fn hides_set(sql: &str, strings: Strings) {
    let e = fx_in(sql, strings);
    assert_eq!(e, Effects::default(), "{strings:?}: {sql:?}");
    assert_eq!(pieces(sql, strings).len(), 1, "{strings:?}: {sql:?}");
}

/// `sql` starts a COPY after a first statement under `strings`.
fn finds_copy(sql: &str, strings: Strings) {
    assert!(
        fx_in(sql, strings).copy,
        "{strings:?}: missed the COPY in {sql:?}"
    );
    assert!(pieces(sql, strings).len() >= 2, "{strings:?}: {sql:?}");
}

/// `sql` is one statement under `strings`, its `COPY` inside a quote.
fn hides_copy(sql: &str, strings: Strings) {
    assert!(!fx_in(sql, strings).copy, "{strings:?}: {sql:?}");
    assert_eq!(pieces(sql, strings).len(), 1, "{strings:?}: {sql:?}");
}

#[test]
fn backslash_in_a_plain_string_follows_standard_conforming_strings() {
    let attack = r"SELECT 'a\'; SET search_path = evil, public; -- '";
    finds_set(attack, Strings::Standard);
    assert_eq!(
        pieces(attack, Strings::Standard),
        [r"SELECT 'a\'", " SET search_path = evil, public"],
        "the third piece is only a comment"
    );
    assert!(same_split(b"x;x;x") && !same_split(attack.as_bytes()));
    hides_set(attack, Strings::Escaped);
    let unknown = fx_in(attack, Strings::Unknown);
    assert!(unknown.unsure && unknown.settings);
    // A doubled quote escapes under both readings.
    hides_set("SELECT 'a''; SET x = 1; --'", Strings::Standard);
    hides_set("SELECT 'a''; SET x = 1; --'", Strings::Escaped);
}

#[test]
fn e_strings_take_backslash_escapes_under_every_setting() {
    for strings in ALL {
        hides_set(r"SELECT E'a\'; SET x = 1; --'", strings);
        hides_set(r"SELECT e'a\\\'; SET x = 1; --'", strings);
        hides_set(r"SELECT E'a''; SET x = 1; --'", strings);
        finds_set(r"SELECT E'a\\'; SET x = 1; --'", strings);
    }
    // The prefix counts only where E starts a token: after an identifier character it is
    // part of the identifier, and the string is a plain one.
    finds_set(r"SELECT xE'a\'; SET x = 1; --'", Strings::Standard);
    finds_set(r"SELECT éE'a\'; SET x = 1; --'", Strings::Standard);
    finds_set(r"SELECT x_1E'a\'; SET x = 1; --'", Strings::Standard);
    // After a number (scan.l before 15 gives the E back; 15 refuses the text).
    hides_set(r"SELECT 1E'a\'; SET x = 1; --'", Strings::Standard);
    hides_set(r"SELECT 1.5e'a\'; SET x = 1; --'", Strings::Standard);
    hides_set(r"SELECT 1e5E'a\'; SET x = 1; --'", Strings::Standard);
    finds_set(r"SELECT 1e5'a\'; SET x = 1; --'", Strings::Standard);
    // After a lone `$` (not a dollar quote), a parameter, or an operator.
    hides_set(r"SELECT $E'a\'; SET x = 1; --'", Strings::Standard);
    hides_set(r"SELECT $1E'a\'; SET x = 1; --'", Strings::Standard);
    hides_set(r"SELECT 1+E'a\'; SET x = 1; --'", Strings::Standard);
}

#[test]
fn a_string_continued_on_the_next_line_keeps_its_escapes() {
    // PostgreSQL 15 runs the SELECT 'HIT' here: the second piece is part of the E string.
    let hit = "SELECT E'x'\n'\\''; SET x = 1; --'";
    finds_set(hit, Strings::Standard);
    finds_set(
        "SELECT E'x' -- c\n  '\\''; SET x = 1; --'",
        Strings::Standard,
    );
    finds_set("SELECT E'x'\r\n\t'\\''; SET x = 1; --'", Strings::Standard);
    // Without a newline, or across a block comment, a new (plain) string starts.
    hides_set("SELECT E'x' '\\''; SET x = 1; --'", Strings::Standard);
    hides_set(
        "SELECT E'x' /* c */\n'\\''; SET x = 1; --'",
        Strings::Standard,
    );
    // B and X strings: '' ends the constant, and a new plain string starts at the second.
    hides_set(r"SELECT B'0''\'; SET x = 1; --'", Strings::Escaped);
    finds_set(r"SELECT B'0''\'; SET x = 1; --'", Strings::Standard);
    finds_set(r"SELECT X'1F\'; SET x = 1; --'", Strings::Escaped);
    finds_set("SELECT B'0'\n'1\\'; SET x = 1; --'", Strings::Escaped);
}

#[test]
fn other_string_kinds() {
    for strings in ALL {
        // U& strings never take backslash escapes (the server refuses them when
        // standard_conforming_strings is off).
        finds_set(r"SELECT U&'\'; SET x = 1; --'", strings);
        finds_set(r"SELECT U&'\0041' UESCAPE '!'; SET x = 1; --'", strings);
        hides_set(r"SELECT u&'\0041''; SET x = 1; --'", strings);
        // B'' and X'' neither.
        finds_set(r"SELECT b'\'; SET x = 1; --'", strings);
        finds_set(r"SELECT x'\'; SET x = 1; --'", strings);
    }
    assert_eq!(pieces(r"SELECT U&'\0041'", Strings::Standard).len(), 1);
    // N'' is a plain string under the session's setting.
    finds_set(r"SELECT N'a\'; SET x = 1; --'", Strings::Standard);
    hides_set(r"SELECT n'a\'; SET x = 1; --'", Strings::Escaped);
    // `U&` only at a token start: here a plain string follows an identifier and `&`.
    hides_set(r"SELECT xu&'\'; SET x = 1; --'", Strings::Escaped);
}

#[test]
fn quoted_identifiers() {
    for strings in ALL {
        finds_set(r#"SELECT 1 AS "a'b"; SET x = 1"#, strings);
        finds_set(r#"SELECT 1 AS "a--b"; SET x = 1"#, strings);
        finds_set(r#"SELECT 1 AS "a/*b"; SET x = 1"#, strings);
        finds_set(r#"SELECT 1 AS "a\"; SET x = 1; --""#, strings);
        finds_set(r#"SELECT 1 AS U&"a\"; SET x = 1; --""#, strings);
        hides_set(r#"SELECT 1 AS "a""; SET x = 1; --""#, strings);
    }
    // A quoted word is an identifier, never a keyword.
    assert!(!fx(r#"select "set" from t; "listen" x"#).settings);
    assert!(fx(r#"select "listen" x"#).acquires.is_empty());
}

#[test]
fn comments() {
    finds_set("SELECT 1 -- c\n; SET x = 1", Strings::Standard);
    finds_set("SELECT 1 --x\r; SET x = 1", Strings::Standard);
    hides_set("SELECT 1 -- ; SET x = 1", Strings::Standard);
    // Block comments nest.
    hides_set("SELECT 1 /* a /* b */ ; SET x = 1; */", Strings::Standard);
    finds_set("SELECT 1 /* a /* b */ */; SET x = 1", Strings::Standard);
    hides_set("SELECT 1 /*/ ; SET x = 1; */", Strings::Standard);
    finds_set("SELECT 1 /**/; SET x = 1", Strings::Standard);
    // A comment starts inside an operator, and quotes inside comments mean nothing.
    hides_set("SELECT 2 */* c ; SET x = 1; */ 3", Strings::Standard);
    finds_set("SELECT 2 +-- ' c\n; SET x = 1", Strings::Standard);
    finds_set("SELECT 1 /* ' \" $$ */; SET x = 1", Strings::Standard);
    // `--` and `/*` inside strings are not comments.
    finds_set("SELECT '--'; SET x = 1", Strings::Standard);
    finds_set("SELECT '/*'; SET x = 1", Strings::Standard);
}

#[test]
fn dollar_quotes() {
    // Dollar-quoted bodies are read as code, so the statement that must stay hidden here
    // is a COPY: only the client's own statements count as one.
    hides_copy("SELECT $$; COPY t FROM STDIN; $$", Strings::Standard);
    hides_copy("SELECT $a$; COPY t FROM STDIN; $a$", Strings::Standard);
    hides_copy("SELECT $_é9$; COPY t FROM STDIN; $_é9$", Strings::Standard);
    hides_copy(
        "SELECT $ab$ $a$ $b$; COPY t FROM STDIN; $ab$",
        Strings::Standard,
    );
    hides_copy(
        "SELECT $a$ '; $A$; COPY t FROM STDIN; $a$",
        Strings::Standard,
    );
    hides_copy("SELECT 1$a$; COPY t FROM STDIN; $a$", Strings::Standard);
    finds_copy("SELECT $a$x$a$; COPY t FROM STDIN", Strings::Standard);
    finds_copy("SELECT $a$$a$; COPY t FROM STDIN", Strings::Standard);
    finds_copy("SELECT $a$ $$ $a$; COPY t FROM STDIN", Strings::Standard);
    // `$1` is a parameter: `$1$` opens nothing.
    finds_copy("SELECT $1$; COPY t FROM STDIN; $1$", Strings::Standard);
    // A `$` after an identifier character belongs to the identifier.
    finds_copy(
        "SELECT a$b$; COPY t FROM STDIN; SELECT b$b$",
        Strings::Standard,
    );
    finds_copy(
        "SELECT é$a$; COPY t FROM STDIN; SELECT b$a$",
        Strings::Standard,
    );
    assert_eq!(
        pieces(
            "SELECT é$a$; COPY t FROM STDIN; SELECT b$a$",
            Strings::Standard
        )
        .len(),
        3
    );
    // A `$` that opens no quote is a token alone.
    finds_copy("SELECT $ a$; COPY t FROM STDIN", Strings::Standard);
    // Inside a dollar quote, backslashes and quotes are ordinary under either setting.
    for strings in ALL {
        finds_copy(r"SELECT $q$\$q$; COPY t FROM STDIN; --'", strings);
        hides_copy("SELECT $q$'$q$'; COPY t FROM STDIN; --'", strings);
    }
}

#[test]
fn settings() {
    assert!(fx("SET search_path = a").settings);
    assert!(fx("select 1; set work_mem='4MB'").settings);
    assert!(fx("  /* c */ -- x\n reset all").settings);
    assert!(fx("SET SESSION AUTHORIZATION bob").settings);
    assert!(fx("reset session authorization").settings);
    assert!(fx("set role bob").settings);
    assert!(fx("SET SESSION work_mem = '1MB'").settings);
    assert!(fx("SET TIME ZONE 'UTC'").settings);
    assert!(fx("discard all").settings);
    // It sets default_transaction_isolation for the session.
    assert!(fx("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings);
    assert!(!fx("SET LOCAL work_mem = '1MB'").settings);
    assert!(!fx("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").settings);
    assert!(!fx("set constraints all deferred").settings);
    assert!(!fx("UPDATE t SET x = 1").settings);
    assert!(!fx("select 'set x = 1'; select \"set\" from t").settings);
    assert!(!fx("select 1 offset 2").settings);
    assert!(!fx("select 'set_config(1)'").settings);
    for call in [
        "select set_config('a.b', '1', false)",
        "select pg_catalog.set_config('a.b', '1', false)",
        "select PG_CATALOG . SET_CONFIG('a.b', '1', false)",
        r#"select "set_config"('a.b', '1', false)"#,
        r#"select "pg_catalog"."set_config"('a.b', '1', false)"#,
        r#"select U&"set\005fconfig"('a.b', '1', false)"#,
        r#"select U&"set!005fconfig" UESCAPE '!' ('a.b', '1', false)"#,
        r#"select U&"set\+00005Fconfig"('a.b', '1', false)"#,
        "update t set x = set_config('a.b', '1', false)",
    ] {
        assert!(fx(call).settings, "{call}");
    }
}

#[test]
fn acquired_features() {
    use Feature::*;
    let lock = [AdvisoryLock];
    assert_eq!(acquires("select pg_advisory_lock(1)"), lock);
    assert_eq!(acquires("select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)"), lock);
    assert_eq!(
        acquires("select pg_catalog.pg_advisory_lock_shared(1)"),
        lock
    );
    assert_eq!(acquires(r#"select "pg_try_advisory_lock"(1)"#), lock);
    assert_eq!(acquires("select pg_advisory_xact_lock(1)"), []);
    assert_eq!(acquires("select 'pg_advisory_lock(1)'"), []);
    assert_eq!(acquires("LISTEN chan"), [Listen]);
    assert_eq!(acquires("listen \"Chan\""), [Listen]);
    assert_eq!(
        acquires("declare c cursor with hold for select 1"),
        [HoldCursor]
    );
    assert_eq!(acquires("declare c cursor without hold for select 1"), []);
    assert_eq!(acquires("declare c cursor for select 1"), []);
    for temp in [
        "create temp table t (x int)",
        "CREATE TEMPORARY TABLE t (x int)",
        "create global temporary table t (x int)",
        "create local temp table t (x int)",
        "create or replace temp view v as select 1",
        "create temp sequence s",
        "select * into temp t from x",
        "select 1 into temporary table t",
        "create table pg_temp.t (x int)",
        "create function pg_temp.f() returns int language sql as 'select 1'",
        r#"create table "pg_temp".t (x int)"#,
        "select 1 into pg_temp.t",
        "explain analyze create temp table t as select 1",
    ] {
        assert_eq!(acquires(temp), [TempTable], "{temp}");
    }
    assert_eq!(acquires("create table weather (temp int)"), []);
    assert_eq!(acquires("select temp from weather"), []);
    assert_eq!(acquires("create table t (x int)"), []);
    assert_eq!(acquires("select * from pg_temp.t"), []);
    assert_eq!(acquires("LOAD 'auto_explain'"), [Load]);
    assert_eq!(acquires("prepare p as select 1"), [SqlPrepare]);
    assert_eq!(acquires("prepare transaction 'x'"), []);
    assert_eq!(acquires("select 'listen'"), []);
    assert_eq!(
        acquires("listen a; select pg_advisory_lock(1); load 'x'"),
        [AdvisoryLock, Listen, Load]
    );
}

#[test]
fn releases_statements_and_copy() {
    for release in [
        "select pg_advisory_unlock(1)",
        "select pg_advisory_unlock_shared(1)",
        "select pg_catalog.pg_advisory_unlock_all()",
        "UNLISTEN *",
        "drop table t",
        "close c",
        "discard temp",
        "deallocate p",
        "commit",
        "end",
        "rollback",
        "abort",
        "prepare transaction 'x'",
    ] {
        assert!(fx(release).releases, "{release}");
    }
    assert!(!fx("select 1; begin; listen x").releases);
    for names in [
        "prepare p as select 1",
        "EXECUTE p(1)",
        "deallocate all",
        "discard all",
        "explain analyze execute p",
        "create table t as execute p",
    ] {
        assert!(fx(names).statements, "{names}");
    }
    assert!(!fx("prepare transaction 'x'").statements);
    assert!(!fx("select 'execute p'").statements);
    assert!(fx("copy t from stdin").copy);
    assert!(fx("select 1; COPY t TO STDOUT").copy);
    assert!(!fx("select 'copy'").copy);
}

#[test]
fn quoted_bodies_are_read_as_code() {
    assert!(fx("do $$ begin perform set_config('a.b', '1', false); end $$").settings);
    assert_eq!(
        acquires("do $f$ begin perform pg_advisory_lock(1); end $f$"),
        [Feature::AdvisoryLock]
    );
    // Statements inside PL/pgSQL start after BEGIN, THEN, ELSE, LOOP, EXCEPTION too.
    assert!(fx("DO $$ BEGIN SET search_path = evil; END $$").settings);
    assert!(fx("DO $$ BEGIN IF true THEN RESET ALL; END IF; END $$").settings);
    assert_eq!(
        acquires("DO $$ BEGIN IF true THEN CREATE TEMP TABLE t(); END IF; END $$"),
        [Feature::TempTable]
    );
    // Strings inside bodies: dynamic SQL.
    assert_eq!(
        acquires("DO $$ BEGIN EXECUTE 'LISTEN x'; END $$"),
        [Feature::Listen]
    );
    // Strings of DO and CREATE statements, decoded first.
    assert_eq!(
        acquires("DO 'begin perform pg_advisory_lock(1); end'"),
        [Feature::AdvisoryLock]
    );
    assert_eq!(
        acquires(r"DO E'begin perform pg\x5fadvisory_lock(1); end'"),
        [Feature::AdvisoryLock]
    );
    assert_eq!(
        acquires(r"DO U&'begin perform pg\005fadvisory_lock(1); end'"),
        [Feature::AdvisoryLock]
    );
    assert_eq!(
        acquires("DO 'begin perform pg_advisory' \n '_lock(1); end'"),
        [Feature::AdvisoryLock]
    );
    let old_style = "CREATE FUNCTION f() RETURNS void AS \
        'select set_config(''a.b'', ''1'', false)' LANGUAGE sql";
    assert!(fx(old_style).settings);
    let escaped = r"DO 'begin perform set_config(\'a.b\', \'1\', false); end'";
    assert!(fx_in(escaped, Strings::Escaped).settings);
    // Strings of other statements are data.
    assert!(!fx("select 'select set_config(1)'").settings);
    // What a body does is not the client's own prepared statement or COPY.
    let body = fx("DO $$ BEGIN EXECUTE 'x'; COPY t TO '/tmp/x'; END $$");
    assert!(!body.statements && !body.copy);
}

#[test]
fn nesting_deeper_than_followed_is_unsure() {
    let three =
        "DO $a$ BEGIN EXECUTE $b$ DO $c$ BEGIN PERFORM pg_advisory_lock(1); END $c$ $b$; END $a$";
    let e = fx(three);
    assert_eq!(
        e.acquires.iter().collect::<Vec<_>>(),
        [Feature::AdvisoryLock]
    );
    assert!(!e.unsure);
    let four = "DO $a$ EXECUTE $b$ DO $c$ EXECUTE $d$ SELECT 1 $d$ $c$ $b$ $a$";
    assert!(fx(four).unsure);
    let strings = "DO 'EXECUTE ''DO ''''EXECUTE ''''''''SELECT 1'''''''' '''' '' '";
    assert!(fx(strings).unsure);
}

#[test]
fn unknown_reads_both_ways() {
    // No backslash: one reading.
    let plain = "SELECT 'a'; SET x = 1";
    assert_eq!(fx_in(plain, Strings::Unknown), fx(plain));
    assert!(!fx_in(plain, Strings::Unknown).unsure);
    // Backslashes that mean the same either way.
    let same = r"SELECT E'\n', $$\$$, U&'\0041'; SET x = 1";
    let e = fx_in(same, Strings::Unknown);
    assert!(e.settings && !e.unsure);
    // Same split, different heads found: the union, unsure.
    let heads = r"SELECT 'a\', pg_advisory_lock(1), '";
    let e = fx_in(heads, Strings::Unknown);
    assert!(e.unsure && e.acquires.contains(Feature::AdvisoryLock));
    // Changing how the rest of the text lexes.
    assert!(fx("SET standard_conforming_strings = off; DO $$ $$").unsure);
    assert!(fx("select set_config('STANDARD_CONFORMING_STRINGS', 'off', false)").unsure);
    assert!(!fx("show standard_conforming_strings").unsure);
    assert_eq!(Strings::from_setting(b"on"), Strings::Standard);
    assert_eq!(Strings::from_setting(b"off"), Strings::Escaped);
    assert_eq!(Strings::from_setting(b"ON"), Strings::Unknown);
    assert_eq!(Strings::default(), Strings::Standard);
}

#[test]
fn encodings_whose_second_bytes_look_like_ascii_are_not_scannable() {
    for safe in [
        "UTF8",
        "LATIN1",
        "EUC_JP",
        "SQL_ASCII",
        "WIN1252",
        "unicode",
    ] {
        assert!(scannable_encoding(safe.as_bytes()), "{safe}");
    }
    for unsafe_ in [
        "SJIS",
        "Shift_JIS",
        "SHIFT_JIS_2004",
        "BIG5",
        "GBK",
        "UHC",
        "GB18030",
        "JOHAB",
        "win932",
    ] {
        assert!(!scannable_encoding(unsafe_.as_bytes()), "{unsafe_}");
    }
    // The attack: 0x95 0x5C is one SJIS character to the server, `\'` to the scanner.
    let sjis = b"SELECT E'\x95\x5c'; SET x = 1; --'";
    assert!(!effects(sjis, Strings::Standard).settings);
}

#[test]
fn statements_and_single_statement() {
    let s = Strings::Standard;
    assert_eq!(single_statement(b"select 1", s), Some(&b"select 1"[..]));
    assert_eq!(
        single_statement(b"select ';'; -- done\n ;", s),
        Some(&b"select ';'"[..])
    );
    assert_eq!(single_statement(b"select 1; select 2", s), None);
    assert_eq!(single_statement(b"select 1; 'x'", s), None);
    assert_eq!(single_statement(b" ; /* */ ", s), None);
    assert_eq!(
        pieces("begin; select ';' ; ;/* c */; commit -- end", s),
        ["begin", " select ';' ", " commit -- end"]
    );
    assert_eq!(
        pieces(r"select 'a\'; b", Strings::Unknown),
        ["select 'a\\'", " b"]
    );
    assert_eq!(
        pieces(r"select 'a\'; b", Strings::Escaped),
        [r"select 'a\'; b"]
    );
}

#[test]
fn feature_sets() {
    let set = Features::NONE
        .with(Feature::Listen)
        .with(Feature::Load)
        .with(Feature::Listen);
    assert!(set.contains(Feature::Listen) && set.contains(Feature::Load));
    assert!(!set.contains(Feature::TempTable) && !set.is_empty());
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        [Feature::Listen, Feature::Load]
    );
    assert!(set
        .without(Feature::Listen)
        .without(Feature::Load)
        .is_empty());
    assert_eq!(
        Features::NONE
            .with(Feature::SqlPrepare)
            .union(set)
            .iter()
            .count(),
        3
    );
    let names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        [
            "session-level advisory lock",
            "LISTEN",
            "WITH HOLD cursor",
            "temporary table",
            "LOAD",
            "SQL-level PREPARE"
        ]
    );
    let mut e = Effects::default();
    e.merge(Effects {
        copy: true,
        unsure: true,
        acquires: set,
        ..Effects::default()
    });
    assert!(e.copy && e.unsure && e.acquires == set && !e.settings);
}

#[test]
fn hostile_text_is_read_in_linear_time() {
    let nested: String = (0..50_000).map(|i| format!("$t{i}$ ")).collect::<String>()
        + &(0..50_000)
            .rev()
            .map(|i| format!("$t{i}$ "))
            .collect::<String>();
    assert!(fx(&nested).unsure, "deeper than followed");
    // A long tag repeated almost: a naive search would be quadratic.
    let tag = "a".repeat(20_000);
    let near = format!(
        "SELECT ${tag}$ {} ${tag}$; SET x = 1",
        format!("${tag} ").repeat(50)
    );
    finds_set(&near, Strings::Standard);
    for sql in [
        "'", "\"", "$", "$a", "$a$", "/*", "/* /* */", "--", "E'\\", "';", "$$;$", "U&", "U&'",
        "U&\"", "1e", "1e+", ".", "e'", "b'", "'a'\n", "'a'\n--", "'a'\n'",
    ] {
        for strings in ALL {
            let _ = fx_in(sql, strings);
            let mut total = 0;
            for_each_statement(sql.as_bytes(), strings, |s| total += s.len());
            assert!(total <= sql.len());
        }
    }
}
