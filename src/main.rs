//! Binary entry point: parse flags, start logging, then serve or translate.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use waba_onprem_proxy::accounts::Account;
use waba_onprem_proxy::app::AppState;
use waba_onprem_proxy::config::{Cli, Command, Dialect, LogFormat, ServeArgs, TranslateArgs};
use waba_onprem_proxy::translate::Meta;
use waba_onprem_proxy::{cli, server};

// Most of a request's own cost is small JSON allocations; mimalloc serves them faster than
// glibc's allocator (measured with bench/run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Cli::parse_with_default(std::env::args()) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    match args.command {
        Command::Translate(t) => translate(&t),
        Command::Serve(serve) => run(&serve),
    }
}

fn run(args: &ServeArgs) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let config = match args.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("waba-onprem-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    // This thread serves too, beside the delivery loop and the signal handlers; the server
    // starts the other serving threads (see `server::run`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("waba-onprem-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Opened (and migrated) before listening: a replica that cannot reach its database
        // never reports ready.
        let state = match AppState::open(config).await {
            Ok(state) => Arc::new(state),
            Err(error) => {
                eprintln!("waba-onprem-proxy: {error}");
                return ExitCode::from(2);
            }
        };
        let config = &state.config;
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "waba-onprem-proxy: cannot listen on {}: {error}",
                    config.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let upstream = if config.dry_run {
            "dry run: nothing is sent upstream".to_owned()
        } else {
            format!(
                "upstream {}://{}",
                config.upstream.scheme, config.upstream.authority
            )
        };
        eprintln!(
            "waba-onprem-proxy listening on http://{address} ({upstream}, database {})",
            config.database_url().describe()
        );
        server::run(listener, state, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM (what orchestrators send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn translate(args: &TranslateArgs) -> ExitCode {
    let mut body = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("waba-onprem-proxy: cannot read stdin: {error}");
        return ExitCode::FAILURE;
    }
    let graph = (args.upstream_dialect == Dialect::Graph)
        .then(|| Account::placeholder(&args.graph_version));
    let (output, code) = cli::translate(
        &args.method,
        &args.path,
        &body,
        &Meta::new(args.onprem_version.clone()),
        graph.as_ref(),
    );
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{output}").is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::from(code)
}
