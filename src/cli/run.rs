//! `zhijian run`: the daemon, its logging and its signals.

use super::*;

pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(super) fn cmd_run(common: &Common, flags: Overrides) -> Result<(), Failure> {
    let config = load_config(common, &flags)?;
    init_logging(&config);
    let rt = runtime()?;
    let result = rt.block_on(async {
        use crate::daemon::DaemonError;
        crate::daemon::run(config, terminate_signal())
            .await
            .map_err(|e| match e {
                e @ DaemonError::Config(_) => Failure::Config(e.to_string()),
                e @ (DaemonError::Unclean(_)
                | DaemonError::Nats(_)
                | DaemonError::Setup(_)
                | DaemonError::Listen(_)) => Failure::Runtime(e.to_string()),
            })
    });
    // The daemon has finished its shutdown within the grace period; what
    // is left (the NATS client reconnecting to a server that is gone, a
    // blocking lookup) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}
