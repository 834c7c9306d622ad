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
//! The console reads what the shards already published, from the stream:
//! it shares nothing with the scanning path, so a slow or stalled browser
//! cannot slow the scanner. Every SSE event carries its stream sequence as
//! `id`; a browser that reconnects (network blip, daemon restart) sends the
//! last id it saw and gets exactly what it missed, from the ring, which a
//! restarted daemon refills from the stream. A browser that falls more than
//! the broadcast buffer behind is told `lagged`, counted, and disconnected:
//! it reconnects and catches up from the ring like any other.
//!
//! Transcripts are untrusted text: the page only ever renders them with
//! `textContent`, and the Content-Security-Policy allows no inline script.

pub mod board;
pub(crate) mod desk;
pub(crate) mod mask;
pub(crate) mod shift;

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

/// Events a browser may fall behind the live feed before it is told to
/// reconnect (and catch up from the ring).
const BROADCAST_BUFFER: usize = 1024;
/// Events a new browser starts with when it asks for no position.
const INITIAL_EVENTS: usize = 500;
/// Segments returned for one conversation.
const MAX_SEGMENTS: usize = 2000;
/// Alert states changed this recently are sent to every browser that
/// (re)connects, whatever alerts it is about to get.
const WORKED_RECENTLY: Duration = Duration::from_secs(24 * 3600);

/// One published event as the console serves it.
struct Item {
    /// Its sequence number in the output stream.
    seq: u64,
    /// When it was stored in the output stream (epoch ms).
    raised_ms: u64,
    event: Event,
    /// `{"seq":…,"event":…}`, serialized once for every browser.
    json: String,
}

/// The recent events and the live broadcast.
struct Feed {
    ring: Mutex<VecDeque<Arc<Item>>>,
    history: usize,
    live: broadcast::Sender<Arc<Item>>,
    /// True once the ring holds what the stream held at start-up: before
    /// that, a reconnecting browser would get its missed events late, as
    /// live ones, and the gap would go unnoticed.
    ready: watch::Sender<bool>,
    /// Bumped when the output stream was recreated (its sequence restarted):
    /// every browser is told to start over.
    epoch: watch::Sender<u64>,
}

impl Feed {
    fn new(history: usize) -> Feed {
        Feed {
            ring: Mutex::new(VecDeque::with_capacity(history.min(65_536))),
            history,
            live: broadcast::channel(BROADCAST_BUFFER).0,
            ready: watch::channel(false).0,
            epoch: watch::channel(0).0,
        }
    }

    /// Forgets everything: the stream's sequence numbers start over.
    fn reset(&self) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.clear();
        self.epoch.send_modify(|e| *e += 1);
    }

    fn push(&self, item: Item) {
        let item = Arc::new(item);
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.back().is_some_and(|last| last.seq >= item.seq) {
            return;
        }
        if ring.len() == self.history {
            ring.pop_front();
        }
        ring.push_back(Arc::clone(&item));
        // Sent under the lock: a browser subscribing takes its backlog and
        // its receiver under the same lock, so it sees every event once.
        let _ = self.live.send(item);
    }

    /// The backlog after `after` (or the last [`INITIAL_EVENTS`]), whether
    /// events after `after` were already dropped from the ring, and a
    /// receiver of what comes next.
    ///
    /// `None` when `after` is beyond the newest event: the stream was
    /// recreated since the browser saw it, and it must start over.
    #[allow(clippy::type_complexity)]
    fn subscribe(
        &self,
        after: Option<u64>,
    ) -> Option<(Vec<Arc<Item>>, bool, broadcast::Receiver<Arc<Item>>)> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if after.is_some_and(|a| a > ring.back().map_or(0, |i| i.seq)) {
            return None;
        }
        let rx = self.live.subscribe();
        let (backlog, gap) = match after {
            Some(after) => {
                let gap = ring
                    .front()
                    .is_some_and(|first| first.seq > after.saturating_add(1));
                let from = ring.partition_point(|i| i.seq <= after);
                (ring.range(from..).cloned().collect(), gap)
            }
            None => {
                let from = ring.len().saturating_sub(INITIAL_EVENTS);
                (ring.range(from..).cloned().collect(), false)
            }
        };
        Some((backlog, gap, rx))
    }

    /// The violation `id`, if still in the ring (newest first: an alert
    /// being worked is usually recent).
    fn violation(&self, id: &str) -> Option<crate::event::Violation> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().find_map(|i| match &i.event {
            Event::Violation(v) if v.id == id => Some(v.clone()),
            _ => None,
        })
    }

    /// The events stored at or after `since_ms` that `keep` selects, and
    /// when the oldest event of the ring was stored (how far back the
    /// console can see).
    fn select(
        &self,
        since_ms: u64,
        keep: impl Fn(&Event) -> bool,
    ) -> (Vec<Arc<Item>>, Option<u64>) {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let from = ring.partition_point(|i| i.raised_ms < since_ms);
        let picked = ring
            .range(from..)
            .filter(|i| keep(&i.event))
            .cloned()
            .collect();
        (picked, ring.front().map(|i| i.raised_ms))
    }

    /// The events of one conversation still in the ring.
    fn conversation(&self, tenant: &str, id: &str) -> Vec<Arc<Item>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter()
            .filter(|i| {
                let (t, c) = match &i.event {
                    Event::Violation(v) => (&v.tenant, &v.conversation_id),
                    Event::Summary(s) => (&s.tenant, &s.conversation_id),
                };
                t == tenant && c == id
            })
            .cloned()
            .collect()
    }
}

/// The event with sensitive numbers masked in its text and its note, and
/// its `matched` words taken from the masked text (masking the words alone
/// could miss a number the text as a whole reveals).
fn masked(mut event: Event, on: bool) -> Event {
    if !on {
        return event;
    }
    let Event::Violation(v) = &mut event else {
        return event;
    };
    if let std::borrow::Cow::Owned(t) = mask::mask(&v.text) {
        if let (Some(start), Some(end)) = (v.start, v.end) {
            // Offsets are into the segment; `text` starts at text_start.
            v.matched = Some(
                t.chars()
                    .skip(start.saturating_sub(v.text_start))
                    .take(end.saturating_sub(start))
                    .collect(),
            );
        }
        v.text = t;
    }
    // A verdict's note may quote what was said.
    if let Some(note) = &v.note
        && let std::borrow::Cow::Owned(n) = mask::mask(note)
    {
        v.note = Some(n);
    }
    event
}

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
    pub fn stop(self) {
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

/// Follows the output stream into the feed, from the last `history`
/// events, resuming after the last one seen when the consumer fails.
async fn follow(
    js: jetstream::Context,
    stream: String,
    feed: Arc<Feed>,
    board: Arc<board::Board>,
    mask_digits: bool,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next: Option<u64> = None;
    loop {
        let followed = tokio::select! {
            r = follow_once(&js, &stream, &feed, &board, mask_digits, &metrics, &mut next) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = followed {
            tracing::warn!(stream = %stream, error = %e, "console: following the output stream failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn follow_once(
    js: &jetstream::Context,
    stream: &str,
    feed: &Feed,
    board: &board::Board,
    mask_digits: bool,
    metrics: &Metrics,
    next: &mut Option<u64>,
) -> Result<(), async_nats::Error> {
    let mut s = js.get_stream(stream).await?;
    let state = s.info().await?.state.clone();
    if next.is_some_and(|n| n > state.last_sequence.saturating_add(1)) {
        tracing::warn!(
            stream,
            "console: the output stream was recreated; starting over"
        );
        feed.reset();
        *next = None;
    }
    // Ready once the events the stream holds now are in the ring.
    let loaded_at = state.last_sequence;
    if next.is_some() || loaded_at == 0 {
        feed.ready.send_replace(true);
    }
    let start = next.unwrap_or_else(|| {
        state
            .last_sequence
            .saturating_sub(feed.history as u64 - 1)
            .max(state.first_sequence)
            .max(1)
    });
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            description: Some("zhijian console".into()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let info = m.info()?;
        let seq = info.stream_sequence;
        let raised_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
        *next = Some(seq + 1);
        if seq >= loaded_at {
            feed.ready.send_replace(true);
        }
        metrics.console_events.inc();
        match serde_json::from_slice::<Event>(&m.payload) {
            Ok(event) => {
                let event = masked(event, mask_digits);
                let json = serde_json::to_string(&Wire {
                    seq,
                    raised_ms,
                    event: &event,
                })?;
                board.on_event(&event, raised_ms);
                feed.push(Item {
                    seq,
                    raised_ms,
                    event,
                    json,
                });
            }
            Err(e) => {
                metrics.console_bad_events.inc();
                tracing::warn!(stream, seq, subject = %m.subject, error = %e, "console: not an output event; skipped (it stays in the stream)");
            }
        }
    }
    Err("the ordered consumer ended".into())
}

#[derive(Serialize)]
struct Wire<'a> {
    seq: u64,
    /// When the event was stored in the output stream (the alert's time).
    raised_ms: u64,
    event: &'a Event,
}

const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Bearer token or basic auth, when configured. With a token only, the
/// page itself (which holds no data) is public so it can ask for the token.
///
/// Without credentials (loopback only), a request must name a loopback host:
/// a web page the supervisor visits could otherwise rebind its own domain to
/// 127.0.0.1 and read the feed as same-origin (DNS rebinding).
async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let c = &s.config;
    if c.token.is_none() && s.basic.is_none() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "the console without credentials answers only to a loopback Host (localhost, 127.0.0.1, [::1])\n",
            )
                .into_response();
        }
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token_ok = c.token.as_ref().is_some_and(|t| {
        given
            .strip_prefix("Bearer ")
            .is_some_and(|g| constant_time_eq(g.as_bytes(), t.0.as_bytes()))
    });
    let basic_ok = s
        .basic
        .as_ref()
        .is_some_and(|b| constant_time_eq(given.as_bytes(), b.as_bytes()));
    let public = s.basic.is_none() && !req.uri().path().starts_with("/api/");
    if token_ok || basic_ok || public {
        return next.run(req).await;
    }
    let mut res = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    if s.basic.is_some() {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"zhijian console\", charset=\"UTF-8\""),
        );
    }
    res
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Every response carries the security headers, API answers and errors
/// included: they hold transcripts too.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    for (k, v) in SECURITY_HEADERS {
        res.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    res
}

/// Equal, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

fn base64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Resume after this stream sequence (the `Last-Event-ID` header wins).
    after: Option<u64>,
    tenant: Option<String>,
    agent: Option<String>,
    category: Option<String>,
    severity: Option<String>,
}

/// `GET /api/events`: server-sent events, backlog first, then live.
async fn events(
    State(s): State<AppState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, (StatusCode, String)> {
    let filter = Filter::parse(
        q.tenant.as_deref(),
        q.agent.as_deref(),
        q.category.as_deref(),
        q.severity.as_deref(),
    )
    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Until the ring is filled after a (re)start, a browser would get its
    // missed events late, as live ones: ask it to come back.
    let mut ready = s.feed.ready.subscribe();
    if tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .is_err()
    {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the console is still loading its history; retry\n".into(),
        ));
    }
    let after = last_id.or(q.after);
    let epoch = s.feed.epoch.subscribe();
    // The shared state of the alerts worked first, then their changes as
    // they come: of the alerts the browser is about to get, and of any
    // changed in the last WORKED_RECENTLY (what a browser that was away
    // may have missed on alerts it already has). Not the whole bucket.
    let (worked, alerts) = s.desk.subscribe();
    let recent = now_ms().saturating_sub(WORKED_RECENTLY.as_millis() as u64);
    let client = Client::new(Arc::clone(&s.metrics));
    let Some((backlog, gap, rx)) = s.feed.subscribe(after) else {
        // The stream was recreated after this browser's last event.
        let reset = sse::Event::default().event("reset").data("start over");
        let once: Box<dyn Stream<Item = sse::Event> + Send + Unpin> =
            Box::new(futures_util::stream::iter([reset]));
        return Ok(Sse::new(once.map(Ok)).keep_alive(KeepAlive::new()));
    };
    // Events the browser already has are never sent again, from the
    // backlog or from the live feed.
    let last = backlog.last().map(|i| i.seq).max(after);
    let head = gap.then(|| {
        sse::Event::default()
            .event("gap")
            .data("older events are no longer kept")
    });
    // Lazy: the backlog is shared events (one pointer each), turned into
    // SSE text only as the connection takes it. A browser that does not
    // read holds a few events in its socket, not a copy of the history
    // (500 such browsers took 1.3 GB when the replay was built up front).
    let replay_filter = filter.clone();
    let sent: std::collections::HashSet<&str> = backlog
        .iter()
        .filter_map(|i| match &i.event {
            Event::Violation(v) => Some(v.id.as_str()),
            Event::Summary(_) => None,
        })
        .collect();
    let worked: Vec<Arc<desk::Shared>> = worked
        .into_iter()
        .filter(|a| a.changed_ms() >= recent || sent.contains(a.state.id.as_str()))
        .collect();
    drop(sent);
    let backlog = futures_util::stream::iter(
        worked.into_iter().map(alert_sse).chain(
            head.into_iter().chain(
                backlog
                    .into_iter()
                    .filter(move |i| replay_filter.matches(&i.event))
                    .map(to_sse),
            ),
        ),
    );
    let live = live(rx, alerts, epoch, filter, last, client).map(|l| match l {
        Live::Item(item) => to_sse(item),
        Live::Alert(a) => alert_sse(a),
        Live::Lagged(n) => sse::Event::default().event("lagged").data(n.to_string()),
        Live::Reset => sse::Event::default().event("reset").data("start over"),
    });
    let stream: Box<dyn Stream<Item = sse::Event> + Send + Unpin> = Box::new(backlog.chain(live));
    Ok(Sse::new(stream.map(Ok)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// What the live part of a browser's feed yields.
enum Live {
    Item(Arc<Item>),
    /// An alert was worked (acknowledged, assigned, …) by some supervisor.
    Alert(Arc<desk::Shared>),
    /// The browser fell this many events behind: the feed ends here, the
    /// browser reconnects and catches up from the ring.
    Lagged(u64),
    /// The output stream was recreated: the browser starts over.
    Reset,
}

/// The events after `last` that pass `filter`, as they are published, until
/// the browser falls behind.
fn live(
    rx: broadcast::Receiver<Arc<Item>>,
    alerts: broadcast::Receiver<Arc<desk::Shared>>,
    epoch: watch::Receiver<u64>,
    filter: Filter,
    last: Option<u64>,
    client: Client,
) -> impl Stream<Item = Live> + Unpin {
    Box::pin(futures_util::stream::unfold(
        Some((rx, alerts, epoch, filter, last, client)),
        |state| async move {
            let (mut rx, mut alerts, mut epoch, filter, last, client) = state?;
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    a = alerts.recv() => match a {
                        Ok(a) => return Some((Live::Alert(a), Some((rx, alerts, epoch, filter, last, client)))),
                        // Behind on alert changes: reconnect for a fresh snapshot.
                        Err(broadcast::error::RecvError::Lagged(n)) => return Some((Live::Lagged(n), None)),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = epoch.changed() => return Some((Live::Reset, None)),
                };
                match received {
                    Ok(item) if last.is_some_and(|l| item.seq <= l) => continue,
                    Ok(item) if !filter.matches(&item.event) => continue,
                    Ok(item) => {
                        return Some((
                            Live::Item(item),
                            Some((rx, alerts, epoch, filter, last, client)),
                        ));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        client.metrics.console_lagged.inc_by(n);
                        return Some((Live::Lagged(n), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    ))
}

fn alert_sse(a: Arc<desk::Shared>) -> sse::Event {
    sse::Event::default().event("alert").data(a.json.as_str())
}

fn to_sse(item: Arc<Item>) -> sse::Event {
    sse::Event::default()
        .id(item.seq.to_string())
        .data(item.json.as_str())
}

/// A connected browser, counted while its stream lives.
struct Client {
    metrics: Arc<Metrics>,
}

impl Client {
    fn new(metrics: Arc<Metrics>) -> Client {
        metrics.console_clients.inc();
        Client { metrics }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.console_clients.dec();
    }
}

#[derive(Serialize)]
struct SegmentView {
    seq: u64,
    speaker: &'static str,
    text: String,
    agent_id: Option<String>,
    ts_ms: Option<u64>,
}

#[derive(Serialize)]
struct ConversationView {
    tenant: String,
    conversation_id: String,
    segments: Vec<SegmentView>,
    /// Whether the conversation ended (an `end` event was seen).
    ended: bool,
    /// Not every segment could be read (more than [`MAX_SEGMENTS`], or the
    /// stream was too slow to answer): the rest is not shown.
    truncated: bool,
    violations: Vec<Event>,
    summary: Option<Event>,
    /// The score (the summary's once closed, else running) and each
    /// scorecard section's deductions, capped as the engine caps them.
    score: f64,
    sections: Vec<board::SectionScore>,
}

/// `GET /api/conversations/{tenant}/{id}`: the final segments of one
/// conversation (from the input stream), its violations and its summary
/// (from the feed).
async fn conversation(
    State(s): State<AppState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<ConversationView>, (StatusCode, String)> {
    if !subject::token::is_token(&tenant) || !subject::token::is_literal_tail(&id) {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid tenant or conversation id\n".into(),
        ));
    }
    // Stored under their partition.
    let subject = subject::input_partitioned(&s.streams, &tenant, &id);
    let (segments, ended, truncated) =
        read_segments(&s, &tenant, &id, &subject)
            .await
            .map_err(|e| {
                tracing::warn!(subject, error = %e, "console: cannot read a conversation");
                (
                    StatusCode::BAD_GATEWAY,
                    "cannot read the conversation from the input stream (see the daemon's log)\n"
                        .into(),
                )
            })?;
    let mut violations = Vec::new();
    let mut summary = None;
    for item in s.feed.conversation(&tenant, &id) {
        match &item.event {
            Event::Violation(_) => violations.push(item.event.clone()),
            Event::Summary(_) => summary = Some(item.event.clone()),
        }
    }
    let (running, sections) = s.scorecards.get().score(
        &tenant,
        violations.iter().filter_map(|e| match e {
            Event::Violation(v) => Some((v.rule_id.as_str(), v.deduct)),
            Event::Summary(_) => None,
        }),
    );
    let score = match &summary {
        Some(Event::Summary(sm)) => sm.score,
        _ => running,
    };
    Ok(axum::Json(ConversationView {
        tenant,
        conversation_id: id,
        segments,
        ended,
        truncated,
        violations,
        summary,
        score,
        sections,
    }))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize)]
struct BoardQuery {
    tenant: Option<String>,
    agent: Option<String>,
    /// Rows returned, the most urgent (default and at most [`BOARD_ROWS`]).
    limit: Option<usize>,
}

/// Rows of the board sent at most: a page polls it every 2 s.
const BOARD_ROWS: usize = 500;

#[derive(Serialize)]
struct BoardView {
    now_ms: u64,
    /// Conversations on the board (`rows` holds the most urgent of them).
    total: usize,
    rows: Vec<board::Row>,
}

/// `GET /api/board`: the live conversations, most urgent first
/// (`?tenant=a,b&agent=x`, as the feed's filters).
async fn board_view(
    State(s): State<AppState>,
    Query(q): Query<BoardQuery>,
) -> Result<axum::Json<BoardView>, (StatusCode, String)> {
    let filter = Filter::parse(q.tenant.as_deref(), q.agent.as_deref(), None, None)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = now_ms();
    let mut rows = s.board.rows(
        now,
        &s.scorecards.get(),
        |id| s.desk.status(id) == desk::Status::Open,
        |tenant, agent| {
            (filter.tenants.is_empty() || filter.tenants.iter().any(|t| t == tenant))
                && (filter.agents.is_empty()
                    || agent.is_some_and(|a| filter.agents.iter().any(|f| f == a)))
        },
    );
    let total = rows.len();
    rows.truncate(q.limit.unwrap_or(BOARD_ROWS).min(BOARD_ROWS));
    Ok(axum::Json(BoardView {
        now_ms: now,
        total,
        rows,
    }))
}

#[derive(Deserialize)]
struct AgentQuery {
    tenant: Option<String>,
    /// The shift: the last this many hours (default 8, at most 24).
    hours: Option<u64>,
}

#[derive(Serialize)]
struct AgentAlert {
    id: String,
    tenant: String,
    conversation_id: String,
    seq: u64,
    rule_id: String,
    category: String,
    category_name: String,
    severity: crate::event::Severity,
    raised_ms: u64,
    status: desk::Status,
}

#[derive(Serialize)]
struct AgentView {
    agent_id: String,
    since_ms: u64,
    /// The shift's counts start at the hour `since_ms` falls in, or when
    /// the console's count of the output stream starts, if later.
    counted_from_ms: Option<u64>,
    /// How far back the console's history reaches: the `recent` list
    /// starts there.
    history_from_ms: Option<u64>,
    alerts: u64,
    by_severity: BTreeMap<&'static str, u64>,
    conversations_closed: u64,
    average_score: Option<f64>,
    /// The newest alerts first (at most 200, from the history).
    recent: Vec<AgentAlert>,
}

/// `GET /api/agents/{agent}`: an agent's alerts and average score over the
/// shift, from the console's history of the output stream.
async fn agent_view(
    State(s): State<AppState>,
    Path(agent): Path<String>,
    Query(q): Query<AgentQuery>,
) -> Result<axum::Json<AgentView>, (StatusCode, String)> {
    let hours = q.hours.unwrap_or(8);
    if !(1..=24).contains(&hours) {
        return Err((StatusCode::BAD_REQUEST, "hours must be 1..=24\n".into()));
    }
    let since = now_ms().saturating_sub(hours * 3600 * 1000);
    let tenant = q.tenant.filter(|t| !t.is_empty());
    let (items, history_from_ms) = s.feed.select(since, |e| {
        let (t, a) = match e {
            Event::Violation(v) => (&v.tenant, &v.agent_id),
            Event::Summary(sm) => (&sm.tenant, &sm.agent_id),
        };
        a.as_deref() == Some(agent.as_str()) && tenant.as_ref().is_none_or(|want| want == t)
    });
    let mut alerts = Vec::new();
    for item in &items {
        if let Event::Violation(v) = &item.event {
            alerts.push(AgentAlert {
                id: v.id.clone(),
                tenant: v.tenant.clone(),
                conversation_id: v.conversation_id.clone(),
                seq: v.seq,
                rule_id: v.rule_id.clone(),
                category: v.category.clone(),
                category_name: v.category_name.clone(),
                severity: v.severity,
                raised_ms: item.raised_ms,
                status: s.desk.status(&v.id),
            });
        }
    }
    alerts.reverse();
    alerts.truncate(200);
    // The counts: the whole shift, from the console's own count of the
    // output stream (not limited by the history).
    let totals = s.shift.totals(&agent, tenant.as_deref(), since);
    Ok(axum::Json(AgentView {
        agent_id: agent,
        since_ms: since,
        counted_from_ms: s.shift.counted_since_ms().map(|f| f.max(since)),
        history_from_ms,
        alerts: totals.alerts,
        by_severity: totals.by_severity,
        conversations_closed: totals.closed,
        average_score: totals.average_score,
        recent: alerts,
    }))
}

/// A violation id as events carry it: 32 lower-case hex digits (also a
/// valid key of the desk's bucket).
fn alert_id_ok(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `GET /api/alerts/{id}`: the shared state of one alert (404 when no one
/// has worked it).
async fn alert_view(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, (StatusCode, String)> {
    if !alert_id_ok(&id) {
        return Err((StatusCode::BAD_REQUEST, "invalid alert id\n".into()));
    }
    let shared = s.desk.get(&id).ok_or((
        StatusCode::NOT_FOUND,
        "no one has worked this alert\n".into(),
    ))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        shared.json.clone(),
    )
        .into_response())
}

/// `POST /api/alerts/{id}` with `{"action": "acknowledge" | "assign" |
/// "note" | "false_alarm" | "reopen", "by": "…", "assignee"?, "note"?}`.
///
/// JSON only (a cross-site form cannot send it without a preflight, which
/// the console never grants) and refused when the browser says the request
/// comes from another site: with basic auth or no credentials, the browser
/// would otherwise act for the supervisor on any page they visit.
async fn alert_action(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<desk::RawRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, (StatusCode, String)> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return Err((
            StatusCode::FORBIDDEN,
            "alert actions come from the console's own page\n".into(),
        ));
    }
    if !alert_id_ok(&id) {
        return Err((StatusCode::BAD_REQUEST, "invalid alert id\n".into()));
    }
    let axum::Json(raw) = body.map_err(|e| (e.status(), format!("{}\n", e.body_text())))?;
    let mut req = raw
        .validate()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    // A note may quote what the customer said: masked like the transcripts,
    // so the bucket and the export never hold what the page would not show.
    if s.config.mask_digits
        && let Some(note) = &mut req.note
        && let std::borrow::Cow::Owned(masked) = mask::mask(note)
    {
        *note = masked;
    }
    let raised = s.feed.violation(&id).map(|v| desk::Raised::of(&v));
    match s.desk.act(&id, &req, raised, now_ms()).await {
        Ok(shared) => {
            s.metrics.console_alert_actions.inc();
            Ok((
                [(header::CONTENT_TYPE, "application/json")],
                shared.json.clone(),
            )
                .into_response())
        }
        Err(e @ desk::ActError::UnknownAlert) => Err((StatusCode::NOT_FOUND, format!("{e}\n"))),
        Err(e @ desk::ActError::Conflict) => Err((StatusCode::CONFLICT, format!("{e}\n"))),
        Err(e @ desk::ActError::Unavailable { .. }) => {
            Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))
        }
        Err(
            e @ (desk::ActError::Unreadable(_)
            | desk::ActError::Encode(_)
            | desk::ActError::Store(_)),
        ) => {
            tracing::warn!(id, error = %e, "console: cannot store an alert action");
            Err((
                StatusCode::BAD_GATEWAY,
                "cannot store the action in NATS (see the daemon's log)\n".into(),
            ))
        }
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

/// `GET /api/false-alarms?format=csv|jsonl`: every alert marked a false
/// alarm, with its rule, spans, (masked) text and lexicon version, for QA
/// leads tuning the lexicon.
async fn false_alarms(
    State(s): State<AppState>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, (StatusCode, String)> {
    let marked = s.desk.false_alarms();
    let (body, content_type, ext) = match q.format.as_deref().unwrap_or("csv") {
        "csv" => (
            desk::false_alarms_csv(&marked),
            "text/csv; charset=utf-8",
            "csv",
        ),
        "jsonl" => (
            desk::false_alarms_jsonl(&marked),
            "application/x-ndjson; charset=utf-8",
            "jsonl",
        ),
        _ => return Err((StatusCode::BAD_REQUEST, "format is csv or jsonl\n".into())),
    };
    let disposition = format!("attachment; filename=\"zhijian-false-alarms.{ext}\"");
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

async fn read_segments(
    s: &AppState,
    tenant: &str,
    id: &str,
    subject: &str,
) -> Result<(Vec<SegmentView>, bool, bool), async_nats::Error> {
    let stream = s.js.get_stream(&s.input_stream).await?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let info = consumer.info().await?;
    let (name, pending) = (info.name.clone(), info.num_pending);
    let read = async {
        let mut by_seq = BTreeMap::new();
        let (mut ended, mut complete) = (false, pending == 0);
        if complete {
            return Ok((by_seq, ended, complete));
        }
        let mut messages = consumer.messages().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, messages.next()).await {
            let m = m?;
            let left = m.info()?.pending;
            // Only what the daemon judged as this conversation: a message on
            // its subject that names another one was dead-lettered.
            if let Ok(input) = decode(&m.payload)
                && input.tenant == tenant
                && input.conversation_id == id
            {
                match input.kind {
                    InputKind::End => ended = true,
                    InputKind::Segment(seg) if seg.is_final => {
                        let text = if s.config.mask_digits {
                            mask::mask(&seg.text).into_owned()
                        } else {
                            seg.text.into_owned()
                        };
                        by_seq.entry(seg.seq).or_insert(SegmentView {
                            seq: seg.seq,
                            speaker: seg.speaker.as_str(),
                            text,
                            agent_id: input.agent_id.map(|a| a.into_owned()),
                            ts_ms: input.ts_ms,
                        });
                    }
                    InputKind::Segment(_) => {}
                }
            }
            if left == 0 {
                complete = true;
                break;
            }
            if by_seq.len() >= MAX_SEGMENTS {
                break;
            }
        }
        Ok::<_, async_nats::Error>((by_seq, ended, complete))
    }
    .await;
    // Ordered consumers are ephemeral but linger on the server for their
    // inactivity threshold: one per request would pile up.
    let _ = stream.delete_consumer(&name).await;
    let (by_seq, ended, complete) = read?;
    Ok((by_seq.into_values().collect(), ended, !complete))
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
