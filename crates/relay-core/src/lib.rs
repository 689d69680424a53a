//! The relay: protocol types, the channel router, the upstream client, SSE framing and
//! metering. It never touches SQL or an HTTP framework: it reads the catalog snapshot,
//! reserves and settles through `billing`, and hands answers to the gateway as bytes
//! and streams.

pub mod admission;
pub mod ambiguity;
pub mod answer;
pub mod anthropic;
pub mod convert;
pub mod count;
pub mod error;
pub mod event;
pub mod fault;
pub mod funds;
pub mod gemini;
pub mod health;
pub mod hold;
pub mod limits;
pub mod media;
pub mod meter;
pub mod metrics;
pub mod multipart;
pub mod observe;
pub mod openai;
pub mod persisted_health;
pub mod pipeline;
pub mod probe;
pub mod protocol;
pub mod relay;
pub mod router;
pub mod sse;
pub mod stream;
pub mod task;
pub mod tokens;
pub mod upstream;
pub mod wire;

pub use error::RelayError;
pub use router::Router;
