//! A person: admin, reseller or customer, with its balance.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub group_name: String,
    pub parent_id: Option<i64>,
    pub status: String,
    pub balance: i64,
    pub used: i64,
    /// Bumped by every change of `balance`: wallet counters apply a newer one only.
    pub rev: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}

impl ActiveModel {
    /// A new enabled user with no balance yet (credits come through the ledger).
    pub fn enabled(
        username: String,
        password_hash: String,
        role: crate::catalog::Role,
        group: String,
        parent_id: Option<i64>,
    ) -> Self {
        use sea_orm::ActiveValue::Set;
        let now = chrono::Utc::now();
        ActiveModel {
            username: Set(username),
            password_hash: Set(password_hash),
            role: Set(role.as_str().to_owned()),
            group_name: Set(group),
            parent_id: Set(parent_id),
            status: Set("enabled".to_owned()),
            balance: Set(0),
            used: Set(0),
            // Explicit, not the column default: SQLite can return NULL for a
            // default of a column added by ALTER TABLE in `RETURNING`.
            rev: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
    }
}
