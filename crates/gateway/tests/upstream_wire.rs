//! How the gateway reaches upstreams, through the real binary: TLS as a production
//! upstream needs it (a channel on an `https://` address is served when the upstream's
//! certificate chains to a root the machine trusts, here a test CA named by
//! `SSL_CERT_FILE`, which replaces the system's roots; a certificate nobody vouches for
//! fails the try with nothing charged), and the proxy the environment names.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, Gateway, MODEL, TempDir, api, assert_credits, provision};
use serde_json::{Value, json};

/// `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`), a server certificate it signed for localhost and 127.0.0.1
/// (`server.pem`, `server.key`), and a self-signed one for the same names that no root
/// vouches for (`rogue.pem`, `rogue.key`).
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &[
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=Tollgate Test CA",
        ][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat();
    openssl(dir, &ca);
    let csr = [
        &["req", "-new", "-subj", "/CN=localhost"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat();
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    let rogue = [
        &["req", "-x509", "-days", "2", "-subj", "/CN=localhost"][..],
        &ec,
        &["-keyout", "rogue.key", "-out", "rogue.pem"],
        &["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    ]
    .concat();
    openssl(dir, &rogue);
}

async fn chat(http: &reqwest::Client, gw: &Gateway, key: &str, model: &str) -> (u16, String) {
    let resp = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Root's balance once it has settled at `want` credits (charges land within 2 s).
async fn balance_settles_at(http: &reqwest::Client, gw: &Gateway, token: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, me) = api(http, gw, reqwest::Method::GET, "/api/me", token, None).await;
        if (me["balance"].as_f64().unwrap() - want).abs() < 1e-9 || Instant::now() > deadline {
            assert_credits(&me["balance"], want, &me);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_https_upstream_is_served_when_its_certificate_chains_to_a_trusted_root_and_refused_uncharged_when_not()
 {
    let dir = TempDir::new();
    make_certificates(&dir.0);
    let trusted =
        common::start_tls_upstream(&dir.0.join("server.pem"), &dir.0.join("server.key")).await;
    let rogue =
        common::start_tls_upstream(&dir.0.join("rogue.pem"), &dir.0.join("rogue.key")).await;
    let ca = dir.0.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut gw = Gateway::start_on(
        &dir.0,
        "tls",
        &Backend::sqlite(&dir.0),
        &[("SSL_CERT_FILE", ca)],
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    gw.wait_healthy(&http).await;
    let upstream = format!("https://localhost:{trusted}");
    let price = json!({"input": 1.0, "output": 1.0});
    let (token, _root, key) = provision(&http, &gw, &upstream, 10.0, price.clone()).await;

    let (status, body) = chat(&http, &gw, &key, MODEL).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""content":"x""#) && body.contains("[DONE]"),
        "{body}"
    );
    // 12 + 30 tokens at 1 credit per 1M tokens.
    balance_settles_at(&http, &gw, &token, 10.0 - 0.000042).await;

    let rogue_channel = json!({"name": "rogue", "type": "openai",
        "base_url": format!("https://localhost:{rogue}"), "keys": ["sk-up"], "models": ["rogue-model"]});
    let setup = [
        (reqwest::Method::POST, "/api/channels", rogue_channel),
        (
            reqwest::Method::PUT,
            "/api/pricing/models/rogue-model",
            price,
        ),
    ];
    for (method, path, body) in setup {
        let (status, v) = api(&http, &gw, method, path, &token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {v}");
    }
    let (status, body) = chat(&http, &gw, &key, "rogue-model").await;
    assert!(
        status >= 500,
        "an untrusted certificate must fail the try: {status} {body}"
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"]["message"].is_string(), "{body}");
    assert!(!body.contains("sk-up"), "{body}");
    balance_settles_at(&http, &gw, &token, 10.0 - 0.000042).await;
}

#[tokio::test]
async fn a_channel_is_reached_through_the_proxy_the_environment_names() {
    let dir = TempDir::new();
    // The mock answers requests asked of it as a proxy (`POST http://host/path`).
    let proxy = common::start_mock_upstream_paced(Duration::from_millis(5)).await;
    let mut gw = Gateway::start_on(
        &dir.0,
        "proxied",
        &Backend::sqlite(&dir.0),
        &[("HTTP_PROXY", proxy.as_str()), ("NO_PROXY", "")],
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    gw.wait_healthy(&http).await;
    // A name that never resolves: only the proxy can reach it.
    let upstream = "http://upstream.invalid";
    let (token, _root, key) = provision(
        &http,
        &gw,
        upstream,
        10.0,
        json!({"input": 1.0, "output": 1.0}),
    )
    .await;
    let (status, body) = chat(&http, &gw, &key, MODEL).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[DONE]"), "{body}");
    balance_settles_at(&http, &gw, &token, 10.0 - 0.000042).await;
}
