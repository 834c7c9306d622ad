//! Events a partition's earlier holder already stored: read back from the
//! output and dead-letter streams when a holder takes the partition, so
//! that replaying the inputs after its checkpoint stores none of them
//! twice, whatever the downtime.
//!
//! JetStream drops a repeated `Nats-Msg-Id` only inside the stream's
//! duplicate window (600 s here); a restart after a longer outage, or a
//! checkpoint that had fallen behind, would store those events again. So
//! every event carries its partition and input sequence in headers
//! (`Zhijian-Partition`, `Zhijian-Input-Seq`), and a checkpoint names the
//! last sequence of each output stream its holder had seen acknowledged
//! before the snapshot (`checkpoint::Marks`). Every event of a later input
//! is stored after that mark, so reading the stream from there, headers
//! only, finds every one a replay would produce again.
//!
//! It is exact as long as the streams still hold what was stored since the
//! checkpoint: a retention (`max_age`) shorter than the downtime removes
//! some, which is counted (`zhijian_replay_incomplete_total`) and logged.

use super::checkpoint::Marks;
use crate::metrics::Metrics;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

/// Header: the partition an event's input came from.
pub(super) const PARTITION: &str = "Zhijian-Partition";
/// Header: the holder's epoch (lease revision).
pub(super) const EPOCH: &str = "Zhijian-Epoch";
/// Header: the input sequence an event came from.
pub(super) const INPUT_SEQ: &str = "Zhijian-Input-Seq";

/// What an earlier holder stored after a checkpoint.
#[derive(Debug, Default)]
pub(super) struct Stored {
    ids: HashSet<String>,
    /// The highest input sequence among them: inputs up to it were judged
    /// before (what `zhijian_replayed_messages_total` counts).
    pub through_input: u64,
}

impl Stored {
    /// Whether an event of this id was stored already; each id answers yes
    /// once (its replay is the only one that finds it).
    pub(super) fn take(&mut self, id: &str) -> bool {
        self.ids.remove(id)
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Forgets what is left once the replay is past it.
    pub(super) fn clear(&mut self) {
        self.ids = HashSet::new();
    }
}

/// Reads what was stored for partition `p` after `marks` in the output and
/// dead-letter streams.
pub(super) async fn stored_since(
    js: &jetstream::Context,
    streams: [&str; 2],
    marks: Marks,
    p: u32,
    metrics: &Metrics,
) -> Result<Stored, async_nats::Error> {
    let mut stored = Stored::default();
    for (stream, mark) in streams.into_iter().zip([marks.output, marks.deadletter]) {
        scan(js, stream, mark, p, metrics, &mut stored).await?;
    }
    Ok(stored)
}

async fn scan(
    js: &jetstream::Context,
    name: &str,
    mark: u64,
    p: u32,
    metrics: &Metrics,
    into: &mut Stored,
) -> Result<(), async_nats::Error> {
    let mut stream = js.get_stream(name).await?;
    let state = stream.info().await?.state.clone();
    let last = state.last_sequence;
    // A mark past the end: the stream was made again since; all of it is
    // after the checkpoint.
    let from = if mark > last { 1 } else { mark + 1 };
    if from > last {
        return Ok(());
    }
    if state.first_sequence > from {
        metrics.replay_incomplete.inc();
        tracing::warn!(
            stream = name,
            partition = p,
            from,
            first = state.first_sequence,
            "events stored since the partition's checkpoint are no longer all in the stream \
             (its retention removed some): a replay may store those again"
        );
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            description: Some(format!("zhijian: events stored for partition {p}")),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let want = p.to_string();
    loop {
        let next = tokio::time::timeout(QUIET, messages.next()).await;
        let msg = match next {
            Ok(Some(m)) => m?,
            Ok(None) => return Err("the scan's consumer ended".into()),
            // Nothing more delivered: messages after `from` were deleted
            // since the stream's info was read.
            Err(_) => return Ok(()),
        };
        let info = msg.info()?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if let Some(h) = &msg.headers
            && h.get(PARTITION).is_some_and(|v| v.as_str() == want)
            && let Some(id) = h.get("Nats-Msg-Id")
        {
            into.ids.insert(id.as_str().to_string());
            if let Some(input) = h
                .get(INPUT_SEQ)
                .and_then(|v| v.as_str().parse::<u64>().ok())
            {
                into.through_input = into.through_input.max(input);
            }
        }
        if seq >= last || pending == 0 {
            return Ok(());
        }
    }
}

/// How long the scan waits for the next message before it counts the
/// stream as read.
const QUIET: Duration = Duration::from_secs(2);
