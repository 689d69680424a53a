//! What the relay needs of the money side, as two small traits: the wallet's holds
//! ([`Funds`]) and the ledger writer's queue ([`Records`]). The process uses
//! [`billing::Wallet`] and [`billing::LedgerWriter`]; tests of the pipeline, the retry
//! loop and settlement use plain in-memory ones, with no database.

use std::future::Future;
use std::pin::Pin;

use billing::{Account, BillingError, Charge, GenerationRecord, Hold, LedgerWriter, Wallet};

/// A boxed future borrowing its receiver.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Holds on a user's (and a limited key's) money while a request runs.
pub trait Funds: Send + Sync {
    /// Reserves `amount`, all or nothing (`Insufficient` when either account is short).
    fn reserve(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        amount: i64,
    ) -> Pending<'_, Result<Hold, BillingError>>;
    /// Settles a hold at `cost` (never more than held); returns the charge now pending
    /// for the writer.
    fn settle(&self, hold: Hold, cost: i64) -> Pending<'_, Result<i64, BillingError>>;
    /// Gives a hold back whole.
    fn release(&self, hold: Hold) -> Pending<'_, Result<(), BillingError>>;
    /// What an account may still spend (`None`: unknown to the wallet).
    fn available(&self, account: Account) -> Pending<'_, Result<Option<i64>, BillingError>>;
}

/// The queue of generation records (and their charges) for the database.
pub trait Records: Send + Sync {
    /// Queues a record; it is committed within the writer's next batch.
    fn submit(&self, record: GenerationRecord, charge: Option<Charge>);
    /// Whether a new request may start (waits a little while the backlog drains).
    fn admit(&self) -> Pending<'_, bool>;
    /// Whether new requests are refused now (backlog full, database away).
    fn refuses(&self) -> bool;
}

impl Funds for Wallet {
    fn reserve(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        amount: i64,
    ) -> Pending<'_, Result<Hold, BillingError>> {
        Box::pin(Wallet::reserve(self, user_id, key_id, amount))
    }

    fn settle(&self, hold: Hold, cost: i64) -> Pending<'_, Result<i64, BillingError>> {
        Box::pin(Wallet::settle(self, hold, cost))
    }

    fn release(&self, hold: Hold) -> Pending<'_, Result<(), BillingError>> {
        Box::pin(Wallet::release(self, hold))
    }

    fn available(&self, account: Account) -> Pending<'_, Result<Option<i64>, BillingError>> {
        Box::pin(Wallet::available(self, account))
    }
}

impl Records for LedgerWriter {
    fn submit(&self, record: GenerationRecord, charge: Option<Charge>) {
        LedgerWriter::submit(self, record, charge);
    }

    fn admit(&self) -> Pending<'_, bool> {
        Box::pin(LedgerWriter::admit(self))
    }

    fn refuses(&self) -> bool {
        LedgerWriter::refuses(self)
    }
}
