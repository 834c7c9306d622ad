//! One instance without partitions: a second `zhijian run` on the same
//! durable consumer would judge half of every conversation. So the instance
//! that judges holds a lease in the state bucket (`lease.<consumer>`,
//! renewed every [`HEARTBEAT`] with a revision check); another one started
//! with the same configuration waits as a hot standby (not ready, touching
//! nothing) and takes over when the lease is released (SIGTERM) or expires
//! ([`LEASE`] after a crash). Several instances that share the work:
//! `[cluster]`.

use super::shard::now_ms;
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;

/// How long a lease holds without renewal: a crashed instance's standby
/// takes over after about this long.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the lease is renewed (and a standby looks again).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct Value {
    /// This process: host name and pid, and when it started.
    owner: String,
    until_ms: u64,
}

/// The lease, held.
pub struct Held {
    kv: kv::Store,
    key: String,
    owner: String,
    revision: watch::Receiver<u64>,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

fn value(owner: &str, until_ms: u64) -> Option<Bytes> {
    serde_json::to_vec(&Value {
        owner: owner.to_string(),
        until_ms,
    })
    .ok()
    .map(Bytes::from)
}

/// Takes the lease of `consumer`, waiting while another live instance
/// holds it; None if `shutdown` comes first.
pub async fn acquire<F: Future<Output = ()>>(
    kv: &kv::Store,
    consumer: &str,
    shutdown: &mut Pin<&mut F>,
) -> Option<Held> {
    let key = format!("lease.{consumer}");
    let owner = format!(
        "{}-{}-{}",
        crate::config::host_name(),
        std::process::id(),
        now_ms()
    );
    let mut said = false;
    loop {
        let until = now_ms() + LEASE.as_millis() as u64;
        let taken = match kv.entry(&key).await {
            Ok(None) => match value(&owner, until) {
                Some(v) => kv.create(&key, v).await.ok(),
                None => None,
            },
            Ok(Some(entry)) => {
                let current = serde_json::from_slice::<Value>(&entry.value).ok();
                let free = current.as_ref().is_none_or(|c| c.until_ms <= now_ms());
                if !free && !said {
                    said = true;
                    tracing::warn!(
                        holder = current.as_ref().map_or("?", |c| c.owner.as_str()),
                        consumer,
                        "another instance judges with this consumer: waiting as a standby \
                         (several instances that share the work: [cluster] partitions)"
                    );
                }
                match (free, value(&owner, until)) {
                    (true, Some(v)) => kv.update(&key, v, entry.revision).await.ok(),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the instance lease; retrying");
                None
            }
        };
        if let Some(revision) = taken {
            if said {
                tracing::info!(consumer, "the lease is free: this instance judges now");
            }
            let (revision_tx, revision_rx) = watch::channel(revision);
            let (lost_tx, lost_rx) = watch::channel(false);
            let renewer = tokio::spawn(renew(
                kv.clone(),
                key.clone(),
                owner.clone(),
                revision_tx,
                lost_tx,
            ));
            return Some(Held {
                kv: kv.clone(),
                key,
                owner,
                revision: revision_rx,
                lost: lost_rx,
                renewer,
            });
        }
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

async fn renew(
    kv: kv::Store,
    key: String,
    owner: String,
    revision: watch::Sender<u64>,
    lost: watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let current = *revision.borrow();
        let Some(v) = value(&owner, now_ms() + LEASE.as_millis() as u64) else {
            continue;
        };
        match kv.update(&key, v, current).await {
            Ok(next) => {
                let _ = revision.send(next);
            }
            Err(e) => {
                // Taken, or only a slow server? Look.
                let moved = match kv.entry(&key).await {
                    Ok(Some(entry)) => entry.revision != current,
                    Ok(None) => true,
                    Err(_) => false,
                };
                if moved {
                    tracing::error!(
                        "another instance took the lease (this one was paused or cut off \
                         for longer than it): stopping"
                    );
                    let _ = lost.send(true);
                    return;
                }
                tracing::warn!(error = %e, "lease renewal failed; retrying");
            }
        }
    }
}

impl Held {
    /// Becomes true when another instance took the lease.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Gives the lease back at once (a standby takes over without waiting
    /// for it to expire).
    pub async fn release(self) {
        self.renewer.abort();
        if self.is_lost() {
            return;
        }
        let current = *self.revision.borrow();
        if let Some(v) = value(&self.owner, 0)
            && let Err(e) = self.kv.update(&self.key, v, current).await
        {
            tracing::debug!(error = %e, "lease not released (it expires by itself)");
        }
    }
}
