//! Running `pgbench` against a server or a proxy, and reading its report.

use std::process::{Command, Output, Stdio};

use super::pg_bin;

/// `pgbench` as `user` (with `password`) against 127.0.0.1:`port`, database `db`, with
/// `args`; the `PG*` connection variables of the environment are ignored.
pub fn pgbench_command(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(pg_bin("pgbench"));
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSSLMODE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSWORD", password)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(db)
        .stdin(Stdio::null());
    cmd
}

/// A finished program's stdout then stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The N of pgbench's "number of transactions actually processed: N" (or "N/M").
pub fn processed(output: &str) -> u64 {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "));
    let line = line.unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{output}"));
    let count = line.split('/').next().unwrap().trim();
    count
        .parse()
        .unwrap_or_else(|_| panic!("bad transaction count {line:?}"))
}
