//! A console session driven over plain HTTP, the way a browser without JavaScript
//! would: the login form (with its CSRF cookie), the session cookie, and form posts
//! that carry the page's CSRF token.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};

use crate::TestApp;

/// An answer from the console.
pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// Where a redirect points.
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// A logged-in console session.
pub struct ConsoleSession {
    pub address: String,
    pub http: reqwest::Client,
    /// `tollgate_session=…`
    pub cookie: String,
    /// The CSRF token the session's pages carry.
    pub csrf: String,
}

/// The value of `name="csrf" value="…"` in a page.
pub fn csrf_in(html: &str) -> String {
    let start = html
        .find(r#"name="csrf" value=""#)
        .expect("the page has a CSRF field")
        + r#"name="csrf" value=""#.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// `name=value` of the first Set-Cookie named `name`.
fn cookie_named(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

/// A client that does not follow redirects (the tests look at them).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn page(resp: reqwest::Response) -> Page {
    let status = resp.status();
    let headers = resp.headers().clone();
    Page {
        status,
        headers,
        body: resp.text().await.unwrap(),
    }
}

/// Posts the login form as a browser would; returns the answer and, on success, the
/// session cookie.
pub async fn console_login(
    app: &TestApp,
    username: &str,
    password: &str,
) -> (Page, Option<String>) {
    let http = no_redirects();
    let form = http
        .get(format!("{}/console/login", app.address))
        .send()
        .await
        .unwrap();
    let login_cookie = cookie_named(form.headers(), "tollgate_login_csrf").unwrap();
    let csrf = csrf_in(&form.text().await.unwrap());
    let body = serde_urlencoded::to_string([
        ("csrf", csrf.as_str()),
        ("username", username),
        ("password", password),
    ])
    .unwrap();
    let resp = http
        .post(format!("{}/console/login", app.address))
        .header(COOKIE, login_cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let session = cookie_named(resp.headers(), "tollgate_session");
    (page(resp).await, session)
}

impl TestApp {
    /// Logs into the console; panics unless it works.
    pub async fn console(&self, username: &str, password: &str) -> ConsoleSession {
        let (answer, cookie) = console_login(self, username, password).await;
        assert_eq!(
            answer.status, 303,
            "console login of {username}: {}",
            answer.body
        );
        let mut s = ConsoleSession {
            address: self.address.clone(),
            http: no_redirects(),
            cookie: cookie.expect("a session cookie"),
            csrf: String::new(),
        };
        let home = s.get("/console").await;
        assert_eq!(home.status, 200, "{}", home.body);
        s.csrf = csrf_in(&home.body);
        s
    }
}

impl ConsoleSession {
    /// `GET path` with the session.
    pub async fn get(&self, path: &str) -> Page {
        page(
            self.http
                .get(format!("{}{path}", self.address))
                .header(COOKIE, &self.cookie)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Posts a form with the session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// Posts exactly these fields (no CSRF token unless given).
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        page(
            self.http
                .post(format!("{}{path}", self.address))
                .header(COOKIE, &self.cookie)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(fields).unwrap())
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}
