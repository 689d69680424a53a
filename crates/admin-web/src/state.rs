//! What the admin API needs from the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use billing::Wallet;
use jsonwebtoken::{DecodingKey, EncodingKey};
use sea_orm::DatabaseConnection;
use store::Shared;
use store::secret::SecretBox;

/// Reloads the in-memory catalog after a write and tells the other instances.
pub trait Reload: Send + Sync {
    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
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
}

impl AdminState {
    /// Reloads the catalog here and on every other instance.
    pub async fn reload(&self) {
        self.reloader.reload().await;
    }
}
