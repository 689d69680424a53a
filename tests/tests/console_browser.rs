//! The console in a real browser: headless Chromium through chromedriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs), driven with fantoccini.
//! The whole journey of a reseller business, with a screenshot of each main page
//! under `target/console-screenshots/`. Without chromedriver the test says so and
//! passes, except under `CI=true`, where it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::json;
use tollgate_tests::app::{ROOT_PASSWORD, TestApp, backend_name, generation_id};
use tollgate_tests::mock_midjourney::{MockMidjourney, SECRET as MJ_SECRET};
use tollgate_tests::{MockOpenAi, NORMAL_COST, spawn_app};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest any one wait may take: generous, for a machine busy with other builds.
const PATIENCE: Duration = Duration::from_secs(60);

/// chromedriver on a free port, in a process group of its own (Chromium starts inside
/// it), with a Chromium profile of its own. Dropped — when the test passes or panics —
/// it kills the group and anything else still using the profile, then removes it.
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        kill_users_of(&self.profile);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills the processes whose command line names `profile` (Chromium helpers that left
/// the process group, such as the crash handler). The profile's path is unique to this
/// test run, so nothing else matches.
fn kill_users_of(profile: &Path) {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn chromedriver_path() -> Option<PathBuf> {
    let fixed = PathBuf::from(CHROMEDRIVER);
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromedriver"))
            .find(|p| p.exists())
    })
}

async fn start_driver(path: &PathBuf) -> Driver {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = std::env::temp_dir().join(format!(
        "tollgate-chromium-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    // Owned at once, so it is stopped (with its Chromium) on every path.
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if http
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on port {port}");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    let mut chrome = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--window-size=1280,1000", "--lang=en-US", "--no-first-run",
        format!("--user-data-dir={}", driver.profile.display()),
    ]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = screenshot_dir().join(format!("{}-{name}.png", backend_name()));
    std::fs::write(&path, png).unwrap();
}

/// Whether a browser error only means "not there (yet)": the element is not on the
/// page, or belonged to a page that has since been replaced.
fn transient(e: &CmdError) -> bool {
    e.is_no_such_element() || e.is_stale_element_reference()
}

/// Tries `attempt` until it gives a value, for at most [`PATIENCE`]; then fails,
/// naming `what` and the page the browser is on.
async fn eventually<T, F, Fut>(c: &Client, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        if Instant::now() > deadline {
            let url = c.current_url().await.map(|u| u.to_string());
            let source = c.source().await.unwrap_or_default();
            panic!("gave up waiting for {what} on {url:?}: {source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `result`'s value; `None` for a transient error; a panic for any other.
fn settle<T>(result: Result<T, CmdError>, what: &str) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if transient(&e) => None,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Waits for an element to be there.
async fn wait_for(c: &Client, css: &str) -> Element {
    eventually(c, css, || async {
        settle(c.find(Locator::Css(css)).await, css)
    })
    .await
}

/// Types into the field with this id (clearing it first), again from the start if the
/// page changed under it.
async fn fill(c: &Client, id: &str, text: &str) {
    let css = format!("#{id}");
    eventually(c, &css, || async {
        let field = settle(c.find(Locator::Css(&css)).await, &css)?;
        settle(field.clear().await, &css)?;
        settle(field.send_keys(text).await, &css)
    })
    .await;
}

async fn select(c: &Client, id: &str, value: &str) {
    let css = format!("#{id}");
    eventually(c, &css, || async {
        let field = settle(c.find(Locator::Css(&css)).await, &css)?;
        settle(field.select_by_value(value).await, &css)
    })
    .await;
}

/// Marks the current document, so that [`next_page`] can tell when another replaced it.
async fn mark_page(c: &Client) -> Option<()> {
    c.execute("window.__tollgateOldPage = true;", vec![])
        .await
        .ok()
        .map(drop)
}

/// Waits until the marked document is gone and its successor has finished loading.
/// (Script errors while the browser is between documents only mean "not yet".)
async fn next_page(c: &Client) {
    let script = "return window.__tollgateOldPage !== true && document.readyState === 'complete';";
    eventually(c, "the next page", || async {
        matches!(
            c.execute(script, vec![]).await,
            Ok(serde_json::Value::Bool(true))
        )
        .then_some(())
    })
    .await;
}

/// Clicks what `css` finds and waits for the page that click leads to.
async fn click_to_next_page(c: &Client, css: &str) {
    eventually(c, css, || async {
        let target = settle(c.find(Locator::Css(css)).await, css)?;
        mark_page(c).await?;
        settle(target.click().await, css)
    })
    .await;
    next_page(c).await;
}

/// Submits the form posting to `action` and waits for the page it leads to.
async fn submit(c: &Client, action: &str) {
    let css = format!(r#"form[method="post"][action="{action}"] button[type="submit"]"#);
    click_to_next_page(c, &css).await;
}

/// The text of the element `css` finds, read again if the page changed under it.
async fn text_of(c: &Client, css: &str) -> String {
    eventually(c, css, || async {
        let element = settle(c.find(Locator::Css(css)).await, css)?;
        settle(element.text().await, css)
    })
    .await
}

async fn wait_for_url(c: &Client, part: &str) -> String {
    eventually(c, part, || async {
        let url = c.current_url().await.unwrap().to_string();
        url.contains(part).then_some(url)
    })
    .await
}

async fn log_in(c: &Client, base: &str, username: &str, password: &str) {
    c.goto(&format!("{base}/console/login")).await.unwrap();
    fill(c, "username", username).await;
    fill(c, "password", password).await;
    submit(c, "/console/login").await;
    wait_for(c, "#balance").await;
}

async fn log_out(c: &Client) {
    submit(c, "/console/logout").await;
    wait_for(c, "#username").await;
}

/// The id at the end of a `/console/users/{id}?…` URL.
fn user_id_in(url: &str) -> i64 {
    url.split("/console/users/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseller_business_runs_from_the_console_in_a_real_browser() {
    let Some(path) = chromedriver_path() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromedriver is missing under CI=true: install chromium and chromium-driver"
        );
        eprintln!(
            "NOTICE: chromedriver not found; the browser test did not run (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = start_driver(&path).await;
    let c = browser(&driver).await;
    let mock = MockOpenAi::start().await;
    let app = spawn_app().await;

    let outcome = AssertUnwindSafe(async {
        reseller_journey(&c, &app, &mock).await;
        tasks_journey(&c, &app).await;
    })
    .catch_unwind()
    .await;
    // Pass or fail, the session is closed and chromedriver and Chromium are gone.
    let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}

/// Root sets up a channel and a reseller; the reseller a customer and its key; the
/// customer calls the API and finds the generation in its logs.
async fn reseller_journey(c: &Client, app: &TestApp, mock: &MockOpenAi) {
    let c = c.clone();
    let base = app.address.clone();

    // Root: logs in, adds a channel to the mock upstream, prices the model, creates a
    // reseller and mints it credits.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(&c, "#username").await;
    shot(&c, "login").await;
    log_in(&c, &base, "root", ROOT_PASSWORD).await;
    c.goto(&format!("{base}/console/channels/new"))
        .await
        .unwrap();
    fill(&c, "name", "mock upstream").await;
    fill(&c, "base_url", &mock.base_url).await;
    fill(&c, "keys", "sk-upstream-browser-4242").await;
    fill(&c, "models", "gpt-4o-mini").await;
    shot(&c, "channel-form").await;
    submit(&c, "/console/channels").await;
    wait_for_url(&c, "done=channel_saved").await;
    let channels = c.source().await.unwrap();
    assert!(channels.contains("mock upstream") && channels.contains("…4242"));
    assert!(!channels.contains("sk-upstream-browser-4242"));
    click_to_next_page(&c, r#"form[action$="/test"] button"#).await;
    assert!(
        text_of(&c, ".flash")
            .await
            .contains("answered gpt-4o-mini in")
    );
    shot(&c, "channels").await;

    c.goto(&format!("{base}/console/pricing")).await.unwrap();
    fill(&c, "model", "gpt-4o-mini").await;
    fill(&c, "input", "0.15").await;
    fill(&c, "output", "0.6").await;
    submit(&c, "/console/pricing/models").await;
    wait_for_url(&c, "done=price_saved").await;
    shot(&c, "pricing").await;

    c.goto(&format!("{base}/console/users")).await.unwrap();
    fill(&c, "username", "acme").await;
    fill(&c, "password", "acme-password").await;
    select(&c, "role", "reseller").await;
    submit(&c, "/console/users").await;
    let reseller = user_id_in(&wait_for_url(&c, "done=user_created").await);
    fill(&c, "amount", "10").await;
    fill(&c, "note", "first purchase").await;
    submit(&c, &format!("/console/users/{reseller}/credits")).await;
    wait_for_url(&c, "done=credits_moved").await;
    assert_eq!(text_of(&c, "#user-balance").await, "10.00");
    shot(&c, "user-reseller").await;
    log_out(&c).await;

    // The reseller: creates a customer, moves credits to it, creates a key for it.
    log_in(&c, &base, "acme", "acme-password").await;
    assert_eq!(text_of(&c, "#balance").await, "10.00");
    c.goto(&format!("{base}/console/users")).await.unwrap();
    fill(&c, "username", "bea").await;
    fill(&c, "password", "bea-password").await;
    submit(&c, "/console/users").await;
    let customer = user_id_in(&wait_for_url(&c, "done=user_created").await);
    fill(&c, "amount", "3").await;
    submit(&c, &format!("/console/users/{customer}/credits")).await;
    wait_for_url(&c, "done=credits_moved").await;
    assert_eq!(text_of(&c, "#user-balance").await, "3.00");
    shot(&c, "user-customer").await;
    c.goto(&format!("{base}/console/keys?user_id={customer}"))
        .await
        .unwrap();
    fill(&c, "name", "bea's app").await;
    submit(&c, "/console/keys").await;
    let reseller_made = text_of(&c, "#new-key").await;
    assert!(reseller_made.starts_with("sk-"));
    shot(&c, "key-created").await;

    // A reseller cannot open another reseller's customer.
    let other = app.create_user("globex", "reseller").await;
    let other_token = app.login("globex", "password-123").await;
    let (_, stranger) = app
        .api(
            "POST",
            "/api/users",
            &other_token,
            Some(json!({"username": "zed", "password": "password-123", "role": "customer"})),
        )
        .await;
    assert!(other > 0);
    c.goto(&format!("{base}/console/users/{}", stranger["id"]))
        .await
        .unwrap();
    assert!(text_of(&c, "h1").await.contains("404"));
    c.goto(&format!("{base}/console")).await.unwrap();
    log_out(&c).await;

    // The customer: sees its balance, creates a key and sees it once, calls the API
    // with it, and finds that generation in its logs with the right cost.
    log_in(&c, &base, "bea", "bea-password").await;
    assert_eq!(text_of(&c, "#balance").await, "3.00");
    shot(&c, "dashboard").await;
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    assert!(
        c.source().await.unwrap().contains("bea&#39;s app")
            || c.source().await.unwrap().contains("bea's app")
    );
    fill(&c, "name", "laptop").await;
    submit(&c, "/console/keys").await;
    let key = text_of(&c, "#new-key").await;
    assert!(key.starts_with("sk-") && key.len() == 51, "{key}");
    assert!(
        wait_for(&c, r#"button[data-copy="new-key"]"#)
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    c.goto(&format!("{base}/console/keys")).await.unwrap();
    let keys_page = c.source().await.unwrap();
    assert!(!keys_page.contains(&key), "the key is shown only once");
    shot(&c, "keys").await;

    let resp = app
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    app.wait_generation(&gen_id).await;

    c.goto(&format!("{base}/console/logs")).await.unwrap();
    click_to_next_page(&c, &format!(r#"a[href="/console/logs/{gen_id}"]"#)).await;
    wait_for_url(&c, &gen_id).await;
    let cost = text_of(&c, "#generation-cost").await;
    assert_eq!(cost, format!("{} credits", cost_text(NORMAL_COST)));
    shot(&c, "generation").await;
    c.goto(&format!("{base}/console/logs")).await.unwrap();
    shot(&c, "logs").await;
    c.goto(&format!("{base}/console/redemptions"))
        .await
        .unwrap();
    shot(&c, "redemptions").await;
    log_out(&c).await;

    // Root's view of settings, on a phone-sized window too.
    log_in(&c, &base, "root", ROOT_PASSWORD).await;
    c.goto(&format!("{base}/console/settings")).await.unwrap();
    shot(&c, "settings").await;
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/console")).await.unwrap();
    wait_for(&c, "#balance").await;
    shot(&c, "dashboard-phone").await;

    let balance = app.balance(customer).await;
    assert_eq!(balance, 3_000_000 - NORMAL_COST);
}

/// A customer's Midjourney tasks in its Tasks view (state, cost, a thumbnail through
/// its signed URL); root cancels one left open, and its hold goes back.
async fn tasks_journey(c: &Client, app: &TestApp) {
    let c = c.clone();
    let base = app.address.clone();
    log_out(&c).await;
    c.set_window_size(1280, 900).await.unwrap();
    let mj = MockMidjourney::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "mj", "type": "midjourney", "base_url": mj.base_url,
                "keys": [MJ_SECRET], "models": ["mj_imagine"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    app.set_price_with("mj_imagine", json!({"per_request": 0.1}))
        .await;
    let (tasha, key) = app.customer_with_key("tasha", 1.0).await;
    let submit = |prompt: &'static str| {
        let (http, base, key) = (app.http.clone(), base.clone(), key.clone());
        async move {
            let v: serde_json::Value = http
                .post(format!("{base}/mj/submit/imagine"))
                .header("mj-api-secret", key)
                .json(&json!({"prompt": prompt}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["result"].as_str().unwrap().to_owned()
        }
    };
    let done = submit("a lighthouse at dusk").await;
    let open = submit("a weird lighthouse").await;
    for _ in 0..100 {
        let t = billing::task::find(&app.db, &done).await.unwrap().unwrap();
        if t.state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    log_in(&c, &base, "tasha", "password-123").await;
    c.goto(&format!("{base}/console/tasks")).await.unwrap();
    let row = wait_for(&c, &format!(r#"tr[data-task="{done}"]"#)).await;
    let text = row.text().await.unwrap();
    assert!(
        text.contains("succeeded") && text.contains("IMAGINE") && text.contains("0.10"),
        "{text}"
    );
    let thumb = wait_for(&c, &format!(r#"tr[data-task="{done}"] img.thumb"#)).await;
    let src = thumb.attr("src").await.unwrap().unwrap();
    assert!(src.starts_with(&format!("/mj/image/{done}?")), "{src}");
    // The signed URL works without a session or a key.
    let image = reqwest::get(format!("{base}{src}")).await.unwrap();
    assert_eq!(image.status(), 200);
    let open_row = wait_for(&c, &format!(r#"tr[data-task="{open}"]"#)).await;
    assert!(open_row.text().await.unwrap().contains("held"));
    // A customer cannot cancel: the button is not there.
    assert!(
        c.find(Locator::Css(r#"form[action$="/cancel"]"#))
            .await
            .is_err()
    );
    c.goto(&format!(
        "{base}/console/tasks?state=succeeded&family=midjourney"
    ))
    .await
    .unwrap();
    wait_for(&c, &format!(r#"tr[data-task="{done}"]"#)).await;
    assert!(!c.source().await.unwrap().contains(&open));
    shot(&c, "tasks").await;
    log_out(&c).await;

    log_in(&c, &base, "root", ROOT_PASSWORD).await;
    c.goto(&format!("{base}/console/tasks?state=open"))
        .await
        .unwrap();
    wait_for(&c, &format!(r#"tr[data-task="{open}"]"#)).await;
    assert!(!c.source().await.unwrap().contains(&done));
    click_to_next_page(
        &c,
        &format!(r#"tr[data-task="{open}"] form[action$="/cancel"] button"#),
    )
    .await;
    wait_for_url(&c, "done=task_cancelled").await;
    let cancelled = billing::task::find(&app.db, &open).await.unwrap().unwrap();
    assert_eq!(cancelled.state, "cancelled");
    assert_eq!(app.balance(tasha).await, 1_000_000 - 100_000);
    shot(&c, "tasks-admin").await;
    log_out(&c).await;
    mj.stop().await;
}

/// Micro-credits as the console shows them (two to six decimals).
fn cost_text(micros: i64) -> String {
    let frac = format!("{:06}", micros % 1_000_000);
    let frac = frac.trim_end_matches('0');
    format!("{}.{:0<2}", micros / 1_000_000, frac)
}
