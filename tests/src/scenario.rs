//! The usual arrangement: a mock upstream behind one channel, priced models, and a
//! customer with credits and a key.

use serde_json::json;

use crate::app::spawn_app_with;
use crate::{MockOpenAi, TestApp};

/// Credits per 1M input tokens of the models the scenario prices.
pub const INPUT_PRICE: f64 = 0.15;
/// Credits per 1M output tokens of the models the scenario prices.
pub const OUTPUT_PRICE: f64 = 0.6;
/// What a normal mock answer (12 prompt, 30 completion tokens) costs: 19.8 µc, rounded up.
pub const NORMAL_COST: i64 = 20;

/// A gateway, a mock, and a customer ready to call.
pub struct Scenario {
    pub app: TestApp,
    pub mock: MockOpenAi,
    pub channel_id: i64,
    pub customer_id: i64,
    pub customer_token: String,
    pub key: String,
    pub key_id: i64,
}

impl Scenario {
    /// One channel serving `gpt-4o-mini` (and the mock's behaviour models), priced;
    /// a customer with `credits`.
    pub async fn start(credits: f64) -> Self {
        Self::start_with(credits, |_| {}).await
    }

    /// Like [`Scenario::start`], letting the test adjust the gateway's configuration.
    pub async fn start_with(credits: f64, adjust: impl FnOnce(&mut gateway::Config)) -> Self {
        let app = spawn_app_with(adjust).await;
        let mock = MockOpenAi::start().await;
        let models = [
            "gpt-4o-mini",
            "no-usage",
            "slow-stream",
            "reasoner",
            "fail-500",
            "fail-429",
            "bad-request",
            "cut-stream",
            "slow",
        ];
        let channel_id = app
            .add_channel("mock", &mock.base_url, &models, json!({}))
            .await;
        for m in models {
            app.set_price(m, INPUT_PRICE, OUTPUT_PRICE).await;
        }
        let customer_id = app.create_user("alice", "customer").await;
        if credits > 0.0 {
            app.mint(customer_id, credits).await;
        }
        let customer_token = app.login("alice", "password-123").await;
        let (key_id, key) = app
            .create_key(&customer_token, json!({"name": "test"}))
            .await;
        Scenario {
            app,
            mock,
            channel_id,
            customer_id,
            customer_token,
            key,
            key_id,
        }
    }

    /// A chat body for `model`.
    pub fn body(model: &str) -> serde_json::Value {
        json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
    }

    /// Stops everything, after checking that the ledger verifies: every test that uses a
    /// scenario ends with balance = Σ ledger for every user.
    pub async fn stop(self) {
        self.app.verify_ledger().await;
        self.mock.stop().await;
        self.app.stop().await;
    }
}
