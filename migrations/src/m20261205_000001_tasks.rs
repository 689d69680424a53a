//! Asynchronous tasks (API.md §4): one row per submitted job, whatever its family. The
//! row carries the money held for it, the upstream that took it, the state the poller
//! follows, and a lease so that any number of instances poll without doing a task twice.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn index(name: &'static str, cols: &[&'static str], unique: bool) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(name).table("tasks").if_not_exists();
    if unique {
        idx.unique();
    }
    for col in cols {
        idx.col(*col);
    }
    idx.take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut table = Table::create();
        table.table("tasks").if_not_exists();
        for mut col in [
            // Tollgate's id, also the task's generation id.
            {
                let mut id = string("id");
                id.primary_key();
                id
            },
            big_integer("user_id"),
            big_integer("key_id"),
            // `videos`, later `midjourney`, `suno`, ...
            string("family"),
            // `generate`, `remix`, ...
            string("action"),
            string("model"),
            string_null("parent_id"),
            big_integer_null("channel_id"),
            big_integer_null("channel_key_id"),
            string_null("upstream_model"),
            string_null("upstream_task_id"),
            // Where the upstream took it (Kling's task lives under its create path).
            string_null("upstream_path"),
            // queued | in_progress | succeeded | failed | cancelled | expired
            string("state"),
            string_null("upstream_status"),
            integer("progress"),
            // The price the task was held at (JSON), and the units it was held for.
            text("pricing"),
            big_integer("held"),
            big_integer("charged"),
            string_null("idempotency_key"),
            string_null("request_hash"),
            // What the family's answers echo back (prompt, seconds, size, ...), JSON.
            text("meta"),
            // The finished result as the upstream described it (JSON), never shown raw.
            text_null("result"),
            text_null("error"),
            timestamp_with_time_zone("created_at"),
            timestamp_with_time_zone("updated_at"),
            timestamp_with_time_zone_null("finished_at"),
            timestamp_with_time_zone("next_poll_at"),
            integer("attempts"),
            timestamp_with_time_zone("deadline_at"),
            string_null("lease_owner"),
            timestamp_with_time_zone_null("lease_until"),
            timestamp_with_time_zone_null("deleted_at"),
            // The client's callback: tries so far, and when the next is due (none
            // pending when null).
            integer("hook_attempts"),
            timestamp_with_time_zone_null("hook_next_at"),
            big_integer("version"),
        ] {
            table.col(&mut col);
        }
        manager.create_table(table.take()).await?;
        for idx in [
            index("idx_tasks_due", &["state", "next_poll_at"], false),
            index("idx_tasks_user", &["user_id", "family", "id"], false),
            index("idx_tasks_hooks", &["hook_next_at"], false),
            index(
                "idx_tasks_idempotency",
                &["key_id", "idempotency_key"],
                true,
            ),
        ] {
            manager.create_index(idx).await?;
        }
        Ok(())
    }
}
