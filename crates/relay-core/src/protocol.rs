//! The client protocols the relay speaks natively, and what differs between them on
//! the wire: path, upstream authentication, error shape, stream framing.

/// A client protocol, served by channels of the same kind (conversion between kinds is
/// the job of the protocol adapters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v1/chat/completions`
    #[default]
    OpenAiChat,
    /// `POST /v1/messages`
    AnthropicMessages,
}

impl Protocol {
    /// The upstream path, relative to the channel's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Protocol::OpenAiChat => "/v1/chat/completions",
            Protocol::AnthropicMessages => "/v1/messages",
        }
    }

    /// The channel type that speaks this protocol.
    pub fn channel_kind(self) -> &'static str {
        match self {
            Protocol::OpenAiChat => "openai",
            Protocol::AnthropicMessages => "anthropic",
        }
    }

    /// The protocol a channel type speaks.
    pub fn of_channel(kind: &str) -> Option<Protocol> {
        match kind {
            "openai" => Some(Protocol::OpenAiChat),
            "anthropic" => Some(Protocol::AnthropicMessages),
            _ => None,
        }
    }
}
