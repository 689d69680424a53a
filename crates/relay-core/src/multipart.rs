//! Just enough of `multipart/form-data` for the relay: find the small text fields it
//! routes and meters by (`model`, `n`, `response_format`), measure the file parts, and
//! swap the model for a mapped name. The body itself is forwarded as received.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use crate::RelayError;

/// One part of a form: its name, file name if it is a file, and where its content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub filename: Option<String>,
    pub start: usize,
    pub end: usize,
}

impl Field {
    /// The content as text (file parts and non-UTF-8 content give `None`).
    pub fn text<'a>(&self, body: &'a [u8]) -> Option<&'a str> {
        if self.filename.is_some() {
            return None;
        }
        std::str::from_utf8(body.get(self.start..self.end)?).ok()
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The boundary of a `multipart/form-data` content type. A content type that is not
/// `multipart/form-data`, or whose parameters an upstream could read otherwise (two
/// `boundary` parameters: Python takes the last, we took the first), is refused.
pub fn boundary(content_type: &str) -> Result<String, RelayError> {
    let (kind, params) = header_value(content_type).map_err(bad_content_type)?;
    if kind != "multipart/form-data" {
        return Err(RelayError::InvalidRequest(
            "this endpoint takes multipart/form-data".into(),
        ));
    }
    params
        .into_iter()
        .find_map(|(k, v)| (k == "boundary").then_some(v))
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| bad_content_type("no usable boundary"))
}

fn bad_content_type(message: &str) -> RelayError {
    RelayError::InvalidRequest(format!("malformed multipart content type: {message}"))
}

fn bad(message: &str) -> RelayError {
    RelayError::InvalidRequest(format!("malformed multipart body: {message}"))
}

/// Every part of `body`.
pub fn fields(body: &[u8], boundary: &str) -> Result<Vec<Field>, RelayError> {
    let delimiter = format!("--{boundary}");
    let next_part = format!("\r\n--{boundary}");
    let first = memmem::find(body, delimiter.as_bytes()).ok_or_else(|| bad("no boundary"))?;
    let mut at = first + delimiter.len();
    let mut out = Vec::new();
    loop {
        let rest = body.get(at..).ok_or_else(|| bad("truncated"))?;
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        let rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| bad("a boundary must end its line"))?;
        at += 2;
        let head_len =
            memmem::find(rest, b"\r\n\r\n").ok_or_else(|| bad("a part has no headers"))?;
        let head = std::str::from_utf8(&rest[..head_len]).map_err(|_| bad("part headers"))?;
        let (name, filename) = disposition(head).map_err(bad)?;
        let start = at + head_len + 4;
        let content = body.get(start..).ok_or_else(|| bad("truncated"))?;
        let len = memmem::find(content, next_part.as_bytes())
            .ok_or_else(|| bad("the closing boundary is missing"))?;
        out.push(Field {
            name,
            filename,
            start,
            end: start + len,
        });
        at = start + len + next_part.len();
        if out.len() > 1000 {
            return Err(bad("too many parts"));
        }
    }
}

/// `name` and `filename` from the part's one `Content-Disposition: form-data; …`
/// header. Anything Go's or Python's form parsers could read otherwise is refused: a
/// folded or malformed header line, two dispositions, another disposition type, and
/// the parameters [`header_value`] refuses.
fn disposition(head: &str) -> Result<(String, Option<String>), &'static str> {
    let mut found = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) || line.contains(['\r', '\n']) {
            return Err("a folded part header");
        }
        let (header, value) = line
            .split_once(':')
            .ok_or("a part header without a colon")?;
        if header.trim() != header {
            return Err("a part header name with spaces");
        }
        if header.eq_ignore_ascii_case("content-disposition") && found.replace(value).is_some() {
            return Err("a part with two Content-Disposition headers");
        }
    }
    let (kind, params) = header_value(found.ok_or("a part has no Content-Disposition")?)?;
    if kind != "form-data" {
        return Err("a part that is not form-data");
    }
    let mut name = None;
    let mut filename = None;
    for (key, value) in params {
        match key.as_str() {
            "name" => name = Some(value),
            "filename" => filename = Some(value),
            _ => {}
        }
    }
    Ok((name.ok_or("a part has no name")?, filename))
}

/// A header value's parameters: (key in lower case, value unquoted), in order.
type Params = Vec<(String, String)>;

/// A header value's type (lower case) and its parameters (keys in lower case, values
/// unquoted), parsed as Go's `mime.ParseMediaType` does: `;` inside a quoted string is
/// text, and a trailing `;` is allowed. Refused, because parsers disagree on them:
/// RFC 2231 parameters (`name*`, `name*0`), a parameter given twice, escapes other than
/// `\"` and `\\`, and anything that is not a token or a quoted string.
fn header_value(value: &str) -> Result<(String, Params), &'static str> {
    let (kind, mut rest) = value.split_once(';').unwrap_or((value, ""));
    let kind = kind.trim().to_ascii_lowercase();
    if kind.is_empty() {
        return Err("no type before the parameters");
    }
    let mut params: Params = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok((kind, params));
        }
        let (key, value, after) = parameter(rest)?;
        if key.contains('*') {
            return Err("RFC 2231 parameters (name*) are not accepted");
        }
        if params.iter().any(|(k, _)| *k == key) {
            return Err("a parameter is given twice");
        }
        params.push((key, value));
        rest = after.trim_start();
        match rest.strip_prefix(';') {
            Some(next) => rest = next,
            None if rest.is_empty() => return Ok((kind, params)),
            None => return Err("text after a parameter's value"),
        }
    }
}

/// One `key = value` at the start of `s`: the key in lower case, the value unquoted,
/// and what follows the value.
fn parameter(s: &str) -> Result<(String, String, &str), &'static str> {
    let key_len = s.find(|c| !is_token(c)).unwrap_or(s.len());
    let (key, rest) = s.split_at(key_len);
    if key.is_empty() {
        return Err("a parameter without a name");
    }
    let rest = rest
        .trim_start()
        .strip_prefix('=')
        .ok_or("a parameter without a value")?
        .trim_start();
    let (value, after) = match rest.strip_prefix('"') {
        Some(quoted) => quoted_string(quoted)?,
        None => {
            let len = rest.find(|c| !is_token(c)).unwrap_or(rest.len());
            if len == 0 {
                return Err("a parameter with an empty value");
            }
            (rest[..len].to_owned(), &rest[len..])
        }
    };
    Ok((key.to_ascii_lowercase(), value, after))
}

/// The text of a quoted string whose opening quote is gone, and what follows it.
fn quoted_string(s: &str) -> Result<(String, &str), &'static str> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                _ => return Err("a quoted string with an escape parsers read differently"),
            },
            c => out.push(c),
        }
    }
    Err("a quoted string without its closing quote")
}

/// Whether `c` may stand in a token (RFC 9110: visible ASCII but the separators).
fn is_token(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c)
}

/// The text of the first field called `name`.
pub fn text_field<'a>(body: &'a [u8], fields: &[Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.text(body))
}

/// `body` with the content of text field `name` replaced by `value`.
pub fn replace_text(body: &Bytes, fields: &[Field], name: &str, value: &str) -> Bytes {
    let Some(f) = fields
        .iter()
        .find(|f| f.name == name && f.filename.is_none())
    else {
        return body.clone();
    };
    let mut out = BytesMut::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..f.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[f.end..]);
    out.freeze()
}

/// `body` without its text field `name` (the client's own fields that must not reach
/// an upstream, such as a callback URL).
pub fn remove_text(body: &Bytes, fields: &[Field], boundary: &str, name: &str) -> Bytes {
    let delimiter = format!("--{boundary}");
    let Some(f) = fields
        .iter()
        .find(|f| f.name == name && f.filename.is_none())
    else {
        return body.clone();
    };
    let (Some(start), true) = (
        memmem::rfind(&body[..f.start], delimiter.as_bytes()),
        body.get(f.end..f.end + 2) == Some(b"\r\n".as_slice()),
    ) else {
        return body.clone();
    };
    let mut out = BytesMut::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&body[f.end + 2..]);
    out.freeze()
}

/// `body` with one more text field `name` = `value`, before the closing delimiter.
pub fn append_text(body: &Bytes, boundary: &str, name: &str, value: &str) -> Bytes {
    let closing = format!("--{boundary}--");
    let Some(at) = memmem::rfind(body, closing.as_bytes()) else {
        return body.clone();
    };
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
    );
    let mut out = BytesMut::with_capacity(body.len() + part.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3\x00\x01\r\n--XyZ--\r\n";

    #[test]
    fn a_text_field_can_be_removed_and_another_appended_leaving_a_well_formed_form() {
        let body = Bytes::from_static(BODY.as_bytes());
        let f = fields(&body, "XyZ").unwrap();
        let without = remove_text(&body, &f, "XyZ", "model");
        let left = fields(&without, "XyZ").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].filename.as_deref(), Some("a.mp3"));
        let with = append_text(&without, "XyZ", "model", "sora-2");
        let now = fields(&with, "XyZ").unwrap();
        assert_eq!(now.len(), 2);
        assert_eq!(text_field(&with, &now, "model"), Some("sora-2"));
        assert_eq!(now[0].len(), 5);
    }

    #[test]
    fn text_fields_and_file_parts_are_found_and_the_model_can_be_swapped() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ").unwrap(),
            "XyZ"
        );
        let body = Bytes::from_static(BODY.as_bytes());
        let f = fields(&body, "XyZ").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(text_field(&body, &f, "model"), Some("whisper-1"));
        assert_eq!(f[1].filename.as_deref(), Some("a.mp3"));
        assert_eq!(f[1].len(), 5);
        let swapped = replace_text(&body, &f, "model", "whisper-large");
        let f2 = fields(&swapped, "XyZ").unwrap();
        assert_eq!(text_field(&swapped, &f2, "model"), Some("whisper-large"));
        assert_eq!(&swapped[f2[1].start..f2[1].end], b"ID3\x00\x01");
    }

    /// The parts of a one-part form whose `Content-Disposition` value is `disposition`.
    fn parts_of(disposition: &str) -> Result<Vec<Field>, RelayError> {
        let body = format!("--B\r\nContent-Disposition: {disposition}\r\n\r\nv\r\n--B--\r\n");
        fields(body.as_bytes(), "B")
    }

    #[test]
    fn quoted_names_are_read_as_go_and_python_read_them() {
        let name = |d: &str| parts_of(d).unwrap()[0].name.clone();
        assert_eq!(name(r#"form-data; name="q;name=model""#), "q;name=model");
        assert_eq!(name(r#"form-data; name="a\"b\\c""#), "a\"b\\c");
        assert_eq!(name("form-data; name=model"), "model");
        assert_eq!(name(r#"Form-Data ; NAME = "model" ;"#), "model");
        let f = &parts_of(r#"form-data; filename="x;y.png"; name="image""#).unwrap()[0];
        assert_eq!(
            (f.name.as_str(), f.filename.as_deref()),
            ("image", Some("x;y.png"))
        );
    }

    #[test]
    fn dispositions_an_upstream_could_read_otherwise_are_refused() {
        for d in [
            "form-data; name*=UTF-8''model",
            "form-data; name=\"x\"; name*=UTF-8''model",
            "form-data; name*0=mo; name*1=del",
            "form-data; name=\"x\"; filename*=UTF-8''a.png",
            r#"form-data; name="prompt"; name="model""#,
            r#"form-data; name="model"; NAME="n""#,
            r#"attachment; name="model""#,
            r#"name="model""#,
            r#"form-data; name="model"#,
            r#"form-data; name="model"x"#,
            "form-data; name",
        ] {
            assert!(parts_of(d).is_err(), "{d}");
        }
        // A part with two dispositions, or a folded header line.
        let two = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nv\r\n--B--\r\n";
        assert!(fields(two.as_bytes(), "B").is_err());
        let folded =
            "--B\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\nv\r\n--B--\r\n";
        assert!(fields(folded.as_bytes(), "B").is_err());
    }

    #[test]
    fn a_content_type_with_two_boundaries_or_a_bad_parameter_is_refused() {
        assert_eq!(
            boundary(r#"multipart/form-data; charset=utf-8; boundary="a;b""#).unwrap(),
            "a;b"
        );
        for ct in [
            "multipart/form-data; boundary=A; boundary=B",
            "multipart/form-data; boundary=A; Boundary=\"B\"",
            "multipart/form-data; boundary*=UTF-8''A",
            "multipart/form-data; boundary=\"A",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/mixed; boundary=A",
            "application/json",
        ] {
            assert!(boundary(ct).is_err(), "{ct}");
        }
    }

    #[test]
    fn a_body_without_its_closing_boundary_is_refused() {
        assert!(fields(&BODY.as_bytes()[..60], "XyZ").is_err());
        assert!(fields(b"nothing here", "XyZ").is_err());
    }
}
