//! Integration-test harness: a throwaway PostgreSQL server per test, copied from a template
//! that `initdb` makes once, with the roles and login methods pgwarden has to handle.
//!
//! Roles in every server (TCP from 127.0.0.1 / ::1; the Unix socket trusts everyone):
//!
//! | role         | password   | pg_hba method                          |
//! | ------------ | ---------- | -------------------------------------- |
//! | `postgres`   | `postgres` | scram-sha-256 (superuser)              |
//! | `app`        | `app_pw`   | scram-sha-256, owner of database `appdb` |
//! | `scram_user` | `scram_pw` | scram-sha-256                          |
//! | `md5_user`   | `md5_pw`   | md5 (the secret is stored as MD5)      |
//! | `pw_user`    | `pw_pw`    | password (cleartext; stored as SCRAM)  |
//! | `trust_user` | none       | trust                                  |
//!
//! Every role may connect to `postgres` and `appdb` and create objects in their `public`
//! schemas. Binaries come from [`pg_bin`]. When the tests run as root, Postgres runs as the
//! `postgres` system user (initdb and postgres refuse root).
#![allow(dead_code)]

// The in-process pgwarden launcher (`start_proxy`).
mod proxy;
#[allow(unused_imports)]
pub use proxy::*;

// Helpers shared by some of the test binaries; `dead_code` above covers them in the others.
pub mod clients;
pub mod console;
pub mod fake_server;
pub mod hostile;
pub mod http;
pub mod identity;
pub mod pgbench;
pub mod prepared;
pub mod process;
pub mod raw;
pub mod segment;

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::{Client, NoTls};

/// Name prefix of the temporary directories of running servers: `pgwarden-pg-<pid>-…`, so
/// a later run can sweep what a killed test process left behind.
const RUN_PREFIX: &str = "pgwarden-pg-";
/// Name prefix of the initdb templates, cached across test processes (see [`template`]).
const TEMPLATE_PREFIX: &str = "pgwarden-pgtmpl-";
const START_DEADLINE: Duration = Duration::from_secs(30);
const WAIT_BACKENDS_DEADLINE: Duration = Duration::from_secs(10);

/// Appended to the template's postgresql.conf (`listen_addresses` is added per machine).
/// Durability is off: these servers live for one test.
const CONF: &str = "
shared_buffers = 16MB
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
min_wal_size = 2MB
max_wal_size = 64MB
autovacuum = off
log_min_messages = warning
log_connections = off
log_disconnections = off
logging_collector = off
";

const HBA: &str = "\
local all all trust
host all trust_user 127.0.0.1/32 trust
host all trust_user ::1/128 trust
host all md5_user 127.0.0.1/32 md5
host all md5_user ::1/128 md5
host all pw_user 127.0.0.1/32 password
host all pw_user ::1/128 password
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

/// Run by psql over the Unix socket while the template is up.
const SETUP_SQL: &str = "
CREATE ROLE app LOGIN PASSWORD 'app_pw';
CREATE ROLE scram_user LOGIN PASSWORD 'scram_pw';
CREATE ROLE pw_user LOGIN PASSWORD 'pw_pw';
CREATE ROLE trust_user LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5_pw';
RESET password_encryption;
CREATE DATABASE appdb OWNER app;
GRANT CONNECT, TEMPORARY ON DATABASE postgres, appdb TO PUBLIC;
GRANT ALL ON SCHEMA public TO PUBLIC;
\\connect appdb
GRANT ALL ON SCHEMA public TO PUBLIC;
";

/// Where a PostgreSQL program lives: `$PG_BIN/<name>`, else the Debian PostgreSQL 15
/// directory, else plain `name` for a `PATH` lookup.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let debian = Path::new("/usr/lib/postgresql/15/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// `(uid, gid)` of the `postgres` system user when we run as root, `None` otherwise.
fn run_as() -> Option<(u32, u32)> {
    static RUN_AS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *RUN_AS.get_or_init(|| {
        if id(&["-u"]).as_deref() != Some("0") {
            return None;
        }
        let uid = id(&["-u", "postgres"]);
        let gid = id(&["-g", "postgres"]);
        match (uid, gid) {
            (Some(u), Some(g)) => Some((u.parse().unwrap(), g.parse().unwrap())),
            _ => panic!("running as root needs a `postgres` system user (apt-get install postgresql-15 creates it)"),
        }
    })
}

fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A command for a PostgreSQL program, run as the `postgres` user when we are root.
fn pg_command(name: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new(pg_bin(name));
    cmd.current_dir(cwd).stdin(Stdio::null());
    for var in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Gives a path we created to the `postgres` user (when root), so Postgres can use it.
fn give_to_postgres(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Runs `cmd` to completion; the error names the program and carries its output.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn listen_addresses() -> &'static str {
    if ipv6_available() {
        "127.0.0.1,::1"
    } else {
        "127.0.0.1"
    }
}

/// Where server directories and the template go: `$PGWARDEN_TEST_TMPDIR`, else /dev/shm
/// when it is writable with 2 GiB free, else the temp dir. Copying a data directory means
/// creating some 1,300 files, which takes over a second on some disks and a tenth of that
/// in memory; Docker's default 64 MiB /dev/shm is too small and falls back to the disk.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGWARDEN_TEST_TMPDIR") {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        let roomy = free_kib(shm).is_some_and(|kib| kib > 2 * 1024 * 1024);
        if roomy && tempfile::tempdir_in(shm).is_ok() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    })
}

fn free_kib(path: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

fn new_run_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{RUN_PREFIX}{}-", std::process::id()))
        .tempdir_in(scratch_root())
        .expect("create a temporary directory");
    give_to_postgres(dir.path());
    dir
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A postmaster we spawned, in `data`, writing to `log`.
struct Postmaster {
    child: Child,
    data: PathBuf,
    log: PathBuf,
}

impl Postmaster {
    /// Spawns `postgres` and waits until it accepts connections (postmaster.pid says
    /// "ready", as `pg_ctl -w` checks, but polled every 10 ms instead of 100 ms).
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Result<Postmaster, String> {
        let data = dir.join("data");
        let sock = dir.join("sock");
        let log = dir.join("postgres.log");
        fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        give_to_postgres(&sock);
        let log_file = fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = pg_command("postgres", dir);
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock);
        cmd.args(extra)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let mut pm = Postmaster { child, data, log };
        match pm.wait_ready() {
            Ok(()) => Ok(pm),
            Err(why) => {
                pm.stop("immediate");
                Err(format!("{why}; server log:\n{}", tail(&pm.log, 30)))
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let pid_file = self.data.join("postmaster.pid");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("postgres exited at startup ({status})"));
            }
            let pid = fs::read_to_string(&pid_file).unwrap_or_default();
            if pid.lines().nth(7).map(str::trim) == Some("ready") {
                return self.check_listening();
            }
            if Instant::now() > deadline {
                return Err(format!("postgres not ready after {START_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Postgres starts even if it could bind only some of `listen_addresses`; a lost port
    /// race on 127.0.0.1 must count as a failed start.
    fn check_listening(&self) -> Result<(), String> {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if log.contains("could not bind") || log.contains("could not create listen socket") {
            return Err("postgres could not bind all its addresses".into());
        }
        Ok(())
    }

    /// Stops the server (`mode`: "fast" for a clean shutdown, "immediate" otherwise) and
    /// reaps it. Never panics: it runs from `Drop`.
    fn stop(&mut self, mode: &str) {
        let signal = if mode == "fast" { "INT" } else { "QUIT" };
        let pid = self.child.id().to_string();
        let dir = self.data.parent().unwrap_or(Path::new("/")).to_owned();
        let _ = run(pg_command("pg_ctl", &dir).args(["kill", signal, &pid]));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The data directory every server starts from, made once per machine and configuration:
/// it is cached in [`scratch_root`] under a name hashing everything that goes into it, and
/// built under a private name then renamed into place, so concurrent test processes
/// (nextest runs one per test) never see half a template.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = TEMPLATE.get_or_init(|| {
        let key = template_key();
        let path = scratch_root().join(format!("{TEMPLATE_PREFIX}{key:016x}"));
        sweep_stale(&path);
        if path.join("PG_VERSION").exists() {
            return Ok(path);
        }
        make_template(&path)
    });
    match made {
        Ok(path) => path,
        Err(why) => panic!("could not create the Postgres template: {why}"),
    }
}

fn template_key() -> u64 {
    let mut hasher = DefaultHasher::new();
    let version = Command::new(pg_bin("postgres")).arg("--version").output();
    let version = version.map(|o| o.stdout).unwrap_or_default();
    (CONF, HBA, SETUP_SQL, listen_addresses(), run_as(), version).hash(&mut hasher);
    pg_bin("postgres").hash(&mut hasher);
    hasher.finish()
}

fn make_template(path: &Path) -> Result<PathBuf, String> {
    let build = new_run_dir();
    let data = build.path().join("data");
    let pwfile = build.path().join("pwfile");
    fs::write(&pwfile, "postgres\n").map_err(|e| e.to_string())?;
    give_to_postgres(&pwfile);
    run(pg_command("initdb", build.path())
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .args(["--no-sync", "--no-instructions", "--locale=C", "-E", "UTF8"])
        .args(["--wal-segsize=1"])
        .arg(format!("--pwfile={}", pwfile.display())))?;
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .map_err(|e| e.to_string())?;
    writeln!(conf, "{CONF}listen_addresses = '{}'", listen_addresses())
        .map_err(|e| e.to_string())?;
    fs::write(data.join("pg_hba.conf"), HBA).map_err(|e| e.to_string())?;
    create_roles(build.path())?;
    match fs::rename(&data, path) {
        Ok(()) => Ok(path.to_owned()),
        // Another test process finished its template first: use that one.
        Err(_) if path.join("PG_VERSION").exists() => Ok(path.to_owned()),
        Err(e) => Err(format!(
            "rename {} to {}: {e}",
            data.display(),
            path.display()
        )),
    }
}

/// Starts the template without TCP, runs [`SETUP_SQL`] through the socket, stops it cleanly.
fn create_roles(dir: &Path) -> Result<(), String> {
    let mut pm = Postmaster::start(dir, 5432, &["-c", "listen_addresses="])?;
    let mut psql = Command::new(pg_bin("psql"));
    psql.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        "postgres",
        "-d",
        "postgres",
    ]);
    psql.args(["-p", "5432", "-h"]).arg(dir.join("sock"));
    let result = run_with_stdin(
        psql.env_remove("PGOPTIONS").env_remove("PGSERVICE"),
        SETUP_SQL,
    );
    pm.stop("fast");
    result
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() && written.is_ok() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Removes what killed test processes left in the temp dir: server directories whose
/// process is gone (stopping a postmaster still running there), and templates of another
/// configuration untouched for an hour.
fn sweep_stale(current_template: &Path) {
    let Ok(entries) = fs::read_dir(scratch_root()) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(RUN_PREFIX) {
            let owner = rest.split('-').next().unwrap_or("");
            if !owner.is_empty() && !Path::new("/proc").join(owner).exists() {
                stop_orphan(&path);
                let _ = fs::remove_dir_all(&path);
            }
        } else if name.starts_with(TEMPLATE_PREFIX) && path != current_template {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::now());
            if modified.elapsed().unwrap_or_default() > Duration::from_secs(3600) {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

fn stop_orphan(dir: &Path) {
    let pid_file = fs::read_to_string(dir.join("data/postmaster.pid")).unwrap_or_default();
    if let Some(pid) = pid_file.lines().next().filter(|p| !p.is_empty()) {
        if Path::new("/proc").join(pid).exists() {
            let _ = run(pg_command("pg_ctl", Path::new("/")).args(["kill", "QUIT", pid]));
        }
    }
}

/// A PostgreSQL server of its own for one test, listening on 127.0.0.1 (and ::1 when the
/// machine has it) at `port`, and on a Unix socket in `socket_dir`. Stopped (immediate
/// mode) and deleted on drop.
pub struct PgServer {
    pub port: u16,
    pub socket_dir: PathBuf,
    postmaster: Postmaster,
    /// A superuser connection kept for `backend_count` polling; replaced when closed.
    stats: Mutex<Option<Arc<Client>>>,
    // Dropped last: the directory goes once the server has stopped.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Copies the template and starts a server on a free port; retries twice on another
    /// port (a port can be taken between choosing and binding it). Blocking.
    pub fn start() -> PgServer {
        let template = template();
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(template, None) {
                Ok(server) => return server,
                Err(why) => failures.push(why),
            }
        }
        panic!("could not start PostgreSQL:\n{}", failures.join("\n---\n"));
    }

    /// [`start`](PgServer::start) with `ssl = on`, serving the PEM certificate `cert` and
    /// its key `key` (written into the data directory, owned by the server's user, the key
    /// 0600 as Postgres demands).
    pub fn start_with_ssl(cert: &str, key: &str) -> PgServer {
        let template = template();
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(template, Some((cert, key))) {
                Ok(server) => return server,
                Err(why) => failures.push(why),
            }
        }
        panic!("could not start PostgreSQL:\n{}", failures.join("\n---\n"));
    }

    fn try_start(template: &Path, ssl: Option<(&str, &str)>) -> Result<PgServer, String> {
        let dir = new_run_dir();
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(template).arg(&data))?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        let mut extra: Vec<&str> = Vec::new();
        if let Some((cert, key)) = ssl {
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = data.join(name);
                fs::write(&path, pem).map_err(|e| e.to_string())?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| e.to_string())?;
                give_to_postgres(&path);
            }
            extra.extend(["-c", "ssl=on"]);
        }
        let port = free_port();
        let postmaster = Postmaster::start(dir.path(), port, &extra)?;
        let socket_dir = dir.path().join("sock");
        Ok(PgServer {
            port,
            socket_dir,
            postmaster,
            stats: Mutex::new(None),
            dir,
        })
    }

    /// `postgres://user:password@127.0.0.1:port` (no database: append `/db`).
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}",
            encode(user),
            encode(password),
            self.port
        )
    }

    /// A direct TCP connection to 127.0.0.1, its connection task spawned; panics on error.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Client {
        let result = self.try_connect(user, password, db).await;
        result
            .unwrap_or_else(|e| panic!("connect to postgres as {user} (db {db}): {}", describe(&e)))
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        try_connect_tcp("127.0.0.1", self.port, user, password, db).await
    }

    /// The superuser `postgres` on database `postgres`.
    pub async fn admin(&self) -> Client {
        self.connect("postgres", "postgres", "postgres").await
    }

    /// Puts `line` first in pg_hba.conf and has Postgres read it again. The reload takes
    /// effect shortly after: wait for it by observing what it changes.
    pub fn prepend_hba(&self, line: &str) {
        let path = self.dir.path().join("data").join("pg_hba.conf");
        let old = fs::read_to_string(&path).expect("read pg_hba.conf");
        fs::write(&path, format!("{line}\n{old}")).expect("write pg_hba.conf");
        let reload = Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", "SELECT pg_reload_conf()"])
            .output()
            .expect("run psql");
        assert!(reload.status.success(), "{reload:?}");
    }

    /// The server's log so far (handy in assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.postmaster.log).unwrap_or_default()
    }

    /// Client backends connected as `user` (excluding the asking connection), from
    /// pg_stat_activity.
    pub async fn backend_count(&self, user: &str) -> i64 {
        let client = self.stats_client().await;
        let sql = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
        let row = client.query_one(sql, &[&user]).await;
        row.unwrap_or_else(|e| panic!("count backends: {}", describe(&e)))
            .get(0)
    }

    /// Polls [`Self::backend_count`] every 20 ms until it is `n`; panics with the last
    /// count after 10 s.
    pub async fn wait_backends(&self, user: &str, n: i64) {
        let deadline = Instant::now() + WAIT_BACKENDS_DEADLINE;
        loop {
            let count = self.backend_count(user).await;
            if count == n {
                return;
            }
            if Instant::now() >= deadline {
                panic!("expected {n} backends of {user}, still {count} after {WAIT_BACKENDS_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The cached superuser connection; a new one if there is none or it has closed (its
    /// task dies with the runtime that spawned it, e.g. another test's).
    async fn stats_client(&self) -> Arc<Client> {
        let cached = self.stats.lock().unwrap().clone();
        match cached {
            Some(client) if !client.is_closed() => client,
            _ => {
                let client = Arc::new(self.admin().await);
                *self.stats.lock().unwrap() = Some(client.clone());
                client
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.postmaster.stop("immediate");
    }
}

/// Connects with tokio-postgres over TCP and spawns the connection task.
pub async fn try_connect_tcp(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db);
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// An error as a test failure message wants it: severity, SQLSTATE and text for server
/// errors, the chain of causes otherwise.
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// Percent-encodes a URL user or password.
pub fn encode(part: &str) -> String {
    let mut out = String::new();
    for byte in part.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
