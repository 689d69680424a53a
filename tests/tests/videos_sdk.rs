//! The official `openai` Python SDK's videos API (from PyPI) against the real gateway
//! and a mock Sora upstream: its own poller, content download, remix, list, delete and
//! a failed video; then the money.

use serde_json::json;
use tollgate_tests::mock_sora::MockSora;
use tollgate_tests::python::run_sdk_script;
use tollgate_tests::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_makes_videos_through_the_gateway_and_is_charged_exactly() {
    let app = spawn_app().await;
    let sora = MockSora::start().await;
    app.add_channel("sora", &sora.base_url, &["sora-2", "sora-fail"], json!({}))
        .await;
    for model in ["sora-2", "sora-fail"] {
        app.set_price_with(model, json!({"per_second": 0.1})).await;
    }
    let (user, key) = app.customer_with_key("sdk-filmmaker", 10.0).await;

    let stdout = run_sdk_script("openai_videos_check.py", &app.address, &key).await;
    eprintln!("{stdout}");
    assert_eq!(stdout.matches("ok: ").count(), 6, "{stdout}");

    // Two 8-second videos made (the original and its remix); the failed one and the
    // unknown model cost nothing.
    assert_eq!(app.balance(user).await, 10_000_000 - 2 * 800_000);
    let kinds: Vec<String> = app.ledger(user).await.into_iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        ["mint", "task_hold", "task_hold", "task_hold", "task_refund"],
        "{kinds:?}"
    );
    app.assert_ledger_consistent().await;
    sora.stop().await;
}
