//! The live-alerts console for QA supervisors: a page served by the daemon
//! (`[console] addr`, loopback by default) with a feed of violations and
//! summaries as they are published.
//!
//! ```text
//! VIOLATIONS stream ─(ordered pull consumer)─▶ Feed: ring of the last
//!   `history` events (masked) + broadcast ─▶ GET /api/events (SSE, one per browser)
//!                                          └▶ Board (violations, summaries)
//! TRANSCRIPTS stream ─(per request, filtered by subject)─▶ GET /api/conversations/{tenant}/{id}
//!                    ─(ordered consumer, last 30 min)─▶ Board ─▶ GET /api/board
//! KV <state_bucket>_desk ─(watch)─▶ Desk ─▶ SSE `alert` events, GET /api/alerts/{id}
//!   ◀─(compare-and-set)─ POST /api/alerts/{id}; GET /api/false-alarms
//! Feed ─▶ GET /api/agents/{agent} (an agent's shift)
//! ```
//!
//! The console reads what the daemon already published, from the stream:
//! it shares nothing with the scanning path, so a slow or stalled browser
//! cannot slow the scanner. Every SSE event carries its stream sequence as
//! `id`; a browser that reconnects (network blip, daemon restart) sends the
//! last id it saw and gets exactly what it missed, from the ring, which a
//! restarted daemon refills from the stream. A browser that falls more than
//! the broadcast buffer behind is told `lagged`, counted, and disconnected:
//! it reconnects and catches up from the ring like any other.
//!
//! Files: `feed` (the ring and its broadcast), `auth` (who may ask, and
//! the security headers), `api` (the page and the SSE feed), `views` (the
//! JSON views and the desk's actions), `board`, `desk`, `shift`, `mask`;
//! this file builds the router.
//!
//! Transcripts are untrusted text: the page only ever renders them with
//! `textContent`, and the Content-Security-Policy allows no inline script.

mod api;
mod auth;
mod board;
pub(crate) mod desk;
mod feed;
pub(crate) mod mask;
pub(crate) mod shift;
mod views;

pub use board::{Board, Scorecard, follow_input};

use api::*;
use auth::*;
use feed::*;
use views::*;

use crate::config::{Config, ConsoleConfig};
use crate::event::{Event, InputKind, decode};
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::subject;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Segments returned for one conversation.
const MAX_SEGMENTS: usize = 2000;
/// Alert states changed this recently are sent to every browser that
/// (re)connects, whatever alerts it is about to get.
const WORKED_RECENTLY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct AppState {
    feed: Arc<Feed>,
    board: Arc<board::Board>,
    desk: Arc<desk::Desk>,
    shift: Arc<shift::Shift>,
    scorecards: Arc<board::Scorecards>,
    config: Arc<ConsoleConfig>,
    js: jetstream::Context,
    input_stream: String,
    streams: Arc<crate::config::StreamsConfig>,
    metrics: Arc<Metrics>,
    /// `Basic <base64(user:password)>`, precomputed.
    basic: Option<String>,
}

/// A running console.
pub(crate) struct Console {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Console {
    pub(crate) fn stop(self) {
        let _ = self.stop.send(true);
    }
}

/// Binds the console's address, starts following the output stream and
/// serves until stopped. `js` is on the console's own connection, whose
/// state `link` tells (the board drops its input consumer when it goes:
/// see `daemon::conn`).
pub(crate) async fn start(
    config: &Config,
    console: ConsoleConfig,
    js: jetstream::Context,
    link: crate::daemon::conn::Link,
    metrics: Arc<Metrics>,
) -> Result<Console, crate::listen::ListenError> {
    let (listener, addr) = crate::listen::bind(console.addr, "the console").await?;
    let feed = Arc::new(Feed::new(console.history));
    let board = Arc::new(board::Board::default());
    let desk = Arc::new(
        desk::Desk::open(
            &js,
            format!("{}{}", config.streams.state_bucket, desk::BUCKET_SUFFIX),
        )
        .await,
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(Arc::clone(&desk).follow(stopped.clone()));
    tokio::spawn(board::follow_input(
        js.clone(),
        config.streams.input_stream.clone(),
        subject::inputs(&config.streams),
        Arc::clone(&board),
        board::MAX_REPLAY,
        Some(link),
        stopped.clone(),
    ));
    let shift = Arc::new(shift::Shift::default());
    let counted = Arc::clone(&shift);
    tokio::spawn(board::follow_stream(
        js.clone(),
        board::Following {
            stream: config.streams.output_stream.clone(),
            subjects: String::new(),
            lookback: shift::KEEP,
            max_replay: shift::MAX_REPLAY,
            description: "zhijian console shift",
        },
        move |payload, at_ms| counted.on_output(payload, at_ms),
        None,
        stopped.clone(),
    ));
    tokio::spawn(follow(
        js.clone(),
        config.streams.output_stream.clone(),
        Arc::clone(&feed),
        Arc::clone(&board),
        console.mask_digits,
        Arc::clone(&metrics),
        stopped.clone(),
    ));
    let basic = console
        .basic
        .as_ref()
        .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{}", p.0).as_bytes())));
    let state = AppState {
        feed,
        board,
        desk,
        shift,
        scorecards: Arc::new(board::Scorecards::new(config.lexicons.clone())),
        config: Arc::new(console),
        js,
        input_stream: config.streams.input_stream.clone(),
        streams: Arc::new(config.streams.clone()),
        metrics,
        basic,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
        .route("/api/events", get(events))
        .route("/api/conversations/{tenant}/{id}", get(conversation))
        .route("/api/board", get(board_view))
        .route("/api/agents/{agent}", get(agent_view))
        .route(
            "/api/alerts/{id}",
            get(alert_view)
                .post(alert_action)
                .layer(axum::extract::DefaultBodyLimit::max(desk::MAX_BODY_BYTES)),
        )
        .route("/api/false-alarms", get(false_alarms))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(security_headers))
        .with_state(state);
    let mut stopped_http = stopped;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped_http.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "console server failed");
        }
    });
    Ok(Console { addr, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("qa:秘密", "cWE656eY5a+G"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn notes_are_masked_like_the_text_and_names_are_kept() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "type": "violation", "id": "x", "conversation_id": "c", "tenant": "t",
            "channel": "call", "agent_id": "a", "seq": 3, "rule_id": "escalation.media",
            "category": "escalation", "category_name": "客户投诉升级", "kind": "response",
            "severity": "critical", "deduct": 0.0, "matched": null, "start": null,
            "end": null, "text": "我打13812345678投诉", "lexicon_version": "v", "ts_ms": 0,
            "note": "customer said 我打13812345678投诉; no apology within 2 segment(s)",
            "also": [{"rule_id": "pii.full_number", "category": "pii"}]
        }))
        .expect("a violation");
        let Event::Violation(v) = masked(event.clone(), true) else {
            panic!("a violation")
        };
        assert_eq!(v.text, "我打*******5678投诉");
        assert_eq!(
            v.note.as_deref(),
            Some("customer said 我打*******5678投诉; no apology within 2 segment(s)")
        );
        assert_eq!(
            (v.category_name.as_str(), v.also.len()),
            ("客户投诉升级", 1)
        );
        // Masking off: as published.
        assert_eq!(masked(event.clone(), false), event);
    }

    fn item(seq: u64) -> Item {
        let event: Event = serde_json::from_value(serde_json::json!({
            "type": "summary", "id": "x", "conversation_id": format!("c{seq}"), "tenant": "t",
            "channel": null, "agent_id": null, "reason": "end", "segments": 1,
            "agent_segments": 1, "counts": {"forbidden": 0, "filler": 0,
            "missing_greeting": 0, "missing_closing": 0}, "greeted": null,
            "closed": null, "score": 100.0, "lexicon_version": "v", "ts_ms": 0
        }))
        .expect("a summary");
        Item {
            seq,
            raised_ms: seq,
            event,
            json: String::new(),
        }
    }

    #[tokio::test]
    async fn a_browser_that_falls_behind_is_counted_and_told_to_reconnect() {
        let metrics = Arc::new(Metrics::new());
        let feed = Feed::new(10_000);
        let (_, _, rx) = feed.subscribe(None).expect("fresh");
        let client = Client::new(Arc::clone(&metrics));
        assert_eq!(metrics.console_clients.get(), 1);
        // The browser reads nothing while more than the buffer is published:
        // publishing never waits for it.
        let n = BROADCAST_BUFFER as u64 + 100;
        for seq in 1..=n {
            feed.push(item(seq));
        }
        let (_alerts_tx, alerts) = broadcast::channel(1);
        let got: Vec<Live> = live(
            rx,
            alerts,
            feed.epoch.subscribe(),
            Filter::default(),
            None,
            client,
        )
        .collect()
        .await;
        assert!(
            matches!(got.as_slice(), [Live::Lagged(100)]),
            "{} items",
            got.len()
        );
        assert_eq!(metrics.console_lagged.get(), 100);
        assert_eq!(metrics.console_clients.get(), 0, "the stream ended");
        // Reconnecting from the last event it saw, it gets the rest.
        let (backlog, gap, _) = feed.subscribe(Some(0)).expect("known");
        assert_eq!((backlog.len() as u64, gap), (n, false));
    }

    #[test]
    fn a_reconnecting_browser_gets_exactly_what_it_missed() {
        let feed = Feed::new(3);
        for seq in [1, 2, 3, 4, 4, 3] {
            feed.push(item(seq));
        }
        let seqs = |after| -> (Vec<u64>, bool) {
            let (backlog, gap, _) = feed.subscribe(after).expect("known position");
            (backlog.iter().map(|i| i.seq).collect(), gap)
        };
        assert_eq!(seqs(Some(2)), (vec![3, 4], false));
        assert_eq!(seqs(Some(4)), (vec![], false));
        // Event 1 fell out of the ring: the browser is told.
        assert_eq!(seqs(Some(0)), (vec![2, 3, 4], true));
        assert_eq!(seqs(None), (vec![2, 3, 4], false));
        let (_, _, mut rx) = feed.subscribe(Some(4)).expect("known");
        feed.push(item(5));
        assert_eq!(rx.try_recv().map(|i| i.seq).ok(), Some(5));
        // A position beyond the newest event: the stream was recreated.
        assert!(feed.subscribe(Some(9)).is_none());
        feed.reset();
        assert!(feed.subscribe(Some(5)).is_none());
        assert_eq!(seqs(None), (vec![], false));
    }
}
