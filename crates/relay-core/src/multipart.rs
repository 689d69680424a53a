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

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
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
        let (name, filename) = disposition(head).ok_or_else(|| bad("a part has no name"))?;
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

/// `name` and `filename` from the part's `Content-Disposition: form-data; …` header.
fn disposition(head: &str) -> Option<(String, Option<String>)> {
    let line = head.lines().find(|l| {
        l.split(':')
            .next()
            .is_some_and(|h| h.trim().eq_ignore_ascii_case("content-disposition"))
    })?;
    let params = line.split_once(':')?.1;
    let mut name = None;
    let mut filename = None;
    for p in params.split(';') {
        if let Some((k, v)) = p.trim().split_once('=') {
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(v),
                "filename" => filename = Some(v),
                _ => {}
            }
        }
    }
    Some((name?, filename))
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

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3\x00\x01\r\n--XyZ--\r\n";

    #[test]
    fn text_fields_and_file_parts_are_found_and_the_model_can_be_swapped() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ").as_deref(),
            Some("XyZ")
        );
        assert!(boundary("application/json").is_none());
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

    #[test]
    fn a_body_without_its_closing_boundary_is_refused() {
        assert!(fields(&BODY.as_bytes()[..60], "XyZ").is_err());
        assert!(fields(b"nothing here", "XyZ").is_err());
    }
}
