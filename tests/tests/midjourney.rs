//! Midjourney end to end: the midjourney-proxy shape (`/mj/...`) served by a
//! `midjourney` channel (a mock proxy that checks `mj-api-secret`), with the money:
//! each action at its own price, charged once on success, nothing on a refusal or a
//! failure; tasks and images invisible to other tenants; polling batched.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app_with};
use tollgate_tests::mock_midjourney::{MockMidjourney, SECRET};
use tollgate_tests::mock_sora::content_bytes;

const START: i64 = 10_000_000;
const IMAGINE: i64 = 100_000;
const UPSCALE: i64 = 50_000;
const OTHER: i64 = 80_000;
const MODAL: i64 = 70_000;

const PRICED: [&str; 12] = [
    "mj_custom_zoom",
    "mj_variation",
    "mj_reroll",
    "mj_describe",
    "mj_blend",
    "mj_shorten",
    "mj_swap_face",
    "mj_zoom",
    "mj_pan",
    "mj_upload",
    "mj_inpaint",
    "mj_high_variation",
];

struct Setup {
    app: TestApp,
    mj: MockMidjourney,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let mj = MockMidjourney::start().await;
    let mut models: Vec<&str> = PRICED.to_vec();
    models.extend(["mj_imagine", "mj_upscale", "mj_modal"]);
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "mj", "type": "midjourney", "base_url": mj.base_url,
                "keys": [SECRET], "models": models}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    app.set_price_with("mj_imagine", json!({"per_request": 0.1}))
        .await;
    app.set_price_with("mj_upscale", json!({"per_request": 0.05}))
        .await;
    app.set_price_with("mj_modal", json!({"per_request": 0.07}))
        .await;
    for model in PRICED {
        app.set_price_with(model, json!({"per_request": 0.08}))
            .await;
    }
    let (user, key) = app.customer_with_key("painter", 10.0).await;
    Setup { app, mj, user, key }
}

impl Setup {
    async fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.app.address),
            )
            .header("mj-api-secret", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.key, method, path, body).await
    }

    async fn submit(&self, route: &str, body: Value) -> String {
        let (status, v) = self
            .call("POST", &format!("/mj/submit/{route}"), Some(body))
            .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["code"] == 1 || v["code"] == 21, "{v}");
        v["result"].as_str().unwrap().to_owned()
    }

    async fn until_done(&self, id: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self
                .call("GET", &format!("/mj/task/{id}/fetch"), None)
                .await;
            assert_eq!(status, 200, "{v}");
            if matches!(
                v["status"].as_str(),
                Some("SUCCESS" | "FAILURE" | "CANCEL" | "MODAL")
            ) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} did not finish within 10 s");
    }
}

#[tokio::test]
async fn an_imagine_then_an_upscale_by_button_are_each_charged_once_at_their_own_price() {
    let s = setup().await;
    // midjourney-proxy clients send their key as `mj-api-secret`.
    let id = s
        .submit(
            "imagine",
            json!({"prompt": "a red cat --ar 16:9", "state": "mine", "notifyHook": "https://hooks.example.com/mj",
                "botType": "MID_JOURNEY", "accountFilter": {"modes": ["TURBO"]}}),
        )
        .await;
    assert!(id.starts_with("task_"), "{id}");
    let (_, sent) = s.mj.submissions().last().unwrap().clone();
    assert!(
        sent.get("notifyHook").is_none() && sent.get("accountFilter").is_none(),
        "more than the prompt went upstream: {sent}"
    );
    assert_eq!(sent["prompt"], "a red cat --ar 16:9");
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);

    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["progress"], "100%");
    assert_eq!(done["action"], "IMAGINE");
    assert_eq!(done["state"], "mine");
    assert!(
        done["submitTime"].as_i64().unwrap() > 1_700_000_000_000,
        "{done}"
    );
    assert!(done["finishTime"].as_i64().is_some(), "{done}");
    assert_eq!(done["properties"]["finalPrompt"], "a red cat --ar 16:9");
    assert!(
        done["properties"].get("discordInstanceId").is_none(),
        "{done}"
    );
    let url = done["imageUrl"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/mj/image/{id}?", s.app.address)),
        "{url}"
    );
    assert!(!done.to_string().contains(&s.mj.base_url), "{done}");
    let image = reqwest::get(url).await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(image.bytes().await.unwrap().to_vec(), content_bytes());
    let part = s
        .app
        .http
        .get(url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().len(), 10);
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);

    // U2, by its button.
    let buttons = done["buttons"].as_array().unwrap();
    assert_eq!(buttons.len(), 9, "{done}");
    let u2 = buttons.iter().find(|b| b["label"] == "U2").unwrap()["customId"]
        .as_str()
        .unwrap()
        .to_owned();
    let up = s
        .submit("action", json!({"taskId": id, "customId": u2}))
        .await;
    let (route, sent) = s.mj.submissions().last().unwrap().clone();
    assert_eq!(route, "action");
    // The upstream gets its own id for the task, never Tollgate's.
    assert!(
        !sent["taskId"].as_str().unwrap().starts_with("task_"),
        "{sent}"
    );
    assert_eq!(sent["customId"], u2.as_str());
    let upscaled = s.until_done(&up).await;
    assert_eq!(upscaled["action"], "UPSCALE");
    assert_eq!(upscaled["status"], "SUCCESS");
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE - UPSCALE);
    let refs: Vec<(String, i64)> = s
        .app
        .ledger(s.user)
        .await
        .iter()
        .skip(1)
        .map(|t| (t.kind.clone(), t.amount))
        .collect();
    assert_eq!(
        refs,
        vec![
            ("task_hold".to_owned(), -IMAGINE),
            ("task_hold".to_owned(), -UPSCALE)
        ],
        "one hold per task, kept whole on success"
    );
    let g = s.app.generation(&id).await;
    assert_eq!(g.model, "mj_imagine");
    assert_eq!(g.cost, IMAGINE);

    // A button that is not the task's is refused, and costs nothing.
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/action",
            Some(json!({"taskId": id, "customId": "MJ::JOB::upsample::1::someone-elses"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["code"], 4);
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE - UPSCALE);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn another_tenant_sees_none_of_a_midjourney_task_and_cannot_act_on_it() {
    let s = setup().await;
    let id = s.submit("imagine", json!({"prompt": "private cat"})).await;
    let done = s.until_done(&id).await;
    let button = done["buttons"][0]["customId"].as_str().unwrap().to_owned();
    let (other_user, other) = s.app.customer_with_key("other-studio", 1.0).await;
    let (status, _) = s
        .call_as(&other, "GET", &format!("/mj/task/{id}/fetch"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call_as(&other, "GET", &format!("/mj/task/{id}/image-seed"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call_as(&other, "GET", &format!("/mj/image/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, list) = s
        .call_as(
            &other,
            "POST",
            "/mj/task/list-by-condition",
            Some(json!({"ids": [id]})),
        )
        .await;
    assert_eq!((status, list), (200, json!([])));
    let (status, v) = s
        .call_as(
            &other,
            "POST",
            "/mj/submit/action",
            Some(json!({"taskId": id, "customId": button})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], 3);
    let (status, _) = s
        .call_as(
            &other,
            "POST",
            "/mj/submit/change",
            Some(json!({"taskId": id, "action": "UPSCALE", "index": 1})),
        )
        .await;
    assert_eq!(status, 404);
    // A signed URL with a forged signature is 404 too.
    let (status, _) = s
        .call_as(
            "",
            "GET",
            &format!("/mj/image/{id}?expires=9999999999&signature=forged"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(s.app.balance(other_user).await, 1_000_000);
    // Its owner reads it with the key, or lists it.
    let (status, list) = s
        .call(
            "POST",
            "/mj/task/list-by-condition",
            Some(json!({"ids": [id, "task_nope"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    let (status, seed) = s
        .call("GET", &format!("/mj/task/{id}/image-seed"), None)
        .await;
    assert_eq!(status, 200, "{seed}");
    assert_eq!(seed["code"], 1);
    assert_eq!(seed["result"], "636646138");
    let image = s
        .app
        .http
        .get(format!("{}/mj/image/{id}", s.app.address))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_refused_prompt_or_a_failed_task_costs_nothing_and_keeps_the_proxys_codes() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/imagine",
            Some(json!({"prompt": "a banned thing"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], 24, "{v}");
    assert_eq!(v["properties"]["bannedWord"], "banned");
    assert_eq!(v["result"], Value::Null);
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/imagine",
            Some(json!({"prompt": "queuefull"})),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(23)), "{v}");
    assert_eq!(s.app.balance(s.user).await, START);
    // Invalid before it goes anywhere.
    let (status, v) = s
        .call("POST", "/mj/submit/imagine", Some(json!({"prompt": " "})))
        .await;
    assert_eq!((status, v["code"].clone()), (400, json!(4)), "{v}");
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/blend",
            Some(json!({"base64Array": ["data:image/png;base64,AAAA"]})),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (400, json!(4)), "{v}");

    let failed = s
        .submit("imagine", json!({"prompt": "this will fail"}))
        .await;
    let done = s.until_done(&failed).await;
    assert_eq!(done["status"], "FAILURE", "{done}");
    assert_eq!(done["failReason"], "[Invalid parameter] Invalid value");
    assert_eq!(done["imageUrl"], Value::Null);
    assert_eq!(done["buttons"], json!([]));
    // A success without an image delivered nothing: not charged either.
    let empty = s.submit("imagine", json!({"prompt": "noimage"})).await;
    let done = s.until_done(&empty).await;
    assert_eq!(done["status"], "FAILURE", "{done}");
    // Queued (code 22) is a submission like any other.
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/imagine",
            Some(json!({"prompt": "busy cat"})),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(1)), "{v}");
    s.until_done(v["result"].as_str().unwrap()).await;
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);
    let g = s.app.generation(&failed).await;
    assert_eq!(g.cost, 0);
    assert_eq!(g.status, "error");
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_unknown_status_keeps_the_task_open_and_its_hold_held() {
    let s = setup().await;
    let id = s.submit("imagine", json!({"prompt": "weird cat"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = s.call("GET", &format!("/mj/task/{id}/fetch"), None).await;
    assert!(
        matches!(v["status"].as_str(), Some("SUBMITTED" | "IN_PROGRESS")),
        "{v}"
    );
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);
    let t = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
    assert_eq!(t.state, "queued");
    assert_eq!(t.upstream_status.as_deref(), Some("PAUSED"));
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn every_midjourney_action_runs_at_its_price_and_a_modal_is_charged_as_a_modal() {
    let s = setup().await;
    let image = "data:image/png;base64,iVBORw0KGgo=";
    let grid = s.submit("imagine", json!({"prompt": "a lighthouse"})).await;
    s.until_done(&grid).await;
    let mut spent = IMAGINE;

    // change and simple-change run the grid's buttons by name.
    let v2 = s
        .submit(
            "change",
            json!({"taskId": grid, "action": "VARIATION", "index": 2}),
        )
        .await;
    let up1 = s
        .submit("simple-change", json!({"content": format!("{grid} U1")}))
        .await;
    let reroll = s
        .submit("simple-change", json!({"content": format!("{grid} R")}))
        .await;
    let (route, sent) = s.mj.submissions().last().unwrap().clone();
    assert_eq!(
        (route.as_str(), sent["action"].as_str()),
        ("change", Some("REROLL"))
    );
    for id in [&v2, &up1, &reroll] {
        assert_eq!(s.until_done(id).await["status"], "SUCCESS");
    }
    spent += OTHER + UPSCALE + OTHER;
    assert_eq!(s.app.balance(s.user).await, START - spent);

    // After an upscale: a strong variation (priced on its own), a zoom, a pan.
    let upscaled = s.until_done(&up1).await;
    let button = |label: &str| {
        upscaled["buttons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {upscaled}"))["customId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for label in ["Vary (Strong)", "Zoom Out 2x"] {
        let id = s
            .submit("action", json!({"taskId": up1, "customId": button(label)}))
            .await;
        assert_eq!(s.until_done(&id).await["status"], "SUCCESS");
        spent += OTHER;
    }
    assert_eq!(s.app.balance(s.user).await, START - spent);

    // Custom zoom waits for a modal (code 21), which is then charged as mj_modal.
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/action",
            Some(json!({"taskId": up1, "customId": button("Custom Zoom")})),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(21)), "{v}");
    let waiting = v["result"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&waiting).await["status"], "MODAL");
    assert_eq!(
        s.app.balance(s.user).await,
        START - spent - OTHER,
        "held while it waits"
    );
    let zoomed = s
        .submit(
            "modal",
            json!({"taskId": waiting, "prompt": "a lighthouse --zoom 1.5"}),
        )
        .await;
    let (route, sent) = s.mj.submissions().last().unwrap().clone();
    assert_eq!(route, "modal");
    assert!(!sent["taskId"].as_str().unwrap().starts_with("task_"));
    assert_eq!(s.until_done(&zoomed).await["status"], "SUCCESS");
    // One job, charged once: as the modal; the waiting task was released.
    spent += MODAL;
    assert_eq!(s.app.balance(s.user).await, START - spent);
    let (_, left) = s
        .call("GET", &format!("/mj/task/{waiting}/fetch"), None)
        .await;
    assert_eq!(left["status"], "CANCEL", "{left}");
    // A modal for a task that is not waiting for one is refused.
    let (status, _) = s
        .call(
            "POST",
            "/mj/submit/modal",
            Some(json!({"taskId": grid, "prompt": "x"})),
        )
        .await;
    assert_eq!(status, 400);

    // Describe and shorten answer with text; blend and swap with an image.
    let described = s.submit("describe", json!({"base64": image})).await;
    let d = s.until_done(&described).await;
    assert_eq!(d["status"], "SUCCESS", "{d}");
    assert!(
        d["properties"]["finalPrompt"]
            .as_str()
            .unwrap()
            .contains("red cat"),
        "{d}"
    );
    let short = s
        .submit(
            "shorten",
            json!({"prompt": "a very long prompt about a red cat"}),
        )
        .await;
    assert!(
        s.until_done(&short).await["properties"]["finalPrompt"]
            .as_str()
            .unwrap()
            .contains("Shortened")
    );
    let blended = s
        .submit(
            "blend",
            json!({"base64Array": [image, image], "dimensions": "SQUARE"}),
        )
        .await;
    assert_eq!(s.until_done(&blended).await["action"], "BLEND");
    let (status, v) = s
        .call(
            "POST",
            "/mj/insight-face/swap",
            Some(json!({"sourceBase64": image, "targetBase64": image})),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(1)), "{v}");
    let swapped = s.until_done(v["result"].as_str().unwrap()).await;
    assert_eq!(swapped["action"], "SWAP_FACE");
    spent += 4 * OTHER;
    assert_eq!(s.app.balance(s.user).await, START - spent);

    // An upload is done at once: its Discord addresses are the client's own images.
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/upload-discord-images",
            Some(json!({"base64Array": [image, image]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], 1);
    assert_eq!(v["result"].as_array().unwrap().len(), 2, "{v}");
    spent += OTHER;
    assert_eq!(s.app.balance(s.user).await, START - spent);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_notify_hook_gets_the_final_task_with_a_signed_image_url() {
    use std::sync::{Arc, Mutex};
    let s = setup().await;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = actix_web::web::Data::new(Arc::clone(&got));
    let (hook, handle) = tollgate_tests::mock_server::serve(move |cfg| {
        cfg.app_data(sink.clone()).route(
            "/mj-hook",
            actix_web::web::post().to(
                |sink: actix_web::web::Data<Arc<Mutex<Vec<Value>>>>,
                 body: actix_web::web::Json<Value>| async move {
                    sink.lock().unwrap().push(body.into_inner());
                    actix_web::HttpResponse::Ok().finish()
                },
            ),
        );
    });
    let id = s
        .submit(
            "imagine",
            json!({"prompt": "call me", "notifyHook": format!("{hook}/mj-hook")}),
        )
        .await;
    for _ in 0..100 {
        let first = got.lock().unwrap().first().cloned();
        if let Some(body) = first {
            assert_eq!(body["id"], id.as_str(), "{body}");
            assert_eq!(body["status"], "SUCCESS", "{body}");
            let url = body["imageUrl"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("{}/mj/image/{id}?", s.app.address)),
                "{url}"
            );
            assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
            handle.stop(false).await;
            s.app.assert_ledger_consistent().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hook was not called within 10 s");
}

#[tokio::test]
async fn many_open_midjourney_tasks_are_polled_in_batches_not_one_by_one() {
    let s = setup().await;
    let n = 120;
    s.app.mint(s.user, 20.0).await;
    let ids: Vec<String> = futures_util::future::join_all(
        (0..n).map(|i| s.submit("imagine", json!({"prompt": format!("cat number {i}")}))),
    )
    .await;
    // Waits on the database only (a client's read may refresh one task by itself).
    for _ in 0..200 {
        let (_, list) = s
            .call(
                "POST",
                "/mj/task/list-by-condition",
                Some(json!({"ids": ids})),
            )
            .await;
        if list
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "SUCCESS")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = s
        .call(
            "POST",
            "/mj/task/list-by-condition",
            Some(json!({"ids": ids})),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), n);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "SUCCESS"),
        "{list}"
    );
    assert_eq!(s.mj.fetches(), 0, "no task was polled on its own");
    let lists = s.mj.lists();
    // Each task needs two looks (240 in all); batches of up to 100 ids make that a
    // few calls a round.
    assert!(
        lists.len() * 4 <= n,
        "{} list calls: {lists:?}",
        lists.len()
    );
    assert!(lists.iter().all(|n| *n <= 100), "{lists:?}");
    assert_eq!(
        s.app.balance(s.user).await,
        START + 20_000_000 - n as i64 * IMAGINE
    );
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_admin_cancels_an_open_task_through_the_api_and_its_hold_goes_back() {
    let s = setup().await;
    let open = s
        .submit("imagine", json!({"prompt": "weird forever"}))
        .await;
    let done = s
        .submit("imagine", json!({"prompt": "a finished one"}))
        .await;
    s.until_done(&done).await;
    assert_eq!(s.app.balance(s.user).await, START - 2 * IMAGINE);

    // The owner sees its tasks in its scope, with signed result URLs; cannot cancel.
    let token = s.app.login("painter", "password-123").await;
    let (status, mine) = s
        .app
        .api("GET", "/api/tasks?family=midjourney", &token, None)
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["total"], 2);
    let finished = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == done.as_str())
        .unwrap();
    assert_eq!(finished["state"], "succeeded");
    assert_eq!(finished["charged"], 0.1);
    let link = finished["results"][0].as_str().unwrap();
    assert!(link.starts_with(&format!("/mj/image/{done}?")), "{link}");
    assert_eq!(
        reqwest::get(format!("{}{link}", s.app.address))
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = s
        .app
        .api("POST", &format!("/api/tasks/{open}/cancel"), &token, None)
        .await;
    assert_eq!(status, 403);
    let (status, v) = s
        .app
        .api("GET", "/api/tasks?state=bogus", &token, None)
        .await;
    assert_eq!(status, 400, "{v}");
    // Another customer sees none of them.
    s.app.customer_with_key("bystander", 1.0).await;
    let other = s.app.login("bystander", "password-123").await;
    let (_, theirs) = s.app.api("GET", "/api/tasks", &other, None).await;
    assert_eq!(theirs["total"], 0);

    let (status, open_list) = s
        .app
        .api("GET", "/api/tasks?state=open", &s.app.root_token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(open_list["total"], 1, "{open_list}");
    assert_eq!(open_list["items"][0]["id"], open.as_str());
    assert_eq!(open_list["items"][0]["held"], 0.1);
    let (status, v) = s
        .app
        .api(
            "POST",
            &format!("/api/tasks/{open}/cancel"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);
    // Once: a second cancel, or one of a finished task, is refused.
    let (status, _) = s
        .app
        .api(
            "POST",
            &format!("/api/tasks/{open}/cancel"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .app
        .api(
            "POST",
            &format!("/api/tasks/{done}/cancel"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 400);
    // The upstream finishing it later changes nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.app.balance(s.user).await, START - IMAGINE);
    let (_, v) = s.call("GET", &format!("/mj/task/{open}/fetch"), None).await;
    assert_eq!(v["status"], "CANCEL", "{v}");
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_turbo_prompt_is_priced_on_its_own_or_refused() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/mj/submit/imagine",
            Some(json!({"prompt": "a fast cat --turbo"})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("mj_imagine-turbo"),
        "{v}"
    );
    assert!(s.mj.submissions().is_empty());
    s.app
        .set_price_with("mj_imagine-turbo", json!({"per_request": 0.2}))
        .await;
    let id = s
        .submit("imagine", json!({"prompt": "a fast cat \u{2014}turbo"}))
        .await;
    assert_eq!(s.until_done(&id).await["status"], "SUCCESS");
    assert_eq!(s.app.balance(s.user).await, START - 200_000);
    // A bigger upscale is priced on its own too.
    let up = s
        .submit("simple-change", json!({"content": format!("{id} U1")}))
        .await;
    let upscaled = s.until_done(&up).await;
    assert_eq!(s.app.balance(s.user).await, START - 200_000 - UPSCALE);
    assert_eq!(upscaled["description"], format!("/upscale {up}"));
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_finished_task_records_what_its_channel_pays_upstream_and_a_failed_one_nothing() {
    let s = setup().await;
    let (_, channels) = s
        .app
        .api("GET", "/api/channels", &s.app.root_token, None)
        .await;
    let id = channels["items"][0]["id"].as_i64().unwrap();
    let (status, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{id}"),
            &s.app.root_token,
            Some(json!({"costs": {"mj_imagine": {"ratio": 0.35}}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let done = s.submit("imagine", json!({"prompt": "a cheap cat"})).await;
    let failed = s
        .submit("imagine", json!({"prompt": "this will fail"}))
        .await;
    s.until_done(&done).await;
    s.until_done(&failed).await;
    let g = s.app.generation(&done).await;
    assert_eq!((g.cost, g.upstream_cost), (IMAGINE, 35_000));
    assert_eq!(s.app.generation(&failed).await.upstream_cost, 0);
    let (_, margin) = s
        .app
        .api(
            "GET",
            "/api/stats/margin?group_by=model",
            &s.app.root_token,
            None,
        )
        .await;
    let row = margin["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "mj_imagine")
        .unwrap()
        .clone();
    assert_eq!(row["requests"], 1, "{margin}");
    assert_eq!(row["margin"], 0.065);
    s.app.assert_ledger_consistent().await;
}
