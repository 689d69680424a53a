//! The client protocols the relay speaks natively, and what differs between them on
//! the wire: path, upstream authentication, error shape, stream framing.

use store::catalog::ChannelKind;

/// A client protocol, served by channels of the same kind (conversion between kinds is
/// the job of the protocol adapters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v1/chat/completions`
    #[default]
    OpenAiChat,
    /// `POST /v1/completions` (legacy text completions, streams too)
    OpenAiCompletions,
    /// `POST /beta/completions` (DeepSeek's fill-in-the-middle: a completion with a
    /// `suffix`)
    OpenAiFim,
    /// `POST /v1/responses` (native on OpenAI channels, converted through chat for the
    /// others)
    OpenAiResponses,
    /// `POST /v1/embeddings`
    OpenAiEmbeddings,
    /// `POST /v1/images/generations`, charged per image returned with data
    OpenAiImages,
    /// `POST /v1/moderations` (no usage report: its input is counted locally)
    OpenAiModerations,
    /// `POST /v1/images/edits` (multipart), charged per image like generations
    OpenAiImageEdits,
    /// `POST /v1/images/variations` (multipart), charged per image
    OpenAiImageVariations,
    /// `POST /v1/audio/speech`: JSON in, audio bytes out; charged per character
    OpenAiSpeech,
    /// `POST /v1/audio/transcriptions` (multipart): per second of audio, or tokens
    OpenAiTranscriptions,
    /// `POST /v1/audio/translations` (multipart): per second of audio
    OpenAiTranslations,
    /// `POST /v1/messages`
    AnthropicMessages,
    /// `POST /v1beta/models/{model}:generateContent` (and `:streamGenerateContent`)
    GeminiGenerate,
}

impl Protocol {
    /// The upstream path, relative to the channel's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Protocol::OpenAiChat => "/v1/chat/completions",
            Protocol::OpenAiCompletions => "/v1/completions",
            Protocol::OpenAiFim => "/beta/completions",
            Protocol::OpenAiResponses => "/v1/responses",
            Protocol::OpenAiEmbeddings => "/v1/embeddings",
            Protocol::OpenAiImages => "/v1/images/generations",
            Protocol::OpenAiModerations => "/v1/moderations",
            Protocol::OpenAiImageEdits => "/v1/images/edits",
            Protocol::OpenAiImageVariations => "/v1/images/variations",
            Protocol::OpenAiSpeech => "/v1/audio/speech",
            Protocol::OpenAiTranscriptions => "/v1/audio/transcriptions",
            Protocol::OpenAiTranslations => "/v1/audio/translations",
            Protocol::AnthropicMessages => "/v1/messages",
            Protocol::GeminiGenerate => "/v1beta/models/{model}:generateContent",
        }
    }

    /// The upstream path for one request: Gemini names the model and the streaming
    /// method in the path, the others in the body.
    pub fn upstream_path(self, upstream_model: &str, stream: bool) -> String {
        match self {
            Protocol::GeminiGenerate if stream => {
                format!("/v1beta/models/{upstream_model}:streamGenerateContent?alt=sse")
            }
            Protocol::GeminiGenerate => format!("/v1beta/models/{upstream_model}:generateContent"),
            other => other.path().to_owned(),
        }
    }

    /// The channel type that speaks this protocol.
    pub fn channel_kind(self) -> ChannelKind {
        match self {
            Protocol::OpenAiChat
            | Protocol::OpenAiCompletions
            | Protocol::OpenAiFim
            | Protocol::OpenAiResponses
            | Protocol::OpenAiEmbeddings
            | Protocol::OpenAiImages
            | Protocol::OpenAiModerations
            | Protocol::OpenAiImageEdits
            | Protocol::OpenAiImageVariations
            | Protocol::OpenAiSpeech
            | Protocol::OpenAiTranscriptions
            | Protocol::OpenAiTranslations => ChannelKind::OpenAi,
            Protocol::AnthropicMessages => ChannelKind::Anthropic,
            Protocol::GeminiGenerate => ChannelKind::Gemini,
        }
    }

    /// Whether errors and streams use OpenAI's shapes.
    pub fn is_openai(self) -> bool {
        self.channel_kind() == ChannelKind::OpenAi
    }

    /// The body field a request of this protocol cannot do without.
    pub fn required_field(self) -> &'static str {
        match self {
            Protocol::OpenAiChat | Protocol::AnthropicMessages => "messages",
            Protocol::OpenAiCompletions | Protocol::OpenAiFim | Protocol::OpenAiImages => "prompt",
            Protocol::OpenAiEmbeddings
            | Protocol::OpenAiModerations
            | Protocol::OpenAiResponses
            | Protocol::OpenAiSpeech => "input",
            Protocol::OpenAiImageEdits
            | Protocol::OpenAiImageVariations
            | Protocol::OpenAiTranscriptions
            | Protocol::OpenAiTranslations => "file",
            Protocol::GeminiGenerate => "contents",
        }
    }

    /// Whether a channel of type `kind` can serve this protocol: its own kind, any
    /// chat-speaking kind for the chat protocols (by conversion), and Azure wherever
    /// OpenAI serves.
    pub fn served_by(self, kind: ChannelKind) -> bool {
        let native = self.channel_kind();
        kind == native
            || (native == ChannelKind::OpenAi && kind == ChannelKind::Azure)
            || (crate::convert::converts(self) && Protocol::of_channel(kind).is_some())
    }

    /// What to speak to a channel of type `kind` for a client of this protocol: the
    /// client's own protocol when the channel speaks it, else the channel's chat
    /// protocol (the request is converted).
    pub fn for_channel(self, kind: ChannelKind) -> Protocol {
        let kind = if kind == ChannelKind::Azure {
            ChannelKind::OpenAi
        } else {
            kind
        };
        if kind == self.channel_kind() {
            self
        } else {
            Protocol::of_channel(kind).unwrap_or(self)
        }
    }

    /// Whether the request body is `multipart/form-data` (a file upload).
    pub fn is_multipart(self) -> bool {
        matches!(
            self,
            Protocol::OpenAiImageEdits
                | Protocol::OpenAiImageVariations
                | Protocol::OpenAiTranscriptions
                | Protocol::OpenAiTranslations
        )
    }

    /// Whether the answer is one whole JSON object or file that cannot stream (the
    /// media and vector endpoints).
    pub fn never_streams(self) -> bool {
        matches!(
            self,
            Protocol::OpenAiEmbeddings
                | Protocol::OpenAiImages
                | Protocol::OpenAiModerations
                | Protocol::OpenAiImageEdits
                | Protocol::OpenAiImageVariations
                | Protocol::OpenAiSpeech
                | Protocol::OpenAiTranscriptions
                | Protocol::OpenAiTranslations
        )
    }

    /// The protocol a channel type speaks.
    pub fn of_channel(kind: ChannelKind) -> Option<Protocol> {
        match kind {
            ChannelKind::OpenAi | ChannelKind::Azure => Some(Protocol::OpenAiChat),
            ChannelKind::Anthropic => Some(Protocol::AnthropicMessages),
            ChannelKind::Gemini => Some(Protocol::GeminiGenerate),
            ChannelKind::Volcengine
            | ChannelKind::Kling
            | ChannelKind::Dashscope
            | ChannelKind::Midjourney
            | ChannelKind::Suno
            | ChannelKind::Unknown => None,
        }
    }
}
