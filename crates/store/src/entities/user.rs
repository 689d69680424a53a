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
