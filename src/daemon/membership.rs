//! Who judges which partition: members, leases, and the coordinator loop.
//!
//! ```text
//! publishers ── transcripts.<tenant>.<id> ──▶ TRANSCRIPTS, stored as
//!               transcripts.<p>.<tenant>.<id>, p = partition(P, tenant, id) computed by NATS
//!
//! instance ── coordinator (every heartbeat) ──▶ bucket zhijian_cluster
//!     │         member.<instance>   "alive until t"
//!     │         lease.<p>           owner, until t          (renewed with a revision check)
//!     │         ckpt.<p>, chunk.*   checkpoints (see `checkpoint`)
//!     └─ one worker per partition it holds the lease of (see `worker`)
//! ```
//!
//! One instance is a cluster of one: it holds every partition. Who should
//! hold a partition: the live member with the highest rendezvous score for
//! it, so members agree without talking and a join or a leave moves about
//! 1/N of the partitions. Who may: the holder of its lease. A member that
//! sees the membership wrongly may fail to balance, never judge a partition
//! beside another: only the lease holder runs a worker, a lease changes
//! hands only when released or expired, and a worker publishes only while
//! its lease surely holds (its own monotonic clock, renewed leases only)
//! and stops for good when a renewal or a checkpoint finds the revision
//! moved.
//!
//! Every request to NATS here is bounded (a hung server must not hold a
//! round) and the rounds give way to shutdown at once. Renewals of the held
//! leases go out together, not one after another.

pub(crate) use super::ctx::Ctx;
use super::lease::Lease;
use super::worker::{self, Exit};
use crate::config::StreamsConfig;
use crate::subject;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// The partition NATS puts a conversation in: `{{partition(n,1,2)}}` of
/// `<prefix>.<tenant>.<token>` hashes the two tokens joined (FNV-1a, 32
/// bits). NATS computes it; this model is the tests'.
#[cfg(test)]
fn partition_of(tenant: &str, token: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tenant.bytes().chain(token.bytes()) {
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
pub fn partitions_of(config: &jetstream::stream::Config) -> Option<u32> {
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

impl Ctx {
    /// How long a lease surely holds after it was asked for: a fifth of it
    /// is kept as margin for clock skew and delays (others count from
    /// their clocks when they read it).
    fn hold_ms(&self) -> u64 {
        self.cluster.lease.as_millis() as u64 * 4 / 5
    }

    /// One request to the bucket may take this long: a third of a lease,
    /// so a round of them never outlives the leases it renews.
    fn request_timeout(&self) -> Duration {
        (self.cluster.lease / 3).max(Duration::from_millis(200))
    }

    /// A lease's value; the error is a bug, and no lease is written with it.
    fn lease_value(&self, until_ms: u64) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(&LeaseValue {
            owner: self.cluster.instance.clone(),
            run: self.run,
            until_ms,
        })
        .map(Bytes::from)
    }
}

fn lease_key(p: u32) -> String {
    format!("lease.{p}")
}

struct Held {
    revision: u64,
    lease: Arc<Lease>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    worker: tokio::task::JoinHandle<Exit>,
    /// Told to hand the partition over (another member should hold it).
    releasing: bool,
}

/// How long a worker handing its partition over may take to store and
/// checkpoint before it gives up (the next holder replays the rest).
const HANDOVER: Duration = Duration::from_secs(10);

/// What the cluster loop left unsaved at shutdown, one line per partition.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Unclean(pub Vec<String>);

/// Runs this instance's part of the cluster until `shutdown`: heartbeats,
/// leases, one worker per held partition. At shutdown every worker stores
/// and checkpoints, every lease is released and the member leaves, all by
/// `deadline(shutdown moment)`.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> Result<(), Unclean> {
    let partitions = ctx.partitions;
    let metrics = &ctx.shared.metrics;
    let health = &ctx.shared.health;
    tracing::info!(instance = %ctx.cluster.instance, partitions, "joining the cluster");
    let mut held: HashMap<u32, Held> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut first_round = true;
    'rounds: loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break 'rounds,
            _ = tick.tick() => {}
        }
        let round = round(&ctx, &mut held, first_round);
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break 'rounds,
            _ = round => {}
        }
        first_round = false;
        metrics.cluster.partitions_owned.set(held.len() as i64);
    }
    // Shutdown: every worker stores, checkpoints and stops; leases are
    // released; the member leaves. Within the grace period, NATS gone or
    // not.
    let started = tokio::time::Instant::now();
    health.stopping.store(true, Ordering::Relaxed);
    let workers_by = started + grace.mul_f64(0.75);
    let release_by = started + grace.mul_f64(0.85);
    tracing::info!(
        partitions = held.len(),
        grace_s = grace.as_secs_f64(),
        "leaving the cluster: storing, checkpointing and handing partitions over"
    );
    for h in held.values_mut() {
        h.releasing = true;
        let _ = h.stop.send(Some(workers_by));
    }
    let mut problems = Vec::new();
    let mut releases = Vec::new();
    // Workers in partition order, for a readable log.
    let mut all: Vec<(u32, Held)> = held.drain().collect();
    all.sort_by_key(|(p, _)| *p);
    for (p, mut h) in all {
        // A little after the workers' own deadline: they stop themselves.
        let exit =
            tokio::time::timeout_at(workers_by + Duration::from_millis(200), &mut h.worker).await;
        health.release(p);
        match exit {
            Ok(Ok(Exit::Released)) => {
                releases.push((p, h.revision));
                metrics
                    .cluster
                    .handovers
                    .with_label_values(&["released"])
                    .inc();
            }
            Ok(Ok(Exit::Lost)) => {}
            Ok(Ok(Exit::Unsaved {
                unstored,
                checkpoint_seq,
                judged_seq,
            })) => {
                releases.push((p, h.revision));
                problems.push(unsaved_line(p, unstored, checkpoint_seq, judged_seq));
            }
            Ok(Ok(Exit::Failed(e))) => {
                releases.push((p, h.revision));
                problems.push(format!("partition {p}: worker failed: {e}"));
            }
            Ok(Err(e)) => problems.push(format!("partition {p}: worker panicked: {e}")),
            Err(_) => {
                // It must not publish after this instance said it stopped.
                h.worker.abort();
                problems.push(format!(
                    "partition {p}: the worker did not stop in time (the next holder replays from its last checkpoint)"
                ));
            }
        }
    }
    metrics.cluster.partitions_owned.set(0);
    let released = join_all(releases.iter().map(|&(p, rev)| release(&ctx, p, rev)));
    if tokio::time::timeout_at(release_by, released).await.is_err() {
        tracing::warn!("leases not given back in time (they expire by themselves)");
    }
    let me = format!("member.{}", ctx.cluster.instance);
    match tokio::time::timeout_at(release_by, super::remove_keys(&ctx.kv, &me)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot remove this member (it expires by itself)")
        }
        Err(_) => tracing::warn!("cannot remove this member in time (it expires by itself)"),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Unclean(problems))
    }
}

fn unsaved_line(p: u32, unstored: usize, checkpoint_seq: u64, judged_seq: u64) -> String {
    format!(
        "partition {p}: {unstored} events not stored and no checkpoint after input {checkpoint_seq} \
         (judged to {judged_seq}): the next holder judges inputs {}..={judged_seq} again",
        checkpoint_seq + 1
    )
}

/// One round: heartbeat, renewals, finished workers, balance.
async fn round(ctx: &Arc<Ctx>, held: &mut HashMap<u32, Held>, first_round: bool) {
    let health = &ctx.shared.health;
    let members = match tokio::time::timeout(ctx.request_timeout() * 2, heartbeat(ctx)).await {
        Ok(Ok(m)) => {
            health.member.store(true, Ordering::Relaxed);
            m
        }
        Ok(Err(e)) => {
            health.member.store(false, Ordering::Relaxed);
            tracing::warn!(error = %e, "cluster heartbeat failed");
            Vec::new()
        }
        Err(_) => {
            health.member.store(false, Ordering::Relaxed);
            tracing::warn!("cluster heartbeat timed out");
            Vec::new()
        }
    };
    ctx.shared.metrics.cluster.members.set(members.len() as i64);
    renew(ctx, held).await;
    reap(ctx, held).await;
    // The first round only announces this member: instances started
    // together then see each other before taking partitions, instead of
    // taking them all and handing most over a heartbeat later.
    if members.is_empty() || first_round {
        health.partitions_ready.store(false, Ordering::Relaxed);
        return;
    }
    let assigned = balance(ctx, &members, held).await;
    ctx.shared
        .metrics
        .cluster
        .partitions_assigned
        .set(assigned.len() as i64);
    health
        .partitions_ready
        .store(health.judging_all(&assigned), Ordering::Relaxed);
}

/// Says this member is alive; returns the live members (this one included).
async fn heartbeat(ctx: &Ctx) -> Result<Vec<String>, async_nats::Error> {
    let me = &ctx.cluster.instance;
    // A member is seen alive for a lease and a heartbeat after it last
    // said so: a dead member's partitions cannot be taken before its
    // leases expire anyway, and a shorter life only makes a member that
    // is late by a round under load (the keys and their values are read
    // one by one) drop out and come back, moving partitions each time.
    let ttl = (ctx.cluster.lease + ctx.cluster.heartbeat).as_millis() as u64;
    let value = serde_json::to_vec(&MemberValue {
        until_ms: super::now_ms() + ttl,
    })?;
    ctx.kv.put(format!("member.{me}"), value.into()).await?;
    let mut keys = ctx.kv.keys().await?;
    let mut members = vec![me.clone()];
    let now = super::now_ms();
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

/// Renews every held lease, all at once; a renewal that finds the lease
/// another member's stops that worker at once.
async fn renew(ctx: &Ctx, held: &mut HashMap<u32, Held>) {
    let lease_ms = ctx.cluster.lease.as_millis() as u64;
    let timeout = ctx.request_timeout();
    let renewals = held
        .iter()
        .filter(|(_, h)| !h.lease.is_lost())
        .map(|(&p, h)| {
            let revision = h.revision;
            async move {
                let asked = ctx.now();
                let value = match ctx.lease_value(super::now_ms() + lease_ms) {
                    Ok(v) => v,
                    Err(e) => return (p, asked, Renewal::Failed(e.to_string())),
                };
                let updated =
                    tokio::time::timeout(timeout, ctx.kv.update(lease_key(p), value, revision))
                        .await;
                let outcome = match updated {
                    Ok(Ok(rev)) => Renewal::Renewed(rev),
                    Ok(Err(e)) => look(ctx, p, revision, e.to_string()).await,
                    Err(_) => look(ctx, p, revision, "timed out".into()).await,
                };
                (p, asked, outcome)
            }
        });
    for (p, asked, outcome) in join_all(renewals).await {
        let Some(h) = held.get_mut(&p) else { continue };
        match outcome {
            Renewal::Renewed(rev) => {
                h.revision = rev;
                h.lease.renewed(asked, ctx.hold_ms());
            }
            Renewal::Ours(rev) => {
                // An update that timed out was stored: adopt its revision
                // (renewed from when it was asked, to be safe).
                h.revision = rev;
                h.lease.renewed(asked, ctx.hold_ms());
            }
            Renewal::Lost => {
                tracing::warn!(
                    partition = p,
                    "lease taken by another member; stopping its worker"
                );
                h.lease.lose();
                let _ = h.stop.send(Some(tokio::time::Instant::now()));
                ctx.shared
                    .metrics
                    .cluster
                    .handovers
                    .with_label_values(&["lost"])
                    .inc();
            }
            Renewal::Failed(e) => {
                tracing::warn!(partition = p, error = %e, "lease renewal failed; retrying")
            }
        }
    }
}

enum Renewal {
    Renewed(u64),
    /// The lease moved on, but to a value this run wrote.
    Ours(u64),
    Lost,
    Failed(String),
}

/// After a failed renewal: lost, or only a slow server? Look.
async fn look(ctx: &Ctx, p: u32, revision: u64, error: String) -> Renewal {
    let entry = tokio::time::timeout(ctx.request_timeout(), ctx.kv.entry(lease_key(p))).await;
    match entry {
        Ok(Ok(Some(e))) if e.revision == revision => Renewal::Failed(error),
        Ok(Ok(Some(e))) => match serde_json::from_slice::<LeaseValue>(&e.value) {
            Ok(v) if v.owner == ctx.cluster.instance && v.run == ctx.run && v.until_ms > 0 => {
                Renewal::Ours(e.revision)
            }
            _ => Renewal::Lost,
        },
        Ok(Ok(None)) => Renewal::Lost,
        _ => Renewal::Failed(error),
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
        ctx.shared.health.release(p);
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
            Ok(Exit::Unsaved {
                unstored,
                checkpoint_seq,
                judged_seq,
            }) => {
                tracing::warn!(
                    partition = p,
                    "{}",
                    unsaved_line(p, unstored, checkpoint_seq, judged_seq)
                );
                release(ctx, p, h.revision).await;
            }
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
    let value = match ctx.lease_value(0) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "cannot encode the lease; not released (it expires by itself)");
            return;
        }
    };
    let released = tokio::time::timeout(
        ctx.request_timeout(),
        ctx.kv.update(lease_key(p), value, revision),
    )
    .await;
    if !matches!(released, Ok(Ok(_))) {
        tracing::debug!(partition = p, "lease not released (it expires by itself)");
    }
}

/// Takes the partitions this member should hold (all at once) and hands
/// over the others; returns the partitions assigned to this member.
async fn balance(ctx: &Arc<Ctx>, members: &[String], held: &mut HashMap<u32, Held>) -> Vec<u32> {
    let me = ctx.cluster.instance.as_str();
    let owners = assignment(members, ctx.partitions);
    let mut assigned = Vec::new();
    let mut wanted = Vec::new();
    for p in 0..ctx.partitions {
        let owner = owners[p as usize].map(|m| members[m].as_str());
        let mine = owner == Some(me);
        if mine {
            assigned.push(p);
        }
        match held.get_mut(&p) {
            Some(h) if !mine && !h.releasing => {
                tracing::info!(partition = p, to = ?owner, "handing partition over");
                h.releasing = true;
                let _ = h.stop.send(Some(tokio::time::Instant::now() + HANDOVER));
            }
            Some(_) => {}
            None if mine => wanted.push(p),
            None => {}
        }
    }
    let taken = join_all(wanted.into_iter().map(|p| acquire(ctx, p))).await;
    for (p, h) in taken.into_iter().flatten() {
        held.insert(p, h);
    }
    assigned
}

/// Takes the lease of `p` if it is free (never held, released or expired)
/// and starts its worker.
async fn acquire(ctx: &Arc<Ctx>, p: u32) -> Option<(u32, Held)> {
    let lease_ms = ctx.cluster.lease.as_millis() as u64;
    let asked = ctx.now();
    let value = match ctx.lease_value(super::now_ms() + lease_ms) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "cannot encode a lease");
            return None;
        }
    };
    let timeout = ctx.request_timeout();
    let entry = tokio::time::timeout(timeout, ctx.kv.entry(lease_key(p)))
        .await
        .ok()?;
    let (taken, how) = match entry {
        Ok(None) => (
            tokio::time::timeout(timeout, ctx.kv.create(lease_key(p), value))
                .await
                .ok()
                .and_then(Result::ok),
            "acquired",
        ),
        Ok(Some(entry)) => {
            let current = serde_json::from_slice::<LeaseValue>(&entry.value).ok();
            let how = match &current {
                Some(l) if l.owner == ctx.cluster.instance && l.run == ctx.run => "acquired",
                Some(l) if l.until_ms == 0 => "acquired",
                Some(l) if l.until_ms <= super::now_ms() => "failover",
                Some(_) => return None,
                None => "acquired",
            };
            (
                tokio::time::timeout(timeout, ctx.kv.update(lease_key(p), value, entry.revision))
                    .await
                    .ok()
                    .and_then(Result::ok),
                how,
            )
        }
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "cannot read lease");
            return None;
        }
    };
    let revision = taken?;
    let lease = Arc::new(Lease::new(ctx.clock, asked, ctx.hold_ms()));
    let (stop_tx, stop_rx) = watch::channel(None);
    ctx.shared
        .metrics
        .cluster
        .handovers
        .with_label_values(&[how])
        .inc();
    tracing::info!(partition = p, epoch = revision, how, "partition taken");
    let health = ctx.shared.health.hold(p);
    let worker = tokio::spawn(worker::work(
        Arc::clone(ctx),
        p,
        revision,
        Arc::clone(&lease),
        health,
        stop_rx,
    ));
    Some((
        p,
        Held {
            revision,
            lease,
            stop: stop_tx,
            worker,
            releasing: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
