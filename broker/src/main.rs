//! The `sluice` binary: parse arguments, load configuration, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice::{Config, Server};

/// Sluice, an MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (keys can also be set as SLUICE__SECTION__KEY variables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the plain TCP listener, overriding the file's listeners.
    #[arg(long, value_name = "HOST:PORT")]
    bind: Option<String>,
    /// Validate the configuration, print the effective configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG-style filter).
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log.as_deref());
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::from(2);
            }
        };
        // SIGHUP re-reads the ACL file; a bad file is logged and the old rules stay.
        let broker = server.broker().clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                match broker.reload_acl() {
                    Ok(true) => tracing::info!("SIGHUP: auth.acl_file reloaded"),
                    Ok(false) => tracing::info!("SIGHUP: nothing to reload"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: auth.acl_file not reloaded; the previous rules stay in force"),
                }
            }
        });
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn load(args: &Args) -> Result<Config, sluice::ConfigError> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(bind) = &args.bind {
        config.listeners = vec![sluice::config::ListenerConfig { bind: bind.clone() }];
        config.validate()?;
    }
    Ok(config)
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
