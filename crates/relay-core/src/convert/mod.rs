//! Conversion between the chat protocols, for a client whose protocol differs from
//! its channel's. Every pair goes through typed OpenAI chat values ([`chat`]): one
//! module per pair with it (`anthropic_chat`, `gemini_chat`), and Anthropic ⇄ Gemini
//! as the two joined. Streams are converted event by event: a decoder turns the
//! upstream's events into pivot [`Piece`]s, an encoder turns those into the client's.

pub mod anthropic_chat;
pub mod chat;
pub mod gemini_chat;
pub mod responses_chat;

use bytes::Bytes;
use serde::Serialize;

use crate::answer::Completion;
use crate::event::Event;
use crate::protocol::Protocol;
use anthropic_chat::{AnthropicToChat, ChatToAnthropic, MessageResponse, MessagesRequest};
use chat::{ChatChunk, ChatCompletion, ChatRequest};
use gemini_chat::{ChatToGemini, GeminiToChat, GenerateRequest, GenerateResponse};
use responses_chat::{ChatToResponses, ResponsesRequest};

/// A request (or answer) the other side cannot express: a 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

impl ConvertError {
    pub fn new(message: impl Into<String>) -> Self {
        ConvertError(message.into())
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ConvertError> {
    serde_json::from_slice(body)
        .map_err(|e| ConvertError::new(format!("the {what} is not valid: {e}")))
}

/// Whether requests of `proto` can be served by channels speaking another chat
/// protocol.
pub fn converts(proto: Protocol) -> bool {
    matches!(
        proto,
        Protocol::OpenAiChat
            | Protocol::OpenAiResponses
            | Protocol::AnthropicMessages
            | Protocol::GeminiGenerate
    )
}

/// The request a client of `client` sent, as a request of `channel` for `model`.
pub fn request(
    client: Protocol,
    channel: Protocol,
    raw: &[u8],
    model: &str,
    stream: bool,
) -> Result<Bytes, ConvertError> {
    let mut chat: ChatRequest = match client {
        Protocol::OpenAiChat => parse(raw, "chat request")?,
        Protocol::AnthropicMessages => {
            let req: MessagesRequest = parse(raw, "messages request")?;
            anthropic_chat::request_to_chat(req, model)?
        }
        Protocol::GeminiGenerate => {
            let req: GenerateRequest = parse(raw, "generateContent request")?;
            gemini_chat::request_to_chat(req, model, stream)?
        }
        Protocol::OpenAiResponses => {
            let req: ResponsesRequest = parse(raw, "responses request")?;
            responses_chat::request_to_chat(req, model)?
        }
        other => return Err(unsupported(other)),
    };
    chat.model = model.to_owned();
    chat.stream = Some(stream);
    let body = match channel {
        Protocol::OpenAiChat => {
            if chat.top_k.is_some() {
                return Err(ConvertError::new(
                    "'top_k' cannot be expressed for an OpenAI-compatible model",
                ));
            }
            if stream {
                chat.stream_options = Some(serde_json::json!({"include_usage": true}));
            }
            serde_json::to_vec(&chat)
        }
        Protocol::AnthropicMessages => {
            serde_json::to_vec(&anthropic_chat::request_from_chat(chat, model)?)
        }
        Protocol::GeminiGenerate => serde_json::to_vec(&gemini_chat::request_from_chat(chat)?),
        other => return Err(unsupported(other)),
    };
    body.map(Bytes::from)
        .map_err(|e| ConvertError::new(format!("the converted request cannot be written: {e}")))
}

fn unsupported(proto: Protocol) -> ConvertError {
    ConvertError::new(format!("{} cannot be converted", proto.path()))
}

/// A whole answer of `channel`'s protocol, as `client`'s.
pub fn response(channel: Protocol, client: Protocol, body: &[u8]) -> Result<Bytes, ConvertError> {
    answer(channel, client, body).map(|(converted, _)| converted)
}

/// A whole answer of `channel`'s protocol as `client`'s, with what the relay meters of
/// it when the answer reports its usage, read from the same parse (`None`: no usage,
/// the relay counts what was delivered, [`crate::answer::read`]).
pub fn answer(
    channel: Protocol,
    client: Protocol,
    body: &[u8],
) -> Result<(Bytes, Option<Completion>), ConvertError> {
    let (chat, metered) = match channel {
        Protocol::OpenAiChat => {
            let chat: ChatCompletion = parse(body, "chat completion")?;
            // Usage with no choice (an error object that reports usage, say) is left to
            // the metering view, which refuses an answer without `choices`.
            let metered = chat.usage.filter(|_| !chat.choices.is_empty()).map(|u| {
                let finish = chat.choices.iter().find_map(|c| c.finish_reason.clone());
                let (id, model) = (non_empty(&chat.id), non_empty(&chat.model));
                Completion::reported(u.usage(), (id, model), finish)
            });
            (chat, metered)
        }
        Protocol::AnthropicMessages => {
            let message: MessageResponse = parse(body, "message")?;
            if message.kind != "message" {
                return Err(ConvertError::new("the answer is not a message"));
            }
            let metered = Completion::reported(
                message.usage.usage(),
                (non_empty(&message.id), non_empty(&message.model)),
                message.stop_reason.clone(),
            );
            (anthropic_chat::response_to_chat(message), Some(metered))
        }
        Protocol::GeminiGenerate => {
            let answer: GenerateResponse = parse(body, "answer")?;
            if answer.candidates.is_empty() && answer.usage_metadata.is_none() {
                return Err(ConvertError::new("the answer has no candidates"));
            }
            let metered = answer.usage_metadata.as_ref().map(|u| {
                let finish = answer
                    .candidates
                    .iter()
                    .find_map(|c| c.finish_reason.clone());
                let names = (answer.response_id.clone(), answer.model_version.clone());
                Completion::reported(u.usage(), names, finish)
            });
            (gemini_chat::response_to_chat(answer), metered)
        }
        other => return Err(unsupported(other)),
    };
    let out = match client {
        Protocol::OpenAiChat => serde_json::to_vec(&chat),
        Protocol::AnthropicMessages => {
            serde_json::to_vec(&anthropic_chat::response_from_chat(chat))
        }
        Protocol::GeminiGenerate => serde_json::to_vec(&gemini_chat::response_from_chat(chat)),
        Protocol::OpenAiResponses => serde_json::to_vec(&responses_chat::response_from_chat(chat)),
        other => return Err(unsupported(other)),
    };
    let out = out
        .map(Bytes::from)
        .map_err(|e| ConvertError::new(format!("the converted answer cannot be written: {e}")))?;
    Ok((out, metered))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// One step of a stream in pivot terms.
#[derive(Debug, Clone)]
pub enum Piece {
    /// A chat chunk (a usage-only chunk has no choices).
    Chunk(ChatChunk),
    /// The upstream reported an error mid-stream (message already redacted).
    Error(String),
    /// The stream is complete.
    Done,
}

/// SSE events on their way to the client.
#[derive(Debug, Default)]
pub struct Events(pub Vec<Bytes>);

impl Events {
    /// A `data:`-only event.
    pub fn json(&mut self, value: &impl Serialize) {
        self.0.push(sse_event(None, value));
    }

    /// A named event (`event:` then `data:`).
    pub fn event(&mut self, name: &str, value: &impl Serialize) {
        self.0.push(sse_event(Some(name), value));
    }

    /// OpenAI's end marker.
    pub fn done(&mut self) {
        self.0.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

/// One SSE event with a JSON payload.
pub fn sse_event(name: Option<&str>, value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    let mut out = String::with_capacity(json.len() + 32);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&json);
    out.push_str("\n\n");
    Bytes::from(out)
}

enum Decoder {
    Chat,
    Anthropic(AnthropicToChat),
    Gemini(GeminiToChat),
}

enum Encoder {
    Chat { wants_usage: bool, done: bool },
    Anthropic(ChatToAnthropic),
    Gemini(ChatToGemini),
    Responses(ChatToResponses),
}

/// Converts a stream of `channel`'s events into `client`'s, event by event.
pub struct StreamConverter {
    /// The channel's protocol (what the upstream's events are).
    channel: Protocol,
    decoder: Decoder,
    encoder: Encoder,
    pieces: Vec<Piece>,
}

impl StreamConverter {
    /// `wants_usage`: an OpenAI client asked for the usage chunk.
    pub fn new(channel: Protocol, client: Protocol, wants_usage: bool) -> Self {
        let decoder = match channel {
            Protocol::AnthropicMessages => Decoder::Anthropic(AnthropicToChat::new()),
            Protocol::GeminiGenerate => Decoder::Gemini(GeminiToChat::new()),
            _ => Decoder::Chat,
        };
        let encoder = match client {
            Protocol::AnthropicMessages => Encoder::Anthropic(ChatToAnthropic::new()),
            Protocol::GeminiGenerate => Encoder::Gemini(ChatToGemini::new()),
            Protocol::OpenAiResponses => Encoder::Responses(ChatToResponses::new()),
            _ => Encoder::Chat {
                wants_usage,
                done: false,
            },
        };
        StreamConverter {
            channel,
            decoder,
            encoder,
            pieces: Vec::new(),
        }
    }

    /// Converts one upstream event, decoded once (metering read it first); returns the
    /// client's events (maybe none).
    pub fn push(&mut self, event: Event) -> Vec<Bytes> {
        match (&mut self.decoder, event) {
            (_, Event::Error(message)) => self.pieces.push(Piece::Error(message)),
            (Decoder::Chat, Event::Done) => self.pieces.push(Piece::Done),
            (Decoder::Chat, Event::Chat(mut chunk)) => {
                for c in &mut chunk.choices {
                    // OpenRouter's `reasoning` is chat's `reasoning_content`.
                    if c.delta.reasoning_content.is_none() {
                        c.delta.reasoning_content = c.delta.reasoning.take();
                    }
                }
                self.pieces.push(Piece::Chunk(chunk));
            }
            (Decoder::Anthropic(d), Event::Anthropic(e)) => d.push(&e, &mut self.pieces),
            (Decoder::Gemini(d), Event::Gemini(r)) => d.push(r, &mut self.pieces),
            _ => {}
        }
        self.encode()
    }

    /// Decodes one raw SSE event of the channel's protocol and converts it.
    pub fn push_sse(&mut self, event: &[u8]) -> Vec<Bytes> {
        let event = crate::event::decode(self.channel, &crate::sse::event_data(event));
        self.push(event)
    }

    /// The upstream ended: whatever the client still needs to see a complete stream.
    pub fn finish(&mut self) -> Vec<Bytes> {
        match &mut self.decoder {
            Decoder::Chat => {}
            Decoder::Anthropic(d) => d.finish(&mut self.pieces),
            Decoder::Gemini(d) => d.finish(&mut self.pieces),
        }
        let mut out = self.encode();
        let mut events = Events::default();
        match &mut self.encoder {
            Encoder::Chat { .. } => {}
            Encoder::Anthropic(e) => e.finish(&mut events),
            Encoder::Gemini(e) => e.finish(&mut events),
            Encoder::Responses(e) => e.finish(&mut events),
        }
        out.extend(events.0);
        out
    }

    fn encode(&mut self) -> Vec<Bytes> {
        let mut events = Events::default();
        for piece in self.pieces.drain(..) {
            match &mut self.encoder {
                Encoder::Chat { wants_usage, done } => match piece {
                    Piece::Chunk(chunk) => {
                        if chunk.choices.is_empty() && !*wants_usage {
                            continue;
                        }
                        events.json(&chunk);
                    }
                    Piece::Done => {
                        if !*done {
                            *done = true;
                            events.done();
                        }
                    }
                    Piece::Error(message) => events.json(
                        &serde_json::json!({"error": {"message": message, "type": "api_error", "code": "upstream_error", "param": null}}),
                    ),
                },
                Encoder::Anthropic(e) => e.push(piece, &mut events),
                Encoder::Gemini(e) => e.push(piece, &mut events),
                Encoder::Responses(e) => e.push(piece, &mut events),
            }
        }
        events.0
    }
}
