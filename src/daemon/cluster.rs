//! Many instances on one input stream: partitions, leases, checkpoints.
//!
//! ```text
//! publishers ── transcripts.<tenant>.<id> ──▶ TRANSCRIPTS, stored as
//!               transcripts.<p>.<tenant>.<id>, p = partition(P, tenant, id) computed by NATS
//!
//! instance ── coordinator (every heartbeat) ──▶ bucket zhijian_cluster
//!     │         member.<instance>   "alive until t"
//!     │         lease.<p>           owner, until t          (renewed with a revision check)
//!     │         ckpt.<p>            epoch, seq, chunk count  (written with a revision check)
//!     │         chunk.<p>.<gen>.<i> open conversations
//!     └─ one worker per partition it holds the lease of:
//!          ordered consumer on transcripts.<p>.> from the checkpoint's seq + 1
//!          ─▶ engine ─▶ publish (Nats-Msg-Id = event id) ─▶ checkpoint
//! ```
//!
//! Who should hold a partition: the live member with the highest
//! rendezvous score for it, so members agree without talking and a join or
//! a leave moves about 1/N of the partitions. Who may: the holder of its
//! lease. A member that sees the membership wrongly may fail to balance,
//! never judge a partition beside another: only the lease holder runs a
//! worker, a lease changes hands only when released or expired, and a
//! worker stops publishing as soon as its lease may have expired (its own
//! monotonic clock, renewed leases only) and stops for good when a renewal
//! or a checkpoint finds the revision moved.
//!
//! Nothing accepted is lost: a checkpoint is written only after every event
//! of the inputs it covers is stored, and a new holder replays the
//! partition from the checkpoint's sequence. What the former holder had
//! published after its last checkpoint is judged again to the same events
//! with the same ids, which the output stream drops as duplicates (its
//! `duplicate_window_s` must exceed the longest takeover). A `kill -9`
//! therefore loses no window state either: the next holder (or the same
//! instance restarted) starts from the checkpoint.

use crate::config::{ClusterConfig, StreamsConfig};
use crate::daemon::Shared;
use crate::daemon::shard::{self, DeadLetter, SavedConversation};
use crate::engine::Engine;
use crate::event::{Event, decode_limited};
use crate::matcher::Scanners;
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    context::PublishAckFuture,
    kv,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The partition NATS puts a conversation in: `{{partition(n,1,2)}}` of
/// `<prefix>.<tenant>.<id>` hashes the two tokens joined (FNV-1a, 32 bits).
/// NATS computes it; this model is the tests'.
#[cfg(test)]
fn partition_of(tenant: &str, conversation_id: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tenant.bytes().chain(conversation_id.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// The stream transform that partitions `<prefix>.<tenant>.<id>`.
pub(crate) fn transform(
    streams: &StreamsConfig,
    partitions: u32,
) -> jetstream::stream::SubjectTransform {
    jetstream::stream::SubjectTransform {
        source: subject::input_unpartitioned(streams),
        destination: subject::partition_destination(streams, partitions),
    }
}

/// The partition count of an input stream's transform, if it has one.
pub(crate) fn partitions_of(config: &jetstream::stream::Config) -> Option<u32> {
    subject::parse_partition_count(&config.subject_transform.as_ref()?.destination)
}

/// Rendezvous score of a member for a partition (highest wins).
fn score(member: &str, partition: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xFF]).chain(partition.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone mixes the last bytes poorly: finish like splitmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Who should hold each partition (an index into `members`): every member
/// computes the same table from the same member list. Rendezvous scores
/// rank the members for each partition; pairs are taken best score first,
/// each member up to ⌈P/N⌉ partitions, so loads differ by at most one and a
/// join or a leave moves few partitions.
pub fn assignment(members: &[String], partitions: u32) -> Vec<Option<usize>> {
    let mut owner = vec![None; partitions as usize];
    if members.is_empty() {
        return owner;
    }
    let cap = (partitions as usize).div_ceil(members.len());
    let mut pairs: Vec<(u64, u32, usize)> = Vec::with_capacity(partitions as usize * members.len());
    for p in 0..partitions {
        for (m, name) in members.iter().enumerate() {
            pairs.push((score(name, p), p, m));
        }
    }
    // Best first; ties by partition and member name, the same everywhere.
    pairs.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(members[a.2].cmp(&members[b.2]))
    });
    // First everyone up to ⌊P/N⌋, then the rest one more each: loads
    // differ by at most one.
    let floor = partitions as usize / members.len();
    let mut load = vec![0usize; members.len()];
    for cap in [floor, cap] {
        for &(_, p, m) in &pairs {
            let slot = &mut owner[p as usize];
            if slot.is_none() && load[m] < cap {
                *slot = Some(m);
                load[m] += 1;
            }
        }
    }
    owner
}

fn wall_ms() -> u64 {
    shard::now_ms()
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberValue {
    until_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    owner: String,
    /// Which run of `owner`: two processes started with the same name (a
    /// misconfiguration) never both count a lease as theirs.
    #[serde(default)]
    run: u64,
    until_ms: u64,
}

/// A checkpoint's head: what the chunks hold and up to which input. The
/// base (`generation`, `chunks`) holds every open conversation; each delta
/// after it only the conversations that changed (their whole state) or
/// closed since the checkpoint before, so a checkpoint writes what moved,
/// not every open conversation.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    version: u32,
    /// The lease revision of the holder that wrote it.
    epoch: u64,
    /// Every input of the partition up to this stream sequence is judged
    /// and its events stored.
    seq: u64,
    generation: String,
    chunks: u32,
    /// Open conversations it restores.
    conversations: u64,
    /// Bytes of the base and the deltas.
    bytes: u64,
    written_ms: u64,
    /// Changes since the base, oldest first (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deltas: Vec<Part>,
    /// When the input stream it covers was created (nanoseconds since the
    /// epoch): a stream deleted and made again starts its sequences anew,
    /// and a checkpoint of the old one must not skip the new one's inputs.
    /// Absent in heads written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_created: Option<String>,
}

/// How long a partition's consumer may deliver nothing while inputs wait
/// before it is made again.
const STALL: Duration = Duration::from_secs(3);

/// How long a partition's worker waits for a look at the stream (a poison
/// sweep, a stall check) before trying again later.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Heads without deltas are written as version 1 (what builds before
/// deltas read); with deltas as 2, which those builds refuse rather than
/// misread.
const HEAD_VERSION: u32 = 2;

impl Head {
    /// The base, then the deltas.
    fn parts(&self) -> Vec<Part> {
        let base = Part {
            generation: self.generation.clone(),
            chunks: self.chunks,
            bytes: self
                .bytes
                .saturating_sub(self.deltas.iter().map(|d| d.bytes).sum()),
        };
        std::iter::once(base)
            .chain(self.deltas.iter().cloned())
            .collect()
    }
}

/// Chunks of one generation: a base or a delta.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    generation: String,
    chunks: u32,
    bytes: u64,
}

/// An entry of a delta: a conversation's state, or None when it closed.
#[derive(Debug, Serialize, Deserialize)]
struct DeltaEntry {
    tenant: String,
    conversation_id: String,
    state: Option<crate::engine::Conversation>,
}

/// One lease this instance holds, shared with its worker.
struct Lease {
    /// Monotonic ms (since `clock`) until which the lease surely holds.
    valid_until: AtomicU64,
    /// The lease was taken by another member: stop, publish nothing more.
    lost: AtomicBool,
    clock: Instant,
}

impl Lease {
    fn valid(&self) -> bool {
        !self.lost.load(Ordering::Acquire)
            && (self.clock.elapsed().as_millis() as u64) < self.valid_until.load(Ordering::Acquire)
    }
}

struct Held {
    revision: u64,
    lease: Arc<Lease>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<Exit>,
    /// Told to hand the partition over (another member should hold it).
    releasing: bool,
}

#[derive(Debug)]
enum Exit {
    /// Stopped on request after its last checkpoint.
    Released,
    /// The lease or the checkpoint moved: another member holds it.
    Lost,
    /// Could not go on (checkpoint head unreadable, an event not encoded).
    Failed(ClusterError),
}

/// Everything the coordinator and the workers share.
struct Ctx {
    shared: Arc<Shared>,
    cluster: ClusterConfig,
    partitions: u32,
    kv: kv::Store,
    input: jetstream::stream::Stream,
    scanners: watch::Receiver<Arc<Scanners>>,
    /// The candidate lexicon in shadow mode.
    shadow: Option<watch::Receiver<Arc<Scanners>>>,
    clock: Instant,
    /// This process's run (see [`LeaseValue::run`]).
    run: u64,
    /// When the input stream was created (see [`Head::stream_created`]).
    stream_created: String,
}

/// A checkpoint chunk that cannot be loaded (its conversations go on
/// without state).
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("missing")]
    Missing,
    #[error("unreadable: {0}")]
    Decode(serde_json::Error),
}

/// What goes wrong in cluster mode, with its source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Event(#[from] super::EncodeError),
    #[error("checkpoint head of partition {partition} is unreadable: {source}")]
    Head {
        partition: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "checkpoint of partition {partition} has version {found}, this build reads 1 to {HEAD_VERSION}"
    )]
    Version { partition: u32, found: u32 },
    #[error(
        "checkpoint of partition {partition} was written by a newer holder (epoch {head_epoch}, this one {epoch})"
    )]
    Superseded {
        partition: u32,
        head_epoch: u64,
        epoch: u64,
    },
    #[error("{}", .0.join("; "))]
    Shutdown(Vec<String>),
    #[error("{0}: timed out")]
    TimedOut(&'static str),
}

impl ClusterError {
    fn nats(what: impl Into<String>, source: impl Into<async_nats::Error>) -> ClusterError {
        ClusterError::Nats {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// What the cluster runs on: the partitioned input stream and the bucket.
pub(crate) struct Streams {
    pub input: jetstream::stream::Stream,
    pub partitions: u32,
    pub kv: kv::Store,
}

/// Runs this instance's part of the cluster until `shutdown`: heartbeats,
/// leases, one worker per held partition. On shutdown every worker
/// checkpoints, every lease is released and the member leaves.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    cluster: ClusterConfig,
    on: Streams,
    scanners: watch::Receiver<Arc<Scanners>>,
    shadow: Option<watch::Receiver<Arc<Scanners>>>,
    status: Arc<super::http::Status>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClusterError> {
    let stream_created = on
        .input
        .cached_info()
        .created
        .unix_timestamp_nanos()
        .to_string();
    let ctx = Arc::new(Ctx {
        shared,
        cluster,
        partitions: on.partitions,
        kv: on.kv,
        input: on.input,
        scanners,
        shadow,
        stream_created,
        clock: Instant::now(),
        run: wall_ms() ^ (u64::from(std::process::id()) << 40),
    });
    let partitions = ctx.partitions;
    let metrics = &ctx.shared.metrics;
    let me = ctx.cluster.instance.clone();
    tracing::info!(instance = %me, partitions, "joining the cluster");
    let mut held: HashMap<u32, Held> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut first_round = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break,
            _ = tick.tick() => {}
        }
        let members = match heartbeat(&ctx).await {
            Ok(m) => {
                status.consumer_bound.store(true, Ordering::Relaxed);
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster heartbeat failed");
                // Renewals below may still work; without a member list
                // nothing new is taken.
                Vec::new()
            }
        };
        metrics.cluster.members.set(members.len() as i64);
        renew(&ctx, &mut held).await;
        reap(&ctx, &mut held).await;
        // The first round only announces this member: instances started
        // together then see each other before taking partitions, instead of
        // taking them all and handing most over a heartbeat later.
        if !members.is_empty() && !first_round {
            balance(&ctx, &members, &mut held).await;
        }
        first_round = false;
        metrics.cluster.partitions_owned.set(held.len() as i64);
    }
    // Shutdown: every worker checkpoints and stops; leases are released.
    tracing::info!(
        partitions = held.len(),
        "leaving the cluster: handing partitions over"
    );
    for h in held.values_mut() {
        h.releasing = true;
        let _ = h.stop.send(true);
    }
    // Within the grace period, NATS gone or not: workers checkpoint for
    // most of it, then leases and the member key get what is left.
    let started = tokio::time::Instant::now();
    let grace = ctx.shared.config.shutdown_grace;
    let (workers_by, release_by) = (started + grace.mul_f64(0.8), started + grace.mul_f64(0.9));
    let mut problems = Vec::new();
    for (p, mut h) in held.drain() {
        match tokio::time::timeout_at(workers_by, &mut h.worker).await {
            Ok(Ok(Exit::Released)) => {
                let _ = tokio::time::timeout_at(release_by, release(&ctx, p, h.revision)).await;
                metrics
                    .cluster
                    .handovers
                    .with_label_values(&["released"])
                    .inc();
            }
            Ok(Ok(other)) => {
                tracing::warn!(partition = p, exit = ?other, "worker ended badly at shutdown")
            }
            Ok(Err(e)) => problems.push(format!("partition {p}: worker failed: {e}")),
            Err(_) => {
                // It must not publish after this instance said it stopped.
                h.worker.abort();
                problems.push(format!(
                    "partition {p}: no checkpoint within the grace period (the next holder replays from the last one)"
                ));
            }
        }
    }
    metrics.cluster.partitions_owned.set(0);
    match tokio::time::timeout_at(
        release_by,
        super::remove_keys(&ctx.kv, &format!("member.{me}")),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this member"),
        Err(_) => tracing::warn!("cannot remove this member in time (it expires by itself)"),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Shutdown(problems))
    }
}

/// Says this member is alive; returns the live members (this one included).
async fn heartbeat(ctx: &Ctx) -> Result<Vec<String>, ClusterError> {
    let me = &ctx.cluster.instance;
    let ttl = ctx.cluster.heartbeat.as_millis() as u64 * 3;
    let value = serde_json::to_vec(&MemberValue {
        until_ms: wall_ms() + ttl,
    })
    .map_err(|source| ClusterError::Encode {
        what: "the member key",
        source,
    })?;
    ctx.kv
        .put(format!("member.{me}"), value.into())
        .await
        .map_err(|e| ClusterError::nats("writing the member key", e))?;
    let mut keys = ctx
        .kv
        .keys()
        .await
        .map_err(|e| ClusterError::nats("listing members", e))?;
    let mut members = vec![me.clone()];
    let now = wall_ms();
    while let Some(k) = keys.next().await {
        let Ok(k) = k else { continue };
        let Some(name) = k.strip_prefix("member.") else {
            continue;
        };
        if name == me {
            continue;
        }
        if let Ok(Some(v)) = ctx.kv.get(&k).await
            && let Ok(m) = serde_json::from_slice::<MemberValue>(&v)
            && m.until_ms > now
        {
            members.push(name.to_string());
        }
    }
    members.sort();
    Ok(members)
}

fn lease_key(p: u32) -> String {
    format!("lease.{p}")
}

/// A lease's value; the error is a bug, and no lease is written with it.
fn lease_value(ctx: &Ctx, until_ms: u64) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(&LeaseValue {
        owner: ctx.cluster.instance.clone(),
        run: ctx.run,
        until_ms,
    })
    .map(Bytes::from)
}

/// Renews every held lease; a renewal that finds the revision moved means
/// another member holds it now: that worker stops at once.
async fn renew(ctx: &Ctx, held: &mut HashMap<u32, Held>) {
    let lease_ms = ctx.cluster.lease.as_millis() as u64;
    for (p, h) in held.iter_mut() {
        if h.lease.lost.load(Ordering::Acquire) {
            continue;
        }
        let asked = ctx.clock.elapsed().as_millis() as u64;
        let value = match lease_value(ctx, wall_ms() + lease_ms) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(partition = p, error = %e, "cannot encode the lease; not renewed");
                continue;
            }
        };
        match ctx.kv.update(lease_key(*p), value, h.revision).await {
            Ok(rev) => {
                h.revision = rev;
                // Others count from their clocks when they read it; keep a
                // fifth of the lease as margin for clock skew and delays.
                h.lease
                    .valid_until
                    .store(asked + lease_ms * 4 / 5, Ordering::Release);
            }
            Err(e) => {
                // Lost, or only a slow server? Look.
                let moved = match ctx.kv.entry(lease_key(*p)).await {
                    Ok(Some(entry)) => entry.revision != h.revision,
                    Ok(None) => true,
                    Err(_) => false,
                };
                if moved {
                    tracing::warn!(
                        partition = p,
                        "lease taken by another member; stopping its worker"
                    );
                    h.lease.lost.store(true, Ordering::Release);
                    let _ = h.stop.send(true);
                    ctx.shared
                        .metrics
                        .cluster
                        .handovers
                        .with_label_values(&["lost"])
                        .inc();
                } else {
                    tracing::warn!(partition = p, error = %e, "lease renewal failed; retrying");
                }
            }
        }
    }
}

/// Collects workers that ended: released partitions give their lease back.
async fn reap(ctx: &Ctx, held: &mut HashMap<u32, Held>) {
    let done: Vec<u32> = held
        .iter()
        .filter(|(_, h)| h.worker.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in done {
        let Some(h) = held.remove(&p) else { continue };
        match h.worker.await {
            Ok(Exit::Released) => {
                release(ctx, p, h.revision).await;
                ctx.shared
                    .metrics
                    .cluster
                    .handovers
                    .with_label_values(&["released"])
                    .inc();
                tracing::info!(partition = p, "partition handed over");
            }
            Ok(Exit::Lost) => tracing::info!(partition = p, "partition lost to another member"),
            Ok(Exit::Failed(e)) => {
                tracing::error!(partition = p, error = %e, "partition worker failed; releasing it");
                release(ctx, p, h.revision).await;
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "partition worker panicked; releasing it");
                release(ctx, p, h.revision).await;
            }
        }
    }
}

/// Gives a lease back at once (expired now), if it is still ours.
async fn release(ctx: &Ctx, p: u32, revision: u64) {
    let value = match lease_value(ctx, 0) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "cannot encode the lease; not released (it expires by itself)");
            return;
        }
    };
    if let Err(e) = ctx.kv.update(lease_key(p), value, revision).await {
        tracing::debug!(partition = p, error = %e, "lease not released (it expires by itself)");
    }
}

/// Takes the partitions this member should hold and hands over the others.
async fn balance(ctx: &Arc<Ctx>, members: &[String], held: &mut HashMap<u32, Held>) {
    let me = ctx.cluster.instance.as_str();
    let owners = assignment(members, ctx.partitions);
    for p in 0..ctx.partitions {
        let owner = owners[p as usize].map(|m| members[m].as_str());
        let mine = owner == Some(me);
        match held.get_mut(&p) {
            Some(h) if !mine && !h.releasing => {
                tracing::info!(partition = p, to = ?owner, "handing partition over");
                h.releasing = true;
                let _ = h.stop.send(true);
            }
            Some(_) => {}
            None if mine => {
                if let Some(h) = acquire(ctx, p).await {
                    held.insert(p, h);
                }
            }
            None => {}
        }
    }
}

/// Takes the lease of `p` if it is free (never held, released or expired)
/// and starts its worker.
async fn acquire(ctx: &Arc<Ctx>, p: u32) -> Option<Held> {
    let lease_ms = ctx.cluster.lease.as_millis() as u64;
    let asked = ctx.clock.elapsed().as_millis() as u64;
    let value = match lease_value(ctx, wall_ms() + lease_ms) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "cannot encode a lease");
            return None;
        }
    };
    let (taken, how) = match ctx.kv.entry(lease_key(p)).await {
        Ok(None) => (ctx.kv.create(lease_key(p), value).await.ok(), "acquired"),
        Ok(Some(entry)) => {
            let current = serde_json::from_slice::<LeaseValue>(&entry.value).ok();
            let how = match &current {
                Some(l) if l.owner == ctx.cluster.instance && l.run == ctx.run => "acquired",
                Some(l) if l.until_ms == 0 => "acquired",
                Some(l) if l.until_ms <= wall_ms() => "failover",
                Some(_) => return None,
                None => "acquired",
            };
            (
                ctx.kv
                    .update(lease_key(p), value, entry.revision)
                    .await
                    .ok(),
                how,
            )
        }
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "cannot read lease");
            return None;
        }
    };
    let revision = taken?;
    let lease = Arc::new(Lease {
        valid_until: AtomicU64::new(asked + lease_ms * 4 / 5),
        lost: AtomicBool::new(false),
        clock: ctx.clock,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    ctx.shared
        .metrics
        .cluster
        .handovers
        .with_label_values(&[how])
        .inc();
    tracing::info!(partition = p, epoch = revision, how, "partition taken");
    let worker = tokio::spawn(work(
        Arc::clone(ctx),
        p,
        revision,
        Arc::clone(&lease),
        stop_rx,
    ));
    Some(Held {
        revision,
        lease,
        stop: stop_tx,
        worker,
        releasing: false,
    })
}

/// The judging of one partition while this member holds its lease.
struct Worker {
    ctx: Arc<Ctx>,
    p: u32,
    epoch: u64,
    lease: Arc<Lease>,
    engine: Engine,
    /// The live lexicon, as reloaded.
    scanners: watch::Receiver<Arc<Scanners>>,
    /// Shadow mode: the candidate lexicon's engine (its state is not
    /// checkpointed).
    shadow: Option<shard::Shadow>,
    /// Inputs of the partition after the last one judged (added to
    /// `zhijian_consumer_pending`).
    pending: i64,
    /// Last input sequence judged (its events sent).
    seq: u64,
    /// Revision of the checkpoint head this worker last read or wrote.
    head_revision: Option<u64>,
    /// The base and deltas of that head (their chunks go when a new base
    /// replaces them).
    head_parts: Vec<Part>,
    /// Conversations changed or closed since the last checkpoint (with
    /// no input too: closes, deadlines passed by the clock).
    changed: Changed,
    /// The next checkpoint writes a base: the head loaded belongs to an
    /// earlier stream of the same name, so no delta may build on it.
    base_next: bool,
    checkpointed_seq: u64,
    checkpointed_at: Instant,
    /// Events sent and not yet acknowledged, oldest first, with when
    /// their input entered the stream.
    unacked: VecDeque<(Event, Option<u64>, PublishAckFuture)>,
    /// Open conversations last added to the gauge.
    reported_open: i64,
    /// The disconnect count at the last sweep for undecodable subjects.
    swept_at_disconnects: u64,
    /// When the partition's consumer last delivered (see `stalled`).
    heard_at: Instant,
    stall_checked_at: Instant,
    events: Vec<Event>,
    generation: u64,
    /// Chunks of earlier epochs were purged after this holder's first head.
    swept_earlier_epochs: bool,
}

async fn work(
    ctx: Arc<Ctx>,
    p: u32,
    epoch: u64,
    lease: Arc<Lease>,
    mut stop: watch::Receiver<bool>,
) -> Exit {
    let config = &ctx.shared.config;
    let max_open = config.max_open_conversations / ctx.partitions as usize;
    let mut scanners = ctx.scanners.clone();
    let mut engine = Engine::with_scanners(
        Arc::clone(&scanners.borrow_and_update()),
        super::engine_config(config, max_open),
    );
    engine.track_clock_changes();
    let shadow = ctx
        .shadow
        .as_ref()
        .map(|rx| shard::Shadow::new(rx, &ctx.shared, max_open));
    let mut w = Worker {
        ctx: Arc::clone(&ctx),
        p,
        epoch,
        lease,
        engine,
        scanners,
        shadow,
        pending: 0,
        seq: 0,
        head_revision: None,
        head_parts: Vec::new(),
        changed: Changed::default(),
        base_next: false,
        checkpointed_seq: 0,
        checkpointed_at: Instant::now(),
        unacked: VecDeque::new(),
        events: Vec::new(),
        generation: 0,
        swept_earlier_epochs: false,
        reported_open: 0,
        swept_at_disconnects: u64::MAX,
        heard_at: Instant::now(),
        stall_checked_at: Instant::now(),
    };
    match w.load().await {
        Ok(()) => {}
        // A newer holder wrote the head: this one's lease is gone.
        Err(ClusterError::Superseded { .. }) => {
            w.lease.lost.store(true, Ordering::Release);
            return Exit::Lost;
        }
        Err(e) => return Exit::Failed(e),
    }
    let exit = w.run(&mut stop).await;
    w.report_open(true);
    w.report_pending(0);
    ctx.shared.metrics.cluster.forget(p);
    exit
}

impl Worker {
    fn head_key(&self) -> String {
        format!("ckpt.{}", self.p)
    }

    /// Loads the partition's checkpoint into the engine.
    async fn load(&mut self) -> Result<(), ClusterError> {
        let kv = &self.ctx.kv;
        let entry = kv
            .entry(self.head_key())
            .await
            .map_err(|e| ClusterError::nats("reading the checkpoint head", e))?;
        let Some(entry) = entry else {
            return Ok(());
        };
        self.head_revision = Some(entry.revision);
        if entry.value.is_empty() {
            return Ok(());
        }
        let head: Head =
            serde_json::from_slice(&entry.value).map_err(|source| ClusterError::Head {
                partition: self.p,
                source,
            })?;
        if !(1..=HEAD_VERSION).contains(&head.version) {
            return Err(ClusterError::Version {
                partition: self.p,
                found: head.version,
            });
        }
        if head.epoch > self.epoch {
            return Err(ClusterError::Superseded {
                partition: self.p,
                head_epoch: head.epoch,
                epoch: self.epoch,
            });
        }
        if head
            .stream_created
            .as_ref()
            .is_some_and(|c| *c != self.ctx.stream_created)
        {
            // The stream was deleted and made again: its sequences start
            // anew. Judged from its first input; the old chunks go when
            // this holder's first checkpoint replaces the head.
            self.ctx
                .shared
                .metrics
                .cluster
                .checkpoints
                .with_label_values(&["other_stream"])
                .inc();
            tracing::warn!(
                partition = self.p,
                stream = %self.ctx.shared.config.streams.input_stream,
                checkpoint_seq = head.seq,
                "the checkpoint belongs to an earlier input stream of this name; \
                 judging this stream's partition from its first input"
            );
            self.head_parts = head.parts();
            self.base_next = true;
            return Ok(());
        }
        // The base, then each delta over it.
        let mut open: HashMap<(String, String), crate::engine::Conversation> = HashMap::new();
        let parts = head.parts();
        for (i, part) in parts.iter().enumerate() {
            if i == 0 {
                for c in self.read_part::<SavedConversation>(part).await? {
                    open.insert((c.tenant, c.conversation_id), c.state);
                }
            } else {
                for d in self.read_part::<DeltaEntry>(part).await? {
                    let key = (d.tenant, d.conversation_id);
                    match d.state {
                        Some(state) => open.insert(key, state),
                        None => open.remove(&key),
                    };
                }
            }
        }
        let restored = open.len() as u64;
        for ((tenant, id), state) in open {
            self.engine.import(&tenant, &id, state);
        }
        self.head_parts = parts;
        self.purge_older_than(&head.generation).await;
        self.seq = head.seq;
        self.checkpointed_seq = head.seq;
        self.ctx.shared.metrics.state_restored.inc_by(restored);
        tracing::info!(
            partition = self.p,
            seq = head.seq,
            conversations = restored,
            previous_epoch = head.epoch,
            "checkpoint loaded"
        );
        Ok(())
    }

    /// The entries of a checkpoint part's chunks. A chunk missing or
    /// unreadable is counted and skipped: its conversations go on without
    /// their window state (as if first seen mid-way: no greeting verdict is
    /// made up); stopping here would stall the partition for good.
    async fn read_part<T: serde::de::DeserializeOwned>(
        &self,
        part: &Part,
    ) -> Result<Vec<T>, ClusterError> {
        let mut entries = Vec::new();
        for i in 0..part.chunks {
            let key = format!("chunk.{}.{}.{i}", self.p, part.generation);
            let read = match self.ctx.kv.get(&key).await {
                Ok(Some(bytes)) => {
                    serde_json::from_slice::<Vec<T>>(&bytes).map_err(ChunkError::Decode)
                }
                Ok(None) => Err(ChunkError::Missing),
                Err(e) => {
                    return Err(ClusterError::nats(
                        format!("reading checkpoint chunk {key}"),
                        e,
                    ));
                }
            };
            match read {
                Ok(mut chunk) => entries.append(&mut chunk),
                Err(e) => {
                    self.ctx
                        .shared
                        .metrics
                        .cluster
                        .checkpoints
                        .with_label_values(&["unreadable"])
                        .inc();
                    tracing::error!(partition = self.p, chunk = %key, error = %e, "checkpoint chunk unreadable; its conversations continue without their state");
                }
            }
        }
        Ok(entries)
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Exit {
        let mut tick = tokio::time::interval(self.ctx.cluster.checkpoint);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        'consume: loop {
            // Bounded, and given up for a stop: a request whose answer a
            // disconnect lost would otherwise hold the partition for the
            // client's whole timeout.
            let made = tokio::select! {
                _ = stop.changed() => None,
                made = tokio::time::timeout(PROBE_TIMEOUT * 2, self.consumer(first)) => Some(made),
            };
            let made = match made {
                None => return self.finish().await,
                Some(Ok(made)) => made,
                Some(Err(_)) => Err(ClusterError::TimedOut("creating the partition's consumer")),
            };
            let mut messages = match made {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(partition = self.p, error = %e, "cannot consume the partition; retrying");
                    tokio::select! {
                        _ = stop.changed() => return self.finish().await,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            first = false;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return self.finish().await,
                    _ = tick.tick() => {
                        if let Err(exit) = self.checkpoint_if_due().await {
                            return exit;
                        }
                        if self.stalled().await {
                            continue 'consume;
                        }
                    }
                    m = messages.next() => match m {
                        Some(Ok(msg)) => {
                            self.heard_at = Instant::now();
                            if let Err(exit) = self.handle(msg).await {
                                return exit;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(partition = self.p, error = %e, "partition consumer");
                        }
                        None => continue 'consume,
                    },
                }
            }
        }
    }

    /// True when the consumer has delivered nothing for [`STALL`] while
    /// the partition holds an input after `seq` (a pull lost in a
    /// disconnect was seen to leave an ordered consumer silent for good):
    /// the caller then makes a new one from `seq`. Asked of the server at
    /// most once per [`STALL`].
    async fn stalled(&mut self) -> bool {
        if self.heard_at.elapsed() < STALL || self.stall_checked_at.elapsed() < STALL {
            return false;
        }
        self.stall_checked_at = Instant::now();
        let filter = subject::partition_all(&self.ctx.shared.config.streams, self.p);
        let probe = self
            .ctx
            .input
            .raw_message_builder()
            .sequence(self.seq + 1)
            .next_by_subject(filter)
            .send();
        let waiting = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
        if waiting {
            self.ctx.shared.metrics.cluster.consumer_restarts.inc();
            tracing::warn!(
                partition = self.p,
                seq = self.seq,
                "the partition's consumer delivered nothing while inputs wait; making a new one"
            );
            self.heard_at = Instant::now();
        }
        waiting
    }

    /// An ordered consumer on the partition from the input after `seq`.
    async fn consumer(&mut self, first: bool) -> Result<pull::Ordered, ClusterError> {
        let streams = &self.ctx.shared.config.streams;
        let deliver_policy = if self.seq == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.seq + 1,
            }
        };
        let mut consumer = self
            .ctx
            .input
            .create_consumer(pull::OrderedConfig {
                description: Some(format!("zhijian partition {}", self.p)),
                filter_subject: subject::partition_all(streams, self.p),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::nats("creating the partition's consumer", e))?;
        if first {
            // What the previous holder may have judged after its last
            // checkpoint, and what waited: judged again from the checkpoint.
            if let Ok(info) = consumer.info().await {
                self.ctx
                    .shared
                    .metrics
                    .cluster
                    .replayed
                    .inc_by(info.num_pending);
            }
        }
        consumer
            .messages()
            .await
            .map_err(|e| ClusterError::nats("reading the partition", e))
    }

    /// Judges one input and sends its events.
    async fn handle(&mut self, msg: jetstream::Message) -> Result<(), Exit> {
        self.refresh_scanner();
        let Ok(info) = msg.info() else {
            return Ok(());
        };
        let seq = info.stream_sequence;
        if seq <= self.seq {
            return Ok(());
        }
        let shared = Arc::clone(&self.ctx.shared);
        let metrics = &shared.metrics;
        let received = Instant::now();
        let arrived = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok();
        let input = match decode_limited(&msg.message.payload, shared.config.max_text_bytes) {
            Ok(i) => i,
            Err(e) => {
                let detail = e.to_string();
                return self.dead_letter(&msg, seq, e.code(), &detail).await;
            }
        };
        let streams = &shared.config.streams;
        // Restored state follows the partition, the engine the payload:
        // they must name the same conversation.
        let subject_matches =
            subject::parse_partitioned_input(streams, msg.message.subject.as_str())
                == Some((
                    self.p,
                    input.tenant.as_ref(),
                    input.conversation_id.as_ref(),
                ));
        if !subject_matches {
            let detail = format!(
                "the subject must be {} (tenant and conversation_id of the payload)",
                subject::input(streams, &input.tenant, &input.conversation_id)
            );
            return self
                .dead_letter(&msg, seq, subject::SUBJECT_MISMATCH, &detail)
                .await;
        }
        let outcome = shard::judge(
            &mut self.engine,
            self.shadow.as_mut(),
            &shared,
            &input,
            &mut self.events,
            received,
        );
        self.changed.mark(&input.tenant, &input.conversation_id);
        self.changed.mark_closed(&self.events);
        metrics.outcome(outcome);
        let events = std::mem::take(&mut self.events);
        self.send(&events, arrived).await?;
        self.events = events;
        self.events.clear();
        self.seq = seq;
        self.report_open(false);
        self.report_pending(i64::try_from(info.pending).unwrap_or(i64::MAX));
        Ok(())
    }

    fn refresh_scanner(&mut self) {
        if self.scanners.has_changed().unwrap_or(false) {
            let s = Arc::clone(&self.scanners.borrow_and_update());
            self.engine.set_scanners(s);
        }
    }

    /// This partition's share of `zhijian_consumer_pending`.
    fn report_pending(&mut self, pending: i64) {
        let gauge = &self.ctx.shared.metrics.consumer_pending;
        report_share(gauge, &mut self.pending, pending);
    }

    fn report_open(&mut self, gone: bool) {
        let open = if gone {
            0
        } else {
            self.engine.open_conversations() as i64
        };
        let gauge = &self.ctx.shared.metrics.open_conversations;
        report_share(gauge, &mut self.reported_open, open);
    }

    /// Waits until the lease surely holds; Err once it is lost.
    async fn hold(&self) -> Result<(), Exit> {
        loop {
            if self.lease.lost.load(Ordering::Acquire) {
                return Err(Exit::Lost);
            }
            if self.lease.valid() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends events (publish, not yet acknowledged), keeping at most
    /// `publish_window` unacknowledged.
    async fn send(&mut self, events: &[Event], arrived: Option<u64>) -> Result<(), Exit> {
        for e in events {
            self.hold().await?;
            let shared = &self.ctx.shared;
            let (subject, mut headers, payload) =
                shared.encode(e).map_err(|e| Exit::Failed(e.into()))?;
            self.stamp(&mut headers);
            shared.metrics.output_pending.inc();
            let ack = loop {
                match shared
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                {
                    Ok(ack) => break ack,
                    Err(err) => {
                        tracing::warn!(partition = self.p, error = %err, "publish failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        self.hold().await?;
                    }
                }
            };
            self.unacked.push_back((e.clone(), arrived, ack));
            let window = shared.config.publish_window;
            while self.unacked.len() > window {
                self.settle_oldest().await?;
            }
        }
        Ok(())
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert("Zhijian-Partition", self.p.to_string().as_str());
        headers.insert("Zhijian-Epoch", self.epoch.to_string().as_str());
    }

    /// Waits for the oldest unacknowledged event; sends it again until it
    /// is stored (same id: never twice in the stream).
    async fn settle_oldest(&mut self) -> Result<(), Exit> {
        let Some((event, arrived, ack)) = self.unacked.pop_front() else {
            return Ok(());
        };
        let shared = Arc::clone(&self.ctx.shared);
        let mut result = ack.await.map(|a| a.duplicate);
        let mut delay = Duration::from_millis(100);
        loop {
            match result {
                Ok(duplicate) => {
                    shared.metrics.output_pending.dec();
                    if !duplicate {
                        shard::count_stored(&shared, &event, arrived);
                    }
                    shared.progress();
                    return Ok(());
                }
                Err(e) => {
                    shard::count_failure(&shared, &event);
                    shared.metrics.publish_retries.inc();
                    tracing::warn!(partition = self.p, error = %e, "event not stored; sending it again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    self.hold().await?;
                    let (subject, mut headers, payload) =
                        shared.encode(&event).map_err(|e| Exit::Failed(e.into()))?;
                    self.stamp(&mut headers);
                    result = match shared
                        .js
                        .publish_with_headers(subject, headers, payload)
                        .await
                    {
                        Ok(ack) => ack.await.map(|a| a.duplicate),
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    async fn settle_all(&mut self) -> Result<(), Exit> {
        while !self.unacked.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Bad input: to the dead-letter subject (retried until stored; the
    /// partition waits, as it must not skip it).
    async fn dead_letter(
        &mut self,
        msg: &jetstream::Message,
        seq: u64,
        code: &'static str,
        detail: &str,
    ) -> Result<(), Exit> {
        let stream = self.ctx.shared.config.streams.input_stream.clone();
        let mut delay = Duration::from_millis(100);
        loop {
            self.hold().await?;
            let letter = DeadLetter::of(msg, &stream, seq, code, detail);
            match shard::publish_dead_letter(&self.ctx.shared, letter).await {
                Ok(()) => {
                    tracing::warn!(
                        partition = self.p,
                        subject = %msg.message.subject,
                        stream_seq = seq,
                        reason = code,
                        detail = %detail,
                        "bad input dead-lettered"
                    );
                    self.seq = seq;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(partition = self.p, error = %e, "cannot dead-letter bad input; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Idle closes, then a checkpoint if the state moved.
    async fn checkpoint_if_due(&mut self) -> Result<(), Exit> {
        self.refresh_scanner();
        self.sweep_undecodable().await;
        let idle_ms = self.ctx.shared.config.idle_timeout.as_millis() as u64;
        let mut events = std::mem::take(&mut self.events);
        self.engine.close_idle(wall_ms(), idle_ms, &mut events);
        // Deadlines passed by the clock change state with no input.
        for (tenant, id) in self.engine.take_clock_changes() {
            self.changed.mark(&tenant, &id);
        }
        if let Some(shadow) = self.shadow.as_mut() {
            shadow.close_idle(&self.ctx.shared, idle_ms, &events);
        }
        self.changed.mark_closed(&events);
        if !events.is_empty() {
            self.send(&events, None).await?;
        }
        events.clear();
        self.events = events;
        self.report_open(false);
        let m = &self.ctx.shared.metrics.cluster;
        m.observe_checkpoint_age(self.p, self.checkpointed_at.elapsed());
        if self.seq == self.checkpointed_seq && self.changed.is_empty() {
            // Nothing new: the checkpoint is as good as fresh.
            self.checkpointed_at = Instant::now();
            return Ok(());
        }
        self.checkpoint().await
    }

    /// After a disconnect (and at start): a message whose subject is not
    /// UTF-8 at the head of the partition drops the connection every time
    /// it is delivered (see `daemon::poison`); it is dead-lettered and
    /// removed from the input stream, from the server's side.
    async fn sweep_undecodable(&mut self) {
        let disconnects = self.ctx.shared.metrics.nats_disconnects.get();
        if disconnects == self.swept_at_disconnects {
            return;
        }
        let filter = format!(
            "{}.{}.>",
            self.ctx.shared.config.streams.input_prefix, self.p
        );
        // Bounded: a request whose answer a disconnect lost would hold the
        // partition (and its shutdown) for the client's whole timeout.
        let sweep = super::poison::sweep_partition(
            &self.ctx.shared,
            &self.ctx.input,
            &filter,
            self.seq + 1,
        );
        match tokio::time::timeout(PROBE_TIMEOUT, sweep).await {
            Ok(Ok(_)) => self.swept_at_disconnects = disconnects,
            Ok(Err(e)) => {
                tracing::debug!(partition = self.p, error = %e, "poison sweep failed; will retry")
            }
            Err(_) => tracing::debug!(partition = self.p, "poison sweep timed out; will retry"),
        }
    }

    /// Stores every sent event, then writes the checkpoint: chunks under a
    /// new generation, then the head with a revision check (a former holder
    /// can never overwrite a newer checkpoint), then the old chunks go.
    async fn checkpoint(&mut self) -> Result<(), Exit> {
        self.settle_all().await?;
        self.hold().await?;
        let started = Instant::now();
        let kv = self.ctx.kv.clone();
        let max_chunk = self
            .ctx
            .shared
            .max_payload
            .saturating_sub(4096)
            .max(16 * 1024);
        self.generation += 1;
        let generation = format!("{}-{}", self.epoch, self.generation);
        // A base (every open conversation) when due, else a delta (what
        // changed or closed since the last checkpoint).
        let delta_bytes: u64 = self.head_parts.iter().skip(1).map(|d| d.bytes).sum();
        let base = self.base_next
            || self.head_parts.is_empty()
            || self.head_parts.len() > self.ctx.cluster.max_deltas
            || self
                .head_parts
                .first()
                .is_some_and(|b| delta_bytes > b.bytes);
        let chunks = if base {
            chunked(
                self.engine
                    .export()
                    .map(|(tenant, id, state)| SavedConversation {
                        tenant: tenant.to_string(),
                        conversation_id: id.to_string(),
                        state,
                    }),
                max_chunk,
            )
        } else {
            chunked(
                self.changed.iter().map(|(tenant, id)| DeltaEntry {
                    state: self.engine.export_one(tenant, id),
                    tenant: tenant.to_string(),
                    conversation_id: id.to_string(),
                }),
                max_chunk,
            )
        };
        let m = &self.ctx.shared.metrics.cluster;
        let mut bytes_total = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            bytes_total += c.len() as u64;
            let key = format!("chunk.{}.{generation}.{i}", self.p);
            if let Err(e) = kv.put(&key, Bytes::from(c.clone())).await {
                m.checkpoints.with_label_values(&["failed"]).inc();
                tracing::warn!(partition = self.p, error = %e, "checkpoint chunk not written; retrying later");
                self.purge_generation(&generation).await;
                return Ok(());
            }
        }
        let part = Part {
            generation: generation.clone(),
            chunks: chunks.len() as u32,
            bytes: bytes_total,
        };
        let parts: Vec<Part> = if base {
            vec![part]
        } else if part.chunks == 0 {
            // Nothing changed, only the sequence moved (bad input, repeats).
            self.head_parts.clone()
        } else {
            self.head_parts.iter().cloned().chain([part]).collect()
        };
        let head = Head {
            version: if parts.len() > 1 { HEAD_VERSION } else { 1 },
            epoch: self.epoch,
            seq: self.seq,
            generation: parts[0].generation.clone(),
            chunks: parts[0].chunks,
            conversations: self.engine.open_conversations() as u64,
            bytes: parts.iter().map(|p| p.bytes).sum(),
            written_ms: wall_ms(),
            deltas: parts[1..].to_vec(),
            stream_created: Some(self.ctx.stream_created.clone()),
        };
        let head_bytes = match serde_json::to_vec(&head) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                m.checkpoints.with_label_values(&["failed"]).inc();
                tracing::error!(partition = self.p, error = %e, "cannot encode the checkpoint head");
                self.purge_generation(&generation).await;
                return Ok(());
            }
        };
        // Last look at the lease before the write that counts.
        self.hold().await?;
        let written = match self.head_revision {
            Some(rev) => kv
                .update(self.head_key(), head_bytes, rev)
                .await
                .map_err(|e| {
                    let fenced = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                    (fenced, e.to_string())
                }),
            None => kv.create(self.head_key(), head_bytes).await.map_err(|e| {
                let fenced = e.kind() == kv::CreateErrorKind::AlreadyExists;
                (fenced, e.to_string())
            }),
        };
        // A write that failed without a verdict (a timeout) may still have
        // been stored: then the head names this generation, and its chunks
        // must stay.
        let written = match written {
            Err((false, e)) => match kv.entry(self.head_key()).await {
                Ok(Some(entry)) if names_generation(&entry.value, &generation) => {
                    Ok(entry.revision)
                }
                _ => Err((false, e)),
            },
            other => other,
        };
        match written {
            Ok(rev) => {
                self.head_revision = Some(rev);
                m.checkpoints.with_label_values(&["ok"]).inc();
                m.checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.set_checkpoint_bytes(self.p, bytes_total);
                m.checkpoint_written
                    .with_label_values(&[if base { "base" } else { "delta" }])
                    .inc_by(bytes_total);
                self.checkpointed_seq = self.seq;
                self.checkpointed_at = Instant::now();
                self.changed.clear();
                self.base_next = false;
                // A new base replaces the chunks of the old head, exactly:
                // never a listing, which could take a newer holder's fresh
                // chunks.
                let replaced = std::mem::replace(&mut self.head_parts, parts);
                if base {
                    for old in replaced {
                        if old.generation != generation {
                            self.purge_generation(&old.generation).await;
                        }
                    }
                }
                if !self.swept_earlier_epochs {
                    self.swept_earlier_epochs = true;
                    self.purge_earlier_epochs().await;
                }
                Ok(())
            }
            Err((true, e)) => {
                m.checkpoints.with_label_values(&["fenced"]).inc();
                tracing::warn!(partition = self.p, error = %e, "checkpoint fenced: another member holds the partition");
                self.purge_generation(&generation).await;
                self.lease.lost.store(true, Ordering::Release);
                Err(Exit::Lost)
            }
            Err((false, e)) => {
                m.checkpoints.with_label_values(&["failed"]).inc();
                tracing::warn!(partition = self.p, error = %e, "checkpoint head not written; retrying later");
                self.purge_generation(&generation).await;
                Ok(())
            }
        }
    }

    /// Removes a generation's chunks (one request, whatever their count).
    async fn purge_generation(&self, generation: &str) {
        let keys = format!("chunk.{}.{generation}.>", self.p);
        if let Err(e) = super::remove_keys(&self.ctx.kv, &keys).await {
            tracing::debug!(partition = self.p, error = %e, "checkpoint chunks not removed");
        }
    }

    /// Once per take-over: chunks of generations before `generation` (the
    /// head just loaded) are left by a checkpoint cut short (a crash
    /// between the chunks and the head) and can never be referenced again:
    /// a head is written with a revision check, and a holder that wrote an
    /// older generation has lost that race. Later generations are left
    /// alone (a former holder may be writing them; it purges its own when
    /// its head is refused).
    async fn purge_older_than(&self, generation: &str) {
        if let Some(current) = generation_order(generation) {
            self.purge_chunks(|g| g < current).await;
        }
    }

    /// Once this holder's head is written, no head of an earlier holder can
    /// be (their revision checks fail), so every chunk of an earlier epoch
    /// that this head does not build on (its base and deltas may be an
    /// earlier holder's) is garbage: left by a holder that died between its
    /// chunks and its head, or fenced. A later epoch's chunks (a newer
    /// holder's) are never touched.
    async fn purge_earlier_epochs(&self) {
        let kept: Vec<(u64, u64)> = self
            .head_parts
            .iter()
            .filter_map(|p| generation_order(&p.generation))
            .collect();
        self.purge_chunks(|g| g.0 < self.epoch && !kept.contains(&g))
            .await;
    }

    /// Purges this partition's chunks whose generation `(epoch, n)` is
    /// `stale` (one listing of the bucket's keys).
    async fn purge_chunks(&self, stale: impl Fn((u64, u64)) -> bool) {
        let prefix = format!("chunk.{}.", self.p);
        let Ok(mut keys) = self.ctx.kv.keys().await else {
            return;
        };
        let mut found = Vec::new();
        while let Some(k) = keys.next().await {
            let Ok(k) = k else { continue };
            if k.strip_prefix(&prefix)
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(g, _)| generation_order(g))
                .is_some_and(&stale)
            {
                found.push(k);
            }
        }
        for k in found {
            let _ = super::remove_keys(&self.ctx.kv, &k).await;
        }
    }

    /// Stop requested (hand-over or shutdown): store, checkpoint, release.
    async fn finish(&mut self) -> Exit {
        if self.lease.lost.load(Ordering::Acquire) {
            return Exit::Lost;
        }
        // A checkpoint that could not be written costs work, not data:
        // the next holder replays from the last one.
        match self.checkpoint().await {
            Ok(()) => Exit::Released,
            Err(exit) => exit,
        }
    }
}

/// A stored head whose base or a delta is `generation`.
fn names_generation(head: &[u8], generation: &str) -> bool {
    serde_json::from_slice::<Head>(head)
        .is_ok_and(|h| h.parts().iter().any(|p| p.generation == generation))
}

/// Sets this worker's share of a gauge the instance's workers add up to.
fn report_share(gauge: &prometheus::IntGauge, reported: &mut i64, now: i64) {
    gauge.add(now - *reported);
    *reported = now;
}

/// Conversations by tenant, looked up without allocating (most inputs are
/// of a conversation already marked since the last checkpoint).
#[derive(Debug, Default)]
struct Changed(HashMap<String, HashSet<String>>);

impl Changed {
    fn mark(&mut self, tenant: &str, id: &str) {
        match self.0.get_mut(tenant) {
            Some(ids) if ids.contains(id) => {}
            Some(ids) => {
                ids.insert(id.to_string());
            }
            None => {
                self.0
                    .insert(tenant.to_string(), HashSet::from([id.to_string()]));
            }
        }
    }

    /// Conversations closed (a summary: ended, idle, or closed to make
    /// room for another).
    fn mark_closed(&mut self, events: &[Event]) {
        for e in events {
            if let Event::Summary(s) = e {
                self.mark(&s.tenant, &s.conversation_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |id| (t.as_str(), id.as_str())))
    }
}

/// JSON arrays of `items`, each at most about `max` bytes (one item more
/// when a single one is larger).
fn chunked<T: Serialize>(items: impl Iterator<Item = T>, max: usize) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut chunk = b"[".to_vec();
    for item in items {
        let Ok(bytes) = serde_json::to_vec(&item) else {
            tracing::error!("cannot encode conversation state; left out of the checkpoint");
            continue;
        };
        if chunk.len() > 1 && chunk.len() + bytes.len() + 2 > max {
            chunk.push(b']');
            chunks.push(std::mem::replace(&mut chunk, b"[".to_vec()));
        }
        if chunk.len() > 1 {
            chunk.push(b',');
        }
        chunk.extend_from_slice(&bytes);
    }
    if chunk.len() > 1 {
        chunk.push(b']');
        chunks.push(chunk);
    }
    chunks
}

/// A checkpoint generation `<epoch>-<n>` as comparable numbers.
fn generation_order(generation: &str) -> Option<(u64, u64)> {
    let (epoch, n) = generation.split_once('-')?;
    Some((epoch.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_order_by_epoch_then_number() {
        assert_eq!(generation_order("12-3"), Some((12, 3)));
        assert!(generation_order("9-10") < generation_order("12-1"));
        assert!(generation_order("12-2") < generation_order("12-10"));
        assert_eq!(generation_order("x-1"), None);
        assert_eq!(generation_order("12"), None);
    }

    #[test]
    fn partitions_are_balanced_and_a_join_moves_few() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let (three, four) = (names(&["a", "b", "c"]), names(&["a", "b", "c", "d"]));
        for p in [8u32, 12, 64] {
            let before = assignment(&three, p);
            let after = assignment(&four, p);
            for (members, table) in [(&three, &before), (&four, &after)] {
                let mut load = vec![0u32; members.len()];
                for m in table.iter().flatten() {
                    load[*m] += 1;
                }
                let (lo, hi) = (load.iter().min(), load.iter().max());
                assert!(
                    table.iter().all(Option::is_some)
                        && hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                    "{p} partitions over {members:?}: {load:?}"
                );
            }
            // The same table whatever the order of the member list.
            let mut shuffled = four.clone();
            shuffled.reverse();
            let again: Vec<Option<&str>> = assignment(&shuffled, p)
                .iter()
                .map(|m| m.map(|m| shuffled[m].as_str()))
                .collect();
            let named: Vec<Option<&str>> =
                after.iter().map(|m| m.map(|m| four[m].as_str())).collect();
            assert_eq!(again, named);
            let moved = (0..p as usize)
                .filter(|&i| before[i].map(|m| &three[m]) != after[i].map(|m| &four[m]))
                .count();
            assert!(moved <= (p as usize).div_ceil(2), "{moved} of {p} moved");
        }
        assert!(assignment(&[], 3).iter().all(Option::is_none));
    }

    #[test]
    fn the_partition_count_is_read_back_from_the_transform() {
        let t = transform(&StreamsConfig::default(), 12);
        assert_eq!(t.source, "transcripts.*.*");
        assert_eq!(
            t.destination,
            "transcripts.{{partition(12,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
        );
        let config = jetstream::stream::Config {
            name: "T".into(),
            subject_transform: Some(t),
            ..Default::default()
        };
        assert_eq!(partitions_of(&config), Some(12));
        let plain = jetstream::stream::Config {
            name: "T".into(),
            ..Default::default()
        };
        assert!(partitions_of(&plain).is_none());
    }

    #[test]
    fn partitions_spread_conversations() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of("acme", &format!("c{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
