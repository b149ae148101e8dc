//! The values of string constants and `U&` identifiers, for the rare texts whose strings
//! are read as code (`DO '...'`, `CREATE FUNCTION ... AS '...'`) or whose quoted names
//! spell a function in escapes. Borrowed when nothing needs decoding, so the usual
//! statement allocates nothing.

use std::borrow::Cow;

use super::lexer::{continuation, Quote};

/// The value of a string constant as the lexer returned it (`raw` from its opening quote to
/// its last closing quote); `uescape` is the escape character of a `U&` string.
pub fn string_value(raw: &[u8], quote: Quote, uescape: u8) -> Cow<'_, [u8]> {
    let inner = inner(raw);
    let plain = match quote {
        Quote::Standard | Quote::Bits => !inner.contains(&b'\''),
        Quote::Escape => !inner.iter().any(|c| matches!(c, b'\'' | b'\\')),
        Quote::Unicode => !inner.iter().any(|c| *c == b'\'' || *c == uescape),
    };
    if plain {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 1;
    while let Some(&c) = raw.get(i) {
        i = match c {
            b'\'' if quote != Quote::Bits && raw.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i + 2
            }
            b'\'' => match continuation(raw, i + 1) {
                Some(next) => next + 1,
                None => break,
            },
            b'\\' if quote == Quote::Escape => backslash(raw, i + 1, &mut out),
            c if quote == Quote::Unicode && c == uescape => {
                unicode_escape(raw, i + 1, uescape, &mut out)
            }
            c => {
                out.push(c);
                i + 1
            }
        };
    }
    Cow::Owned(out)
}

/// A quoted identifier's name (`inner` as the lexer returned it), `None` when it holds a
/// `"`: no name pgwarden looks for does.
pub fn ident_value(inner: &[u8], unicode: bool, uescape: u8) -> Option<Cow<'_, [u8]>> {
    if inner.contains(&b'"') {
        return None;
    }
    if !unicode || !inner.contains(&uescape) {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while let Some(&c) = inner.get(i) {
        if c == uescape {
            i = unicode_escape(inner, i + 1, uescape, &mut out);
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(Cow::Owned(out))
}

/// The text between a string constant's first quotes, when it is one piece.
fn inner(raw: &[u8]) -> &[u8] {
    let body = raw.get(1..).unwrap_or_default();
    match body.iter().position(|c| *c == b'\'') {
        Some(n) if n + 1 == body.len() => &body[..n],
        // Several pieces, doubled quotes, or unterminated: decoded (or never run).
        _ => body,
    }
}

/// An E-string escape whose backslash is just before `i`; returns where reading goes on.
fn backslash(raw: &[u8], i: usize, out: &mut Vec<u8>) -> usize {
    let Some(&c) = raw.get(i) else {
        return i;
    };
    let simple = match c {
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        _ => None,
    };
    if let Some(byte) = simple {
        out.push(byte);
        return i + 1;
    }
    let (radix, skip, max, wide) = match c {
        b'0'..=b'7' => (8, 0, 3, false),
        b'x' => (16, 1, 2, false),
        b'u' => (16, 1, 4, true),
        b'U' => (16, 1, 8, true),
        _ => (0, 0, 0, false),
    };
    match digits(raw, i + skip, radix, max) {
        Some((value, end)) if !wide || end - (i + skip) == max => {
            if wide {
                push_char(value, out);
            } else {
                out.push(value as u8);
            }
            end
        }
        _ => {
            out.push(c);
            i + 1
        }
    }
}

/// A `U&` escape whose escape character is just before `i`: `\\`, `\XXXX` or `\+XXXXXX`.
fn unicode_escape(raw: &[u8], i: usize, uescape: u8, out: &mut Vec<u8>) -> usize {
    if raw.get(i) == Some(&uescape) {
        out.push(uescape);
        return i + 1;
    }
    let (start, len) = if raw.get(i) == Some(&b'+') {
        (i + 1, 6)
    } else {
        (i, 4)
    };
    match digits(raw, start, 16, len) {
        Some((value, end)) if end - start == len => {
            push_char(value, out);
            end
        }
        // The server refuses an invalid escape; the text never runs.
        _ => {
            out.push(uescape);
            i
        }
    }
}

/// Up to `max` digits of `radix` at `i`: their value and where they end.
fn digits(raw: &[u8], i: usize, radix: u32, max: usize) -> Option<(u32, usize)> {
    let mut value = 0u32;
    let mut end = i;
    while end - i < max {
        let Some(d) = raw.get(end).and_then(|c| (*c as char).to_digit(radix)) else {
            break;
        };
        value = value.wrapping_mul(radix).wrapping_add(d);
        end += 1;
    }
    (end > i).then_some((value, end))
}

/// A code point as UTF-8; one that is not a char (a surrogate) as U+FFFD, which lexes as
/// the same kind of identifier byte.
fn push_char(value: u32, out: &mut Vec<u8>) {
    let c = char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER);
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}
