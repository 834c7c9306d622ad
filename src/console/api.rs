//! The page, its assets and the live feed as server-sent events (`GET /api/events`).

use super::*;

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) async fn page() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

pub(super) async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

pub(super) async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    /// Resume after this stream sequence (the `Last-Event-ID` header wins).
    pub(super) after: Option<u64>,
    pub(super) tenant: Option<String>,
    pub(super) agent: Option<String>,
    pub(super) category: Option<String>,
    pub(super) severity: Option<String>,
}

/// `GET /api/events`: server-sent events, backlog first, then live.
pub(super) async fn events(
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
pub(super) enum Live {
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
pub(super) fn live(
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

pub(super) fn alert_sse(a: Arc<desk::Shared>) -> sse::Event {
    sse::Event::default().event("alert").data(a.json.as_str())
}

pub(super) fn to_sse(item: Arc<Item>) -> sse::Event {
    sse::Event::default()
        .id(item.seq.to_string())
        .data(item.json.as_str())
}

/// A connected browser, counted while its stream lives.
pub(super) struct Client {
    pub(super) metrics: Arc<Metrics>,
}

impl Client {
    pub(super) fn new(metrics: Arc<Metrics>) -> Client {
        metrics.console_clients.inc();
        Client { metrics }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.console_clients.dec();
    }
}
