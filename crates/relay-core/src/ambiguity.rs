//! Requests that name a field the relay routes or bills by ambiguously are refused
//! (API.md §3): a JSON body with `model` also under another case (`"Model"`), a Gemini
//! body with its output limit under another case, or a form with two `model` parts. An
//! upstream that matches JSON keys regardless of case (Go's `encoding/json`, for one) or
//! takes the last of two form parts would otherwise serve a model, a limit or a stream
//! other than the one admitted and held for. OpenRouter's `models` (fallbacks) and
//! `route` are refused too: they let the upstream serve a model other than the one
//! priced.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::RelayError;
use crate::multipart::Field;

/// The names the relay reads at one level of a JSON object, and the objects under it
/// that it reads too.
struct Level {
    /// Keys the relay reads: another spelling under another case is refused.
    fields: &'static [&'static str],
    /// Keys refused under any case.
    unsupported: &'static [&'static str],
    /// Keys (exact) whose object value is read at its own level.
    nested: &'static [(&'static str, &'static Level)],
}

/// OpenRouter's fallback list and routing mode: the upstream may serve another model.
const UNSUPPORTED: &[&str] = &["models", "route"];

/// The top-level fields the relay reads from an OpenAI- or Anthropic-shaped request
/// (`openai::ChatHead`).
const OPENAI: Level = Level {
    fields: &[
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "best_of",
        "background",
        "messages",
        "prompt",
        "input",
    ],
    unsupported: UNSUPPORTED,
    nested: &[],
};

/// A Gemini `generationConfig`: the output limit and the number of candidates, in
/// both spellings Google reads.
const GEMINI_CONFIG: Level = Level {
    fields: &[
        "maxOutputTokens",
        "max_output_tokens",
        "candidateCount",
        "candidate_count",
    ],
    unsupported: &[],
    nested: &[],
};

/// A Gemini `GenerateContentRequest`.
const GEMINI: Level = Level {
    fields: &["model", "contents", "generationConfig", "generation_config"],
    unsupported: UNSUPPORTED,
    nested: &[
        ("generationConfig", &GEMINI_CONFIG),
        ("generation_config", &GEMINI_CONFIG),
    ],
};

/// The form fields the relay reads from an upload.
const FORM_FIELDS: [&str; 3] = ["model", "n", "response_format"];

/// What makes a body ambiguous.
#[derive(Debug)]
enum Finding {
    /// `key` is `field` under another case.
    Shadow { key: String, field: &'static str },
    /// A key the relay does not serve.
    Unsupported(&'static str),
}

impl Finding {
    fn into_error(self) -> RelayError {
        match self {
            Finding::Shadow { key, field } => ambiguous(&key, field),
            Finding::Unsupported(field) => RelayError::InvalidRequest(format!(
                "'{field}' is not supported: name one model in 'model'"
            )),
        }
    }
}

/// Refuses an OpenAI- or Anthropic-shaped JSON object with a top-level key that is one
/// of the fields the relay reads under another case, or with `models` or `route`. (The
/// same key twice is refused by the head's own parser.)
pub fn check_json(body: &[u8]) -> Result<(), RelayError> {
    check(body, &OPENAI)
}

/// Refuses a Gemini body with `generationConfig`, its output limit or its candidate
/// count (either spelling), or `model` under another case, or with `models` or `route`.
pub fn check_gemini(body: &[u8]) -> Result<(), RelayError> {
    check(body, &GEMINI)
}

fn check(body: &[u8], level: &'static Level) -> Result<(), RelayError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match LevelSeed(level).deserialize(&mut de) {
        Ok(None) => Ok(()),
        Ok(Some(finding)) => Err(finding.into_error()),
        // Not an object: the head's parser says what is wrong with it.
        Err(_) => Ok(()),
    }
}

/// Refuses a form with two parts named alike (regardless of case) when the name is one
/// of [`FORM_FIELDS`], or with a part named `models` or `route`.
pub fn check_form(fields: &[Field]) -> Result<(), RelayError> {
    if let Some(field) = UNSUPPORTED
        .iter()
        .find(|u| fields.iter().any(|f| same_name(&f.name, u)))
    {
        return Err(Finding::Unsupported(field).into_error());
    }
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

/// Whether `key` and `field` are one name under simple case folding (ASCII, plus the
/// two non-ASCII letters that fold onto ASCII ones: U+017F ſ and U+212A K).
fn same_name(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

/// What one key of an object at `level` is.
enum KeyKind {
    /// A key whose object is read at its own level.
    Nested(&'static Level),
    Found(Finding),
    Plain,
}

impl Level {
    fn classify(&'static self, key: &str) -> KeyKind {
        if let Some(field) = self.unsupported.iter().find(|u| same_name(key, u)) {
            return KeyKind::Found(Finding::Unsupported(field));
        }
        if let Some((_, level)) = self.nested.iter().find(|(name, _)| *name == key) {
            return KeyKind::Nested(level);
        }
        if self.fields.contains(&key) {
            return KeyKind::Plain;
        }
        match self.fields.iter().find(|field| same_name(key, field)) {
            Some(field) => KeyKind::Found(Finding::Shadow {
                key: key.to_owned(),
                field,
            }),
            None => KeyKind::Plain,
        }
    }
}

/// Walks an object at one level (values skipped unread unless nested), finding the
/// first ambiguous key. A `null` value is an empty object.
struct LevelSeed(&'static Level);

impl<'de> DeserializeSeed<'de> for LevelSeed {
    type Value = Option<Finding>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LevelSeed {
    type Value = Option<Finding>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(kind) = map.next_key_seed(KeySeed(self.0))? {
            let inner = match kind {
                KeyKind::Nested(level) => map.next_value_seed(LevelSeed(level))?,
                KeyKind::Found(finding) => {
                    map.next_value::<IgnoredAny>()?;
                    Some(finding)
                }
                KeyKind::Plain => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
            };
            found = found.or(inner);
        }
        Ok(found)
    }
}

/// One key, classified as it is read (no allocation unless it is ambiguous).
struct KeySeed(&'static Level);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = KeyKind;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = KeyKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<KeyKind, E> {
        Ok(self.0.classify(key))
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
    fn a_shadowed_best_of_or_background_is_refused() {
        assert!(refused(
            r#"{"model":"a","prompt":"p","best_of":1,"Best_of":20}"#
        ));
        assert!(refused(r#"{"model":"a","input":"p","Background":true}"#));
    }

    #[test]
    fn openrouter_model_fallbacks_and_routes_are_refused_under_any_case() {
        // The upstream could serve a model of the list other than the one priced.
        for body in [
            r#"{"model":"a","models":["b"]}"#,
            r#"{"model":"a","Models":[]}"#,
            r#"{"model":"a","route":"fallback"}"#,
            r#"{"model":"a","ROUTE":null}"#,
        ] {
            let e = check_json(body.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("not supported"), "{body}: {e}");
        }
    }

    fn gemini_refused(body: &str) -> bool {
        check_gemini(body.as_bytes()).is_err()
    }

    #[test]
    fn gemini_limits_under_another_case_and_fallbacks_are_refused() {
        assert!(gemini_refused(r#"{"contents":[],"GenerationConfig":{}}"#));
        assert!(gemini_refused(r#"{"contents":[],"generationconfig":{}}"#));
        assert!(gemini_refused(r#"{"Generation_Config":{},"contents":[]}"#));
        assert!(gemini_refused(r#"{"Model":"models/x","contents":[]}"#));
        assert!(gemini_refused(r#"{"contents":[],"models":["x"]}"#));
        for config in [
            r#"{"maxOutputTokens":1,"MaxOutputTokens":99}"#,
            r#"{"max_output_tokens":1,"Max_Output_Tokens":99}"#,
            r#"{"candidateCount":1,"candidatecount":8}"#,
            r#"{"CANDIDATE_COUNT":8}"#,
        ] {
            for key in ["generationConfig", "generation_config"] {
                let body = format!(r#"{{"contents":[],"{key}":{config}}}"#);
                assert!(gemini_refused(&body), "{body}");
            }
        }
    }

    #[test]
    fn plain_gemini_bodies_pass() {
        assert!(!gemini_refused(
            r#"{"contents":[{"parts":[{"text":"MaxOutputTokens"}]}],"generationConfig":{"maxOutputTokens":9,"temperature":1},"model":"models/x"}"#
        ));
        assert!(!gemini_refused(
            r#"{"contents":[],"generation_config":{"max_output_tokens":9,"candidate_count":1},"systemInstruction":{"parts":[]}}"#
        ));
        assert!(!gemini_refused("not json"));
    }

    #[test]
    fn a_form_with_a_fallback_list_is_refused() {
        assert!(check_form(&[field("model"), field("models")]).is_err());
    }

    #[test]
    fn plain_bodies_nested_keys_and_non_objects_pass() {
        assert!(!refused(
            r#"{"model":"a","messages":[{"Model":"x"}],"metadata":{"MODEL":1}}"#
        ));
        assert!(!refused(r#"{"model":"a","modell":1,"router":2}"#));
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
