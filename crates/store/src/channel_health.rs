//! The SQL of channel health: a confirmed-dead key auto-disabled (and its channel with
//! its last key), a test's outcome recorded on the channel, and an auto-disabled channel
//! brought back after it passed its test. Never touches what an operator disabled.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};

use crate::catalog::{ChannelEntry, ChannelSecret, channel_entry_from};
use crate::entities::{channel, channel_key};
use crate::secret::SecretBox;

/// Marks an enabled key `auto_disabled` with `reason`, and its channel too when no
/// enabled key is left. Returns whether anything changed (false: the key was already
/// out of service, or an operator had disabled it).
pub async fn auto_disable_key(
    db: &DatabaseConnection,
    channel_id: i64,
    key_id: i64,
    reason: &str,
) -> Result<bool, DbErr> {
    let changed = channel_key::Entity::update_many()
        .col_expr(channel_key::Column::Status, Expr::value("auto_disabled"))
        .col_expr(channel_key::Column::DisabledReason, Expr::value(reason))
        .filter(channel_key::Column::Id.eq(key_id))
        .filter(channel_key::Column::Status.eq("enabled"))
        .exec(db)
        .await?;
    if changed.rows_affected == 0 {
        return Ok(false);
    }
    tracing::warn!(channel.id = channel_id, channel_key.id = key_id, reason = %reason, "channel key auto-disabled");
    let left = channel_key::Entity::find()
        .filter(channel_key::Column::ChannelId.eq(channel_id))
        .filter(channel_key::Column::Status.eq("enabled"))
        .count(db)
        .await?;
    let mut update =
        channel::Entity::update_many().col_expr(channel::Column::LastError, Expr::value(reason));
    if left == 0 {
        update = update
            .col_expr(channel::Column::Status, Expr::value("auto_disabled"))
            .col_expr(
                channel::Column::DisabledReason,
                Expr::value(format!("every key is disabled; last: {reason}")),
            );
        tracing::warn!(
            channel.id = channel_id,
            "channel auto-disabled: no usable key left"
        );
    }
    update
        .filter(channel::Column::Id.eq(channel_id))
        .filter(channel::Column::Status.eq("enabled"))
        .exec(db)
        .await?;
    Ok(true)
}

/// A channel and all its keys (enabled first), decrypted, straight from the database.
pub async fn load_channel(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    id: i64,
) -> Result<Option<(channel::Model, ChannelEntry, Vec<channel_key::Model>)>, DbErr> {
    let Some(row) = channel::Entity::find_by_id(id).one(db).await? else {
        return Ok(None);
    };
    let mut keys = channel_key::Entity::find()
        .filter(channel_key::Column::ChannelId.eq(id))
        .all(db)
        .await?;
    keys.sort_by_key(|k| (k.status != "enabled", k.id));
    let kind = crate::catalog::ChannelKind::parse(&row.kind);
    let secrets_list = keys
        .iter()
        .filter_map(|k| {
            secrets
                .open(&k.secret)
                .ok()
                .map(|secret| ChannelSecret::new(kind, k.id, secret))
        })
        .collect();
    let entry = channel_entry_from(row.clone(), secrets_list);
    Ok(Some((row, entry, keys)))
}

/// Records a test on the channel: its latency (and no error), or the error.
pub async fn record_test(
    db: &DatabaseConnection,
    id: i64,
    result: &Result<u64, String>,
) -> Result<(), DbErr> {
    let mut update = channel::Entity::update_many()
        .col_expr(channel::Column::LastTestAt, Expr::value(Utc::now()));
    update = match result {
        Ok(ms) => update
            .col_expr(
                channel::Column::ResponseMs,
                Expr::value(i32::try_from(*ms).unwrap_or(i32::MAX)),
            )
            .col_expr(
                channel::Column::LastError,
                Expr::value(Option::<String>::None),
            ),
        Err(e) => update.col_expr(channel::Column::LastError, Expr::value(e.clone())),
    };
    update.filter(channel::Column::Id.eq(id)).exec(db).await?;
    Ok(())
}

/// Records a try's error class as the channel's last error.
pub async fn record_error(db: &DatabaseConnection, id: i64, error: String) -> Result<(), DbErr> {
    channel::Entity::update_many()
        .col_expr(channel::Column::LastError, Expr::value(error))
        .filter(channel::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// The channels resting in `auto_disabled`.
pub async fn auto_disabled_channels(db: &DatabaseConnection) -> Result<Vec<channel::Model>, DbErr> {
    channel::Entity::find()
        .filter(channel::Column::Status.eq("auto_disabled"))
        .all(db)
        .await
}

/// Brings back an auto-disabled channel and the keys that passed its test (a key or a
/// channel an operator disabled stays as it is).
pub async fn re_enable(
    db: &DatabaseConnection,
    channel_id: i64,
    passed_keys: Vec<i64>,
) -> Result<(), DbErr> {
    channel_key::Entity::update_many()
        .col_expr(channel_key::Column::Status, Expr::value("enabled"))
        .col_expr(
            channel_key::Column::DisabledReason,
            Expr::value(Option::<String>::None),
        )
        .filter(channel_key::Column::Id.is_in(passed_keys))
        .filter(channel_key::Column::Status.ne("disabled"))
        .exec(db)
        .await?;
    channel::Entity::update_many()
        .col_expr(channel::Column::Status, Expr::value("enabled"))
        .col_expr(
            channel::Column::DisabledReason,
            Expr::value(Option::<String>::None),
        )
        .filter(channel::Column::Id.eq(channel_id))
        .filter(channel::Column::Status.eq("auto_disabled"))
        .exec(db)
        .await?;
    Ok(())
}
