//! The `pgwarden` binary: parse flags, load the configuration, start logging, run (or audit
//! with `pgwarden check`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tracing_subscriber::EnvFilter;

use pgwarden::cli::{Cli, Run};
use pgwarden::context::{Context, Source};
use pgwarden::{check, config, listener, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("pgwarden: invalid configuration:\n{errors}");
            return ExitCode::from(2);
        }
    };
    if let Some(Run::Check { offline }) = &cli.command {
        let offline = *offline;
        return audit(&config, !offline);
    }
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let mut builder = if config.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("pgwarden: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pgwarden: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `pgwarden check`: the report on stdout, the exit code for CI.
fn audit(config: &config::Config, live: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("pgwarden: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(check::audit(config, live));
    print!("{}", check::render(&report));
    ExitCode::from(report.exit_code())
}

async fn serve(config: config::Config, cli: Cli) -> std::io::Result<()> {
    let listeners = listener::bind(&config.listen).await?;
    let config = Arc::new(config);
    // The same findings `pgwarden check` reports, as warnings, without delaying the start.
    let audited = config.clone();
    tokio::spawn(async move {
        for finding in check::audit(&audited, true).await.findings {
            warn!(key = %finding.key, "configuration check: {}", finding.message);
        }
    });
    // SIGHUP reads the configuration again from the same flags, variables and file.
    let source = Source::Flags(Box::new(cli));
    let ctx = Context::with_source(config, CancellationToken::new(), source);
    tokio::spawn(shutdown::on_signals(ctx.clone()));
    tokio::spawn(shutdown::on_reload(ctx.clone()));
    listener::serve(listeners, ctx).await
}
