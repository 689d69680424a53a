//! Services of a test's own that it can take away and bring back: a `redis-server` on a
//! free port and a throwaway Postgres cluster (`initdb` + `pg_ctl`). Never the
//! machine's shared ones. Each stops and cleans up on drop, also when the test fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::free_port;

/// Whether `program --version` runs (the tool is installed).
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Says loudly that a test is skipped because `what` is not installed; under `CI=true`
/// (where `.ci/run` installs it) a missing tool fails the test instead.
pub fn skip_without(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is not installed; CI must install it (.ci/run)"
    );
    eprintln!("SKIPPED: {what} is not installed (install it to run this test)");
}

/// A fresh directory under the system's temp dir (not removed by itself).
fn fresh_dir(kind: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("tollgate-{kind}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------
// Redis.

/// A `redis-server` child without persistence: killed, it comes back empty.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    starts: u32,
}

impl RedisServer {
    /// Whether `redis-server` is installed.
    pub fn installed() -> bool {
        runs("redis-server")
    }

    /// Starts one on a free port, logging into `dir`, and waits for its PONG.
    pub fn start(dir: &Path) -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            starts: 0,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9` (a crash: nothing it held survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty) and waits for its PONG.
    pub fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("redis-{}.log", self.starts))).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pongs() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `SIGSTOP`: it hangs, keeping its data and its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`: it answers again, with everything it held.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}: {status}");
    }

    /// `redis-cli --raw` with `args`: the answer's lines.
    pub fn cli(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Whether it answers `PING`.
    fn pongs(&self) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        conn.write_all(b"PING\r\n").is_ok()
            && conn.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Postgres.

/// A Postgres cluster of the test's own, on a free port, in a directory of its own
/// (removed on drop, after an immediate stop). Postgres refuses to run as root: as
/// root, `initdb` and `pg_ctl` run as the `postgres` OS user.
pub struct PgCluster {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Where `initdb` and `pg_ctl` live (`pg_config --bindir`; else Debian's
    /// `/usr/lib/postgresql/<version>/bin`), when installed.
    pub fn bindir() -> Option<PathBuf> {
        let has_tools = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(dir) = from_pg_config.filter(|d| has_tools(d)) {
            return Some(dir);
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| has_tools(d))
            .collect();
        versions.sort();
        versions.pop()
    }

    /// `initdb` (trust auth, user `postgres`), then starts it.
    pub fn create(bindir: PathBuf) -> Self {
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let cluster = PgCluster {
            dir: fresh_dir("pg"),
            bindir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            cluster.must(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.dir),
            );
        }
        let data = cluster.data();
        cluster.must(
            cluster
                .pg("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        cluster.start();
        cluster
    }

    /// The URL the gateway connects with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the cluster and waits until it accepts connections.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.must(
            self.pg("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-o", &opts]),
        );
    }

    /// Stops it at once, as a crash or a pulled cable would (`-m immediate`).
    pub fn stop_immediate(&self) {
        self.must(
            self.pg("pg_ctl")
                .args(["stop", "-w", "-t", "60", "-m", "immediate", "-D"])
                .arg(self.data()),
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command for the tool `name` of this Postgres, as the right OS user.
    fn pg(&self, name: &str) -> Command {
        let tool = self.bindir.join(name);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(tool);
            cmd
        } else {
            Command::new(tool)
        }
    }

    /// Runs `cmd`; panics with its output when it fails.
    fn must(&self, cmd: &mut Command) {
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .args(["stop", "-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(self.data())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            eprintln!("----- postgres.log -----\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
