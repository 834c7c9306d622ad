//! One checkpoint written in the background: chunks, then the head, once
//! the window has stored every event of the inputs it covers.

use super::*;

/// What a write task needs of its partition.
pub(super) struct Job {
    pub(super) p: u32,
    pub(super) epoch: u64,
    pub(super) kv: kv::Store,
    pub(super) head_key: String,
    pub(super) stream_created: String,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
}

impl Job {
    pub(super) async fn run(
        &self,
        state: &mut HeadState,
        snap: &Snapshot,
        mut stored: watch::Receiver<u64>,
        lease: &Lease,
    ) -> Written {
        // Nothing is covered before its events are stored.
        if stored.wait_for(|s| *s >= snap.seq).await.is_err() {
            return Written::Failed("the worker stopped before the events were stored".into());
        }
        let started = Instant::now();
        let m = &self.metrics.cluster;
        let mut bytes_total = 0u64;
        let all = snap
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{i}"), c))
            .chain(
                snap.closed_chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("c{i}"), c)),
            );
        for (name, c) in all {
            bytes_total += c.len() as u64;
            let key = format!("chunk.{}.{}.{name}", self.p, snap.generation);
            if let Err(e) = self.kv.put(&key, Bytes::from(c.clone())).await {
                purge_generation(&self.kv, self.p, &snap.generation).await;
                return Written::Failed(format!("chunk not written: {e}"));
            }
        }
        let part = Part {
            generation: snap.generation.clone(),
            chunks: snap.chunks.len() as u32,
            bytes: bytes_total,
            closed: snap.closed_chunks.len() as u32,
        };
        let parts: Vec<Part> = if snap.base {
            vec![part]
        } else if part.chunks == 0 && part.closed == 0 {
            // Nothing changed, only the sequence moved (bad input, repeats).
            state.parts.clone()
        } else {
            state.parts.iter().cloned().chain([part]).collect()
        };
        let head = Head {
            version: if parts.len() > 1 { HEAD_VERSION } else { 1 },
            epoch: self.epoch,
            seq: snap.seq,
            generation: parts[0].generation.clone(),
            chunks: parts[0].chunks,
            conversations: snap.conversations,
            bytes: parts.iter().map(|p| p.bytes).sum(),
            written_ms: crate::daemon::now_ms(),
            deltas: parts[1..].to_vec(),
            stream_created: Some(self.stream_created.clone()),
            marks: Some(snap.marks),
            closed_chunks: parts[0].closed,
        };
        let head_bytes = match serde_json::to_vec(&head) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                purge_generation(&self.kv, self.p, &snap.generation).await;
                return Written::Failed(CheckpointError::Encode(e).to_string());
            }
        };
        // The write that counts, only while the lease surely holds.
        if lease.hold().await.is_err() {
            purge_generation(&self.kv, self.p, &snap.generation).await;
            return Written::Fenced;
        }
        let written = match state.revision {
            Some(rev) => self
                .kv
                .update(&self.head_key, head_bytes, rev)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => self
                .kv
                .create(&self.head_key, head_bytes)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
        };
        // A write that failed without a verdict (a timeout) may still have
        // been stored: then the head names this generation, and its chunks
        // must stay.
        let written = match written {
            Err((false, e)) => match self.kv.entry(&self.head_key).await {
                Ok(Some(entry)) if names_generation(&entry.value, &snap.generation) => {
                    Ok(entry.revision)
                }
                _ => Err((false, e)),
            },
            other => other,
        };
        match written {
            Ok(rev) => {
                state.revision = Some(rev);
                m.checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.set_checkpoint_bytes(self.p, bytes_total);
                m.checkpoint_written
                    .with_label_values(&[if snap.base { "base" } else { "delta" }])
                    .inc_by(bytes_total);
                state.base_next = false;
                // A new base replaces the chunks of the old head, exactly:
                // never a listing, which could take a newer holder's fresh
                // chunks.
                let replaced = std::mem::replace(&mut state.parts, parts);
                if snap.base {
                    for old in replaced {
                        if old.generation != snap.generation {
                            purge_generation(&self.kv, self.p, &old.generation).await;
                        }
                    }
                }
                if !state.swept_earlier_epochs {
                    state.swept_earlier_epochs = true;
                    self.purge_earlier_epochs(&state.parts).await;
                }
                Written::Ok
            }
            Err((true, e)) => {
                tracing::warn!(partition = self.p, error = %e, "checkpoint fenced: another member holds the partition");
                purge_generation(&self.kv, self.p, &snap.generation).await;
                lease.lose();
                Written::Fenced
            }
            Err((false, e)) => {
                purge_generation(&self.kv, self.p, &snap.generation).await;
                Written::Failed(format!("head not written: {e}"))
            }
        }
    }

    /// Once this holder's head is written, no head of an earlier holder can
    /// be (their revision checks fail), so every chunk of an earlier epoch
    /// that this head does not build on (its base and deltas may be an
    /// earlier holder's) is garbage: left by a holder that died between its
    /// chunks and its head, or fenced. A later epoch's chunks (a newer
    /// holder's) are never touched.
    pub(super) async fn purge_earlier_epochs(&self, parts: &[Part]) {
        let kept: Vec<(u64, u64)> = parts
            .iter()
            .filter_map(|p| generation_order(&p.generation))
            .collect();
        let epoch = self.epoch;
        purge_chunks(&self.kv, self.p, |g| g.0 < epoch && !kept.contains(&g)).await;
    }
}

pub(super) async fn purge_generation(kv: &kv::Store, p: u32, generation: &str) {
    let keys = format!("chunk.{p}.{generation}.>");
    if let Err(e) = crate::daemon::remove_keys(kv, &keys).await {
        tracing::debug!(partition = p, error = %e, "checkpoint chunks not removed");
    }
}

/// Purges partition `p`'s chunks whose generation `(epoch, n)` is `stale`
/// (one listing of the bucket's keys).
pub(super) async fn purge_chunks(kv: &kv::Store, p: u32, stale: impl Fn((u64, u64)) -> bool) {
    let prefix = format!("chunk.{p}.");
    let Ok(mut keys) = kv.keys().await else {
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
        let _ = crate::daemon::remove_keys(kv, &k).await;
    }
}
