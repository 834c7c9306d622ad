//! The streams and buckets the daemon uses, created (`[streams] create`)
//! or checked at start. The input stream must be partitioned (see
//! `membership`): one made by a version before the one runtime is refused,
//! with the way to move it in `docs/operations.md`.

use crate::config::{Config, DEFAULT_PARTITIONS};
use crate::subject;
use async_nats::jetstream::context::{
    CreateKeyValueError, CreateStreamError, GetStreamError, KeyValueError,
};
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, consumer::pull, kv, stream};
use std::time::Duration;

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
        "input stream {name:?} is not partitioned: it was made by a version before the one \
         runtime (one durable consumer, standbys), which is gone. Move it as \
         docs/operations.md \"An unpartitioned input stream\" says"
    )]
    Unpartitioned { name: String },
}

/// Everything the daemon uses on the server.
pub struct Setup {
    pub js: jetstream::Context,
    /// The input stream (read and swept by sequence through the JetStream
    /// API).
    pub input: jetstream::stream::Stream,
    /// Its partition count (read back from its transform).
    pub partitions: u32,
    /// The bucket of members, leases, checkpoints and lexicon sources.
    pub kv: kv::Store,
    /// The stream that keeps what the partitioned one cannot take (see
    /// `subject::input_unroutable`), when there is one.
    pub unroutable: Option<jetstream::stream::Stream>,
}

/// Creates (when `streams.create`) or checks the streams and the bucket.
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
    let js = jetstream::new(client.clone());
    // Only `<prefix>.<tenant>.<token>` is accepted, and stored under its
    // partition: `<prefix>.<p>.<tenant>.<token>`.
    let input = ensure_stream(
        &js,
        create,
        &s.input_stream,
        vec![subject::input_unpartitioned(s)],
        &shape,
        s.input_max_age_h,
        Some(super::membership::transform(s, create_partitions)),
    )
    .await?;
    let info = retried("reading the input stream's info", || {
        let mut probe = input.clone();
        async move { probe.info().await.cloned() }
    })
    .await
    .map_err(|source| SetupError::StreamInfo {
        name: s.input_stream.clone(),
        source,
    })?;
    let Some(partitions) = super::membership::partitions_of(&info.config) else {
        return Err(SetupError::Unpartitioned {
            name: info.config.name.clone(),
        });
    };
    if let Some(wanted) = c.partitions.filter(|w| *w != partitions) {
        tracing::warn!(
            stream = %info.config.name,
            stream_partitions = partitions,
            configured = wanted,
            "the input stream's partition count wins over [cluster] partitions"
        );
    }
    // Room for every partition's publish window twice over (the acks of an
    // earlier send of an event sent again hold their permit until they time
    // out) plus dead letters: a publish then never waits for a permit that
    // only acks it has not awaited yet could free.
    let inflight = 2 * partitions as usize * config.publish_window + 1024;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(inflight)
        // Dropped acks release their permit after this (default 30 s).
        .ack_timeout(Duration::from_secs(5))
        .build(client.clone());
    let outputs = subject::outputs(s);
    ensure_stream(
        &js,
        create,
        &s.output_stream,
        outputs,
        &shape,
        s.output_max_age_h,
        None,
    )
    .await?;
    ensure_stream(
        &js,
        create,
        &s.deadletter_stream,
        vec![subject::deadletter(s).to_string()],
        &shape,
        s.deadletter_max_age_h,
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
            s.output_max_age_h,
            None,
        )
        .await?;
    }
    let unroutable = unroutable(&js, config, &shape).await?;
    let kv = bucket(
        &js,
        create,
        &c.bucket,
        "zhijian: members, partition leases, checkpoints and lexicon sources",
        c.replicas,
    )
    .await?;
    Ok(Setup {
        js,
        input,
        partitions,
        kv,
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
) -> Result<Option<stream::Stream>, SetupError> {
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
                .get_consumer::<pull::Config>(&s.consumer)
                .await
                .ok()
                .map(|_| stream),
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
        max_age: hours(s.deadletter_max_age_h),
        ..Default::default()
    };
    let stream = create_stream(js, config).await?;
    retried("creating a consumer", || {
        stream.get_or_create_consumer(&s.consumer, consumer_config.clone())
    })
    .await
    .map(|_| Some(stream))
    .map_err(|source| SetupError::CreateConsumer {
        consumer: s.consumer.clone(),
        stream: name,
        source,
    })
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

/// A retention in hours (0: none, which JetStream writes as zero).
fn hours(h: u64) -> Duration {
    Duration::from_secs(h.saturating_mul(3600))
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
    max_age_h: u64,
    subject_transform: Option<stream::SubjectTransform>,
) -> Result<stream::Stream, SetupError> {
    if create {
        let config = stream::Config {
            name: name.to_string(),
            subjects,
            storage: stream::StorageType::File,
            duplicate_window: shape.duplicate_window,
            num_replicas: shape.replicas,
            max_age: hours(max_age_h),
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
