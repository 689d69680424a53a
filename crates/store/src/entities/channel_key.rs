//! One upstream key of a channel, encrypted at rest.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channel_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub channel_id: i64,
    /// AES-256-GCM ciphertext (base64 of nonce || ciphertext).
    pub secret: String,
    pub last4: String,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Every stored (encrypted) secret, for audits and tests.
    pub async fn find_all_secrets(db: &sea_orm::DatabaseConnection) -> Vec<String> {
        Entity::find()
            .all(db)
            .await
            .map(|rows| rows.into_iter().map(|k| k.secret).collect())
            .unwrap_or_default()
    }
}
