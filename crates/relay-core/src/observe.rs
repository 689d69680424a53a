//! Metering a stream event by event: id, model, finish reason and usage, read from the
//! decoded [`Event`]s the converter also consumes, and how much text went by for when
//! no usage report comes (counted as it goes, never kept whole).

use billing::Usage;

use crate::convert::anthropic_chat::{AUsage, StreamEvent};
use crate::event::Event;
use crate::protocol::Protocol;

/// What a stream event means to the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Send it to the client.
    Forward,
    /// The usage-only chunk the client did not ask for: read it, do not send it.
    Swallow,
    /// The end of the stream: send it; the stream is complete.
    Done,
}

/// Text kept before it is counted into tokens, so a long answer never sits whole in
/// memory. Counting costs about 0.6–1 ms of CPU per 16 KiB (tiktoken, release build),
/// paid even when the usage report comes at the end, so only answers longer than
/// this (about 16k tokens) pay it; shorter ones are counted only if no usage comes.
const KEEP_BYTES: usize = 64 * 1024;

/// The text a stream delivered, for counting output tokens when the upstream reports
/// no usage. Past [`KEEP_BYTES`] the text is counted with the model's encoding up to
/// its last whitespace and dropped; once the upstream reported usage it is not kept.
/// Memory per stream is bounded by [`KEEP_BYTES`] plus one event's text.
#[derive(Debug, Default)]
pub struct Delivered {
    model: String,
    text: String,
    counted: i64,
    any: bool,
    settled: bool,
}

impl Delivered {
    /// Counts with `model`'s encoding.
    pub fn new(model: &str) -> Self {
        Delivered {
            model: model.to_owned(),
            ..Delivered::default()
        }
    }

    pub fn push(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.any = true;
        if self.settled {
            return;
        }
        // Count what is held before it would pass the bound, so the buffer (which
        // keeps its capacity) never grows past it for ordinary events.
        if self.text.len() + text.len() > KEEP_BYTES && !self.text.is_empty() {
            let cut = self
                .text
                .rfind(char::is_whitespace)
                .filter(|&i| i > 0)
                .unwrap_or(self.text.len());
            self.counted = self
                .counted
                .saturating_add(crate::tokens::count_text(&self.model, &self.text[..cut]));
            self.text.drain(..cut);
        }
        // Grow by doubling as usual, but never past the bound for it.
        let needed = self.text.len() + text.len();
        if needed > self.text.capacity() {
            let target = needed.saturating_mul(2).min(KEEP_BYTES).max(needed);
            self.text.reserve_exact(target - self.text.len());
        }
        self.text.push_str(text);
    }

    /// The upstream's usage covers what went by: the text is no longer needed.
    pub fn forget(&mut self) {
        self.settled = true;
        self.text = String::new();
    }

    /// Whether any text went by.
    pub fn is_empty(&self) -> bool {
        !self.any
    }

    /// Output tokens of everything delivered (before [`Self::forget`]).
    pub fn tokens(&self) -> i64 {
        self.counted
            .saturating_add(crate::tokens::count_text(&self.model, &self.text))
    }

    /// Bytes held right now (for tests of the bound).
    pub fn held(&self) -> usize {
        self.text.len()
    }
}

/// Reads a stream event by event.
#[derive(Debug)]
pub struct StreamObserver {
    pub id: Option<String>,
    pub upstream_model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    pub delivered: Delivered,
    pub done: bool,
    pub events: usize,
    /// Which protocol's events these are.
    pub proto: Protocol,
    /// An upstream error event arrived.
    pub upstream_error: bool,
    /// A Messages stream's usage so far: `message_start`'s, then each
    /// `message_delta`'s taken in.
    anthropic: Option<AUsage>,
    /// Whether a `message_delta` stated the output count yet.
    anthropic_output: bool,
}

impl StreamObserver {
    /// A fresh observer for `proto`'s events; text is counted with `model`'s encoding.
    pub fn new(proto: Protocol, model: &str) -> Self {
        StreamObserver {
            id: None,
            upstream_model: None,
            usage: None,
            finish_reason: None,
            delivered: Delivered::new(model),
            done: false,
            events: 0,
            proto,
            upstream_error: false,
            anthropic: None,
            anthropic_output: false,
        }
    }

    fn names(&mut self, id: &str, model: &str) {
        if self.id.is_none() && !id.is_empty() {
            self.id = Some(id.to_owned());
        }
        if self.upstream_model.is_none() && !model.is_empty() {
            self.upstream_model = Some(model.to_owned());
        }
    }

    fn reported(&mut self, usage: Usage) {
        self.usage = Some(usage);
        self.delivered.forget();
    }

    /// Observes one decoded event; `client_wants_usage` decides whether a usage-only
    /// chat chunk is forwarded.
    pub fn observe(&mut self, event: &Event, client_wants_usage: bool) -> EventAction {
        self.events += 1;
        match event {
            Event::Done => {
                self.done = true;
                EventAction::Done
            }
            Event::Other => EventAction::Forward,
            Event::Error(_) => {
                self.upstream_error = true;
                EventAction::Forward
            }
            Event::Opaque(usage) => {
                if let Some(u) = usage {
                    self.reported(u.usage());
                }
                EventAction::Forward
            }
            Event::Chat(chunk) => {
                self.names(&chunk.id, &chunk.model);
                for c in &chunk.choices {
                    if let Some(f) = &c.finish_reason {
                        self.finish_reason = Some(f.clone());
                    }
                    c.delta.texts(|t| self.delivered.push(t));
                    if let Some(t) = &c.text {
                        self.delivered.push(t);
                    }
                }
                if let Some(u) = &chunk.usage {
                    self.reported(u.usage());
                    if chunk.choices.is_empty() && !client_wants_usage {
                        return EventAction::Swallow;
                    }
                }
                EventAction::Forward
            }
            Event::Gemini(r) => {
                self.names(
                    r.response_id.as_deref().unwrap_or_default(),
                    r.model_version.as_deref().unwrap_or_default(),
                );
                if let Some(f) = r.candidates.iter().find_map(|c| c.finish_reason.as_ref()) {
                    self.finish_reason = Some(f.clone());
                }
                r.texts(|t| self.delivered.push(t));
                if let Some(u) = r.usage_metadata.filter(|u| u.counts_output()) {
                    self.reported(u.usage());
                }
                EventAction::Forward
            }
            Event::Responses(e) => {
                if let Some(d) = e.delta_text() {
                    self.delivered.push(d);
                }
                let Some(r) = &e.response else {
                    return EventAction::Forward;
                };
                self.names(
                    r.id.as_deref().unwrap_or_default(),
                    r.model.as_deref().unwrap_or_default(),
                );
                if let Some(u) = &r.usage {
                    self.reported(u.usage());
                }
                if e.is_final() {
                    self.finish_reason.clone_from(&r.status);
                    self.done = true;
                    return EventAction::Done;
                }
                EventAction::Forward
            }
            Event::Anthropic(e) => self.observe_anthropic(e),
        }
    }

    fn observe_anthropic(&mut self, event: &StreamEvent) -> EventAction {
        match event {
            StreamEvent::MessageStart { message } => {
                self.names(&message.id, &message.model);
                self.anthropic = message.usage;
            }
            StreamEvent::ContentBlockStart { content_block, .. } => {
                content_block.texts(|t| self.delivered.push(t));
            }
            StreamEvent::ContentBlockDelta { delta, .. } => {
                if let Some(t) = delta.text() {
                    self.delivered.push(t);
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.finish_reason.clone_from(&delta.stop_reason);
                }
                if let Some(later) = usage {
                    let mut so_far = self.anthropic.unwrap_or_default();
                    self.anthropic_output |= so_far.absorb(later);
                    self.anthropic = Some(so_far);
                    // Usage is known only once a delta counted the output.
                    if self.anthropic_output {
                        self.reported(so_far.usage());
                    }
                }
            }
            StreamEvent::MessageStop => {
                self.done = true;
                return EventAction::Done;
            }
            StreamEvent::Error { .. } => self.upstream_error = true,
            StreamEvent::Other => {}
        }
        EventAction::Forward
    }

    /// Prompt usage known so far (Anthropic's `message_start`), for a stream that ends
    /// before its output count.
    pub fn partial_prompt(&self) -> Option<Usage> {
        self.anthropic.map(|u| u.usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn observe_all(
        proto: Protocol,
        events: &[&str],
        wants_usage: bool,
    ) -> (StreamObserver, Vec<EventAction>) {
        let mut o = StreamObserver::new(proto, "gpt-4o");
        let actions = events
            .iter()
            .map(|d| o.observe(&decode(proto, d), wants_usage))
            .collect();
        (o, actions)
    }

    #[test]
    fn the_usage_chunk_is_swallowed_only_when_the_client_did_not_ask_for_it() {
        let events = [
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
            "[DONE]",
        ];
        let (o, actions) = observe_all(Protocol::OpenAiChat, &events, false);
        assert_eq!(
            actions,
            [
                EventAction::Forward,
                EventAction::Swallow,
                EventAction::Done
            ]
        );
        assert_eq!(o.usage.map(|u| u.completion_tokens), Some(2));
        assert_eq!(o.id.as_deref(), Some("c1"));
        let (_, actions) = observe_all(Protocol::OpenAiChat, &events, true);
        assert_eq!(actions[1], EventAction::Forward);
    }

    #[test]
    fn reasoning_audio_and_tool_call_deltas_are_output_that_was_delivered() {
        let events = [
            r#"{"choices":[{"delta":{"reasoning":"think "}}]}"#,
            r#"{"choices":[{"delta":{"audio":{"transcript":"spoken "}}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#,
        ];
        let (o, _) = observe_all(Protocol::OpenAiChat, &events, false);
        assert!(!o.delivered.is_empty());
        assert!(o.delivered.tokens() >= 4);
    }

    #[test]
    fn a_long_answer_is_counted_as_it_goes_and_never_held_whole() {
        let mut o = StreamObserver::new(Protocol::OpenAiChat, "gpt-4o");
        let piece = "hello world ".repeat(100);
        let event = format!(r#"{{"choices":[{{"delta":{{"content":"{piece}"}}}}]}}"#);
        for _ in 0..20 {
            o.observe(&decode(Protocol::OpenAiChat, &event), false);
        }
        assert_eq!(
            o.delivered.counted, 0,
            "a short answer is not counted as it goes"
        );
        for _ in 20..200 {
            o.observe(&decode(Protocol::OpenAiChat, &event), false);
        }
        assert!(o.delivered.counted > 0);
        assert!(o.delivered.held() <= KEEP_BYTES + piece.len());
        assert!(o.delivered.text.capacity() <= KEEP_BYTES + piece.len());
        let whole = crate::tokens::count_text("gpt-4o", &piece.repeat(200));
        let counted = o.delivered.tokens();
        assert!(
            (counted - whole).abs() <= whole / 100,
            "{counted} vs {whole}"
        );
    }

    #[test]
    fn once_usage_is_reported_the_text_is_not_kept() {
        let (o, _) = observe_all(
            Protocol::GeminiGenerate,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi there"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2}}"#,
            ],
            false,
        );
        assert_eq!(o.delivered.held(), 0);
        assert!(!o.delivered.is_empty());
        assert_eq!(
            o.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((4, 2))
        );
        assert_eq!(o.finish_reason.as_deref(), Some("STOP"));
    }

    #[test]
    fn a_gemini_chunk_counting_only_the_prompt_is_not_the_usage() {
        let (o, _) = observe_all(
            Protocol::GeminiGenerate,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"usageMetadata":{"promptTokenCount":4}}"#,
            ],
            false,
        );
        assert!(o.usage.is_none());
    }

    #[test]
    fn a_messages_stream_keeps_message_starts_cache_reads_when_a_delta_omits_them() {
        let (o, actions) = observe_all(
            Protocol::AnthropicMessages,
            &[
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"cache_read_input_tokens":80,"output_tokens":1}}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":10,"output_tokens":40}}"#,
                r#"{"type":"message_stop"}"#,
            ],
            false,
        );
        assert_eq!(actions.last(), Some(&EventAction::Done));
        let u = o.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
            (90, 80, 40)
        );
        assert_eq!(o.finish_reason.as_deref(), Some("end_turn"));
    }

    #[test]
    fn a_message_delta_without_an_output_count_is_not_taken_as_zero_output() {
        let (o, _) = observe_all(
            Protocol::AnthropicMessages,
            &[
                r#"{"type":"message_start","message":{"id":"m","model":"x","usage":{"input_tokens":12,"output_tokens":1}}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":12}}"#,
            ],
            false,
        );
        assert!(o.usage.is_none(), "no output count: the text is counted");
        assert!(o.delivered.tokens() > 0);
        let (o, _) = observe_all(
            Protocol::AnthropicMessages,
            &[
                r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":12}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":null}}"#,
            ],
            false,
        );
        assert_eq!(o.usage.map(|u| u.completion_tokens), Some(12));
    }

    #[test]
    fn a_message_start_without_usage_leaves_the_prompt_to_be_counted() {
        let (o, _) = observe_all(
            Protocol::AnthropicMessages,
            &[r#"{"type":"message_start","message":{"id":"m","model":"x","usage":null}}"#],
            false,
        );
        assert!(o.partial_prompt().is_none());
    }

    #[test]
    fn a_responses_stream_ends_on_its_completed_event_with_its_usage() {
        let (o, actions) = observe_all(
            Protocol::OpenAiResponses,
            &[
                r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
                r#"{"type":"response.completed","response":{"id":"resp_1","object":"response","model":"m","status":"completed","usage":{"input_tokens":3,"output_tokens":1,"output_tokens_details":{"reasoning_tokens":0}}}}"#,
            ],
            false,
        );
        assert_eq!(actions, [EventAction::Forward, EventAction::Done]);
        assert_eq!(o.usage.map(|u| u.completion_tokens), Some(1));
        assert_eq!(o.finish_reason.as_deref(), Some("completed"));
    }
}
