//! The Tollgate gateway: configuration, wiring of the crates into one process, the
//! HTTP server with its routing table, and the background jobs.

pub mod app;
pub mod channel_health;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod dashscope;
pub mod generation;
pub mod health;
pub mod kling;
pub mod logging;
pub mod midjourney;
pub mod relay;
pub mod seedance;
pub mod state;
pub mod suno;
pub mod tasks;
pub mod tunables;
pub mod veo;
pub mod videos;

pub use app::Application;
pub use config::Config;
