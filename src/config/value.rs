//! How one setting's value is read from text (a flag, a `PGWARDEN_*` variable, or a TOML
//! scalar) and shown back (`--help`, the README table, `SHOW CONFIG` later).
//!
//! Every source is text first, so a value of the wrong type is reported by `validate` under
//! its key, together with every other problem, rather than ending the parse at the first.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::duration;
use super::{AuthType, ClientIdentity, PoolMode};
use crate::tls::SslMode;

/// A type a setting can have.
pub trait Value: Sized + Clone {
    /// Reads a value as written; the error says what was expected.
    fn parse(text: &str) -> Result<Self, String>;
    /// The value as a user would write it.
    fn show(&self) -> String;
    /// The only values accepted, for `--help` and shell completion; empty when open-ended.
    fn choices() -> Vec<String> {
        Vec::new()
    }
}

macro_rules! whole_number {
    ($($ty:ty),*) => {$(
        impl Value for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| {
                    format!("{text:?} is not a whole number from 0 to {}", <$ty>::MAX)
                })
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
whole_number!(u8, u16, u32, usize);

impl Value for bool {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            _ => Err(format!("{text:?} is not true or false")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for Duration {
    fn parse(text: &str) -> Result<Self, String> {
        duration::parse(text).map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        duration::format(*self)
    }
}

impl Value for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl Value for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// A comma-separated list; each entry trimmed (an empty text is an empty list).
impl Value for Vec<String> {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(text.split(',').map(|e| e.trim().to_owned()).collect())
    }
    fn show(&self) -> String {
        self.join(",")
    }
}

/// A setting that is off unless given.
impl<T: Value> Value for Option<T> {
    fn parse(text: &str) -> Result<Self, String> {
        T::parse(text).map(Some)
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "none".to_owned(), T::show)
    }
    fn choices() -> Vec<String> {
        T::choices()
    }
}

/// The enums of the configuration, read by their clap names (`scram-sha-256`, `transaction`).
macro_rules! choice {
    ($($ty:ty),*) => {$(
        impl Value for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                <$ty as clap::ValueEnum>::from_str(text.trim(), true).map_err(|_| {
                    format!("{text:?} is not one of {}", Self::choices().join(", "))
                })
            }
            fn show(&self) -> String {
                clap::ValueEnum::to_possible_value(self)
                    .map_or_else(String::new, |v| v.get_name().to_owned())
            }
            fn choices() -> Vec<String> {
                <$ty as clap::ValueEnum>::value_variants()
                    .iter()
                    .map(Value::show)
                    .collect()
            }
        }
    )*};
}
choice!(AuthType, PoolMode, ClientIdentity, SslMode);

/// One TOML value of a setting, as text. A table or an array where a setting is expected is
/// kept as such so that `validate` can say so under the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Text(String),
    NotScalar,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a setting's value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::NotScalar)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::NotScalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_what_they_show() {
        assert_eq!(usize::parse(" 20 "), Ok(20));
        assert!(u8::parse("300").unwrap_err().contains("0 to 255"));
        assert_eq!(Duration::parse("1h").map(|d| d.show()), Ok("1h".to_owned()));
        assert_eq!(PoolMode::parse("Transaction"), Ok(PoolMode::Transaction));
        assert_eq!(AuthType::ScramSha256.show(), "scram-sha-256");
        let bad = PoolMode::parse("sometimes").unwrap_err();
        assert!(bad.contains("session, transaction, statement"), "{bad}");
        assert_eq!(Option::<PathBuf>::None.show(), "none");
        assert_eq!(
            Vec::<String>::parse("a, b").map(|v| v.show()),
            Ok("a,b".into())
        );
        assert_eq!(bool::parse("off"), Ok(false));
    }
}
