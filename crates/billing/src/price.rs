//! Prices and metering: what a request used, and what that costs in micro-credits.

pub use store::catalog::Price;

/// What one request used, as the upstream reported it (or as counted locally).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub prompt_tokens: i64,
    /// All output tokens, reasoning tokens included.
    pub completion_tokens: i64,
    /// The part of `prompt_tokens` served from the provider's prompt cache.
    pub cached_tokens: i64,
    /// The part of `prompt_tokens` written to the provider's prompt cache.
    pub cache_write_tokens: i64,
    /// The part of `completion_tokens` spent on reasoning (billed as output).
    pub reasoning_tokens: i64,
    /// Images returned with data.
    pub images: i64,
    /// Seconds of audio or video.
    pub seconds: i64,
}

/// Parts of a micro-credit per micro-credit in the intermediate sum: token prices are
/// per 1M tokens, multipliers are parts per million.
const SCALE: i128 = 1_000_000;

/// What a [`Price`] (loaded with the catalog) makes of a request's usage.
pub trait Cost {
    /// The cost of `usage` at this price under a group multiplier (parts per million),
    /// rounded up to a whole micro-credit once, at the end.
    fn cost(&self, usage: &Usage, multiplier_ppm: i64) -> i64;
}

impl Cost for Price {
    fn cost(&self, usage: &Usage, multiplier_ppm: i64) -> i64 {
        let prompt = i128::from(usage.prompt_tokens.max(0));
        let cached = i128::from(usage.cached_tokens.clamp(0, usage.prompt_tokens.max(0)));
        let written = i128::from(usage.cache_write_tokens.max(0)).min(prompt - cached);
        let completion = i128::from(usage.completion_tokens.max(0));
        let cached_price = self.cached_input.unwrap_or(self.input);
        // Cache writes default to 1.25 × input: the whole sum is kept in quarters so
        // that default stays exact.
        let written_quarters = match self.cache_write {
            Some(p) => written * i128::from(p) * 4,
            None => written * i128::from(self.input) * 5,
        };
        // Sum in units of ¼ × 10⁻⁶ µc.
        let mut sum = 4
            * ((prompt - cached - written) * i128::from(self.input)
                + cached * i128::from(cached_price)
                + completion * i128::from(self.output))
            + written_quarters;
        if let Some(p) = self.per_request {
            sum += 4 * i128::from(p) * SCALE;
        }
        if let Some(p) = self.per_image {
            sum += 4 * i128::from(p) * i128::from(usage.images.max(0)) * SCALE;
        }
        if let Some(p) = self.per_second {
            sum += 4 * i128::from(p) * i128::from(usage.seconds.max(0)) * SCALE;
        }
        let scaled = sum * i128::from(multiplier_ppm.max(0));
        let denom = 4 * SCALE * SCALE;
        let cost = (scaled + denom - 1) / denom;
        i64::try_from(cost).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: i64 = 1_000_000;

    fn mini() -> Price {
        // 0.15 credits / 1M input, 0.60 / 1M output.
        Price {
            input: 150_000,
            output: 600_000,
            ..Price::default()
        }
    }

    #[test]
    fn token_cost_is_exact_and_rounded_up_once() {
        let u = Usage {
            prompt_tokens: 12,
            completion_tokens: 30,
            ..Usage::default()
        };
        // 12 × 0.15 + 30 × 0.6 = 1.8 + 18 = 19.8 µc → 20 µc.
        assert_eq!(mini().cost(&u, ONE), 20);
    }

    #[test]
    fn cache_writes_cost_a_quarter_more_than_input_unless_priced() {
        // Claude-like: 3 credits / 1M input, 15 / 1M output.
        let sonnet = Price {
            input: 3_000_000,
            output: 15_000_000,
            ..Price::default()
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(sonnet.cost(&u, ONE), 3_750_000);
        // An input price whose quarter is not a whole µc per 1M stays exact:
        // 3 tokens written at 1.25 × 1 µc/1M = 3.75 × 10⁻⁶ µc → 1 µc.
        let tiny = Price {
            input: 1,
            ..Price::default()
        };
        let three = Usage {
            prompt_tokens: 3,
            cache_write_tokens: 3,
            ..Usage::default()
        };
        assert_eq!(tiny.cost(&three, ONE), 1);
        let priced = Price {
            cache_write: Some(6_000_000),
            ..sonnet
        };
        // 400k written at 6, 100k cached at input (no cached price), 500k plain at 3.
        let mixed = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 100_000,
            cache_write_tokens: 400_000,
            ..Usage::default()
        };
        assert_eq!(priced.cost(&mixed, ONE), 2_400_000 + 300_000 + 1_500_000);
    }

    #[test]
    fn a_million_tokens_cost_exactly_the_list_price() {
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(mini().cost(&u, ONE), 750_000);
    }

    #[test]
    fn cached_prompt_tokens_use_the_cached_price_when_set() {
        let p = Price {
            cached_input: Some(75_000),
            ..mini()
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 400_000,
            ..Usage::default()
        };
        // 600k × 0.15 + 400k × 0.075 = 90 000 + 30 000.
        assert_eq!(p.cost(&u, ONE), 120_000);
        // Without a cached price, cached tokens cost the input price.
        assert_eq!(mini().cost(&u, ONE), 150_000);
    }

    #[test]
    fn the_group_multiplier_applies_before_rounding() {
        let u = Usage {
            prompt_tokens: 12,
            completion_tokens: 30,
            ..Usage::default()
        };
        // 19.8 × 1.5 = 29.7 → 30.
        assert_eq!(mini().cost(&u, 1_500_000), 30);
        // 19.8 × 0.5 = 9.9 → 10.
        assert_eq!(mini().cost(&u, 500_000), 10);
    }

    #[test]
    fn unit_prices_add_per_request_image_and_second() {
        let p = Price {
            per_request: Some(1_000),
            per_image: Some(40_000),
            per_second: Some(10),
            ..Price::default()
        };
        let u = Usage {
            images: 2,
            seconds: 3,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u, ONE), 1_000 + 80_000 + 30);
        let none = Usage::default();
        assert_eq!(
            Price {
                per_image: Some(40_000),
                ..Price::default()
            }
            .cost(&none, ONE),
            0
        );
    }

    #[test]
    fn zero_usage_costs_nothing() {
        assert_eq!(mini().cost(&Usage::default(), ONE), 0);
    }
}
