//! The daemon's NATS connections and what it knows of their state.
//!
//! Three connections, each with one job, so that a fault on one does not
//! reach the others:
//!
//! | connection | carries | why apart |
//! |---|---|---|
//! | `output` | publishes and their acks, the cluster bucket, JetStream API requests | the path that must never be dropped by someone else's input |
//! | `input` | the partitions' consumers and the unroutable stream's | a message whose subject is not UTF-8 drops the connection it is delivered on (async-nats refuses it, see `poison`): it costs the readers one reconnect, never a publish or a lease |
//! | `console` | the console's followers and its desk | a browser-facing feature never disturbs judging |
//!
//! Each connection reports its state through a [`Link`]: connected or not,
//! and a generation that grows at every reconnect. A reader drops its
//! consumer when its link goes down and makes a new one only after it has
//! looked at what comes next from the server's side (a JSON API request,
//! which carries a bad subject as U+FFFD): that is what keeps a poison
//! message from being delivered, and the connection dropped, more than
//! once. The input and console connections wait a moment before their
//! first reconnect attempt (async-nats's default is none) so that readers
//! have dropped their subscriptions by then; otherwise the client
//! subscribes them again and a pull still pending on the server delivers
//! the message once more.
//!
//! A connection that is "connected" may still lead to a server that hangs
//! (stopped, or a network that drops packets without a reset): the client
//! notices only after missed pings. The [`probe`] asks JetStream a question
//! every second on the output connection; two unanswered in a row and the
//! daemon reports itself disconnected (`zhijian_nats_connected` 0,
//! `/readyz` 503) until one is answered.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::nats_conn::{self, ConnectError};
use async_nats::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// A connection's state as its users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    pub connected: bool,
    /// Grows by one at every (re)connect.
    pub generation: u64,
}

/// The state of one connection, watched by its users.
#[derive(Debug, Clone)]
pub struct Link(watch::Receiver<LinkState>);

impl Link {
    pub fn state(&self) -> LinkState {
        *self.0.borrow()
    }

    /// Resolves when the state changes (never when the connection's event
    /// task is gone: then nothing changes any more).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once connected.
    pub async fn connected(&mut self) {
        if self.0.wait_for(|s| s.connected).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A link that is connected for ever (tests of parts that take one).
    #[cfg(test)]
    pub fn always() -> Link {
        let (tx, rx) = watch::channel(LinkState {
            connected: true,
            generation: 1,
        });
        std::mem::forget(tx);
        Link(rx)
    }
}

/// The first reconnect attempt of the reader connections waits this long
/// (see the module doc); later attempts back off like async-nats's own.
const READER_FIRST_RECONNECT: Duration = Duration::from_millis(300);

/// The sending side of a [`Link`], given to the connection it reports on.
pub(crate) struct LinkSender(Arc<watch::Sender<LinkState>>);

/// A link, not connected yet, and its sender.
pub(crate) fn link() -> (LinkSender, Link) {
    let (tx, rx) = watch::channel(LinkState::default());
    (LinkSender(Arc::new(tx)), Link(rx))
}

/// The three connections (their links are made before, so that the health
/// endpoints can answer while they connect).
pub(crate) struct Connections {
    pub output: async_nats::Client,
    pub input: async_nats::Client,
    /// Present when the console is on.
    pub console: Option<async_nats::Client>,
}

/// The senders of the three connections' links.
pub(crate) struct LinkSenders {
    pub output: LinkSender,
    pub input: LinkSender,
    pub console: Option<LinkSender>,
}

/// Which connection a callback reports on: the output connection also
/// drives `zhijian_nats_connected` and `zhijian_nats_disconnects_total`.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Output,
    Reader(&'static str),
}

/// Connects the three clients (the console's only when it is on).
pub(crate) async fn connect(
    config: &Config,
    metrics: &Arc<Metrics>,
    probe_ok: &Arc<AtomicBool>,
    links: LinkSenders,
) -> Result<Connections, ConnectError> {
    let output = one(config, metrics, probe_ok, Role::Output, links.output).await?;
    let input = one(
        config,
        metrics,
        probe_ok,
        Role::Reader("input"),
        links.input,
    )
    .await?;
    let console = match links.console {
        Some(l) => Some(one(config, metrics, probe_ok, Role::Reader("console"), l).await?),
        None => None,
    };
    Ok(Connections {
        output,
        input,
        console,
    })
}

async fn one(
    config: &Config,
    metrics: &Arc<Metrics>,
    probe_ok: &Arc<AtomicBool>,
    role: Role,
    link: LinkSender,
) -> Result<async_nats::Client, ConnectError> {
    let tx = link.0;
    let events_tx = Arc::clone(&tx);
    let events_metrics = Arc::clone(metrics);
    let probe_ok = Arc::clone(probe_ok);
    let on_event = move |event: &Event| {
        let tx = &events_tx;
        let metrics = &events_metrics;
        let was = *tx.borrow();
        let now = match event {
            // The first connect is recorded when `connect` returns; its
            // event, coming later, changes nothing.
            Event::Connected if was.connected => return,
            Event::Connected => LinkState {
                connected: true,
                generation: was.generation + 1,
            },
            Event::Disconnected | Event::Closed if !was.connected => return,
            Event::Disconnected | Event::Closed => LinkState {
                connected: false,
                ..was
            },
            _ => return,
        };
        tx.send_replace(now);
        match role {
            Role::Output => {
                metrics
                    .nats_connected
                    .set(i64::from(now.connected && probe_ok.load(Ordering::Relaxed)));
                if was.connected && !now.connected {
                    metrics.nats_disconnects.inc();
                }
            }
            Role::Reader(name) => {
                if was.connected && !now.connected {
                    metrics.reader_disconnects.with_label_values(&[name]).inc();
                }
            }
        }
    };
    let delay = match role {
        Role::Output => None,
        Role::Reader(_) => Some(reader_reconnect_delay as fn(usize) -> Duration),
    };
    let name = match role {
        Role::Output => config.nats.name.clone(),
        Role::Reader(r) => format!("{}-{r}", config.nats.name),
    };
    let client = nats_conn::connect_tuned(&config.nats, &name, delay, on_event).await?;
    tx.send_if_modified(|s| {
        if s.connected {
            return false;
        }
        *s = LinkState {
            connected: true,
            generation: s.generation + 1,
        };
        true
    });
    if role == Role::Output {
        metrics.nats_connected.set(1);
    }
    Ok(client)
}

/// Reconnect delay of the reader connections: [`READER_FIRST_RECONNECT`]
/// at first, then doubling up to 4 s.
fn reader_reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(4);
    (READER_FIRST_RECONNECT * 2u32.pow(exp)).min(Duration::from_secs(4))
}

/// How often the probe asks, and how long an answer may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks JetStream for the account's info every [`PROBE_EVERY`] on the
/// output connection: two questions unanswered within [`PROBE_TIMEOUT`]
/// in a row and `probe_ok` goes false (the daemon counts as disconnected)
/// until one is answered again.
pub(crate) async fn probe(
    js: async_nats::jetstream::Context,
    link: Link,
    probe_ok: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses = 0u32;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let answered = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(PROBE_TIMEOUT, js.query_account()) => matches!(r, Ok(Ok(_))),
        };
        misses = if answered { 0 } else { misses + 1 };
        let ok = misses < 2;
        let was = probe_ok.swap(ok, Ordering::Relaxed);
        metrics
            .nats_connected
            .set(i64::from(ok && link.state().connected));
        if was && !ok {
            tracing::error!(
                "NATS does not answer (two probes of {PROBE_TIMEOUT:?} unanswered): reporting disconnected"
            );
        } else if ok && !was {
            tracing::info!("NATS answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_wait_before_reconnecting_and_back_off() {
        let d: Vec<u64> = (0..8)
            .map(|a| reader_reconnect_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(d, [300, 300, 600, 1200, 2400, 4000, 4000, 4000]);
    }
}
