//! The failed-image rule (官方返回空图失败不扣费, "an empty image from the provider is a
//! failure and is not charged"): an image generation or edit is charged per image
//! actually returned with data — a URL or non-empty base64 — and an answer with no
//! usable image costs nothing.

use serde_json::Value;

/// How many images in an OpenAI-shaped images answer (`{"data": [{"url"|"b64_json"}]}`)
/// carry data.
pub fn usable_images(answer: &Value) -> i64 {
    let Some(items) = answer.get("data").and_then(Value::as_array) else {
        return 0;
    };
    let usable = items
        .iter()
        .filter(|item| {
            let has = |field: &str| {
                item.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty())
            };
            has("url") || has("b64_json")
        })
        .count();
    i64::try_from(usable).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Cost, Price, Usage};

    fn cost(answer: &Value) -> i64 {
        let price = Price {
            per_image: Some(40_000),
            ..Price::default()
        };
        price.cost(
            &Usage {
                images: usable_images(answer),
                ..Usage::default()
            },
            1_000_000,
        )
    }

    #[test]
    fn every_image_with_a_url_or_base64_is_charged() {
        let answer = json!({"created": 1, "data": [{"url": "https://img/1.png"}, {"b64_json": "iVBORw0KGgo="}]});
        assert_eq!(usable_images(&answer), 2);
        assert_eq!(cost(&answer), 80_000);
    }

    #[test]
    fn n_requested_and_n_minus_one_usable_costs_n_minus_one() {
        let answer = json!({"data": [{"url": "https://img/1.png"}, {"url": ""}, {"b64_json": "AAAA"}, {"revised_prompt": "x"}]});
        assert_eq!(usable_images(&answer), 2);
        assert_eq!(cost(&answer), 80_000);
    }

    #[test]
    fn an_answer_without_a_usable_image_costs_nothing() {
        for answer in [
            json!({"data": []}),
            json!({"data": [{"url": null}, {"b64_json": "  "}]}),
            json!({"error": {"message": "x"}}),
            json!({}),
        ] {
            assert_eq!(usable_images(&answer), 0, "{answer}");
            assert_eq!(cost(&answer), 0);
        }
    }
}
