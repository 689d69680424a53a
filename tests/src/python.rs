//! The official Python SDKs, installed once into a venv at `<workspace>/target/py-venv`,
//! for tests that drive the gateway the way customers' code does.
//!
//! Several test binaries may ask for the venv at once: within a process a `OnceLock`
//! builds it once, and across processes an exclusive lock on `target/py-venv.lock`
//! serialises the builders. A marker file in the venv lists the packages it holds; a
//! venv whose marker lists exactly [`PACKAGES`] is reused as it is.
//!
//! A missing `python3`, a failed `venv` or a failed `pip install` fails the test: the
//! SDK tests are never skipped.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// The PyPI packages the venv holds. Adding an SDK is one line here.
pub const PACKAGES: &[&str] = &["openai", "anthropic", "google-genai"];

/// The marker file, inside the venv, listing the packages installed.
const MARKER: &str = "tollgate-packages.txt";

/// The workspace root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    match Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        Some(root) => root.to_path_buf(),
        None => panic!("the tests crate has no parent directory"),
    }
}

/// The venv's Python interpreter, creating the venv and installing [`PACKAGES`] the
/// first time. Blocking: call it from `spawn_blocking` inside async tests.
pub fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(prepare).clone()
}

fn prepare() -> PathBuf {
    let target = workspace_root().join("target");
    fs::create_dir_all(&target)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", target.display()));
    let lock_path = target.join("py-venv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // Held until `lock` drops at the end of this function.
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    let venv = target.join("py-venv");
    let python = if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    };
    let marker = venv.join(MARKER);
    let wanted = format!("{}\n", PACKAGES.join("\n"));
    if python.exists() && fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return python;
    }

    let started = Instant::now();
    // `--clear` starts over from an empty directory: a half-built or stale venv (an
    // interrupted install, a package list that changed) is never patched up.
    run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        "python3 -m venv (is python3 with the venv module installed?)",
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
            .args(PACKAGES),
        &format!("pip install {}", PACKAGES.join(" ")),
    );
    fs::write(&marker, wanted).unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
    eprintln!(
        "python venv {} with {} ready in {:.1?}",
        venv.display(),
        PACKAGES.join(", "),
        started.elapsed()
    );
    python
}

/// Runs `cmd` to completion; panics with its output unless it succeeded.
fn run(cmd: &mut Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {:?}: {e}", cmd.get_program()));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Runs `tests/python/<script>` with the venv's Python against the gateway at
/// `base_url` with the customer `key`, with no proxy and no SDK settings from the
/// environment; fails the test unless it exits 0 having printed `all checks passed`.
/// Returns what it printed.
pub async fn run_sdk_script(script: &str, base_url: &str, key: &str) -> String {
    run_sdk_script_with(script, base_url, key, &[]).await
}

/// [`run_sdk_script`] with more environment for the script (`TOLLGATE_MODEL`, …).
pub async fn run_sdk_script_with(
    script: &str,
    base_url: &str,
    key: &str,
    env: &[(&str, &str)],
) -> String {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let script = workspace_root().join("tests").join("python").join(script);
    let (base_url, key) = (base_url.to_owned(), key.to_owned());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .env("TOLLGATE_BASE_URL", base_url)
            .env("TOLLGATE_KEY", key)
            .env("PYTHONUNBUFFERED", "1");
        for var in SDK_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(env);
        cmd.output()
    })
    .await
    .unwrap()
    .expect("run the SDK script with the venv's python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "the SDK script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// Environment an SDK would read instead of what the test passes.
const SDK_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_APPLICATION_CREDENTIALS",
];
