//! Trust rules: a revision on every balance and key limit (so wallet counters follow
//! the database in order, whatever order the updates arrive in), the prompt-cache write
//! price and each model's own output ceiling (so holds are upper bounds), and the cache
//! writes on each generation (so its cost can be recomputed from its row).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `(table, column, NOT NULL DEFAULT 0)`: SQLite adds one column per statement.
const COLUMNS: [(&str, &str, bool); 5] = [
    ("users", "rev", true),
    ("api_keys", "rev", true),
    ("model_prices", "cache_write", false),
    ("model_prices", "max_output_tokens", false),
    ("generations", "tokens_cache_write", true),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column, counted) in COLUMNS {
            let mut col = ColumnDef::new(Alias::new(column));
            col.big_integer();
            if counted {
                col.not_null().default(0);
            } else {
                col.null();
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .add_column(&mut col)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
