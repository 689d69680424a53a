//! What the admin API needs from the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use billing::Wallet;
use jsonwebtoken::{DecodingKey, EncodingKey};
use sea_orm::DatabaseConnection;
use store::Shared;
use store::secret::SecretBox;

use crate::ApiError;
use crate::client_ip::TrustedProxies;
use crate::settings::Tunables;

/// Reloads the in-memory catalog after a write and tells the other instances.
pub trait Reload: Send + Sync {
    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What a channel test found: the latency, or the error the upstream gave.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChannelTest {
    pub ok: bool,
    pub latency_ms: Option<u64>,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends one small real request through a channel and records the outcome on it. The
/// gateway implements it (it owns the upstream client); `None` model = the channel's
/// first. An unknown channel is `ApiError::NotFound`.
pub trait ChannelTester: Send + Sync {
    fn test(
        &self,
        channel_id: i64,
        model: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<ChannelTest, ApiError>> + Send + '_>>;
}

/// The admin API's shared state, built once.
pub struct AdminState {
    /// The durable store.
    pub db: DatabaseConnection,
    /// Counters (login attempts), revoked sessions.
    pub shared: Arc<Shared>,
    /// Admission counters, adjusted after every money movement.
    pub wallet: Arc<Wallet>,
    /// Encrypts channel keys at rest.
    pub secrets: SecretBox,
    /// Signs console/API sessions.
    pub jwt_encoding: EncodingKey,
    /// Verifies console/API sessions.
    pub jwt_decoding: DecodingKey,
    /// How long a session lasts.
    pub session_hours: i64,
    /// Catalog reload + broadcast.
    pub reloader: Arc<dyn Reload>,
    /// The channel test button.
    pub tester: Arc<dyn ChannelTester>,
    /// The tunables the process started with (environment), for those not stored.
    pub tunables: Tunables,
    /// Whose `X-Forwarded-For` names the client (the login limit counts per client IP).
    pub trusted_proxies: TrustedProxies,
    /// Whether the database and Redis answer (probed every second by the gateway).
    pub availability: Arc<store::Availability>,
}

impl AdminState {
    /// Reloads the catalog here and on every other instance.
    pub async fn reload(&self) {
        self.reloader.reload().await;
    }

    /// Refuses at once (`ApiError::Unavailable`) while the database or Redis is known
    /// to be unreachable, instead of letting the call wait for a pool timeout.
    pub fn ensure_available(&self) -> Result<(), ApiError> {
        if self.availability.serving() {
            Ok(())
        } else {
            Err(ApiError::Unavailable)
        }
    }
}
