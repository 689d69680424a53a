//! Whose fault a failed try at a channel is, decided from the provider's structured
//! error fields — OpenAI `error.type` / `error.code`, Anthropic `error.type`, Gemini
//! `error.status` and the `reason` of its `google.rpc.ErrorInfo` details — and never
//! from message text, which upstreams fill with the customer's own words.

use serde_json::Value;

use crate::upstream::{Failure, upstream_message};

/// Who a failed try blames, and so what the relay does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request caused it (400, 404, 413, 422, a 403 about something the request
    /// named): the answer goes back to the client; no channel or key is blamed.
    Request,
    /// The key may be dead: try another key or channel; the key is disabled only when
    /// one test request with it confirms.
    Key(KeyTrouble),
    /// The channel failed (429, 5xx, timeout, broken connection): try another one,
    /// and count it on the channel's breaker.
    Channel,
    /// The answer was over the size limit: the request's problem, not retried, not
    /// counted against the channel.
    TooLarge,
}

/// Why a key looks dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTrouble {
    /// The provider refused the key itself (401, or a 400/403 whose fields say so).
    Rejected,
    /// The key's account is out of credit or quota.
    OutOfCredit,
}

impl KeyTrouble {
    fn describe(self) -> &'static str {
        match self {
            KeyTrouble::Rejected => "key rejected",
            KeyTrouble::OutOfCredit => "out of credit",
        }
    }
}

/// Values of `error.type`, `error.code`, `error.status` or an `ErrorInfo` reason that
/// say the key itself is refused: OpenAI `invalid_api_key` / `account_deactivated`,
/// Anthropic `authentication_error` / `permission_error`, Google `UNAUTHENTICATED` and
/// the `googleapis.com` reasons about the key or its project.
const KEY_REJECTED: &[&str] = &[
    "invalid_api_key",
    "account_deactivated",
    "authentication_error",
    "permission_error",
    "UNAUTHENTICATED",
    "API_KEY_INVALID",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
    "SERVICE_DISABLED",
    "CONSUMER_SUSPENDED",
    "CONSUMER_INVALID",
];

/// Values that say the key's account has no credit left: OpenAI `insufficient_quota`
/// (type and code) and `billing_hard_limit_reached`, Anthropic `billing_error`, Google
/// `BILLING_DISABLED`.
const KEY_OUT_OF_CREDIT: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_error",
    "BILLING_DISABLED",
];

/// Values on a 403 that blame where the channel calls from, not the request or key
/// (OpenAI's unsupported region).
const CHANNEL_FORBIDDEN: &[&str] = &["unsupported_country_region_territory"];

/// Values on a 404 that blame the channel's own configuration, not what the request
/// named: Azure's deployment (the channel's model mapping) does not exist.
const CHANNEL_NOT_FOUND: &[&str] = &["DeploymentNotFound"];

/// The status each provider's error `type`, `code` or Google `status` stands for, for
/// an error that arrives as a stream's first event instead of as a status.
const IMPLIED_STATUS: &[(&str, u16)] = &[
    ("invalid_request_error", 400),
    ("context_length_exceeded", 400),
    ("INVALID_ARGUMENT", 400),
    ("FAILED_PRECONDITION", 400),
    ("OUT_OF_RANGE", 400),
    ("authentication_error", 401),
    ("invalid_api_key", 401),
    ("UNAUTHENTICATED", 401),
    ("billing_error", 402),
    ("permission_error", 403),
    ("PERMISSION_DENIED", 403),
    ("not_found_error", 404),
    ("NOT_FOUND", 404),
    ("request_too_large", 413),
    ("rate_limit_error", 429),
    ("rate_limit_exceeded", 429),
    ("insufficient_quota", 429),
    ("RESOURCE_EXHAUSTED", 429),
    ("api_error", 500),
    ("server_error", 500),
    ("INTERNAL", 500),
    ("UNAVAILABLE", 503),
    ("DEADLINE_EXCEEDED", 504),
    ("overloaded_error", 529),
];

/// What a stream's opening error event (`data`) means, as the error status it stands
/// for: Google's numeric `error.code`, else the status its `code`, `type` or Google
/// `status` implies, else 502 (an upstream failure nobody named: the channel's).
pub fn opening_error(data: String) -> Failure {
    let body = bytes::Bytes::from(data);
    let fields = ErrorFields::parse(&body);
    let numeric = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(Value::as_u64))
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c));
    let named = || {
        [&fields.code, &fields.kind, &fields.status]
            .into_iter()
            .flatten()
            .find_map(|v| {
                IMPLIED_STATUS
                    .iter()
                    .find(|(name, _)| name == v)
                    .map(|(_, status)| *status)
            })
    };
    let status = numeric.or_else(named).unwrap_or(502);
    Failure::Status { status, body }
}

/// The structured fields of an upstream error body, whichever provider sent it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// OpenAI / Anthropic `error.type`.
    pub kind: Option<String>,
    /// OpenAI `error.code` (Google's numeric `code` is the HTTP status, not kept).
    pub code: Option<String>,
    /// Google `error.status` (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, …).
    pub status: Option<String>,
    /// Google `error.details[]` reasons of `google.rpc.ErrorInfo` entries.
    pub reasons: Vec<String>,
}

impl ErrorFields {
    /// Reads the fields from an error body; empty when it is not JSON.
    pub fn parse(body: &[u8]) -> Self {
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return ErrorFields::default();
        };
        // Gemini's JSON-array streams wrap an error as `[{"error": …}]`.
        if let Value::Array(items) = &mut v {
            v = items.first().cloned().unwrap_or_default();
        }
        let err = match v.get("error").filter(|e| e.is_object()) {
            Some(err) => err,
            // An OpenAI Responses stream's error event carries its fields at the top.
            None if v.get("type").and_then(Value::as_str) == Some("error") => {
                return ErrorFields {
                    code: v.get("code").and_then(Value::as_str).map(str::to_owned),
                    ..ErrorFields::default()
                };
            }
            None => return ErrorFields::default(),
        };
        let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
        let reasons = err
            .get("details")
            .and_then(Value::as_array)
            .map(|details| {
                details
                    .iter()
                    .filter(|d| {
                        d.get("@type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t.ends_with("google.rpc.ErrorInfo"))
                    })
                    .filter_map(|d| d.get("reason").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        ErrorFields {
            kind: text("type"),
            code: text("code"),
            status: text("status"),
            reasons,
        }
    }

    fn values(&self) -> impl Iterator<Item = &str> {
        self.kind
            .iter()
            .chain(&self.code)
            .chain(&self.status)
            .chain(&self.reasons)
            .map(String::as_str)
    }

    fn says_any(&self, list: &[&str]) -> bool {
        self.values().any(|v| list.contains(&v))
    }

    /// What the fields say about the key, if anything.
    fn key_trouble(&self) -> Option<KeyTrouble> {
        if self.says_any(KEY_OUT_OF_CREDIT) {
            Some(KeyTrouble::OutOfCredit)
        } else if self.says_any(KEY_REJECTED) {
            Some(KeyTrouble::Rejected)
        } else {
            None
        }
    }

    /// The most specific field, for an admin reading why a key was disabled.
    fn label(&self) -> Option<&str> {
        self.reasons
            .first()
            .or(self.code.as_ref())
            .or(self.kind.as_ref())
            .or(self.status.as_ref())
            .map(String::as_str)
    }
}

/// Whose fault `failure` is.
pub fn classify(failure: &Failure) -> Fault {
    match failure {
        Failure::Connect | Failure::Broken | Failure::Timeout | Failure::Malformed => {
            Fault::Channel
        }
        Failure::Unconvertible(_) => Fault::Request,
        Failure::TooLarge => Fault::TooLarge,
        Failure::Status { status, body } => classify_status(*status, &ErrorFields::parse(body)),
    }
}

/// Whose fault an error status with these fields is.
pub fn classify_status(status: u16, fields: &ErrorFields) -> Fault {
    if matches!(status, 400 | 401 | 402 | 403 | 429)
        && let Some(trouble) = fields.key_trouble()
    {
        return Fault::Key(trouble);
    }
    match status {
        401 => Fault::Key(KeyTrouble::Rejected),
        402 => Fault::Key(KeyTrouble::OutOfCredit),
        403 if fields.says_any(CHANNEL_FORBIDDEN) => Fault::Channel,
        404 if fields.says_any(CHANNEL_NOT_FOUND) => Fault::Channel,
        400 | 403 | 404 | 413 | 422 => Fault::Request,
        _ => Fault::Channel,
    }
}

/// Why a key looks dead, for the admin (status, the structured field, the upstream's
/// message with URLs and keys redacted).
pub fn key_reason(failure: &Failure, trouble: KeyTrouble) -> String {
    let what = trouble.describe();
    let Failure::Status { status, body } = failure else {
        return format!("{} ({what})", failure.class());
    };
    let fields = ErrorFields::parse(body);
    let message = crate::error::redact(&upstream_message(body, *status));
    match fields.label() {
        Some(label) => format!("upstream answered {status} {label} ({what}): {message}"),
        None => format!("upstream answered {status} ({what}): {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16, body: &'static str) -> Failure {
        Failure::Status {
            status: s,
            body: bytes::Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn key_words_in_a_message_blame_nobody_but_the_request() {
        // Gemini: INVALID_ARGUMENT echoing the customer's text, no key reason.
        let gemini = status(
            400,
            r#"{"error":{"code":400,"message":"Invalid value (API key not valid. API_KEY_INVALID)","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"contents","description":"API_KEY_INVALID"}]}]}}"#,
        );
        assert_eq!(classify(&gemini), Fault::Request);
        let openai = status(
            400,
            r#"{"error":{"message":"'API key not valid' is not valid","type":"invalid_request_error","param":null,"code":"invalid_value"}}"#,
        );
        assert_eq!(classify(&openai), Fault::Request);
        assert_eq!(classify(&status(400, "API_KEY_INVALID")), Fault::Request);
    }

    #[test]
    fn structured_key_errors_of_each_provider_suspect_the_key() {
        let rejected = Fault::Key(KeyTrouble::Rejected);
        let broke = Fault::Key(KeyTrouble::OutOfCredit);
        // Gemini: 400 INVALID_ARGUMENT with an ErrorInfo API_KEY_INVALID.
        let gemini = status(
            400,
            r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
        );
        assert_eq!(classify(&gemini), rejected);
        // OpenAI 401 and 429 insufficient_quota; Anthropic 401, 403 and billing.
        assert_eq!(
            classify(&status(
                401,
                r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#
            )),
            rejected
        );
        assert_eq!(
            classify(&status(
                429,
                r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#
            )),
            broke
        );
        assert_eq!(
            classify(&status(
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#
            )),
            rejected
        );
        assert_eq!(
            classify(&status(
                400,
                r#"{"type":"error","error":{"type":"billing_error","message":"no"}}"#
            )),
            broke
        );
        assert_eq!(classify(&status(401, "")), rejected);
        assert_eq!(classify(&status(402, "")), broke);
    }

    #[test]
    fn a_403_about_a_named_resource_blames_the_request() {
        let cache = status(
            403,
            r#"{"error":{"code":403,"message":"You do not have permission to access the CachedContent x (or it may not exist).","status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(classify(&cache), Fault::Request);
        let blocked = status(
            403,
            r#"{"error":{"code":403,"message":"blocked","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_SERVICE_BLOCKED"}]}}"#,
        );
        assert_eq!(classify(&blocked), Fault::Key(KeyTrouble::Rejected));
        let region = status(
            403,
            r#"{"error":{"message":"Country not supported","type":"request_forbidden","code":"unsupported_country_region_territory"}}"#,
        );
        assert_eq!(classify(&region), Fault::Channel);
    }

    #[test]
    fn rate_limits_server_errors_and_broken_connections_blame_the_channel() {
        assert_eq!(
            classify(&status(
                429,
                r#"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#
            )),
            Fault::Channel
        );
        assert_eq!(
            classify(&status(
                429,
                r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"x"}}"#
            )),
            Fault::Channel
        );
        assert_eq!(classify(&status(500, "")), Fault::Channel);
        assert_eq!(classify(&status(529, "")), Fault::Channel);
        assert_eq!(classify(&Failure::Timeout), Fault::Channel);
        assert_eq!(classify(&Failure::Connect), Fault::Channel);
        assert_eq!(classify(&Failure::TooLarge), Fault::TooLarge);
        for s in [400, 404, 413, 422] {
            assert_eq!(classify(&status(s, "{}")), Fault::Request, "{s}");
        }
    }

    #[test]
    fn an_azure_deployment_that_does_not_exist_blames_the_channel() {
        let missing = status(
            404,
            r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#,
        );
        assert_eq!(classify(&missing), Fault::Channel);
        // A 404 about something the request named still blames the request.
        let named = status(
            404,
            r#"{"error":{"message":"No such file","type":"invalid_request_error","code":null}}"#,
        );
        assert_eq!(classify(&named), Fault::Request);
    }

    fn opening(data: &str) -> (u16, Fault) {
        let failure = opening_error(data.to_owned());
        let Failure::Status { status, .. } = &failure else {
            panic!("not a status: {failure:?}");
        };
        (*status, classify(&failure))
    }

    #[test]
    fn an_error_that_opens_a_stream_is_judged_by_its_fields_like_a_status() {
        // The request's own fault: back to the client with the status it stands for.
        assert_eq!(
            opening(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#
            ),
            (400, Fault::Request)
        );
        assert_eq!(
            opening(r#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#),
            (400, Fault::Request)
        );
        assert_eq!(
            opening(
                r#"{"type":"error","code":"context_length_exceeded","message":"too long","param":null}"#
            ),
            (400, Fault::Request)
        );
        // The key's.
        assert_eq!(
            opening(
                r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#
            ),
            (429, Fault::Key(KeyTrouble::OutOfCredit))
        );
        // The channel's: named overload or server errors, and errors nobody named.
        assert_eq!(
            opening(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            (529, Fault::Channel)
        );
        assert_eq!(
            opening(r#"{"error":{"message":"oops","type":"server_error"}}"#),
            (500, Fault::Channel)
        );
        assert_eq!(opening(r#"{"error":"boom"}"#), (502, Fault::Channel));
    }

    #[test]
    fn a_key_reason_names_the_field_and_hides_secrets() {
        let f = status(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-abc123456789","code":"invalid_api_key"}}"#,
        );
        let reason = key_reason(&f, KeyTrouble::Rejected);
        assert!(reason.contains("401 invalid_api_key"), "{reason}");
        assert!(reason.contains("sk-***"), "{reason}");
    }
}
