//! The NATS side of the daemon: its connection state, and creating or
//! checking the streams, the consumer and the state bucket. Connecting
//! itself is [`crate::nats_conn`]'s.

use super::http::Status;
use crate::config::{Config, DEFAULT_PARTITIONS};
use crate::metrics::Metrics;
use crate::nats_conn::{self, ConnectError};
use crate::subject;
use async_nats::Event;
use async_nats::jetstream::context::{
    CreateKeyValueError, CreateStreamError, GetStreamError, KeyValueError,
};
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, consumer::pull, kv, stream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Connects, tracking the connection state in `status` and `metrics`.
pub async fn connect(
    config: &Config,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) -> Result<async_nats::Client, ConnectError> {
    nats_conn::connect_with(&config.nats, move |event| match event {
        Event::Connected => {
            status.connected.store(true, Ordering::Relaxed);
            metrics.nats_connected.set(1);
        }
        Event::Disconnected => {
            status.connected.store(false, Ordering::Relaxed);
            metrics.nats_connected.set(0);
            metrics.nats_disconnects.inc();
        }
        Event::Closed => {
            status.connected.store(false, Ordering::Relaxed);
            metrics.nats_connected.set(0);
        }
        _ => {}
    })
    .await
}

/// Why the streams, the consumer or a bucket are not there to use.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create stream {name:?}: {source}")]
    CreateStream {
        name: String,
        source: CreateStreamError,
    },
    #[error("stream {name:?} is missing ({source}); create it, or set [streams] create = true")]
    MissingStream {
        name: String,
        source: GetStreamError,
    },
    #[error("stream {name:?}: {source}")]
    StreamInfo {
        name: String,
        source: stream::InfoError,
    },
    #[error("cannot create consumer {consumer:?} on stream {stream:?}: {source}")]
    CreateConsumer {
        consumer: String,
        stream: String,
        source: ConsumerError,
    },
    #[error(
        "consumer {consumer:?} on stream {stream:?} is missing ({source}); create it, or set [streams] create = true"
    )]
    MissingConsumer {
        consumer: String,
        stream: String,
        source: async_nats::Error,
    },
    #[error("cannot create key-value bucket {name:?}: {source}")]
    CreateBucket {
        name: String,
        source: CreateKeyValueError,
    },
    #[error(
        "key-value bucket {name:?} is missing ({source}); create it, or set [streams] create = true"
    )]
    MissingBucket { name: String, source: KeyValueError },
    #[error(
        "input stream {name:?} is not partitioned (no subject transform with partition()) \
         but [cluster] partitions is set: see the README's \"Many instances\" for the migration"
    )]
    NotPartitioned { name: String },
    #[error(
        "input stream {name:?} has {partitions} partitions but [cluster] partitions = 0: \
         remove the setting (the stream's count is used)"
    )]
    Partitioned { name: String, partitions: u32 },
}

/// Everything the daemon uses on the server.
pub struct Setup {
    pub js: jetstream::Context,
    /// The input stream (the poison sweeper reads and deletes by sequence).
    pub input: jetstream::stream::Stream,
    /// The durable consumer of an unpartitioned stream's one judging
    /// instance (None on a partitioned stream, whose partitions are read by
    /// ordered consumers).
    pub consumer: Option<jetstream::consumer::PullConsumer>,
    pub state: kv::Store,
    /// On a partitioned stream: the bucket of members, leases and
    /// checkpoints, and the stream's partition count.
    pub cluster: Option<(kv::Store, u32)>,
    /// On a partitioned stream: the durable consumer of the stream that
    /// keeps what the partitioned one cannot take (see
    /// `subject::input_unroutable`), when there is one.
    pub unroutable: Option<(jetstream::stream::Stream, jetstream::consumer::PullConsumer)>,
}

/// Creates (when `streams.create`) or checks the streams, the consumer and
/// the state bucket.
pub async fn setup(client: &async_nats::Client, config: &Config) -> Result<Setup, SetupError> {
    let s = &config.streams;
    let c = &config.cluster;
    let create = s.create;
    let shape = Shape {
        duplicate_window: Duration::from_secs(s.duplicate_window_s),
        replicas: c.replicas,
    };
    // The partition count is the input stream's: chosen when it is created,
    // read back from its transform by every instance.
    let create_partitions = c.partitions.unwrap_or(DEFAULT_PARTITIONS);
    let (input, partitions) = {
        let js = jetstream::new(client.clone());
        let input = if create_partitions == 0 {
            ensure_stream(
                &js,
                create,
                &s.input_stream,
                vec![subject::inputs(s)],
                &shape,
                None,
            )
            .await?
        } else {
            // Only `<prefix>.<tenant>.<id>` is accepted, and stored under
            // its partition: `<prefix>.<p>.<tenant>.<id>`.
            ensure_stream(
                &js,
                create,
                &s.input_stream,
                vec![subject::input_unpartitioned(s)],
                &shape,
                Some(crate::daemon::cluster::transform(s, create_partitions)),
            )
            .await?
        };
        let info = retried("reading the input stream's info", || {
            let mut probe = input.clone();
            async move { probe.info().await.cloned() }
        })
        .await
        .map_err(|source| SetupError::StreamInfo {
            name: s.input_stream.clone(),
            source,
        })?;
        let partitions = crate::daemon::cluster::partitions_of(&info.config).unwrap_or(0);
        match (partitions, c.partitions) {
            (0, Some(wanted)) if wanted > 0 => {
                return Err(SetupError::NotPartitioned {
                    name: info.config.name.clone(),
                });
            }
            (p, Some(0)) if p > 0 => {
                return Err(SetupError::Partitioned {
                    name: info.config.name.clone(),
                    partitions: p,
                });
            }
            (0, _) => tracing::warn!(
                stream = %info.config.name,
                "the input stream is not partitioned: one instance judges, others stand by, \
                 and open conversations are saved only at shutdown (see the README's \
                 \"Many instances\" for the migration)"
            ),
            (p, Some(wanted)) if p != wanted => tracing::warn!(
                stream = %info.config.name,
                stream_partitions = p,
                configured = wanted,
                "the input stream's partition count wins over [cluster] partitions"
            ),
            _ => {}
        }
        (input, partitions)
    };
    // Room for every shard's (or partition's) publish window plus dead
    // letters and state: a publish then never waits for a permit that only
    // acks it has not awaited yet could free (see shard.rs).
    let writers = config.shards.max(partitions as usize);
    let inflight = writers * config.publish_window + 1024;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(inflight)
        .build(client.clone());
    let outputs = subject::outputs(s);
    ensure_stream(&js, create, &s.output_stream, outputs, &shape, None).await?;
    ensure_stream(
        &js,
        create,
        &s.deadletter_stream,
        vec![subject::deadletter(s).to_string()],
        &shape,
        None,
    )
    .await?;
    if let Some(shadow) = &config.shadow {
        ensure_stream(
            &js,
            create,
            &shadow.stream,
            vec![subject::all(&shadow.prefix)],
            &shape,
            None,
        )
        .await?;
    }

    let consumer = match partitions {
        0 => Some(durable_consumer(&input, config).await?),
        _ => None,
    };
    let state = bucket(
        &js,
        create,
        &s.state_bucket,
        "zhijian: open conversations across restarts",
        1,
    )
    .await?;
    let unroutable = match partitions {
        0 => None,
        _ => unroutable(&js, config, &shape).await?,
    };
    let cluster = match partitions {
        0 => None,
        p => {
            let kv = bucket(
                &js,
                create,
                &c.bucket,
                "zhijian: members, partition leases and checkpoints",
                c.replicas,
            )
            .await?;
            Some((kv, p))
        }
    };
    Ok(Setup {
        js,
        input,
        consumer,
        state,
        cluster,
        unroutable,
    })
}

/// The stream of inputs a partitioned stream cannot take, and its durable
/// consumer: made when `streams.create`; without, a missing one is a
/// warning (such publishes then find no stream, and a JetStream publisher
/// gets the error).
async fn unroutable(
    js: &jetstream::Context,
    config: &Config,
    shape: &Shape,
) -> Result<Option<(stream::Stream, jetstream::consumer::PullConsumer)>, SetupError> {
    let s = &config.streams;
    let name = subject::unroutable_stream(s);
    let consumer_config = pull::Config {
        durable_name: Some(s.consumer.clone()),
        description: Some("zhijian: dead-letters inputs no partition can take".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    if !s.create {
        let found = match js.get_stream(&name).await {
            Ok(stream) => stream
                .get_consumer(&s.consumer)
                .await
                .ok()
                .map(|c| (stream, c)),
            Err(_) => None,
        };
        if found.is_none() {
            tracing::warn!(
                stream = %name,
                consumer = %s.consumer,
                "no stream (or consumer) for inputs the partitioned stream cannot take: \
                 a conversation id with '.' finds no stream (see deploy/nats)"
            );
        }
        return Ok(found);
    }
    let config = stream::Config {
        name: name.clone(),
        description: Some("zhijian: inputs no partition can take, until dead-lettered".into()),
        subjects: subject::input_unroutable(s),
        storage: stream::StorageType::File,
        duplicate_window: shape.duplicate_window,
        num_replicas: shape.replicas,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    let stream = create_stream(js, config).await?;
    retried("creating a consumer", || {
        stream.get_or_create_consumer(&s.consumer, consumer_config.clone())
    })
    .await
    .map(|c| Some((stream, c)))
    .map_err(|source| SetupError::CreateConsumer {
        consumer: s.consumer.clone(),
        stream: name,
        source,
    })
}

async fn durable_consumer(
    input: &jetstream::stream::Stream,
    config: &Config,
) -> Result<jetstream::consumer::PullConsumer, SetupError> {
    let s = &config.streams;
    let consumer_config = pull::Config {
        durable_name: Some(s.consumer.clone()),
        description: Some("zhijian: judges transcript segments".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(s.ack_wait_s),
        max_ack_pending: s.max_ack_pending,
        filter_subject: subject::inputs(s),
        ..Default::default()
    };
    if s.create {
        retried("creating a consumer", || {
            input.get_or_create_consumer(&s.consumer, consumer_config.clone())
        })
        .await
        .map_err(|source| SetupError::CreateConsumer {
            consumer: s.consumer.clone(),
            stream: s.input_stream.clone(),
            source,
        })
    } else {
        input
            .get_consumer(&s.consumer)
            .await
            .map_err(|source| SetupError::MissingConsumer {
                consumer: s.consumer.clone(),
                stream: s.input_stream.clone(),
                source,
            })
    }
}

/// Gets a key-value bucket (history 1, file storage), creating it when
/// `create` is set.
async fn bucket(
    js: &jetstream::Context,
    create: bool,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, SetupError> {
    retried("creating a bucket", || async {
        match js.get_key_value(name).await {
            Ok(kv) => Ok(kv),
            Err(_) if create => js
                .create_key_value(kv::Config {
                    bucket: name.to_string(),
                    description: description.into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|source| SetupError::CreateBucket {
                    name: name.to_string(),
                    source,
                }),
            Err(source) => Err(SetupError::MissingBucket {
                name: name.to_string(),
                source,
            }),
        }
    })
    .await
}

/// Attempts at creating a stream, consumer or bucket: instances started
/// together on a fresh cluster race to create them, and a losing create
/// (or a request to a stream whose leader is still being elected) can fail.
const CREATE_ATTEMPTS: u64 = 5;

/// `step` until it succeeds, [`CREATE_ATTEMPTS`] more times at most, with
/// a growing pause; the last error if none did.
async fn retried<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= CREATE_ATTEMPTS => return Err(e),
            Err(e) => {
                attempt += 1;
                tracing::debug!(what, error = %e, attempt, "failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// Gets the stream of `config.name`, creating it with `config` if missing;
/// retried, as instances starting together race to create it.
async fn create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, SetupError> {
    retried("creating a stream", || {
        js.get_or_create_stream(config.clone())
    })
    .await
    .map_err(|source| SetupError::CreateStream {
        name: config.name.clone(),
        source,
    })
}

/// How this daemon creates streams.
struct Shape {
    duplicate_window: Duration,
    replicas: usize,
}

/// Gets the stream, creating it (file storage, de-duplication window,
/// replicas, an optional subject transform) when `create` is set.
async fn ensure_stream(
    js: &jetstream::Context,
    create: bool,
    name: &str,
    subjects: Vec<String>,
    shape: &Shape,
    subject_transform: Option<stream::SubjectTransform>,
) -> Result<stream::Stream, SetupError> {
    if create {
        let config = stream::Config {
            name: name.to_string(),
            subjects,
            storage: stream::StorageType::File,
            duplicate_window: shape.duplicate_window,
            num_replicas: shape.replicas,
            subject_transform,
            ..Default::default()
        };
        create_stream(js, config).await
    } else {
        js.get_stream(name)
            .await
            .map_err(|source| SetupError::MissingStream {
                name: name.to_string(),
                source,
            })
    }
}
