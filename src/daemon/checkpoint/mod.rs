//! A partition's checkpoints in the cluster bucket: what its open
//! conversations were after some input, so that the next holder (or this
//! instance after a `kill -9`) goes on from there.
//!
//! ```text
//! ckpt.<p>             the head: epoch, input seq, output marks, base and deltas
//! chunk.<p>.<gen>.<i>  open conversations (a base) or what changed (a delta)
//! chunk.<p>.<gen>.c<i> a base's recently closed conversations (tombstones)
//! ```
//!
//! Closed conversations are kept as long as the engine remembers them
//! (`tombstone_ttl_s`): a segment stored after its conversation's `end`
//! (a publisher that sent it again after a failure) is late for the next
//! holder too, and never opens the conversation again.
//!
//! A checkpoint is written in two steps. The worker takes a [`Snapshot`]
//! (the conversations serialised, a few milliseconds) and goes on judging;
//! a task of its own then waits until every event of the inputs the
//! snapshot covers is stored ([`super::window::Window::stored_through`]),
//! writes the chunks, and only then the head, with a revision check (a
//! former holder can never overwrite a newer head) while the lease surely
//! holds. A head therefore never covers an input whose events are not
//! stored: a crash at any point loses nothing, the next holder replays from
//! the head's sequence.
//!
//! A head also names the output marks: the last sequence of the output
//! and dead-letter streams this holder had seen acknowledged before the
//! snapshot. Every event of an input after the head's sequence is stored
//! after those marks, so a new holder reads what was stored since (see
//! `replay`) and does not store it again, however long ago that was.

use super::lease::Lease;
use crate::engine::{Conversation, Engine, Tombstone};
use crate::event::Event;
use crate::metrics::ClusterMetrics;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod changed;
pub(super) use changed::*;

mod write;
use write::*;

/// Heads without deltas are written as version 1 (what builds before deltas
/// read); with deltas as 2, which those builds refuse rather than misread.
/// The output marks are a field of their own, which earlier builds ignore.
const HEAD_VERSION: u32 = 2;

/// A checkpoint's head: what the chunks hold and up to which input.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_created: Option<String>,
    /// See [`Marks`]; absent in heads of builds before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    marks: Option<Marks>,
    /// The base's chunks of closed conversations.
    #[serde(default, skip_serializing_if = "is_zero")]
    closed_chunks: u32,
}

/// The last sequence of the output and dead-letter streams a holder had
/// seen acknowledged before a snapshot: events of later inputs are stored
/// after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Marks {
    pub output: u64,
    pub deadletter: u64,
}

impl Head {
    /// The base, then the deltas.
    fn parts(&self) -> Vec<Part> {
        let base = Part {
            generation: self.generation.clone(),
            chunks: self.chunks,
            bytes: self
                .bytes
                .saturating_sub(self.deltas.iter().map(|d| d.bytes).sum()),
            closed: self.closed_chunks,
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
    /// A base's chunks of closed conversations (`c<i>`); builds before them
    /// ignore the field and never read those chunks.
    #[serde(default, skip_serializing_if = "is_zero")]
    closed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A recently closed conversation in a base.
#[derive(Debug, Serialize, Deserialize)]
struct SavedClosed {
    tenant: String,
    conversation_id: String,
    closed: Tombstone,
}

/// An open conversation in a base.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    tenant: String,
    conversation_id: String,
    state: Conversation,
}

/// An entry of a delta: a conversation's state, or None when it closed
/// (then its tombstone, absent in deltas of builds before them).
#[derive(Debug, Serialize, Deserialize)]
struct DeltaEntry {
    tenant: String,
    conversation_id: String,
    state: Option<Conversation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closed: Option<Tombstone>,
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

/// Why a partition's checkpoint cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointError {
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
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
    #[error("cannot encode the checkpoint head: {0}")]
    Encode(serde_json::Error),
}

fn nats(what: impl Into<String>, source: impl Into<async_nats::Error>) -> CheckpointError {
    CheckpointError::Nats {
        what: what.into(),
        source: source.into(),
    }
}

/// The head as this holder last read or wrote it.
#[derive(Debug, Default)]
pub(super) struct HeadState {
    revision: Option<u64>,
    /// The base and deltas it names (their chunks go when a new base
    /// replaces them).
    parts: Vec<Part>,
    /// The next checkpoint writes a base: the head loaded belongs to an
    /// earlier stream of the same name, so no delta may build on it.
    base_next: bool,
    /// Chunks of earlier epochs were purged after this holder's first head.
    swept_earlier_epochs: bool,
    /// The generation counter of this holder's chunks.
    generation: u64,
}

/// What a partition's checkpoint restores.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub conversations: Vec<(String, String, Conversation)>,
    /// Recently closed conversations.
    pub closed: Vec<(String, String, Tombstone)>,
    /// The sequence the head covers (0: judge from the first input).
    pub seq: u64,
    /// The head's output marks (None: no head, or one of a build before
    /// them).
    pub marks: Option<Marks>,
    /// A head was there.
    pub found: bool,
}

/// One partition's checkpoints.
pub(super) struct Checkpoints {
    p: u32,
    epoch: u64,
    kv: kv::Store,
    /// When the input stream was created (see [`Head::stream_created`]).
    stream_created: String,
    max_deltas: usize,
    /// Chunks stay this far below the server's largest message.
    max_chunk: usize,
    /// None while a write is under way (the task holds it).
    head: Option<HeadState>,
    /// The last sequence a written head covers.
    pub seq: u64,
    pub written_at: Instant,
    /// The marks of the last head (carried into the next when nothing was
    /// acknowledged since).
    pub marks: Marks,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A snapshot, to be written once its events are stored.
pub(super) struct Snapshot {
    seq: u64,
    base: bool,
    generation: String,
    chunks: Vec<Vec<u8>>,
    /// A base's closed conversations.
    closed_chunks: Vec<Vec<u8>>,
    conversations: u64,
    marks: Marks,
    /// The conversations a delta holds: back into the worker's set when the
    /// write fails, so the next delta holds them again.
    pub changed: Changed,
}

/// How a write ended.
pub(super) enum Written {
    Ok,
    /// A newer holder's head is there: the partition is lost.
    Fenced,
    /// Not written (NATS failed, or the lease lapsed): tried again later.
    Failed(String),
}

impl Checkpoints {
    pub(super) fn new(
        p: u32,
        epoch: u64,
        kv: kv::Store,
        stream_created: String,
        max_deltas: usize,
        max_payload: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Checkpoints {
        Checkpoints {
            p,
            epoch,
            kv,
            stream_created,
            max_deltas,
            max_chunk: max_payload.saturating_sub(4096).max(16 * 1024),
            head: Some(HeadState::default()),
            seq: 0,
            written_at: Instant::now(),
            marks: Marks::default(),
            metrics,
        }
    }

    fn head_key(&self) -> String {
        format!("ckpt.{}", self.p)
    }

    fn cluster_metrics(&self) -> &ClusterMetrics {
        &self.metrics.cluster
    }

    /// A write is under way.
    pub(super) fn writing(&self) -> bool {
        self.head.is_none()
    }

    /// Reads the partition's checkpoint.
    pub(super) async fn load(&mut self) -> Result<Loaded, CheckpointError> {
        let entry = self
            .kv
            .entry(self.head_key())
            .await
            .map_err(|e| nats("reading the checkpoint head", e))?;
        let Some(entry) = entry else {
            return Ok(Loaded::default());
        };
        let state = self.head.get_or_insert_with(HeadState::default);
        state.revision = Some(entry.revision);
        if entry.value.is_empty() {
            return Ok(Loaded::default());
        }
        let head: Head =
            serde_json::from_slice(&entry.value).map_err(|source| CheckpointError::Head {
                partition: self.p,
                source,
            })?;
        if !(1..=HEAD_VERSION).contains(&head.version) {
            return Err(CheckpointError::Version {
                partition: self.p,
                found: head.version,
            });
        }
        if head.epoch > self.epoch {
            return Err(CheckpointError::Superseded {
                partition: self.p,
                head_epoch: head.epoch,
                epoch: self.epoch,
            });
        }
        let mut loaded = Loaded {
            found: true,
            marks: head.marks,
            ..Loaded::default()
        };
        if let Some(m) = head.marks {
            self.marks = m;
        }
        if head
            .stream_created
            .as_ref()
            .is_some_and(|c| *c != self.stream_created)
        {
            // The stream was deleted and made again: its sequences start
            // anew. Judged from its first input; the old chunks go when
            // this holder's first checkpoint replaces the head.
            self.cluster_metrics()
                .checkpoints
                .with_label_values(&["other_stream"])
                .inc();
            tracing::warn!(
                partition = self.p,
                checkpoint_seq = head.seq,
                "the checkpoint belongs to an earlier input stream of this name; \
                 judging this stream's partition from its first input"
            );
            let state = self.head.get_or_insert_with(HeadState::default);
            state.parts = head.parts();
            state.base_next = true;
            // Its marks are of events of the old stream's inputs: nothing
            // of this stream was judged.
            loaded.marks = None;
            return Ok(loaded);
        }
        // The base, then each delta over it.
        let mut open: HashMap<(String, String), Conversation> = HashMap::new();
        let mut closed: HashMap<(String, String), Tombstone> = HashMap::new();
        let parts = head.parts();
        for (i, part) in parts.iter().enumerate() {
            if i == 0 {
                for c in self.read_part::<Saved>(part, "").await? {
                    open.insert((c.tenant, c.conversation_id), c.state);
                }
                for c in self.read_part::<SavedClosed>(part, "c").await? {
                    closed.insert((c.tenant, c.conversation_id), c.closed);
                }
            } else {
                for d in self.read_part::<DeltaEntry>(part, "").await? {
                    let key = (d.tenant, d.conversation_id);
                    match d.state {
                        Some(state) => {
                            closed.remove(&key);
                            open.insert(key, state);
                        }
                        None => {
                            open.remove(&key);
                            if let Some(t) = d.closed {
                                closed.insert(key, t);
                            }
                        }
                    };
                }
            }
        }
        loaded.conversations = open
            .into_iter()
            .map(|((tenant, id), state)| (tenant, id, state))
            .collect();
        loaded.closed = closed
            .into_iter()
            .map(|((tenant, id), t)| (tenant, id, t))
            .collect();
        loaded.seq = head.seq;
        // Taken over in one step, with no await between: a stop at any
        // await of this load leaves the head state untouched (see
        // `Worker::finish`).
        let state = self.head.get_or_insert_with(HeadState::default);
        state.parts = parts;
        self.seq = head.seq;
        // Chunks a cut-short checkpoint left: in the background.
        if let Some(current) = generation_order(&head.generation) {
            let (kv, p) = (self.kv.clone(), self.p);
            tokio::spawn(async move { purge_chunks(&kv, p, |g| g < current).await });
        }
        tracing::info!(
            partition = self.p,
            seq = head.seq,
            conversations = loaded.conversations.len(),
            previous_epoch = head.epoch,
            "checkpoint loaded"
        );
        Ok(loaded)
    }

    /// The entries of a checkpoint part's chunks. A chunk missing or
    /// unreadable is counted and skipped: its conversations go on without
    /// their window state (as if first seen mid-way: no greeting verdict is
    /// made up); stopping here would stall the partition for good.
    async fn read_part<T: serde::de::DeserializeOwned>(
        &self,
        part: &Part,
        kind: &str,
    ) -> Result<Vec<T>, CheckpointError> {
        let mut entries = Vec::new();
        let count = if kind.is_empty() {
            part.chunks
        } else {
            part.closed
        };
        for i in 0..count {
            let key = format!("chunk.{}.{}.{kind}{i}", self.p, part.generation);
            let read = match self.kv.get(&key).await {
                Ok(Some(bytes)) => {
                    serde_json::from_slice::<Vec<T>>(&bytes).map_err(ChunkError::Decode)
                }
                Ok(None) => Err(ChunkError::Missing),
                Err(e) => return Err(nats(format!("reading checkpoint chunk {key}"), e)),
            };
            match read {
                Ok(mut chunk) => entries.append(&mut chunk),
                Err(e) => {
                    self.cluster_metrics()
                        .checkpoints
                        .with_label_values(&["unreadable"])
                        .inc();
                    tracing::error!(partition = self.p, chunk = %key, error = %e, "checkpoint chunk unreadable; its conversations continue without their state");
                }
            }
        }
        Ok(entries)
    }

    /// Takes a snapshot of the engine after input `seq`: every open
    /// conversation (a base) when due, else what `changed` names (a
    /// delta). Call only when no write is under way.
    pub(super) fn snapshot(
        &mut self,
        engine: &Engine,
        changed: Changed,
        seq: u64,
        marks: Marks,
    ) -> Snapshot {
        let max_deltas = self.max_deltas;
        let state = self.head.get_or_insert_with(HeadState::default);
        state.generation += 1;
        let generation = format!("{}-{}", self.epoch, state.generation);
        let delta_bytes: u64 = state.parts.iter().skip(1).map(|d| d.bytes).sum();
        let base_bytes = state.parts.first().map_or(0, |b| b.bytes);
        let mut base = state.base_next || state.parts.is_empty() || state.parts.len() > max_deltas;
        let mut chunks = Vec::new();
        if !base {
            chunks = chunked(
                changed.iter().map(|(tenant, id)| {
                    let state = engine.export_one(tenant, id);
                    DeltaEntry {
                        closed: state
                            .is_none()
                            .then(|| engine.export_closed_one(tenant, id))
                            .flatten(),
                        state,
                        tenant: tenant.to_string(),
                        conversation_id: id.to_string(),
                    }
                }),
                self.max_chunk,
            );
            // Deltas that would outgrow their base: a base instead (the
            // next holder reads less, and the old chunks go).
            let this: u64 = chunks.iter().map(|c| c.len() as u64).sum();
            base = delta_bytes + this > base_bytes;
        }
        let mut closed_chunks = Vec::new();
        if base {
            chunks = chunked(
                engine.export().map(|(tenant, id, state)| Saved {
                    tenant: tenant.to_string(),
                    conversation_id: id.to_string(),
                    state,
                }),
                self.max_chunk,
            );
            closed_chunks = chunked(
                engine
                    .export_closed()
                    .map(|(tenant, id, closed)| SavedClosed {
                        tenant: tenant.to_string(),
                        conversation_id: id.to_string(),
                        closed,
                    }),
                self.max_chunk,
            );
        }
        Snapshot {
            seq,
            base,
            generation,
            chunks,
            closed_chunks,
            conversations: engine.open_conversations() as u64,
            marks,
            changed,
        }
    }

    /// Writes `snap` once `stored` (the worker's stored-through sequence)
    /// covers it: a task of its own, so the worker judges meanwhile. The
    /// head state comes back with the outcome through [`Checkpoints::done`].
    pub(super) fn write(
        &mut self,
        snap: Snapshot,
        stored: watch::Receiver<u64>,
        lease: Arc<Lease>,
    ) -> tokio::task::JoinHandle<(HeadState, Snapshot, Written)> {
        let state = self.head.take().unwrap_or_default();
        let job = Job {
            p: self.p,
            epoch: self.epoch,
            kv: self.kv.clone(),
            head_key: self.head_key(),
            stream_created: self.stream_created.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        tokio::spawn(async move {
            let mut state = state;
            let written = job.run(&mut state, &snap, stored, &lease).await;
            (state, snap, written)
        })
    }

    /// Takes the head state back from a finished write.
    pub(super) fn done(&mut self, state: HeadState, snap: &Snapshot, written: &Written) {
        self.head = Some(state);
        if matches!(written, Written::Ok) {
            self.seq = snap.seq;
            self.marks = snap.marks;
            self.written_at = Instant::now();
        }
    }
}

/// A stored head whose base or a delta is `generation`.
fn names_generation(head: &[u8], generation: &str) -> bool {
    serde_json::from_slice::<Head>(head)
        .is_ok_and(|h| h.parts().iter().any(|p| p.generation == generation))
}

/// A checkpoint generation `<epoch>-<n>` as comparable numbers.
fn generation_order(generation: &str) -> Option<(u64, u64)> {
    let (epoch, n) = generation.split_once('-')?;
    Some((epoch.parse().ok()?, n.parse().ok()?))
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

/// How long to wait for a write task at most when it must be joined (at
/// shutdown the deadline is the caller's).
pub(super) const WRITE_PATIENCE: Duration = Duration::from_secs(10);

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
    fn chunks_stay_near_their_limit_and_hold_every_item() {
        let items: Vec<String> = (0..100).map(|i| format!("item-{i:03}")).collect();
        let chunks = chunked(items.iter(), 64);
        assert!(chunks.len() > 10, "{}", chunks.len());
        let back: Vec<String> = chunks
            .iter()
            .flat_map(|c| serde_json::from_slice::<Vec<String>>(c).expect("a JSON array"))
            .collect();
        assert_eq!(back, items);
        assert!(
            chunks.iter().all(|c| c.len() <= 64),
            "a chunk past its limit"
        );
    }

    #[test]
    fn heads_without_marks_still_load() {
        let old = r#"{"version":2,"epoch":3,"seq":10,"generation":"3-1","chunks":1,"conversations":2,"bytes":100,"written_ms":1}"#;
        let head: Head = serde_json::from_str(old).expect("an older head");
        assert_eq!(head.marks, None);
        assert_eq!(head.parts().len(), 1);
    }
}
