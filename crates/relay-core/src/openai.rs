//! The head of a request, as far as admission and holding need to read it (model,
//! stream, limits), and the fewest body edits for the upstream. Answers and stream
//! events are read through the protocols' models in `convert` (see `answer` and
//! `observe`).

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::RelayError;
use crate::protocol::Protocol;

/// What the relay reads of a chat request; the rest of the body passes through.
#[derive(Debug, Deserialize)]
pub struct ChatHead {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_tokens: Named<i64>,
    #[serde(default)]
    pub max_completion_tokens: Named<i64>,
    /// The Responses API's output limit.
    #[serde(default)]
    pub max_output_tokens: Named<i64>,
    #[serde(default)]
    pub stream_options: Named<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    /// Legacy completions: generated `best_of` times, billed for all.
    #[serde(default)]
    pub best_of: Option<i64>,
    /// The Responses API's `background`: refused, since a queued answer carries no
    /// usage and the relay does not serve background retrieval.
    #[serde(default)]
    background: Option<Value>,
    /// The protocol the body was read as (which output-limit fields it has).
    #[serde(skip)]
    proto: Protocol,
    #[serde(default)]
    messages: Option<IgnoredAny>,
    #[serde(default)]
    prompt: Option<IgnoredAny>,
    #[serde(default)]
    input: Option<IgnoredAny>,
}

/// `body`, a JSON object, with `member` (`"key":value`, a key the object does not
/// name) as its first member and every byte after it as the client sent it: no parse,
/// no rewrite of a large prompt.
pub fn prepend_member(body: &Bytes, member: std::fmt::Arguments<'_>) -> Result<Bytes, RelayError> {
    use std::io::Write;
    let not_an_object = || RelayError::InvalidRequest("request body is not a JSON object".into());
    let open = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .filter(|&at| body[at] == b'{')
        .ok_or_else(not_an_object)?;
    let rest = &body[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&body[..=open]);
    out.write_fmt(member).map_err(|_| RelayError::Internal)?;
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Ok(Bytes::from(out))
}

/// `body` with its top-level `model` replaced by `model` (written as a JSON string), the
/// rest of its bytes as sent; `None` when the body has no such member.
pub fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct At<'a> {
        #[serde(borrow)]
        model: &'a serde_json::value::RawValue,
    }
    let at: At<'_> = serde_json::from_slice(body).ok()?;
    let value = at.model.get().as_bytes();
    // Where the value stands in `body` (it borrows from it).
    let start = (value.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(value.len())?;
    if body.get(start..end)? != value {
        return None;
    }
    let name = serde_json::to_vec(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + name.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&name);
    out.extend_from_slice(&body[end..]);
    Some(Bytes::from(out))
}

/// A field's value, and whether the body named its key at all (even as `null`): a
/// body that names no output limit can be given one without being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named<T> {
    pub named: bool,
    pub value: Option<T>,
}

/// Not named (what serde's `default` gives an absent key).
impl<T> Default for Named<T> {
    fn default() -> Self {
        Named {
            named: false,
            value: None,
        }
    }
}

impl<T> Named<T> {
    /// A value read some other way (a Gemini config): counted as named.
    pub fn given(value: Option<T>) -> Self {
        Named { named: true, value }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Named {
            named: true,
            value: Option::<T>::deserialize(d)?,
        })
    }
}

/// OpenAI's ceiling on `n` and `best_of`.
const MAX_CHOICES: i64 = 128;

/// `stream_options` of a chat request.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl ChatHead {
    /// Parses and validates a chat request body.
    pub fn parse(body: &[u8]) -> Result<Self, RelayError> {
        Self::parse_for(Protocol::OpenAiChat, body)
    }

    /// Parses and validates a request body of `proto` (model and its required field).
    pub fn parse_for(proto: Protocol, body: &[u8]) -> Result<Self, RelayError> {
        let mut head: ChatHead = serde_json::from_slice(body).map_err(|e| {
            RelayError::InvalidRequest(format!("request body is not valid JSON: {e}"))
        })?;
        crate::ambiguity::check_json(body)?;
        if proto == Protocol::OpenAiModerations && head.model.as_deref().is_none_or(str::is_empty) {
            // OpenAI's default when a moderation request names no model.
            head.model = Some("omni-moderation-latest".to_owned());
        }
        if head.model.as_deref().is_none_or(str::is_empty) {
            return Err(RelayError::InvalidRequest("'model' is required".into()));
        }
        let present = match proto.required_field() {
            "prompt" => head.prompt.is_some(),
            "input" => head.input.is_some(),
            _ => head.messages.is_some(),
        };
        if !present {
            return Err(RelayError::InvalidRequest(format!(
                "'{}' is required",
                proto.required_field()
            )));
        }
        head.proto = proto;
        head.check_choices()?;
        head.check_background()?;
        Ok(head)
    }

    /// Whether the body names any output-limit key (even as `null` or 0).
    pub fn names_a_limit(&self) -> bool {
        self.max_tokens.named || self.max_completion_tokens.named || self.max_output_tokens.named
    }

    /// A Responses request run in the background is refused: the upstream answers
    /// `queued` without usage and runs the whole job, which the relay could not charge.
    fn check_background(&self) -> Result<(), RelayError> {
        let background = self
            .background
            .as_ref()
            .is_some_and(|b| *b != Value::Bool(false));
        if self.proto == Protocol::OpenAiResponses && background {
            return Err(RelayError::InvalidRequest(
                "'background' is not supported: the gateway does not relay background responses"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Choices beyond OpenAI's own ceiling (128) are refused, not held for less.
    fn check_choices(&self) -> Result<(), RelayError> {
        for (name, value) in [("n", self.n), ("best_of", self.best_of)] {
            if value.is_some_and(|v| !(1..=MAX_CHOICES).contains(&v)) {
                return Err(RelayError::InvalidRequest(format!(
                    "'{name}' must be between 1 and {MAX_CHOICES}"
                )));
            }
        }
        Ok(())
    }

    /// How many answers the upstream generates (and bills): `n`, or `best_of` when
    /// larger.
    pub fn choices(&self) -> i64 {
        self.n.max(self.best_of).unwrap_or(1).clamp(1, MAX_CHOICES)
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client itself asked for the usage chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .value
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// A Gemini request's head: the model and the method come from the path, the
    /// output limit from `generationConfig.maxOutputTokens`.
    pub fn gemini(body: &[u8], model: &str, stream: bool) -> Result<Self, RelayError> {
        // Google accepts snake_case as well; both spellings at once are refused
        // (serde's duplicate field), so the hold reads what the upstream will.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            #[serde(default)]
            contents: Option<IgnoredAny>,
            /// Google's `GenerateContentRequest.model`, as `models/{model}`.
            #[serde(default)]
            model: Option<String>,
            #[serde(default, alias = "generation_config")]
            generation_config: Option<GenerationConfig>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct GenerationConfig {
            #[serde(default, alias = "max_output_tokens")]
            max_output_tokens: Option<i64>,
            #[serde(default, alias = "candidate_count")]
            candidate_count: Option<i64>,
        }
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            RelayError::InvalidRequest(format!("request body is not valid JSON: {e}"))
        })?;
        crate::ambiguity::check_gemini(body)?;
        if let Some(named) = &b.model
            && named.strip_prefix("models/").unwrap_or(named) != model
        {
            return Err(RelayError::InvalidRequest(
                "the body's 'model' differs from the model in the path".into(),
            ));
        }
        if b.contents.is_none() {
            return Err(RelayError::InvalidRequest("'contents' is required".into()));
        }
        if model.is_empty() {
            return Err(RelayError::InvalidRequest(
                "the model is missing from the path".into(),
            ));
        }
        let config = b.generation_config;
        Ok(ChatHead {
            model: Some(model.to_owned()),
            stream: Some(stream),
            max_tokens: Named::given(config.as_ref().and_then(|c| c.max_output_tokens)),
            max_completion_tokens: Named::given(None),
            max_output_tokens: Named::given(None),
            stream_options: Named::given(None),
            n: config.as_ref().and_then(|c| c.candidate_count),
            best_of: None,
            background: None,
            proto: Protocol::GeminiGenerate,
            messages: None,
            prompt: None,
            input: None,
        })
        .and_then(|head| head.check_choices().map(|()| head))
    }

    /// A form upload's head, from its `model` and `n` fields.
    pub fn form(content_type: Option<&str>, body: &[u8]) -> Result<Self, RelayError> {
        let boundary = crate::multipart::boundary(content_type.unwrap_or_default())?;
        let fields = crate::multipart::fields(body, &boundary)?;
        crate::ambiguity::check_form(&fields)?;
        let text = |name: &str| crate::multipart::text_field(body, &fields, name);
        let model = text("model")
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| RelayError::InvalidRequest("'model' is required".into()))?;
        if !fields.iter().any(|f| f.filename.is_some()) {
            return Err(RelayError::InvalidRequest(
                "the form has no file to work on".into(),
            ));
        }
        let n =
            match text("n") {
                None => None,
                Some(n) => Some(n.trim().parse::<i64>().map_err(|_| {
                    RelayError::InvalidRequest("'n' must be a whole number".into())
                })?),
            };
        // A streamed transcription (SSE) would carry no usage the relay can meter.
        if text("stream").is_some_and(|s| s.trim().eq_ignore_ascii_case("true")) {
            return Err(RelayError::InvalidRequest(
                "'stream' is not supported on this endpoint".into(),
            ));
        }
        let head = ChatHead {
            model: Some(model.to_owned()),
            stream: None,
            max_tokens: Named::given(None),
            max_completion_tokens: Named::given(None),
            max_output_tokens: Named::given(None),
            stream_options: Named::given(None),
            n,
            best_of: None,
            background: None,
            proto: Protocol::OpenAiImageEdits,
            messages: None,
            prompt: None,
            input: None,
        };
        head.check_choices()?;
        Ok(head)
    }

    /// The most output tokens the client allows, if it said: the largest of its
    /// protocol's own limit fields (whichever one an upstream or a converter reads, it
    /// is covered); fields of other protocols do not count.
    pub fn max_output(&self) -> Option<i64> {
        let limit = match self.proto {
            Protocol::OpenAiChat => self.max_completion_tokens.value.max(self.max_tokens.value),
            Protocol::OpenAiResponses => self.max_output_tokens.value,
            _ => self.max_tokens.value,
        };
        limit.filter(|n| *n > 0)
    }
}

/// The body to send upstream: the client's bytes untouched when nothing must change,
/// else with the mapped model and (for streams) `stream_options.include_usage`.
pub fn upstream_body(
    proto: Protocol,
    raw: &Bytes,
    head: &ChatHead,
    upstream_model: &str,
) -> Result<Bytes, RelayError> {
    if proto == Protocol::GeminiGenerate {
        // The model is named in the path; the body goes as the client sent it.
        return Ok(raw.clone());
    }
    // Only OpenAI streams need asking for usage; Anthropic streams always carry it.
    let streams_usage = matches!(
        proto,
        Protocol::OpenAiChat | Protocol::OpenAiCompletions | Protocol::OpenAiFim
    );
    let need_usage = streams_usage && head.is_stream() && !head.wants_stream_usage();
    if upstream_model == head.model() && !need_usage {
        return Ok(raw.clone());
    }
    // The common cases edit the client's bytes in place (a large prompt is not parsed
    // into values and written again): a mapped model's name is replaced where it
    // stands, and a stream that names no `stream_options` gets them in front.
    if !need_usage || !head.stream_options.named {
        let renamed = if upstream_model == head.model() {
            Some(raw.clone())
        } else {
            with_model(raw, upstream_model)
        };
        let edited = match renamed {
            Some(body) if need_usage => prepend_member(
                &body,
                format_args!(r#""stream_options":{{"include_usage":true}}"#),
            )
            .ok(),
            other => other,
        };
        if let Some(body) = edited {
            return Ok(body);
        }
    }
    let mut obj: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
        RelayError::InvalidRequest(format!("request body is not a JSON object: {e}"))
    })?;
    obj.insert("model".into(), Value::from(upstream_model));
    if need_usage {
        let opts = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|_| RelayError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clients_own_protocols_limit_fields_count_and_the_largest_wins() {
        let chat = ChatHead::parse(
            br#"{"model":"m","messages":[],"max_tokens":64000,"max_completion_tokens":1,"max_output_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(chat.max_output(), Some(64_000));
        // A Responses field on a chat body is no limit: the relay sets its own.
        let foreign =
            ChatHead::parse(br#"{"model":"m","messages":[],"max_output_tokens":1}"#).unwrap();
        assert_eq!(foreign.max_output(), None);
        let responses = ChatHead::parse_for(
            Protocol::OpenAiResponses,
            br#"{"model":"m","input":"x","max_output_tokens":9,"max_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(responses.max_output(), Some(9));
        let messages = ChatHead::parse_for(
            Protocol::AnthropicMessages,
            br#"{"model":"m","messages":[],"max_tokens":32000,"max_completion_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(messages.max_output(), Some(32_000));
    }

    #[test]
    fn best_of_counts_as_choices_and_more_than_128_is_refused() {
        let head = ChatHead::parse_for(
            Protocol::OpenAiCompletions,
            br#"{"model":"m","prompt":"x","best_of":20,"n":2}"#,
        )
        .unwrap();
        assert_eq!(head.choices(), 20);
        for body in [
            &br#"{"model":"m","messages":[],"n":129}"#[..],
            br#"{"model":"m","prompt":"x","best_of":500}"#,
            br#"{"model":"m","messages":[],"n":0}"#,
        ] {
            let proto = if body.windows(6).any(|w| w == b"prompt") {
                Protocol::OpenAiCompletions
            } else {
                Protocol::OpenAiChat
            };
            assert!(ChatHead::parse_for(proto, body).is_err());
        }
    }

    #[test]
    fn a_snake_case_gemini_body_is_held_for_its_candidates_and_limit() {
        let head = ChatHead::gemini(
            br#"{"contents":[],"generation_config":{"candidate_count":8,"max_output_tokens":500}}"#,
            "gemini-2.5-pro",
            false,
        )
        .unwrap();
        assert_eq!((head.choices(), head.max_output()), (8, Some(500)));
        // Both spellings at once: refused, not read one way here and another upstream.
        assert!(
            ChatHead::gemini(
                br#"{"contents":[],"generationConfig":{},"generation_config":{"candidate_count":8}}"#,
                "g",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn a_request_without_model_or_messages_names_the_missing_field() {
        let e = ChatHead::parse(br#"{"messages":[]}"#).unwrap_err();
        assert!(e.to_string().contains("'model'"));
        let e = ChatHead::parse(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("'messages'"));
        assert!(ChatHead::parse(b"{nope").is_err());
    }

    #[test]
    fn a_responses_request_in_the_background_is_refused_naming_the_field() {
        let parse = |body: &str| ChatHead::parse_for(Protocol::OpenAiResponses, body.as_bytes());
        let e = parse(r#"{"model":"m","input":"hi","background":true}"#).unwrap_err();
        assert!(e.to_string().contains("'background'"), "{e}");
        assert!(parse(r#"{"model":"m","input":"hi","background":"yes"}"#).is_err());
        assert!(parse(r#"{"model":"m","input":"hi","background":false}"#).is_ok());
        assert!(parse(r#"{"model":"m","input":"hi","background":null}"#).is_ok());
    }

    #[test]
    fn a_gemini_body_must_name_the_paths_model_if_it_names_one() {
        let body = |model: &str| {
            format!(
                r#"{{"contents":[],"model":"{model}","generationConfig":{{"maxOutputTokens":9}}}}"#
            )
        };
        let head = ChatHead::gemini(body("models/g-1").as_bytes(), "g-1", false).unwrap();
        assert_eq!((head.model(), head.max_output()), ("g-1", Some(9)));
        assert!(ChatHead::gemini(body("g-1").as_bytes(), "g-1", false).is_ok());
        let e = ChatHead::gemini(body("models/g-pro").as_bytes(), "g-1", false).unwrap_err();
        assert!(e.to_string().contains("'model'"), "{e}");
        let shadowed =
            br#"{"contents":[],"generationConfig":{"maxOutputTokens":9,"MaxOutputTokens":99}}"#;
        assert!(ChatHead::gemini(shadowed, "g-1", false).is_err());
    }

    #[test]
    fn the_body_passes_untouched_when_nothing_changes() {
        let raw = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let head = ChatHead::parse(&raw).unwrap();
        assert_eq!(
            upstream_body(Protocol::OpenAiChat, &raw, &head, "m").unwrap(),
            raw
        );
    }

    #[test]
    fn mapping_and_stream_usage_are_the_only_edits() {
        let raw = Bytes::from_static(br#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.5}"#);
        let head = ChatHead::parse(&raw).unwrap();
        let out: Value = serde_json::from_slice(
            &upstream_body(Protocol::OpenAiChat, &raw, &head, "real").unwrap(),
        )
        .unwrap();
        assert_eq!(out["model"], "real");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_stream_that_names_no_stream_options_is_asked_for_usage_without_its_bytes_rewritten() {
        let read = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
        let text = "{ \"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"\\u4f60 1e400\"}],\"x\":1.50}";
        let raw = Bytes::from(text.to_owned());
        let head = ChatHead::parse(&raw).unwrap();
        let out = upstream_body(Protocol::OpenAiChat, &raw, &head, "m").unwrap();
        assert!(
            out.ends_with(&text.as_bytes()[1..]),
            "the client's bytes follow as sent"
        );
        assert_eq!(read(&out)["stream_options"]["include_usage"], true);
        let mut expected = read(&raw);
        expected["stream_options"] = serde_json::json!({"include_usage": true});
        assert_eq!(read(&out), expected);
        // Named (null, or without include_usage): merged as before.
        for named in [
            r#"{"model":"m","stream":true,"messages":[],"stream_options":null}"#,
            r#"{"model":"m","stream":true,"messages":[],"stream_options":{}}"#,
        ] {
            let raw = Bytes::from(named);
            let head = ChatHead::parse(&raw).unwrap();
            let out = read(&upstream_body(Protocol::OpenAiChat, &raw, &head, "m").unwrap());
            assert_eq!(
                out["stream_options"],
                serde_json::json!({"include_usage": true})
            );
            assert!(matches!(&out, Value::Object(o) if o.len() == 4), "{out}");
        }
    }

    #[test]
    fn a_mapped_model_is_renamed_where_it_stands_and_nothing_else_moves() {
        let read = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
        // (body, the model's value as written, whether it streams)
        for (text, written, stream) in [
            (
                r#"{"messages":[{"role":"user","content":"say \"model\""}],"model" : "alias","n":1}"#,
                r#""alias","n""#,
                false,
            ),
            (
                r#"{"model":"ali\u0061s","messages":[],"metadata":{"model":"alias"}}"#,
                r#""ali\u0061s""#,
                false,
            ),
            (
                r#"{"model":"alias","messages":[],"stream":true}"#,
                r#""alias""#,
                true,
            ),
        ] {
            let raw = Bytes::from(text.to_owned());
            let head = ChatHead::parse(&raw).unwrap();
            assert_eq!(head.model(), "alias");
            let out = upstream_body(Protocol::OpenAiChat, &raw, &head, "real \"one\"").unwrap();
            let mut expected = read(&raw);
            expected["model"] = Value::from("real \"one\"");
            if stream {
                expected["stream_options"] = serde_json::json!({"include_usage": true});
            }
            assert_eq!(read(&out), expected, "{text}");
            // Byte for byte: the value replaced where it stood, every other byte kept.
            let at = text.find(written).unwrap();
            let value_len = written.find(",\"").unwrap_or(written.len());
            let renamed = format!(
                "{}{}{}",
                &text[..at],
                r#""real \"one\"""#,
                &text[at + value_len..]
            );
            let renamed = if stream {
                renamed.replacen('{', r#"{"stream_options":{"include_usage":true},"#, 1)
            } else {
                renamed
            };
            assert_eq!(String::from_utf8(out.to_vec()).unwrap(), renamed);
        }
    }

    #[test]
    fn a_member_goes_first_in_an_object_empty_or_not_and_nothing_else_is_one() {
        let put =
            |b: &'static [u8]| prepend_member(&Bytes::from_static(b), format_args!(r#""k":1"#));
        assert_eq!(put(b"{}").unwrap(), Bytes::from_static(br#"{"k":1}"#));
        assert_eq!(put(b" { } ").unwrap(), Bytes::from_static(br#" {"k":1 } "#));
        assert_eq!(
            put(br#"{"a":2}"#).unwrap(),
            Bytes::from_static(br#"{"k":1,"a":2}"#)
        );
        assert!(put(b"[1]").is_err());
        assert!(put(b"").is_err());
    }
}
