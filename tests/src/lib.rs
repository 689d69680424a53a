//! Test support for Tollgate's end-to-end tests: mock OpenAI, Anthropic and Gemini
//! upstreams that speak their protocols as the providers do (answers, SSE chunks, usage,
//! failures), and `spawn_app`, which starts the real gateway on port 0 on a fresh
//! database — SQLite and in-process cache by default, Postgres and Redis when
//! `TEST_DATABASE_URL` and `TEST_REDIS_URL` are set.

pub mod app;
pub mod console;
pub mod mock_anthropic;
pub mod mock_ark;
pub mod mock_dashscope;
pub mod mock_gemini;
pub mod mock_kling;
pub mod mock_midjourney;
pub mod mock_openai;
pub mod mock_server;
pub mod mock_sora;
pub mod mock_suno;
pub mod mock_tools;
pub mod mock_veo;
pub mod python;
pub mod scenario;

pub use app::{TestApp, spawn_app};
pub use mock_anthropic::MockAnthropic;
pub use mock_gemini::MockGemini;
pub use mock_openai::MockOpenAi;
pub use scenario::{NORMAL_COST, Scenario};
