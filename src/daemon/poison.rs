//! Input the client cannot even receive. nats-server passes any bytes in a
//! subject, but async-nats refuses a subject that is not UTF-8 by dropping
//! the connection (nats-io/nats.rs#1572 turned a panic into that error). Such
//! a message never reaches a shard to be dead-lettered: it is redelivered
//! every `ack_wait`, and every delivery drops the connection, forever.
//!
//! The sweeper finds it from the server's side. After a disconnect (and once
//! at start) it reads the consumer's first unacknowledged messages by stream
//! sequence — the JetStream API returns the subject inside JSON, where the
//! server writes invalid bytes as U+FFFD — and a message whose subject is
//! not UTF-8 is copied to the dead-letter stream (reason `invalid_subject`,
//! with its original sequence) and deleted from the input stream, which ends
//! its redeliveries. Normal messages are never touched: a valid subject is
//! left for the shards, which dead-letter a wrong one themselves.

use crate::daemon::Shared;
use crate::daemon::http::Status;
use crate::daemon::shard::{DeadLetter, publish_dead_letter};
use crate::subject::{INVALID_SUBJECT, UNROUTABLE_SUBJECT};
use async_nats::jetstream::{consumer::PullConsumer, stream::Stream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Unacknowledged messages looked at per sweep, from the ack floor: the
/// poison message holds the floor down, so it is among the first.
const WINDOW: u64 = 32;

pub async fn sweeper(
    shared: Arc<Shared>,
    consumer: PullConsumer,
    input: Stream,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start with a sweep: a poison message may have dropped the previous
    // instance's connection.
    let mut seen_disconnects = u64::MAX;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let disconnects = shared.metrics.nats_disconnects.get();
        if disconnects == seen_disconnects || !status.connected.load(Ordering::Relaxed) {
            continue;
        }
        match sweep(&shared, &consumer, &input).await {
            Ok(removed) => {
                seen_disconnects = disconnects;
                if removed > 0 {
                    tracing::warn!(
                        removed,
                        "undecodable input messages dead-lettered and removed"
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "poison sweep failed; will retry"),
        }
    }
}

/// One sweep; returns how many messages were removed.
async fn sweep(
    shared: &Shared,
    consumer: &PullConsumer,
    input: &Stream,
) -> Result<u64, async_nats::Error> {
    let mut consumer = consumer.clone();
    let info = consumer.info().await?;
    let floor = info.ack_floor.stream_sequence;
    let last = info.delivered.stream_sequence.min(floor + WINDOW);
    let mut removed = 0;
    for seq in floor + 1..=last {
        let msg = match input.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted or acked and gone: nothing to do.
            Err(_) => continue,
        };
        if remove_if_undecodable(shared, input, seq, msg).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The first message of `filter` (a partition's subjects) from `from` on,
/// removed if its subject is not UTF-8 (see [`remove_if_undecodable`]).
pub async fn sweep_partition(
    shared: &Shared,
    input: &Stream,
    filter: &str,
    from: u64,
) -> Result<bool, async_nats::Error> {
    let msg = match input
        .raw_message_builder()
        .sequence(from)
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
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let seq = msg.sequence;
    remove_if_undecodable(shared, input, seq, msg).await
}

/// Dead-letters and deletes message `seq` if its subject is not UTF-8 (the
/// server shows the invalid bytes as U+FFFD); false for any other message.
async fn remove_if_undecodable(
    shared: &Shared,
    input: &Stream,
    seq: u64,
    msg: async_nats::jetstream::message::StreamMessage,
) -> Result<bool, async_nats::Error> {
    if !msg.subject.as_str().contains('\u{FFFD}') {
        return Ok(false);
    }
    let letter = DeadLetter {
        // The input stream, or the stream of what a partitioned one cannot
        // take (its own sequences: the dead letters' ids must not collide).
        stream: &input.cached_info().config.name,
        seq,
        subject: msg.subject.as_str(),
        code: INVALID_SUBJECT,
        detail: "the subject is not UTF-8 (invalid bytes shown as U+FFFD); the message was removed from the input stream",
        payload: msg.payload,
    };
    publish_dead_letter(shared, letter).await?;
    input
        .delete_message(seq)
        .await
        .map_err(|e| format!("cannot delete message {seq}: {e}"))?;
    shared.metrics.poison_removed.inc();
    tracing::warn!(stream_seq = seq, subject = %msg.subject, reason = INVALID_SUBJECT, "undecodable input dead-lettered and removed");
    Ok(true)
}

/// Dead-letters what a partitioned input stream cannot take (kept by
/// `subject::unroutable_stream`: a conversation id holding `.`, or none):
/// each message is copied to the dead letters (reason `unroutable_subject`,
/// with its subject and sequence) and then acknowledged. Every instance
/// runs one on the same durable consumer; a redelivered message's dead
/// letter has the same `Nats-Msg-Id`, so it is stored once.
pub async fn unroutable(
    shared: Arc<Shared>,
    consumer: PullConsumer,
    mut stop: watch::Receiver<bool>,
) {
    let streams = &shared.config.streams;
    let stream = crate::subject::unroutable_stream(streams);
    let detail = format!(
        "the input stream is partitioned: the subject must be {}.<tenant>.<conversation_id>, \
         each one token (no '.' in the conversation id)",
        streams.input_prefix
    );
    loop {
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
                let letter = DeadLetter::of(&msg, &stream, seq, UNROUTABLE_SUBJECT, &detail);
                match publish_dead_letter(&shared, letter).await {
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
