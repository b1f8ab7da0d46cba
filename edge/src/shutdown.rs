//! The shutdown signals both binaries stop on.

/// Which signal asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C): an operator at a terminal, stop now.
    Interrupt,
    /// SIGTERM: an orchestrator (Kubernetes, systemd, an actuator), which may wait for a drain.
    Terminate,
}

/// Resolves on Ctrl-C or SIGTERM, saying which.
pub async fn stop_signal() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let s = tokio::select! {
        _ = tokio::signal::ctrl_c() => Stop::Interrupt,
        _ = term.recv() => Stop::Terminate,
    };
    tracing::info!(signal = ?s, "shutting down");
    s
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    stop_signal().await;
}
