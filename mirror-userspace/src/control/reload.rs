//! Live reload of the config file: on SIGHUP, and whenever the file's text changes (checked
//! every second by reading it through its path, so a Kubernetes ConfigMap volume's swap of
//! its `..data` symlink is seen like an edit in place). A file that fails validation keeps
//! the running config and logs why; a good one is sent to the capture loop, which applies it
//! between two records.

use std::{path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::{config, MirrorConfig};

/// How often the file is read for changes.
const POLL: Duration = Duration::from_secs(1);

/// Starts watching `path`, whose current config is `running`; every config that validates
/// and differs in text comes out of the receiver.
pub fn watch(path: PathBuf, running: MirrorConfig) -> mpsc::Receiver<MirrorConfig> {
    let (sender, receiver) = mpsc::channel(4);
    // Registered now, before the caller reports that it runs, so an early SIGHUP reloads
    // rather than killing the agent.
    let hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: the config reloads on file change only");
            None
        }
    };
    tokio::spawn(follow(path, running, hangup, sender));
    receiver
}

async fn follow(
    path: PathBuf,
    mut running: MirrorConfig,
    mut hangup: Option<tokio::signal::unix::Signal>,
    sender: mpsc::Sender<MirrorConfig>,
) {
    let mut seen = config::read_capped(&path).ok();
    let mut poll = tokio::time::interval(POLL);
    loop {
        let forced = tokio::select! {
            Some(()) = recv(&mut hangup) => true,
            _ = poll.tick() => false,
        };
        let text = match config::read_capped(&path) {
            Ok(text) => text,
            Err(error) => {
                // Mid-swap, or deleted: keep running and look again.
                if forced {
                    tracing::error!(%error, "config not reloaded; keeping the running config");
                }
                continue;
            }
        };
        if !forced && seen.as_deref() == Some(text.as_str()) {
            continue;
        }
        seen = Some(text.clone());
        match config::parse(&text, &path.display().to_string()) {
            Ok(next) => {
                if next.interfaces != running.interfaces {
                    tracing::warn!(
                        "config reload: interfaces are read at start only; restart the agent \
                         to change them (the rest of the file applies now)"
                    );
                }
                running = next.clone();
                if sender.send(next).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::error!("config not reloaded; keeping the running config: {error}");
            }
        }
    }
}

async fn recv(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
