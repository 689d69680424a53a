//! The official `openai` Python SDK (from PyPI) against the real gateway: plain,
//! raw-response and streaming chats, the model list and a bad key, then the money.

use std::path::Path;
use std::process::Command;

use tollgate_tests::python::venv_python;
use tollgate_tests::{NORMAL_COST, Scenario};

const START: i64 = 1_000_000; // 1 credit in µc

/// The chat completions `tests/python/openai_sdk_check.py` makes that succeed: plain,
/// raw response, stream. `models.list` and the bad-key call are free.
const CHARGED_CHAT_CALLS: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_chats_through_the_gateway_and_is_charged_exactly() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let s = Scenario::start(1.0).await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("openai_sdk_check.py");
    let (address, key) = (s.app.address.clone(), s.key.clone());
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .env("TOLLGATE_BASE_URL", address)
            .env("TOLLGATE_KEY", key)
            .env("PYTHONUNBUFFERED", "1");
        // The script only talks to 127.0.0.1: no proxy, and no SDK settings from the
        // environment.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.output()
    })
    .await
    .unwrap()
    .expect("run the SDK script with the venv's python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the openai SDK script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("all checks passed"),
        "the script ended early:\n{stdout}\n{stderr}"
    );
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
