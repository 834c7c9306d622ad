//! A partition's consumer: made from the input after the last one judged,
//! on the input connection, after a sweep of what the one before may have
//! delivered (see `poison`); dropped when the connection goes, when a
//! message is lost on the way (a gap in the consumer's sequence), or when it
//! delivers nothing while inputs wait.

use super::ctx::Ctx;
use crate::subject;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// How long a partition's consumer may deliver nothing while inputs wait
/// before it is made again (a pull lost in a disconnect was seen to leave
/// a consumer silent for good).
const STALL: Duration = Duration::from_secs(3);

/// How long the probe of a stall may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The partition's consumer, while there is one.
pub(super) struct Reader {
    messages: Option<pull::Stream>,
    consumer: Option<jetstream::consumer::PullConsumer>,
    /// The consumer sequence expected next.
    expect: u64,
    /// The input connection's generation the consumer was made on.
    pub generation: u64,
    heard_at: Instant,
    stall_checked_at: Instant,
    /// Consumers made so far (their names' last part).
    made: u64,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader {
            messages: None,
            consumer: None,
            expect: 1,
            generation: 0,
            heard_at: Instant::now(),
            stall_checked_at: Instant::now(),
            made: 0,
        }
    }
}

impl Reader {
    pub(super) fn is_open(&self) -> bool {
        self.messages.is_some()
    }

    /// Drops the consumer's stream (and so its subscription); the consumer
    /// itself is looked at and deleted by the next [`Reader::open`].
    pub(super) fn close(&mut self) {
        self.messages = None;
    }

    /// The next message; never resolves while closed.
    pub(super) async fn next(&mut self) -> Option<Result<jetstream::Message, pull::MessagesError>> {
        match self.messages.as_mut() {
            Some(m) => m.next().await,
            None => std::future::pending().await,
        }
    }

    /// Whether a delivered message comes right after the one before (the
    /// consumer's own sequence has no gap).
    pub(super) fn in_order(&mut self, info: &jetstream::message::Info<'_>) -> bool {
        self.heard_at = Instant::now();
        if info.consumer_sequence != self.expect {
            return false;
        }
        self.expect += 1;
        true
    }

    /// Makes the consumer of partition `p` from the input after `seq`,
    /// sweeping first what the one before may have delivered.
    pub(super) async fn open(
        &mut self,
        ctx: &Ctx,
        p: u32,
        epoch: u64,
        seq: u64,
    ) -> Result<(), async_nats::Error> {
        let streams = &ctx.shared.config.streams;
        let filter = subject::partition_all(streams, p);
        // What the old consumer had delivered (it may be what dropped the
        // connection): swept before anything is read again.
        let delivered = match self.consumer.take() {
            Some(mut c) => {
                let name = c.cached_info().name.clone();
                let delivered = c.info().await.ok().map(|i| i.delivered.stream_sequence);
                let _ = ctx.input.delete_consumer(&name).await;
                delivered
            }
            None => None,
        };
        super::poison::sweep_partition(&ctx.shared, &ctx.input, &filter, p, seq + 1, delivered)
            .await?;
        let deliver_policy = if seq == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            }
        };
        self.made += 1;
        let stream = ctx.input_js.get_stream(&streams.input_stream).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                name: Some(format!(
                    "zj-{}-p{p}-e{epoch}-{}",
                    ctx.cluster.instance, self.made
                )),
                description: Some(format!("zhijian partition {p}")),
                filter_subject: filter,
                deliver_policy,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(256)
            .heartbeat(Duration::from_secs(1))
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        self.consumer = Some(consumer);
        self.messages = Some(messages);
        self.expect = 1;
        self.heard_at = Instant::now();
        Ok(())
    }

    /// True when the consumer has delivered nothing for [`STALL`] while
    /// partition `p` holds an input after `seq`. Asked of the server at most
    /// once per [`STALL`].
    pub(super) async fn stalled(&mut self, ctx: &Ctx, p: u32, seq: u64) -> bool {
        if self.messages.is_none()
            || self.heard_at.elapsed() < STALL
            || self.stall_checked_at.elapsed() < STALL
        {
            return false;
        }
        self.stall_checked_at = Instant::now();
        let filter = subject::partition_all(&ctx.shared.config.streams, p);
        let probe = ctx
            .input
            .raw_message_builder()
            .sequence(seq + 1)
            .next_by_subject(filter)
            .send();
        let waiting = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
        if waiting {
            ctx.shared.metrics.cluster.consumer_restarts.inc();
            tracing::warn!(
                partition = p,
                seq,
                "the partition's consumer delivered nothing while inputs wait; making a new one"
            );
        }
        waiting
    }
}
