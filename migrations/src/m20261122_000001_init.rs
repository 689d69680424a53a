//! The first schema: people, keys, channels, prices, generations, the ledger,
//! redemption codes and settings. Money columns are `BIGINT` micro-credits.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn ts(name: &'static str) -> ColumnDef {
    timestamp_with_time_zone(name)
}

fn ts_null(name: &'static str) -> ColumnDef {
    timestamp_with_time_zone_null(name)
}

fn create(name: &'static str, cols: Vec<ColumnDef>) -> TableCreateStatement {
    let mut table = Table::create();
    table.table(name).if_not_exists();
    for mut col in cols {
        table.col(&mut col);
    }
    table.take()
}

fn index(table: &'static str, name: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(name).table(table).if_not_exists();
    for col in cols {
        idx.col(*col);
    }
    idx.take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [
            create(
                "users",
                vec![
                    big_pk_auto("id"),
                    string_uniq("username"),
                    string("password_hash"),
                    string("role"),
                    string("group_name"),
                    big_integer_null("parent_id"),
                    string("status"),
                    big_integer("balance"),
                    big_integer("used"),
                    ts("created_at"),
                    ts("updated_at"),
                ],
            ),
            create(
                "api_keys",
                vec![
                    big_pk_auto("id"),
                    big_integer("user_id"),
                    string("name"),
                    string_uniq("key_hash"),
                    string("preview"),
                    string("status"),
                    big_integer("used"),
                    big_integer_null("credit_limit"),
                    ts_null("expires_at"),
                    text_null("models"),
                    text_null("allow_ips"),
                    integer_null("rpm"),
                    ts_null("last_used_at"),
                    ts("created_at"),
                ],
            ),
            create(
                "channels",
                vec![
                    big_pk_auto("id"),
                    string("name"),
                    string("kind"),
                    string("base_url"),
                    text("models"),
                    text("model_mapping"),
                    text("groups"),
                    integer("priority"),
                    integer("weight"),
                    text("headers"),
                    integer("timeout_s"),
                    string("status"),
                    integer_null("response_ms"),
                    ts_null("last_test_at"),
                    text_null("last_error"),
                    text_null("disabled_reason"),
                    ts("created_at"),
                ],
            ),
            create(
                "channel_keys",
                vec![
                    big_pk_auto("id"),
                    big_integer("channel_id"),
                    text("secret"),
                    string("last4"),
                    string("status"),
                    text_null("disabled_reason"),
                    ts("created_at"),
                ],
            ),
            create(
                "model_prices",
                vec![
                    string("model").primary_key().take(),
                    big_integer("input"),
                    big_integer("output"),
                    big_integer_null("cached_input"),
                    big_integer_null("per_request"),
                    big_integer_null("per_image"),
                    big_integer_null("per_second"),
                    ts("updated_at"),
                ],
            ),
            create(
                "group_multipliers",
                vec![
                    string("name").primary_key().take(),
                    big_integer("multiplier_ppm"),
                    ts("updated_at"),
                ],
            ),
            create(
                "generations",
                vec![
                    string("id").primary_key().take(),
                    string_null("upstream_id"),
                    big_integer("user_id"),
                    big_integer("key_id"),
                    big_integer_null("channel_id"),
                    string_null("provider_name"),
                    string("model"),
                    string_null("upstream_model"),
                    string("endpoint"),
                    boolean("streamed"),
                    boolean("cancelled"),
                    string_null("finish_reason"),
                    big_integer("tokens_prompt"),
                    big_integer("tokens_completion"),
                    big_integer("tokens_cached"),
                    big_integer("tokens_reasoning"),
                    big_integer("num_media"),
                    big_integer_null("latency_ms"),
                    big_integer_null("generation_time_ms"),
                    big_integer("cost"),
                    string("status"),
                    integer("status_code"),
                    text_null("error"),
                    string_null("client_ip"),
                    text_null("attempts"),
                    ts("created_at"),
                ],
            ),
            create(
                "transactions",
                vec![
                    big_pk_auto("id"),
                    big_integer("user_id"),
                    string("kind"),
                    big_integer("amount"),
                    big_integer("balance_after"),
                    string_null("reference"),
                    text_null("note"),
                    ts("created_at"),
                ],
            ),
            create(
                "redemption_codes",
                vec![
                    big_pk_auto("id"),
                    string("name"),
                    string_uniq("code_hash"),
                    big_integer("amount"),
                    string("status"),
                    big_integer("created_by"),
                    big_integer_null("used_by"),
                    ts_null("used_at"),
                    ts("created_at"),
                ],
            ),
            create(
                "settings",
                vec![string("name").primary_key().take(), text("value")],
            ),
        ];
        for table in tables {
            manager.create_table(table).await?;
        }
        let indexes = [
            index("users", "idx_users_parent", &["parent_id"]),
            index("api_keys", "idx_api_keys_user", &["user_id"]),
            index("channel_keys", "idx_channel_keys_channel", &["channel_id"]),
            index("generations", "idx_generations_upstream", &["upstream_id"]),
            index(
                "generations",
                "idx_generations_user",
                &["user_id", "created_at"],
            ),
            index("transactions", "idx_transactions_user", &["user_id", "id"]),
        ];
        for idx in indexes {
            manager.create_index(idx).await?;
        }
        Ok(())
    }
}
