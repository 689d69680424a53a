//! Per-key limits beyond rpm: tokens per minute and requests in flight.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        for (column, big) in [("tpm", true), ("max_concurrency", false)] {
            let mut col = ColumnDef::new(Alias::new(column));
            if big {
                col.big_integer();
            } else {
                col.integer();
            }
            col.null();
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new("api_keys"))
                        .add_column(&mut col)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
