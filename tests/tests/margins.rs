//! Margins (issue 14.4): a channel's upstream cost per model, recorded on every
//! generation it serves beside the price charged, and `GET /api/stats/margin` grouped
//! by model, channel, day and reseller, checked against sums worked out by hand.

use serde_json::{Value, json};
use tollgate_tests::app::{ROOT_PASSWORD, generation_id};
use tollgate_tests::{NORMAL_COST, Scenario};

/// 12 prompt and 30 completion tokens at 0.05 / 0.2 credits per 1M:
/// ceil(12 × 50,000 + 30 × 200,000) / 1M = ceil(6.6) = 7 µc.
const MINI_UPSTREAM: i64 = 7;

fn micros(v: &Value) -> i64 {
    (v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) * 1e6).round() as i64
}

async fn call(s: &Scenario, key: &str, model: &str) -> String {
    let resp = s.app.chat(key, Scenario::body(model)).await;
    let id = generation_id(&resp);
    resp.bytes().await.unwrap();
    id
}

async fn margin(s: &Scenario, query: &str) -> Value {
    let (status, v) = s
        .app
        .api(
            "GET",
            &format!("/api/stats/margin{query}"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{query}: {v}");
    v
}

fn item<'a>(v: &'a Value, key: &Value) -> &'a Value {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| &i["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margins_are_revenue_less_each_serving_channels_cost_by_model_channel_day_and_reseller() {
    let s = Scenario::start(5.0).await;
    // Channel 1 (the scenario's) pays 0.05 / 0.2 per 1M for gpt-4o-mini and half the
    // list price for reasoner; channel 2 pays 1.2 × the list price for gpt-4o.
    let (status, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            Some(json!({"costs": {"gpt-4o-mini": {"input": 0.05, "output": 0.2}, "reasoner": {"ratio": 0.5}}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["costs"]["reasoner"]["ratio"], 0.5);
    let second = s
        .app
        .add_channel(
            "pricey",
            &s.mock.base_url,
            &["gpt-4o"],
            json!({"costs": {"gpt-4o": {"ratio": 1.2}}}),
        )
        .await;
    s.app.set_price("gpt-4o", 0.1, 0.4).await;
    let (status, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{second}"),
            &s.app.root_token,
            Some(json!({"costs": {"gpt-4o": {"input": -1}}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");

    // A reseller with a customer of its own.
    let reseller = s.app.create_user("resell", "reseller").await;
    s.app.mint(reseller, 2.0).await;
    let reseller_token = s.app.login("resell", "password-123").await;
    let (_, sub) = s
        .app
        .api(
            "POST",
            "/api/users",
            &reseller_token,
            Some(json!({"username": "subby", "password": "password-123", "role": "customer"})),
        )
        .await;
    let sub_id = sub["id"].as_i64().unwrap();
    s.app
        .api(
            "POST",
            &format!("/api/users/{sub_id}/credits"),
            &reseller_token,
            Some(json!({"amount": 1})),
        )
        .await;
    let sub_token = s.app.login("subby", "password-123").await;
    let (_, sub_key) = s.app.create_key(&sub_token, json!({"name": "k"})).await;

    let mini = [
        call(&s, &s.key, "gpt-4o-mini").await,
        call(&s, &s.key, "gpt-4o-mini").await,
        call(&s, &sub_key, "gpt-4o-mini").await,
    ];
    let reasoner = call(&s, &s.key, "reasoner").await;
    let pricey = call(&s, &sub_key, "gpt-4o").await;
    let failed = call(&s, &s.key, "fail-500").await;
    s.app.settled().await;

    // Each generation records what its channel's upstream charged.
    for id in &mini {
        let g = s.app.generation(id).await;
        assert_eq!((g.cost, g.upstream_cost), (NORMAL_COST, MINI_UPSTREAM));
    }
    let r = s.app.generation(&reasoner).await;
    assert_eq!(
        r.upstream_cost,
        (r.cost + 1) / 2,
        "half the list price, rounded up"
    );
    let p = s.app.generation(&pricey).await;
    assert_eq!(p.upstream_cost, (p.cost * 12 + 9) / 10);
    assert!(p.upstream_cost > p.cost);
    assert_eq!(s.app.generation(&failed).await.upstream_cost, 0);

    let by_model = margin(&s, "?group_by=model").await;
    let m = item(&by_model, &json!("gpt-4o-mini"));
    assert_eq!(m["requests"], 3);
    assert_eq!(micros(&m["revenue"]), 3 * NORMAL_COST);
    assert_eq!(micros(&m["upstream_cost"]), 3 * MINI_UPSTREAM);
    assert_eq!(micros(&m["margin"]), 3 * (NORMAL_COST - MINI_UPSTREAM));
    assert_eq!(m["below_cost"], false);
    let g = item(&by_model, &json!("gpt-4o"));
    assert_eq!(g["below_cost"], true);
    assert_eq!(micros(&g["margin"]), p.cost - p.upstream_cost);
    assert!(
        by_model["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["key"] != "fail-500"),
        "a failed call earns and costs nothing"
    );
    let revenue = 3 * NORMAL_COST + r.cost + p.cost;
    let upstream = 3 * MINI_UPSTREAM + r.upstream_cost + p.upstream_cost;
    assert_eq!(by_model["totals"]["requests"], 5);
    assert_eq!(micros(&by_model["totals"]["revenue"]), revenue);
    assert_eq!(micros(&by_model["totals"]["upstream_cost"]), upstream);
    assert_eq!(micros(&by_model["totals"]["margin"]), revenue - upstream);
    let flagged = &by_model["priced_below_cost"];
    assert_eq!(flagged.as_array().unwrap().len(), 1, "{flagged}");
    assert_eq!(flagged[0]["model"], "gpt-4o");
    assert_eq!(flagged[0]["channel_id"], second);

    let by_channel = margin(&s, "?group_by=channel").await;
    let c1 = item(&by_channel, &json!(s.channel_id.to_string()));
    assert_eq!(c1["requests"], 4);
    assert_eq!(
        micros(&c1["upstream_cost"]),
        3 * MINI_UPSTREAM + r.upstream_cost
    );
    let c2 = item(&by_channel, &json!(second.to_string()));
    assert_eq!(micros(&c2["revenue"]), p.cost);

    let by_reseller = margin(&s, "?group_by=reseller").await;
    let direct = item(&by_reseller, &Value::Null);
    assert_eq!(direct["requests"], 3, "the platform's own customer");
    let theirs = item(&by_reseller, &json!(reseller.to_string()));
    assert_eq!(theirs["requests"], 2);
    assert_eq!(micros(&theirs["revenue"]), NORMAL_COST + p.cost);

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let by_day = margin(&s, "?group_by=day").await;
    assert_eq!(by_day["items"].as_array().unwrap().len(), 1, "{by_day}");
    assert_eq!(item(&by_day, &json!(today))["requests"], 5);
    let none = margin(&s, "?group_by=day&to=2020-01-01T00:00:00Z").await;
    assert_eq!(none["items"], json!([]));

    // Admins only; a bad grouping is a 400.
    let (status, _) = s
        .app
        .api("GET", "/api/stats/margin", &reseller_token, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .app
        .api(
            "GET",
            "/api/stats/margin?group_by=planet",
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 400);

    // The console page shows the same totals and the flag.
    let root = s.app.console("root", ROOT_PASSWORD).await;
    let page = root.get("/console/margins?group_by=model").await;
    assert_eq!(page.status, 200);
    let shown = |micros: i64| {
        let frac = format!("{:06}", micros % 1_000_000);
        let frac = frac.trim_end_matches('0');
        format!("{}.{:0<2}", micros / 1_000_000, frac)
    };
    assert!(page.body.contains("id=\"below-cost\""), "{}", page.body);
    assert!(page.body.contains("<svg class=\"chart\""));
    for (id, micros) in [
        ("margin-revenue", revenue),
        ("margin-cost", upstream),
        ("margin-total", revenue - upstream),
    ] {
        let want = format!("id=\"{id}\">{}<", shown(micros));
        assert!(page.body.contains(&want), "{want}: {}", page.body);
    }
    let channel_form = root
        .get(&format!("/console/channels/{}", s.channel_id))
        .await;
    assert!(
        channel_form.body.contains("gpt-4o-mini=0.05/0.2"),
        "{}",
        channel_form.body
    );
    s.stop().await;
}
