//! Small helpers shared by the handlers: paging, JSON shapes, nullable patches.

use serde::{Deserialize, Deserializer};

/// `page` (from 1) and `per_page` (default 20, at most 100).
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub page: Option<u64>,
    #[serde(default)]
    pub per_page: Option<u64>,
}

impl Paging {
    /// Page `page` of 20.
    pub fn at(page: u64) -> Self {
        Paging {
            page: Some(page),
            per_page: None,
        }
    }
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

/// Credits from a request field as micro-credits; a bad amount names the field.
pub fn micros_of(field: &'static str, credits: f64) -> Result<i64, crate::ApiError> {
    billing::credits_to_micros(credits).map_err(|e| match e {
        billing::BillingError::InvalidAmount(m) => crate::ApiError::invalid(field, m),
        other => crate::ApiError::from(other),
    })
}

/// A page of rows and how many there are in all.
pub type Page<T> = (Vec<T>, u64);
