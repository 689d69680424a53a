//! Server-sent events framing: splits a byte stream into whole events, keeping each
//! event's exact bytes so it can be forwarded untouched. Written here rather than taken
//! from a crate because forwarding needs the raw bytes, not a re-serialised event.

use bytes::{Bytes, BytesMut};

/// Accumulates bytes and yields complete events (each ending with its blank line).
#[derive(Default)]
pub struct SseFramer {
    buf: BytesMut,
}

/// An event's `data:` payload lines joined with `\n` (empty when it has none).
pub fn event_data(event: &[u8]) -> String {
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

/// The index just past the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => {
                return Some(i + 3);
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => {}
        }
        i += 1;
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

    #[test]
    fn crlf_framing_and_multi_line_data_are_understood() {
        let mut f = SseFramer::default();
        let ev = f.push(b"event: x\r\ndata: a\r\ndata: b\r\n\r\nrest");
        assert_eq!(ev.len(), 1);
        assert_eq!(event_data(&ev[0]), "a\nb");
        assert_eq!(f.finish().unwrap(), Bytes::from_static(b"rest"));
    }
}
