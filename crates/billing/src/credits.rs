//! Conversions between credits as clients write them (JSON numbers with at most six
//! decimals) and the integer micro-credits every balance is kept in.

use crate::BillingError;

/// Micro-credits in one credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// Converts a client's credit amount to micro-credits, exactly: refuses more than six
/// decimals, non-finite numbers and amounts beyond ±9 billion credits.
pub fn credits_to_micros(credits: f64) -> Result<i64, BillingError> {
    if !credits.is_finite() || credits.abs() > 9.0e9 {
        return Err(BillingError::InvalidAmount(format!(
            "{credits} is not a usable credit amount"
        )));
    }
    let scaled = credits * MICROS_PER_CREDIT as f64;
    let rounded = scaled.round();
    // A number written with at most six decimals lands within float noise of an integer.
    if (scaled - rounded).abs() > 1e-3 {
        return Err(BillingError::InvalidAmount(format!(
            "{credits} has more than 6 decimals"
        )));
    }
    #[expect(clippy::cast_possible_truncation, reason = "bounded to ±9e15 above")]
    Ok(rounded as i64)
}

/// Micro-credits as a credit number for JSON (exact for any balance below 2^53 µc).
pub fn micros_to_credits(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_CREDIT as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_amounts_with_six_decimals_convert_exactly() {
        assert_eq!(credits_to_micros(0.15).unwrap(), 150_000);
        assert_eq!(credits_to_micros(2.5).unwrap(), 2_500_000);
        assert_eq!(credits_to_micros(0.000001).unwrap(), 1);
        assert_eq!(credits_to_micros(-12.345678).unwrap(), -12_345_678);
        assert_eq!(credits_to_micros(123456.789012).unwrap(), 123_456_789_012);
    }

    #[test]
    fn more_than_six_decimals_or_nonsense_is_refused() {
        assert!(credits_to_micros(0.0000001).is_err());
        assert!(credits_to_micros(f64::NAN).is_err());
        assert!(credits_to_micros(1e12).is_err());
    }

    #[test]
    fn micro_credits_print_as_short_decimals() {
        assert_eq!(micros_to_credits(123).to_string(), "0.000123");
        assert_eq!(micros_to_credits(1_500_000).to_string(), "1.5");
    }
}
