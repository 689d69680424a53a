//! Storage for Tollgate: the sea-orm entities and connection, the shared cache
//! (in-process or Redis) with its invalidation bus, the at-rest secret box for channel
//! keys, and the in-memory catalog snapshot that the hot path reads instead of SQL.

pub mod availability;
pub mod cache;
pub mod catalog;
pub mod channel_health;
pub mod db;
pub mod entities;
pub mod error;
pub mod retention;
pub mod secret;
pub mod settings;
pub mod wire;

pub use availability::Availability;
pub use cache::{RedisLink, Shared};
pub use catalog::Catalog;
pub use deadpool_redis;
pub use error::StoreError;
pub use sea_orm;
pub use sea_orm::DatabaseConnection;

/// SHA-256 of a secret (API key, redemption code) as lowercase hex: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    hash_bytes(secret.as_bytes())
}

/// SHA-256 of a secret as raw bytes: how the catalog finds a key (its stored hex
/// decoded once at load), without hex text or a `String` per request.
pub fn digest_secret(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// SHA-256 of any bytes as lowercase hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secrets_digest_is_the_stored_hex_hash_decoded() {
        let secret = "sk-abc";
        assert_eq!(
            hex::encode(super::digest_secret(secret)),
            super::hash_secret(secret)
        );
    }
}
