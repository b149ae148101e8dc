//! Fuzz target: the SQL scanner never panics, and splits any bytes into ordered,
//! non-overlapping pieces of the input bounded by `;`, under every setting.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::sql::{effects, for_each_statement, single_statement, Strings};

const SETTINGS: [Strings; 3] = [Strings::Standard, Strings::Escaped, Strings::Unknown];

/// The pieces of `sql` as offsets, checked to lie in order inside it, each cut at a `;`.
fn pieces(sql: &[u8], strings: Strings) -> Vec<(usize, usize)> {
    let base = sql.as_ptr() as usize;
    let mut out: Vec<(usize, usize)> = Vec::new();
    for_each_statement(sql, strings, |piece| {
        let start = piece.as_ptr() as usize - base;
        let end = start + piece.len();
        assert!(end <= sql.len(), "piece past the end");
        assert!(!piece.is_empty(), "empty piece");
        if let Some(&(_, last)) = out.last() {
            assert!(start > last, "pieces overlap or touch");
        }
        assert!(start == 0 || sql[start - 1] == b';', "piece not after a ;");
        assert!(end == sql.len() || sql[end] == b';', "piece not before a ;");
        out.push((start, end));
    });
    out
}

fuzz_target!(|sql: &[u8]| {
    let [standard, escaped, unknown] = SETTINGS.map(|s| effects(sql, s));
    for strings in SETTINGS {
        let split = pieces(sql, strings);
        assert_eq!(single_statement(sql, strings).is_some(), split.len() == 1);
    }
    // Unknown reads both ways: it covers what either reading finds.
    let mut both = standard;
    both.merge(escaped);
    assert_eq!(unknown.acquires.union(both.acquires), unknown.acquires);
    assert!(unknown.settings >= both.settings && unknown.releases >= both.releases);
    if !sql.contains(&b'\\') {
        assert_eq!(standard, escaped, "readings differ without a backslash");
        assert_eq!(unknown, standard);
    }
    if standard != escaped || pieces(sql, Strings::Standard) != pieces(sql, Strings::Escaped) {
        assert!(unknown.unsure, "readings differ but Unknown is sure");
    }
});
