//! Small helpers shared by the handlers: paging, JSON shapes, nullable patches.

use serde::{Deserialize, Deserializer};

/// `page` (from 1) and `per_page` (default 20, at most 100).
#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub page: Option<u64>,
    #[serde(default)]
    pub per_page: Option<u64>,
}

impl Paging {
    pub fn page(&self) -> u64 {
        self.page.unwrap_or(1).max(1)
    }
    pub fn per_page(&self) -> u64 {
        self.per_page.unwrap_or(20).clamp(1, 100)
    }
    pub fn offset(&self) -> u64 {
        (self.page() - 1) * self.per_page()
    }
}

/// Tells "absent" (`None`) from "null" (`Some(None)`) in a PATCH body.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Micro-credits as the JSON number of credits.
pub fn credits(micros: i64) -> serde_json::Value {
    serde_json::Value::from(billing::micros_to_credits(micros))
}
