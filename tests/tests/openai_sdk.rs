//! The official `openai` Python SDK (from PyPI) against the real gateway: plain,
//! raw-response and streaming chats, the model list and a bad key, then the money.

use tollgate_tests::python::run_sdk_script;
use tollgate_tests::{NORMAL_COST, Scenario};

const START: i64 = 1_000_000; // 1 credit in µc

/// The chat completions `tests/python/openai_sdk_check.py` makes that succeed: plain,
/// raw response, stream. `models.list` and the bad-key call are free.
const CHARGED_CHAT_CALLS: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_chats_through_the_gateway_and_is_charged_exactly() {
    let s = Scenario::start(1.0).await;

    let stdout = run_sdk_script("openai_sdk_check.py", &s.app.address, &s.key).await;
    eprintln!("{stdout}");

    // The upstream saw exactly the three chats, one of them streamed.
    let received = s.mock.received();
    assert_eq!(received.len() as i64, CHARGED_CHAT_CALLS, "{received:?}");
    assert_eq!(
        received.iter().filter(|r| r.body["stream"] == true).count(),
        1
    );

    s.app.settled().await;
    assert_eq!(
        s.app.balance(s.customer_id).await,
        START - CHARGED_CHAT_CALLS * NORMAL_COST
    );
    let ledger = s.app.ledger(s.customer_id).await;
    let consumes: Vec<_> = ledger.iter().filter(|t| t.kind == "consume").collect();
    assert_eq!(consumes.len() as i64, CHARGED_CHAT_CALLS, "{ledger:?}");
    assert!(
        consumes.iter().all(|t| t.amount == -NORMAL_COST),
        "{ledger:?}"
    );
    // The mint and the three charges, nothing else.
    assert_eq!(ledger.len() as i64, 1 + CHARGED_CHAT_CALLS, "{ledger:?}");
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}
