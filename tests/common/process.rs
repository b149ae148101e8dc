//! The `pgwarden` binary in a process of its own: started with flags, `PGWARDEN_*` variables
//! or a TOML file, its port read from its "listening" log line, and checked after hostile
//! peers with [`Pgwarden::assert_healthy`]. A proxy that spins or deadlocks freezes only its
//! own process, never the test's runtime, so a test can still see and report it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use super::raw::{query, startup, PROTOCOL_3_0};
use super::{describe, try_connect_tcp};

/// How long a started binary may take to log that it listens.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a fresh client may take to log in and get `SELECT 1` from a healthy proxy.
pub const SERVE_DEADLINE: Duration = Duration::from_secs(5);
/// CPU ticks (`utime + stime`, normally 10 ms each) an idle proxy may use in
/// [`IDLE_WINDOW`]: a spinning one uses about 50.
pub const IDLE_TICKS: u64 = 5;
pub const IDLE_WINDOW: Duration = Duration::from_millis(500);
/// How long after SIGTERM the process must be gone, with `shutdown_timeout = "2s"`.
pub const EXIT_DEADLINE: Duration = Duration::from_millis(4500);

/// A `pgwarden` process, its stdout and stderr going to files in `dir`. Killed on drop.
pub struct Pgwarden {
    pub child: Child,
    /// Its port, once [`Pgwarden::start`] has seen the "listening" line.
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Pgwarden {
    /// Spawns the binary with `args` and `env` (and no other `PGWARDEN_*` variable) and
    /// waits for its "listening" line; panics with its output if it exits or is silent.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Pgwarden {
        let mut proxy = Pgwarden::spawn(args, env);
        proxy.wait_listening(args).await;
        proxy
    }

    /// Runs the binary with `toml` as its configuration file, listening on 127.0.0.1:0 (a
    /// `listen` key in `toml` is not allowed: the port is read back from the log).
    pub async fn with_config(toml: &str) -> Pgwarden {
        assert!(
            !toml.lines().any(|l| l.trim_start().starts_with("listen ")),
            "with_config chooses the listen address itself"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("pgwarden.toml");
        std::fs::write(&file, format!("listen = \"127.0.0.1:0\"\n{toml}")).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let args = ["--config", file.as_str()];
        let mut proxy = Pgwarden::spawn_in(dir, &args, &[]);
        proxy.wait_listening(&args).await;
        proxy
    }

    async fn wait_listening(&mut self, args: &[&str]) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(port) = listening_port(&self.output()) {
                self.port = port;
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgwarden {args:?} exited at start ({status}):\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "pgwarden {args:?} not listening after {START_DEADLINE:?}:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spawns the binary without waiting for it (its output goes to a new directory).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Pgwarden {
        let dir = tempfile::tempdir().expect("temporary directory");
        Pgwarden::spawn_in(dir, args, env)
    }

    fn spawn_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Pgwarden {
        let stdout = std::fs::File::create(dir.path().join("stdout")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PGWARDEN_") {
                cmd.env_remove(name);
            }
        }
        // If the test process dies (a killed or aborted test runner), so does the proxy: a
        // spinning one left behind would eat a core of a shared machine. (The signal
        // follows the spawning thread, a test thread or runtime worker living as long as
        // the test.)
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Pgwarden {
            child,
            port: 0,
            dir,
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far, stdout then stderr, without colour codes.
    pub fn output(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        strip_ansi(&format!("{}{}", read("stdout"), read("stderr")))
    }

    pub fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default())
    }

    /// The last `lines` lines of its output, for failure messages.
    pub fn output_tail(&self, lines: usize) -> String {
        let out = self.output();
        let all: Vec<&str> = out.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` ("TERM", "INT") with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for the process to exit; panics with its output otherwise.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for pgwarden") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgwarden still running {within:?} later:\n{}",
                    self.output_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        try_connect_tcp("127.0.0.1", self.port, user, password, db).await
    }

    pub async fn connect_app(&self) -> Client {
        let result = self.try_connect("app", "app_pw", "appdb").await;
        result.unwrap_or_else(|e| {
            panic!(
                "connect through pgwarden as app: {}\n{}",
                describe(&e),
                self.output()
            )
        })
    }

    /// Polls until `text` is in the output; panics with the output after 10 s.
    pub async fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.output().contains(text) {
            if Instant::now() > deadline {
                panic!("pgwarden never printed {text:?}:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// CPU ticks the process has used so far (`utime + stime` of /proc/PID/stat).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .unwrap_or_else(|e| panic!("read /proc/{}/stat: {e}", self.pid()));
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of the whole line are 12 and 13 after "pid (comm) ".
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        utime + stime
    }

    /// A fresh raw client (trust, `user`/`db`) logs in and gets `SELECT 1`, within `within`.
    pub async fn serves(&self, user: &str, db: &str, within: Duration) -> Result<(), String> {
        let addr = self.addr();
        let attempt = async move {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let hello = startup(PROTOCOL_3_0, &[("user", user), ("database", db)]);
            stream.write_all(&hello).await.map_err(|e| e.to_string())?;
            expect_ready(&mut stream, "login").await?;
            stream
                .write_all(&query("SELECT 1"))
                .await
                .map_err(|e| e.to_string())?;
            let answer = expect_ready(&mut stream, "SELECT 1").await?;
            if answer.contains("D1") {
                Ok(())
            } else {
                Err(format!("SELECT 1 answered {answer}"))
            }
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("a fresh client got no SELECT 1 within {within:?}")),
        }
    }

    /// What a proxy must still be after any hostile peer, checked in order, each failure
    /// naming what broke: the process is alive; it is idle (at most [`IDLE_TICKS`] CPU
    /// ticks over [`IDLE_WINDOW`]); a fresh client (`user` on `db`, trust) gets `SELECT 1`
    /// within [`SERVE_DEADLINE`]; its log has no `panicked at`; and with a session stuck in
    /// an open transaction it exits within [`EXIT_DEADLINE`] of SIGTERM (the configuration
    /// must set `shutdown_timeout = "2s"`). Consumes the process.
    pub async fn assert_healthy_as(mut self, user: &str, db: &str) {
        assert!(self.is_alive(), "pgwarden died:\n{}", self.output_tail(40));
        let before = self.cpu_ticks();
        tokio::time::sleep(IDLE_WINDOW).await;
        let used = self.cpu_ticks() - before;
        assert!(
            used <= IDLE_TICKS,
            "pgwarden is not idle: {used} CPU ticks in {IDLE_WINDOW:?} (spinning?)\n{}",
            self.output_tail(40)
        );
        if let Err(why) = self.serves(user, db, SERVE_DEADLINE).await {
            panic!(
                "pgwarden does not serve a fresh client: {why}\n{}",
                self.output_tail(40)
            );
        }
        assert!(
            !self.output().contains("panicked at"),
            "pgwarden panicked:\n{}",
            self.output()
        );
        let stuck = self.stuck_session(user, db).await;
        let signalled = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit(EXIT_DEADLINE).await;
        assert!(
            status.success(),
            "pgwarden exited {status} {:?} after SIGTERM:\n{}",
            signalled.elapsed(),
            self.output_tail(40)
        );
        drop(stuck);
    }

    /// [`Self::assert_healthy_as`] for the raw clients' `trust_user` on `postgres`.
    pub async fn assert_healthy(self) {
        self.assert_healthy_as(super::prepared::RAW_USER, super::prepared::RAW_DB)
            .await
    }

    /// A client left in an open transaction (BEGIN answered), so that shutdown has a
    /// session to wait for.
    async fn stuck_session(&self, user: &str, db: &str) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr()).await.unwrap();
        let hello = startup(PROTOCOL_3_0, &[("user", user), ("database", db)]);
        stream.write_all(&hello).await.unwrap();
        let login = tokio::time::timeout(SERVE_DEADLINE, expect_ready(&mut stream, "login"));
        login.await.expect("login in time").expect("login");
        stream.write_all(&query("BEGIN")).await.unwrap();
        let begin = tokio::time::timeout(SERVE_DEADLINE, expect_ready(&mut stream, "BEGIN"));
        let answer = begin.await.expect("BEGIN in time").expect("BEGIN");
        assert!(answer.ends_with("ZT"), "BEGIN answered {answer}");
        stream
    }
}

impl Drop for Pgwarden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads backend messages up to ReadyForQuery; their tags (`Z` followed by its status,
/// `D` by the first column of a DataRow when it is one byte). An ErrorResponse is an error.
async fn expect_ready(stream: &mut TcpStream, what: &str) -> Result<String, String> {
    let mut tags = String::new();
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("{what}: connection lost after {tags:?}: {e}"))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            return Err(format!("{what}: message length {len}"));
        }
        let mut body = vec![0u8; len - 4];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        tags.push(header[0] as char);
        match header[0] {
            b'E' => {
                let fields = super::raw::fields(&body);
                return Err(format!(
                    "{what}: error {} {}",
                    fields.get(&b'C').cloned().unwrap_or_default(),
                    fields.get(&b'M').cloned().unwrap_or_default()
                ));
            }
            b'D' if body.len() == 7 => tags.push(body[6] as char),
            b'Z' => {
                tags.push(body[0] as char);
                return Ok(tags);
            }
            _ => {}
        }
    }
}

/// The port of the first `listening addr=HOST:PORT` log line.
pub fn listening_port(output: &str) -> Option<u16> {
    let line = output
        .lines()
        .find(|l| l.contains("listening") && l.contains("addr="))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Removes terminal colour sequences (`ESC [ ... m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A free TCP port of 127.0.0.1 (for tests that must name one).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
