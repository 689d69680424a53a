//! Margins: what a channel's upstream charges (per model), and on every generation the
//! upstream cost of the channel that served it, beside the price charged; and an index
//! on generations by time (retention and exports walk them across users).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("channels"))
                    .add_column(ColumnDef::new(Alias::new("costs")).text().null())
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("generations"))
                    .add_column(
                        ColumnDef::new(Alias::new("upstream_cost"))
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .take(),
            )
            .await?;
        // Retention and exports walk generations by time, across every user.
        manager
            .create_index(
                Index::create()
                    .name("idx_generations_created")
                    .table(Alias::new("generations"))
                    .col(Alias::new("created_at"))
                    .col(Alias::new("id"))
                    .take(),
            )
            .await?;
        Ok(())
    }
}
