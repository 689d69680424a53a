//! The one migration set Tollgate applies at startup, on SQLite and Postgres alike.
//!
//! A migration file is never renamed or edited once it has shipped; a change to the
//! schema is a new file appended to [`Migrator::migrations`].

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261130_000001_trust;
mod m20261205_000001_tasks;
mod m20261205_000002_key_limits;
mod m20261205_000003_margins;

/// Applies every migration in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261130_000001_trust::Migration),
            Box::new(m20261205_000001_tasks::Migration),
            Box::new(m20261205_000002_key_limits::Migration),
            Box::new(m20261205_000003_margins::Migration),
        ]
    }
}
