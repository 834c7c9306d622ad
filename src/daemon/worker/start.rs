//! A worker's start: its checkpoint loaded (or a fresh partition), what an
//! earlier holder stored after it read back, the first checkpoint written.

use super::*;

impl Worker {
    /// Loads the checkpoint, finds what an earlier holder stored after it,
    /// and writes a first head when there is none. Ok(false): stopped
    /// meanwhile.
    pub(super) async fn start(&mut self, stop: &mut Stop) -> Result<bool, Exit> {
        let loaded = tokio::select! {
            _ = stop.changed() => return Ok(false),
            l = self.ckpt.load() => l,
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(e @ crate::daemon::checkpoint::CheckpointError::Superseded { .. }) => {
                tracing::info!(partition = self.p, error = %e, "partition superseded");
                self.lease.lose();
                return Err(Exit::Lost);
            }
            Err(e) => return Err(Exit::Failed(e.to_string())),
        };
        let metrics = &self.ctx.shared.metrics;
        metrics
            .state_restored
            .inc_by(loaded.conversations.len() as u64);
        let versions = self
            .ctx
            .lexicons
            .register_versions_of(&mut self.engine, &loaded.conversations)
            .await;
        if versions > 0 {
            tracing::info!(
                partition = self.p,
                versions,
                "earlier lexicon versions fetched for the conversations they opened"
            );
        }
        for (tenant, id, state) in loaded.conversations {
            self.engine.import(&tenant, &id, state);
        }
        for (tenant, id, closed) in loaded.closed {
            self.engine.import_closed(&tenant, &id, closed);
        }
        self.seq = loaded.seq;
        self.stored_tx.send_replace(self.seq);
        let marks = match loaded.marks {
            Some(m) => m,
            None => {
                if loaded.found {
                    tracing::warn!(
                        partition = self.p,
                        "the checkpoint names no output marks (an older build wrote it, or it \
                         is of an earlier stream of this name): events of inputs after it are \
                         kept from being stored twice only inside the duplicate window"
                    );
                }
                // From here on nothing of this partition is stored before
                // the first head this holder writes names these marks.
                let now = tokio::select! {
                    _ = stop.changed() => return Ok(false),
                    m = stream_ends(&self.ctx.shared) => m,
                };
                match now {
                    Ok(m) => m,
                    Err(e) => return Err(Exit::Failed(e.to_string())),
                }
            }
        };
        self.acked = marks;
        self.ckpt.marks = marks;
        if loaded.found && loaded.marks.is_some() {
            let streams = &self.ctx.shared.config.streams;
            let scan = replay::stored_since(
                &self.ctx.shared.js,
                [&streams.output_stream, &streams.deadletter_stream],
                marks,
                self.p,
                metrics,
            );
            let scanned = tokio::select! {
                _ = stop.changed() => return Ok(false),
                s = scan => s,
            };
            match scanned {
                Ok(stored) => {
                    if stored.len() > 0 {
                        tracing::info!(
                            partition = self.p,
                            events = stored.len(),
                            through_input = stored.through_input,
                            "events stored after the checkpoint found: their replay stores none again"
                        );
                    }
                    self.already = stored;
                }
                Err(e) => return Err(Exit::Failed(format!("reading what was stored: {e}"))),
            }
        }
        if !loaded.found {
            // A first head, so that every later holder finds the marks.
            let snap = self
                .ckpt
                .snapshot(&self.engine, Changed::default(), 0, marks);
            let mut handle =
                self.ckpt
                    .write(snap, self.stored_tx.subscribe(), Arc::clone(&self.lease));
            let done = tokio::select! {
                _ = stop.changed() => {
                    handle.abort();
                    return Ok(false);
                }
                d = &mut handle => d,
            };
            match done {
                Ok((state, snap, written)) => {
                    let ok = matches!(written, Written::Ok);
                    self.ckpt.done(state, &snap, &written);
                    if let Written::Fenced = written {
                        return Err(Exit::Lost);
                    }
                    if !ok {
                        return Err(Exit::Failed("the first checkpoint was not written".into()));
                    }
                }
                Err(e) => return Err(Exit::Failed(format!("first checkpoint: {e}"))),
            }
        }
        Ok(true)
    }
}

/// The last sequence of the output and dead-letter streams now (a free
/// function: a `&Worker` held across an await would make the worker's
/// future not `Send`, its window not being `Sync`).
async fn stream_ends(shared: &crate::daemon::Shared) -> Result<Marks, async_nats::Error> {
    let js = &shared.js;
    let s = &shared.config.streams;
    let mut out = js.get_stream(&s.output_stream).await?;
    let mut dl = js.get_stream(&s.deadletter_stream).await?;
    Ok(Marks {
        output: out.info().await?.state.last_sequence,
        deadletter: dl.info().await?.state.last_sequence,
    })
}
