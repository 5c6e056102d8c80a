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
    /// Data directory for persistent state (overrides `persistence.dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Validate the configuration, print the effective configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG-style filter).
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add or update a user in a password file (argon2id; the file is created if missing).
    Passwd {
        /// The password file (auth.password_file).
        file: PathBuf,
        /// The username.
        user: String,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        stdin: bool,
        /// Store SCRAM-SHA-256 keys instead of an argon2id hash: usable by MQTT 5 enhanced
        /// authentication (Authentication Method SCRAM-SHA-256) and by plain passwords alike.
        #[arg(long)]
        scram: bool,
    },
    /// Write a development CA, a server certificate (localhost, 127.0.0.1, ::1) and a client
    /// certificate (CN device-1) into DIR. For development and tests only.
    GenCerts {
        /// Where to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Passwd {
        file,
        user,
        stdin,
        scram,
    }) = &args.command
    {
        return passwd(file, user, *stdin, *scram);
    }
    if let Some(Command::GenCerts { dir }) = &args.command {
        return match sluice::certgen::generate(dir) {
            Ok(()) => {
                println!(
                    "wrote ca.pem, ca.key, server.pem, server.key, client.pem, client.key to {} (development only)",
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice gen-certs: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(args.log.as_deref());
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // The TLS files too: readable, PEM, key matching certificate.
        if let Err(e) = sluice::listener::tls::check(&config) {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(2);
        }
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
        // Signal handlers go in before the listeners bind (and log "listening on"): a SIGTERM
        // or SIGHUP that arrives once a client can connect must never meet the default action
        // (exit without a DISCONNECT, or die on SIGHUP).
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::from(2);
            }
        };
        // SIGHUP re-reads the password and ACL files and the TLS certificates; a bad file is
        // logged and the old one stays.
        let broker = server.broker().clone();
        let tls = server.tls_reloader();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match broker.reload_passwords() {
                    Ok(true) => tracing::info!("SIGHUP: auth.password_file reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "SIGHUP: auth.password_file not reloaded; the previous one stays in force"),
                }
                match broker.reload_acl() {
                    Ok(true) => tracing::info!("SIGHUP: auth.acl_file reloaded"),
                    Ok(false) => tracing::info!("SIGHUP: nothing to reload"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: auth.acl_file not reloaded; the previous rules stay in force"),
                }
                tls.reload_all("SIGHUP");
            }
        });
        server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            })
            .await;
        ExitCode::SUCCESS
    })
}

/// `sluice passwd FILE USER`: reads the password (twice, without echo, on a terminal) and
/// stores its argon2id hash.
fn passwd(file: &std::path::Path, user: &str, stdin: bool, scram: bool) -> ExitCode {
    let password = if stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("sluice passwd: cannot read standard input: {e}");
            return ExitCode::from(2);
        }
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Reenter password: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("sluice passwd: passwords do not match");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!(
                    "sluice passwd: cannot read the password: {e} (use --stdin without a terminal)"
                );
                return ExitCode::from(2);
            }
        }
    };
    if password.is_empty() {
        eprintln!("sluice passwd: empty password refused");
        return ExitCode::from(2);
    }
    let result = if scram {
        let entry = sluice::auth::passwords::scram_entry(password.as_bytes());
        sluice::auth::passwords::set_user_entry(file, user, &entry)
    } else {
        sluice::auth::passwords::set_user(file, user, password.as_bytes())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice passwd: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(args: &Args) -> Result<Config, sluice::ConfigError> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(bind) = &args.bind {
        config.listeners = vec![sluice::config::ListenerConfig::plain(bind.clone())];
    }
    if let Some(dir) = &args.data_dir {
        config.persistence.dir = dir.clone();
    }
    config.validate()?;
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

/// The signals the broker answers: SIGHUP (reload), SIGTERM and SIGINT (graceful shutdown).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the three handlers at once (inside the runtime).
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}
