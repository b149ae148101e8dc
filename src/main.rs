//! The `pgwarden` binary: parse flags, load the configuration, start logging, run.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use pgwarden::cli::Cli;
use pgwarden::{config, listener, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("pgwarden: invalid configuration:\n{errors}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pgwarden: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: config::Config) -> std::io::Result<()> {
    let listeners = listener::bind(&config.listen).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::on_signals(token.clone()));
    pgwarden::run(listeners, Arc::new(config), token).await
}
