//! The process around the relay: health, readiness, graceful shutdown, and changes
//! reaching every instance.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::app::backend_name;
use tollgate_tests::{NORMAL_COST, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let s = Scenario::start(0.0).await;
    let r = s
        .app
        .http
        .get(format!("{}/healthz", s.app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .app
        .http
        .get(format!("{}/readyz", s.app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["database"], "ok");
    let expect_redis = if backend_name().ends_with("redis") {
        "ok"
    } else {
        "not configured"
    };
    assert_eq!(v["redis"], expect_redis);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_the_stream_in_flight_finish_and_flushes_its_charge() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Stop while the stream is still being read.
    let stopping = {
        let handle_app = &s.app;
        handle_app.stop_gracefully()
    };
    let (text, ()) = tokio::join!(async { resp.text().await.unwrap() }, stopping);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // After the stop the writer has flushed: the charge and generation are durable.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000 - NORMAL_COST);
    assert_eq!(s.app.generation(&gen_id).await.cost, NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_on_one_instance_works_on_another_within_a_second() {
    let s = Scenario::start(1.0).await;
    if !backend_name().ends_with("redis") {
        // One instance per database without Redis: the change is visible at once here.
        let (_, key) = s
            .app
            .create_key(&s.customer_token, json!({"name": "fresh"}))
            .await;
        assert_eq!(
            s.app
                .chat(&key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            200
        );
        s.stop().await;
        return;
    }
    let other = s.app.second_instance().await;
    let (key_id, key) = s
        .app
        .create_key(&s.customer_token, json!({"name": "fresh"}))
        .await;
    let started = Instant::now();
    loop {
        let r = other.chat(&key, Scenario::body("gpt-4o-mini")).await;
        if r.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the other instance did not learn the key in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Disabling it on the first instance stops it on the second, too.
    s.app
        .api(
            "PATCH",
            &format!("/api/keys/{key_id}"),
            &s.customer_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    let started = Instant::now();
    while other
        .chat(&key, Scenario::body("gpt-4o-mini"))
        .await
        .status()
        != 401
    {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the other instance kept accepting a disabled key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both instances charged the same wallet, exactly.
    other.settled().await;
    s.app.settled().await;
    let charged = 1_000_000 - s.app.balance(s.customer_id).await;
    assert_eq!(charged % NORMAL_COST, 0);
    assert!(charged >= NORMAL_COST);
    s.app.assert_ledger_consistent().await;
    other.stop_gracefully().await;
    s.stop().await;
}

/// SDKs keep an idle connection for a while and send the next request on it: the
/// OpenAI and Anthropic Python SDKs (httpx) for up to 5 s, Node's agents and reqwest
/// longer. A server that closes idle connections at the same 5 s races them: the
/// request goes out on a socket the server is closing, and the client sees the
/// connection reset (`IncompleteMessage`) for a request the gateway never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_for_six_seconds_still_takes_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Scenario::start(0.0).await;
    let addr = s.app.address.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = vec![0_u8; 4096];
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        conn.write_all(request.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the gateway answers")
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "request {round} on the kept connection: {head:?}"
        );
    }
    // A graceful stop still closes an idle connection at once (not after its 120 s).
    tokio::time::timeout(Duration::from_secs(5), s.stop())
        .await
        .expect("the stop does not wait for an idle connection");
    drop(conn);
}
