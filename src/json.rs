//! Strict JSON for everything a caller sends: an object with the same key twice is refused.
//!
//! `serde_json` (and Cedar, which parses with it) keeps the last of duplicate keys; a gateway or
//! logger in front of us may keep the first. `{"mfa": false, "mfa": true}` would then be checked as
//! one value and decided as the other: the classic parser-differential hole. So the text is walked
//! once before it is parsed, and a duplicate key is an error naming it.

use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Fails on the first object that has a key twice: "duplicate key `mfa` at line 1 column 25". Other
/// syntax errors are left to the real parse, which reports them in its own words.
pub fn refuse_duplicate_keys(text: &str) -> Result<(), String> {
    match parse_strict(text) {
        Err(e) if e.to_string().starts_with("duplicate key") => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// `text` as a JSON value, in one pass, refusing an object with a key twice (and, as `serde_json`
/// does, anything after the value but whitespace).
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: Error>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E: Error>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_f64<E: Error>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
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

    #[test]
    fn strict_parse_gives_serde_json_s_value() {
        for text in [r#"{"a": [1, -2, 1.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#, "[]", "7"] {
            assert_eq!(parse_strict(text).unwrap(), serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
        assert!(parse_strict(r#"{"a": 1} x"#).is_err());
        assert!(parse_strict(r#"{"a": 1, "a": 1}"#).unwrap_err().to_string().starts_with("duplicate key `a`"));
    }
}
