//! Server-sent events framing: splits a byte stream into whole events, keeping each
//! event's exact bytes so it can be forwarded untouched. Written here rather than taken
//! from a crate because forwarding needs the raw bytes, not a re-serialised event.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Accumulates bytes and yields complete events (each ending with its blank line).
#[derive(Default)]
pub struct SseFramer {
    buf: BytesMut,
}

/// An event's `data:` payload lines joined with `\n` (empty when it has none). An event
/// with one `data:` line (every event of the providers' streams) is borrowed where it
/// stands: no copy of the payload, and one UTF-8 check of the event instead of a lossy
/// decode; invalid UTF-8 is replaced, as before.
pub fn event_data(event: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(event) {
        Ok(text) => data_lines(text),
        Err(_) => Cow::Owned(data_lines(&String::from_utf8_lossy(event)).into_owned()),
    }
}

fn data_lines(text: &str) -> Cow<'_, str> {
    let mut lines = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|rest| rest.strip_prefix(' ').unwrap_or(rest));
    let Some(first) = lines.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(first);
    for line in std::iter::once(second).chain(lines) {
        out.push('\n');
        out.push_str(line);
    }
    Cow::Owned(out)
}

impl SseFramer {
    /// Adds a chunk and returns every event it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = find_event_end(&self.buf) {
            events.push(self.buf.split_to(end).freeze());
        }
        events
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.buf.split().freeze();
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// A stream of whole SSE events as one JSON array of their `data:` payloads, each
/// element sent as its event arrives (`[a`, `,\r\n b`, …, `]`): how Gemini streams
/// `:streamGenerateContent` without `?alt=sse`. Events without data (and `[DONE]`)
/// are skipped; an error ends the stream where it is.
pub fn json_array<S>(events: S) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
{
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let started = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&started);
    let elements = events.filter_map(move |item| {
        let out = match item {
            Err(e) => Some(Err(e)),
            Ok(event) => {
                let data = event_data(&event);
                let data = data.trim();
                if data.is_empty() || data == "[DONE]" {
                    None
                } else {
                    let sep = if seen.swap(true, Ordering::Relaxed) {
                        ",\r\n"
                    } else {
                        "["
                    };
                    Some(Ok(Bytes::from(format!("{sep}{data}"))))
                }
            }
        };
        futures_util::future::ready(out)
    });
    let end = futures_util::stream::once(futures_util::future::lazy(move |_| {
        Ok(Bytes::from_static(if started.load(Ordering::Relaxed) {
            b"]"
        } else {
            b"[]"
        }))
    }));
    elements.chain(end)
}

/// The index just past the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', &buf[from..]) {
        let i = from + at;
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => {
                return Some(i + 3);
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => {}
        }
        from = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_out_whole_and_byte_exact() {
        let mut f = SseFramer::default();
        assert!(f.push(b"data: {\"a\"").is_empty());
        let ev = f.push(b":1}\n\ndata: [DO");
        assert_eq!(ev, vec![Bytes::from_static(b"data: {\"a\":1}\n\n")]);
        let ev = f.push(b"NE]\n\n");
        assert_eq!(event_data(&ev[0]), "[DONE]");
        assert!(f.finish().is_none());
    }

    #[tokio::test]
    async fn events_become_one_json_array_element_by_element() {
        use futures_util::StreamExt;
        let events = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"data: {\"a\":1}\r\n\r\n")),
            Ok(Bytes::from_static(b": keep-alive\n\n")),
            Ok(Bytes::from_static(b"data: {\"a\":2}\n\n")),
        ]);
        let parts: Vec<Bytes> = json_array(events).map(Result::unwrap).collect().await;
        assert_eq!(parts.len(), 3);
        let whole: Vec<u8> = parts.concat();
        let v: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"a": 2}]));
        let none = futures_util::stream::iter(Vec::<Result<Bytes, std::io::Error>>::new());
        let parts: Vec<Bytes> = json_array(none).map(Result::unwrap).collect().await;
        assert_eq!(parts.concat(), b"[]".to_vec());
    }

    #[test]
    fn crlf_framing_and_multi_line_data_are_understood() {
        let mut f = SseFramer::default();
        let ev = f.push(b"event: x\r\ndata: a\r\ndata: b\r\n\r\nrest");
        assert_eq!(ev.len(), 1);
        assert_eq!(event_data(&ev[0]), "a\nb");
        assert_eq!(f.finish().unwrap(), Bytes::from_static(b"rest"));
    }

    /// What `event_data` and `find_event_end` did before they borrowed and searched
    /// with memchr: the reference they are checked against.
    fn data_as_before(event: &[u8]) -> String {
        let text = String::from_utf8_lossy(event);
        let mut out = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("data:") {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
        }
        out
    }

    fn end_as_before(buf: &[u8]) -> Option<usize> {
        (0..buf.len()).find_map(|i| match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => Some(i + 2),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => {
                Some(i + 3)
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => Some(i + 2),
            _ => None,
        })
    }

    #[test]
    fn an_events_data_reads_as_it_did_and_a_single_line_is_not_copied() {
        let events: [&[u8]; 12] = [
            b"data: {\"a\":1}\n\n",
            b"data:{\"a\":1}\r\n\r\n",
            b"event: message_start\ndata: {\"type\":\"x\"}\n\n",
            b": keep-alive\n\n",
            b"data: a\ndata: b\ndata:c\n\n",
            b"data: \xff\xfe broken\n\n",
            b"data: a\n\xffdata: b\n\n",
            b"data:\n\n",
            b"id: 7\r\nretry: 10\r\n\r\n",
            b"data: [DONE]\n\n",
            b"data: a\rdata: b\r\r",
            b"",
        ];
        for event in events {
            let data = event_data(event);
            assert_eq!(
                data,
                data_as_before(event),
                "{:?}",
                String::from_utf8_lossy(event)
            );
        }
        assert!(matches!(
            event_data(b"data: {\"a\":1}\n\n"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            event_data(b"event: x\ndata: [DONE]\n\n"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn an_events_end_is_found_where_the_byte_by_byte_search_found_it() {
        let pieces: [&[u8]; 8] = [
            b"data: x", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b"{}", b"\xff",
        ];
        // Every sequence of up to five pieces: blank lines of each kind, split and not.
        let mut buf = Vec::new();
        let mut checked = 0;
        for n in 0..=5_u32 {
            for mut code in 0..8_usize.pow(n) {
                buf.clear();
                for _ in 0..n {
                    buf.extend_from_slice(pieces[code % 8]);
                    code /= 8;
                }
                assert_eq!(find_event_end(&buf), end_as_before(&buf), "{buf:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 1 + 8 + 64 + 512 + 4096 + 32768);
    }
}
