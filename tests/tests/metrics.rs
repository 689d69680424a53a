//! `GET /metrics`: Prometheus scrapes requests, settlements, the ledger backlog and the
//! breakers, with labels only from what Tollgate knows.

use serde_json::json;
use tollgate_tests::Scenario;

async fn scrape(s: &Scenario) -> String {
    let resp = s
        .app
        .http
        .get(format!("{}/metrics", s.app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_requests_by_status_settlements_backlog_and_breakers() {
    let s = Scenario::start(1.0).await;
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("fail-500"))
            .await
            .status(),
        502
    );
    // A model nobody serves: refused before admission, so its name is no label.
    let unknown = s
        .app
        .chat(&s.key, json!({"model": "made-up-123", "messages": []}))
        .await;
    assert_eq!(unknown.status(), 404);
    s.app.settled().await;
    let text = scrape(&s).await;
    for line in [
        r#"tollgate_requests_total{endpoint="/v1/chat/completions",model="gpt-4o-mini",status="200"} 1"#,
        r#"tollgate_requests_total{endpoint="/v1/chat/completions",model="fail-500",status="502"} 1"#,
        r#"tollgate_requests_total{endpoint="/v1/chat/completions",model="",status="404"} 1"#,
        r#"tollgate_settlements_total{outcome="charged"} 1"#,
        r#"tollgate_settlements_total{outcome="released"} 1"#,
        "tollgate_ledger_backlog 0",
        "tollgate_charge_shortfalls_total 0",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    assert!(!text.contains("made-up-123"), "{text}");
    let channel = format!("tollgate_breaker_open{{channel=\"{}\"}} 0", s.channel_id);
    assert!(text.contains(&channel), "{text}");
    let ttfb = format!(
        "tollgate_upstream_ttfb_seconds_count{{channel=\"{}\"}} 1",
        s.channel_id
    );
    assert!(text.contains(&ttfb), "{text}");
    assert!(
        text.contains("tollgate_request_duration_seconds_bucket{"),
        "{text}"
    );
    s.stop().await;
}
