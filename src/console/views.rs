//! The JSON views: a conversation, the board, an agent's shift, an alert and its actions, the false-alarm export.

use super::*;

#[derive(Serialize)]
pub(super) struct SegmentView {
    pub(super) seq: u64,
    pub(super) speaker: &'static str,
    pub(super) text: String,
    pub(super) agent_id: Option<String>,
    pub(super) ts_ms: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct ConversationView {
    pub(super) tenant: String,
    pub(super) conversation_id: String,
    pub(super) segments: Vec<SegmentView>,
    /// Whether the conversation ended (an `end` event was seen).
    pub(super) ended: bool,
    /// Not every segment could be read (more than [`MAX_SEGMENTS`], or the
    /// stream was too slow to answer): the rest is not shown.
    pub(super) truncated: bool,
    pub(super) violations: Vec<Event>,
    pub(super) summary: Option<Event>,
    /// The score (the summary's once closed, else running) and each
    /// scorecard section's deductions, capped as the engine caps them.
    pub(super) score: f64,
    pub(super) sections: Vec<board::SectionScore>,
}

/// `GET /api/conversations/{tenant}/{id}`: the final segments of one
/// conversation (from the input stream), its violations and its summary
/// (from the feed).
pub(super) async fn conversation(
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

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize)]
pub(super) struct BoardQuery {
    pub(super) tenant: Option<String>,
    pub(super) agent: Option<String>,
    /// Rows returned, the most urgent (default and at most [`BOARD_ROWS`]).
    pub(super) limit: Option<usize>,
}

/// Rows of the board sent at most: a page polls it every 2 s.
pub(super) const BOARD_ROWS: usize = 500;

#[derive(Serialize)]
pub(super) struct BoardView {
    pub(super) now_ms: u64,
    /// Conversations on the board (`rows` holds the most urgent of them).
    pub(super) total: usize,
    pub(super) rows: Vec<board::Row>,
}

/// `GET /api/board`: the live conversations, most urgent first
/// (`?tenant=a,b&agent=x`, as the feed's filters).
pub(super) async fn board_view(
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
pub(super) struct AgentQuery {
    pub(super) tenant: Option<String>,
    /// The shift: the last this many hours (default 8, at most 24).
    pub(super) hours: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct AgentAlert {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) conversation_id: String,
    pub(super) seq: u64,
    pub(super) rule_id: String,
    pub(super) category: String,
    pub(super) category_name: String,
    pub(super) severity: crate::event::Severity,
    pub(super) raised_ms: u64,
    pub(super) status: desk::Status,
}

#[derive(Serialize)]
pub(super) struct AgentView {
    pub(super) agent_id: String,
    pub(super) since_ms: u64,
    /// The shift's counts start at the hour `since_ms` falls in, or when
    /// the console's count of the output stream starts, if later.
    pub(super) counted_from_ms: Option<u64>,
    /// How far back the console's history reaches: the `recent` list
    /// starts there.
    pub(super) history_from_ms: Option<u64>,
    pub(super) alerts: u64,
    pub(super) by_severity: BTreeMap<&'static str, u64>,
    pub(super) conversations_closed: u64,
    pub(super) average_score: Option<f64>,
    /// The newest alerts first (at most 200, from the history).
    pub(super) recent: Vec<AgentAlert>,
}

/// `GET /api/agents/{agent}`: an agent's alerts and average score over the
/// shift, from the console's history of the output stream.
pub(super) async fn agent_view(
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
pub(super) fn alert_id_ok(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `GET /api/alerts/{id}`: the shared state of one alert (404 when no one
/// has worked it).
pub(super) async fn alert_view(
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
pub(super) async fn alert_action(
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
pub(super) struct ExportQuery {
    pub(super) format: Option<String>,
}

/// `GET /api/false-alarms?format=csv|jsonl`: every alert marked a false
/// alarm, with its rule, spans, (masked) text and lexicon version, for QA
/// leads tuning the lexicon.
pub(super) async fn false_alarms(
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

pub(super) async fn read_segments(
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
