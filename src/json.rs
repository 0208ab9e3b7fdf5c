//! Strict JSON for everything a caller sends: an object with the same key twice is refused.
//!
//! `serde_json` (and Cedar, which parses with it) keeps the last of duplicate keys; a gateway or
//! logger in front of us may keep the first. `{"mfa": false, "mfa": true}` would then be checked as
//! one value and decided as the other: the classic parser-differential hole. So the text is walked
//! once before it is parsed, and a duplicate key is an error naming it.

use std::collections::HashSet;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};

/// Fails on the first object that has a key twice: "duplicate key `mfa` at line 1 column 25". Other
/// syntax errors are left to the real parse, which reports them in its own words.
pub fn refuse_duplicate_keys(text: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    match Walk.deserialize(&mut de) {
        Err(e) if e.to_string().starts_with("duplicate key") => Err(e.to_string()),
        _ => Ok(()),
    }
}

struct Walk;

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(Walk)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value_seed(Walk)?;
            seen.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(refuse_duplicate_keys(r#"{"mfa": false, "ip": "10.0.0.1"}"#).is_ok());
        let err = refuse_duplicate_keys(r#"{"mfa": false, "mfa": true}"#).unwrap_err();
        assert!(err.starts_with("duplicate key `mfa`"), "{err}");
        let nested = r#"[{"uid": {"type": "User", "id": "a", "id": "b"}, "attrs": {}}]"#;
        assert!(refuse_duplicate_keys(nested).unwrap_err().contains("`id`"));
        // The same key in sibling objects is fine; escapes name the same key.
        assert!(refuse_duplicate_keys(r#"[{"a": 1}, {"a": 2}, {"b": {"a": [1.5, null, "x"]}}]"#).is_ok());
        assert!(refuse_duplicate_keys(r#"{"a": 1, "\u0061": 2}"#).is_err());
        // Not JSON at all is for the real parser to explain.
        assert!(refuse_duplicate_keys("{oops").is_ok());
    }
}
