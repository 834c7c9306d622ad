//! Input the client cannot even receive. nats-server passes any bytes in a
//! subject, but async-nats 0.51 refuses a subject that is not UTF-8 by
//! dropping the whole connection (nats-io/nats.rs#1573 turned a panic into
//! that error; see `docs/upstream/async-nats-non-utf8-subject.md`). Such a
//! message never reaches a worker to be dead-lettered, and whoever reads it
//! again drops the connection again.
//!
//! Why it used to cost hundreds of reconnects: every partition read through
//! an ordered consumer, which makes itself again at once after a
//! reconnect, from the last message it delivered, so it delivered the same
//! message again before any sweep could run; and the sweep itself was
//! cut off by the next drop. Now readers drop their consumer when their
//! connection goes (`conn`), and a worker makes its next consumer only after
//! [`sweep_partition`] has looked, from the server's side, at every input
//! the old consumer may have delivered — the JetStream API returns a
//! subject inside JSON, where the server writes invalid bytes as U+FFFD —
//! and moved any undecodable one to the dead letters (reason
//! `invalid_subject`, with its original sequence) and out of the input
//! stream. Each such message costs the input connection one reconnect;
//! publishes, leases and checkpoints are on another connection and do not
//! notice.

use super::Shared;
use super::conn::Link;
use super::deadletter::{self, DeadLetter};
use crate::subject::{INVALID_SUBJECT, UNROUTABLE_SUBJECT};
use async_nats::HeaderMap;
use async_nats::jetstream::{consumer::PullConsumer, stream::Stream};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Inputs looked at per sweep at most: what a consumer can have in flight.
const MAX_SWEEP: usize = 1024;

/// Sweeps partition `p`'s inputs (`filter`) from sequence `from` up to
/// `delivered` (what the old consumer had sent; None: only the first):
/// undecodable ones are dead-lettered and removed. Returns how many.
pub(super) async fn sweep_partition(
    shared: &Shared,
    input: &Stream,
    filter: &str,
    p: u32,
    from: u64,
    delivered: Option<u64>,
) -> Result<u64, async_nats::Error> {
    let until = delivered.unwrap_or(from).max(from);
    let mut next = from;
    let mut removed = 0;
    for _ in 0..MAX_SWEEP {
        if next > until {
            break;
        }
        let msg = match input
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(filter)
            .send()
            .await
        {
            Ok(m) => m,
            // Nothing there (yet): nothing to do. Any other error (a
            // disconnect, a timeout) is one: the sweep is tried again.
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        };
        next = msg.sequence + 1;
        if msg.sequence > until {
            break;
        }
        if remove_if_undecodable(shared, input, Some(p), msg).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Dead-letters and deletes a message if its subject is not UTF-8 (the
/// server shows the invalid bytes as U+FFFD); false for any other message.
/// The dead letter is stored before the message is deleted: a crash in
/// between leaves it to the next sweep, never loses it.
async fn remove_if_undecodable(
    shared: &Shared,
    input: &Stream,
    partition: Option<u32>,
    msg: async_nats::jetstream::message::StreamMessage,
) -> Result<bool, async_nats::Error> {
    if !msg.subject.as_str().contains('\u{FFFD}') {
        return Ok(false);
    }
    let seq = msg.sequence;
    let mut headers = HeaderMap::new();
    if let Some(p) = partition {
        headers.insert(super::replay::PARTITION, p.to_string().as_str());
        headers.insert(super::replay::INPUT_SEQ, seq.to_string().as_str());
    }
    let letter = DeadLetter {
        // The input stream, or the stream of what a partitioned one cannot
        // take (its own sequences: the dead letters' ids must not collide).
        stream: &input.cached_info().config.name,
        seq,
        subject: msg.subject.as_str(),
        code: INVALID_SUBJECT,
        detail: "the subject is not UTF-8 (invalid bytes shown as U+FFFD); the message was removed from the input stream",
        payload: msg.payload.clone(),
    };
    deadletter::store(shared, letter.item(shared, headers, seq)).await?;
    input
        .delete_message(seq)
        .await
        .map_err(|e| format!("cannot delete message {seq}: {e}"))?;
    shared.metrics.poison_removed.inc();
    tracing::warn!(stream_seq = seq, subject = %msg.subject, reason = INVALID_SUBJECT, "undecodable input dead-lettered and removed");
    Ok(true)
}

/// Dead-letters what the partitioned input stream cannot take (kept by
/// `subject::unroutable_stream`: a subject without a conversation id, or
/// with more tokens than `<prefix>.<tenant>.<id>`): each message is copied
/// to the dead letters (reason `unroutable_subject`, with its subject and
/// sequence) and then acknowledged. Every instance runs one on the same
/// durable consumer; a redelivered message's dead letter has the same
/// `Nats-Msg-Id`, so it is stored once. Before each pull after a reconnect
/// of the input connection, the messages not yet acknowledged are swept for
/// undecodable subjects, like a partition's.
pub(super) async fn unroutable(
    shared: Arc<Shared>,
    stream: Stream,
    consumer: PullConsumer,
    mut link: Link,
    mut stop: watch::Receiver<bool>,
) {
    let streams = &shared.config.streams;
    let name = crate::subject::unroutable_stream(streams);
    let detail = format!(
        "the input stream is partitioned: the subject must be {}.<tenant>.<conversation token>, \
         one token each (a '.' in a conversation id is written %2E: see docs/events.md)",
        streams.input_prefix
    );
    let mut swept_generation = 0;
    loop {
        let state = link.state();
        if !state.connected {
            tokio::select! {
                _ = stop.changed() => return,
                _ = link.connected() => continue,
            }
        }
        if state.generation != swept_generation {
            match sweep_unacked(&shared, &consumer, &stream).await {
                Ok(_) => swept_generation = state.generation,
                Err(e) => {
                    tracing::debug!(error = %e, "poison sweep of the unroutable inputs failed; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        let batch = consumer
            .fetch()
            .max_messages(64)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the unroutable inputs; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                // Dropped with the connection (see `conn`).
                _ = link.changed() => break,
                m = futures_util::StreamExt::next(&mut batch) => m,
            };
            let msg = match next {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading the unroutable inputs");
                    break;
                }
                Some(Ok(msg)) => msg,
            };
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            let mut delay = Duration::from_millis(100);
            loop {
                let letter = DeadLetter::of(&msg, &name, seq, UNROUTABLE_SUBJECT, &detail);
                let item = letter.item(&shared, HeaderMap::new(), seq);
                match deadletter::store(&shared, item).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot dead-letter an unroutable input; retrying");
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            tracing::warn!(
                subject = %msg.subject,
                stream_seq = seq,
                reason = UNROUTABLE_SUBJECT,
                "input the partitioned stream cannot take dead-lettered"
            );
            if let Err(e) = msg.ack().await {
                tracing::debug!(error = %e, "ack of a dead-lettered unroutable input failed; it comes back and is stored once");
            }
        }
    }
}

/// The durable consumer's unacknowledged messages (from its ack floor, at
/// most [`MAX_SWEEP`]), swept like a partition's.
async fn sweep_unacked(
    shared: &Shared,
    consumer: &PullConsumer,
    stream: &Stream,
) -> Result<u64, async_nats::Error> {
    let mut consumer = consumer.clone();
    let info = consumer.info().await?;
    let floor = info.ack_floor.stream_sequence;
    let last = info.delivered.stream_sequence.min(floor + MAX_SWEEP as u64);
    let mut removed = 0;
    for seq in floor + 1..=last {
        let msg = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted or acked and gone: nothing to do.
            Err(_) => continue,
        };
        if remove_if_undecodable(shared, stream, None, msg).await? {
            removed += 1;
        }
    }
    Ok(removed)
}
