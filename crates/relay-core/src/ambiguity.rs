//! Requests that name a field the relay routes or bills by ambiguously are refused
//! (API.md §3): a JSON body with `model` also under another case (`"Model"`), or a form
//! with two `model` parts. An upstream that matches JSON keys regardless of case (Go's
//! `encoding/json`, for one) or takes the last of two form parts would otherwise serve
//! a model, a limit or a stream other than the one admitted and held for.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::RelayError;
use crate::multipart::Field;

/// The top-level JSON fields the relay reads from a request (`openai::ChatHead`).
const JSON_FIELDS: [&str; 10] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "messages",
    "prompt",
    "input",
];

/// The form fields the relay reads from an upload.
const FORM_FIELDS: [&str; 3] = ["model", "n", "response_format"];

/// Refuses a JSON object with a top-level key that is one of [`JSON_FIELDS`] under
/// another case. (The same key twice is refused by the head's own parser.)
pub fn check_json(body: &[u8]) -> Result<(), RelayError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_map(TopLevel) {
        Ok(None) => Ok(()),
        Ok(Some((key, field))) => Err(ambiguous(&key, field)),
        // Not an object: the head's parser says what is wrong with it.
        Err(_) => Ok(()),
    }
}

/// Refuses a form with two parts named alike (regardless of case) when the name is one
/// of [`FORM_FIELDS`].
pub fn check_form(fields: &[Field]) -> Result<(), RelayError> {
    for wanted in FORM_FIELDS {
        let mut named = fields.iter().filter(|f| same_name(&f.name, wanted));
        if let (Some(first), Some(second)) = (named.next(), named.next()) {
            let key = if first.name == wanted {
                &second.name
            } else {
                &first.name
            };
            return Err(ambiguous(key, wanted));
        }
    }
    Ok(())
}

fn ambiguous(key: &str, field: &str) -> RelayError {
    let key: String = key.chars().take(64).collect();
    RelayError::InvalidRequest(format!(
        "the request names '{field}' ambiguously (as '{key}'): name it exactly once, as '{field}'"
    ))
}

/// Whether `key` is `field` under simple case folding (ASCII, plus the two non-ASCII
/// letters that fold onto ASCII ones: U+017F ſ and U+212A K).
fn same_name(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars())
}

/// The field a top-level key shadows, when it is not that field's exact name.
fn shadowed(key: &str) -> Option<&'static str> {
    JSON_FIELDS
        .into_iter()
        .find(|field| key != *field && same_name(key, field))
}

/// Walks the top-level keys of an object (values skipped unread), finding the first
/// shadowing key.
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Option<(String, &'static str)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(hit)) = map.next_key()? {
            map.next_value::<IgnoredAny>()?;
            found = found.or(hit);
        }
        Ok(found)
    }
}

/// One key, checked as it is read (no allocation unless it shadows a field).
struct Key(Option<(String, &'static str)>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key(shadowed(key).map(|field| (key.to_owned(), field))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> bool {
        check_json(body.as_bytes()).is_err()
    }

    #[test]
    fn a_field_under_another_case_is_refused_wherever_it_stands() {
        assert!(refused(r#"{"model":"a","Model":"b","messages":[]}"#));
        assert!(refused(r#"{"MODEL":"b","model":"a"}"#));
        assert!(refused(r#"{"Model":"a"}"#));
        assert!(refused(r#"{"model":"a","Max_Tokens":9}"#));
        assert!(refused("{\"model\":\"a\",\"\u{17F}tream\":true}"));
        assert!(refused("{\"model\":\"a\",\"max_to\u{212A}ens\":1}"));
        let e = check_json(br#"{"model":"a","Model":"b"}"#).unwrap_err();
        assert!(e.to_string().contains("'model'") && e.to_string().contains("'Model'"));
    }

    #[test]
    fn plain_bodies_nested_keys_and_non_objects_pass() {
        assert!(!refused(
            r#"{"model":"a","messages":[{"Model":"x"}],"metadata":{"MODEL":1}}"#
        ));
        assert!(!refused(r#"{"model":"a","models":["b"],"modell":1}"#));
        assert!(!refused("[1,2]"));
        assert!(!refused("not json"));
    }

    fn field(name: &str) -> Field {
        Field {
            name: name.to_owned(),
            filename: None,
            start: 0,
            end: 0,
        }
    }

    #[test]
    fn a_form_with_a_routed_field_twice_is_refused() {
        assert!(check_form(&[field("model"), field("file"), field("model")]).is_err());
        assert!(check_form(&[field("Model"), field("model")]).is_err());
        assert!(check_form(&[field("n"), field("N")]).is_err());
        assert!(check_form(&[field("model"), field("image[]"), field("image[]")]).is_ok());
    }
}
