//! Working an alert: acknowledge, assign, note, false alarm. The state of
//! every alert a supervisor touched lives in a NATS key-value bucket
//! (`<state_bucket>_desk`, one key per violation id), so every supervisor
//! and every daemon instance sees the same thing, with who did it and when,
//! and it survives restarts.
//!
//! ```text
//! POST /api/alerts/{id} ─▶ read entry ─▶ apply ─▶ update(expected revision) ─┐
//!                                    (conflict: another supervisor; retry)   │
//! every console: watch the bucket (last value per key, then live) ◀─────────┘
//!   ─▶ Desk: map id → state + broadcast ─▶ SSE `alert` events to every browser
//! ```
//!
//! What a supervisor types (names, notes) is untrusted: bounded, without
//! control characters, and only ever rendered by the page as text. A state
//! keeps a copy of the alert as the console showed it (masked), so a false
//! alarm can be exported with its rule, span and lexicon version long after
//! the alert left the console's history.

use crate::event::{Severity, Violation};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Appended to `[streams] state_bucket` for the desk's bucket.
pub(crate) const BUCKET_SUFFIX: &str = "_desk";
/// Longest supervisor or assignee name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 64;
/// Longest note, in characters.
pub(crate) const MAX_NOTE_CHARS: usize = 1000;
/// Notes kept on one alert.
pub(crate) const MAX_NOTES: usize = 50;
/// Actions logged on one alert (the oldest go first).
pub(crate) const MAX_LOG: usize = 100;
/// Largest action request body, in bytes.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024;
/// How long the bucket keeps an alert's state after its last change (every
/// console holds the bucket in memory: export false alarms regularly).
const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Alert changes a browser may fall behind before it is told to reconnect.
const BROADCAST_BUFFER: usize = 1024;
/// Attempts at an update that another supervisor's raced.
const ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Open,
    Acknowledged,
    FalseAlarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Acknowledge,
    Assign,
    Note,
    FalseAlarm,
    Reopen,
}

/// Who did something, and when (epoch ms, the console's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub by: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Note {
    pub by: String,
    pub at_ms: u64,
    pub text: String,
}

/// One action, as logged on the alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Logged {
    pub action: Action,
    pub by: String,
    pub at_ms: u64,
    /// The assignee of an `assign` (empty: unassigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The alert as the console showed it when it was first worked (masked
/// when the console masks), for the page and the false-alarm export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Raised {
    pub tenant: String,
    pub conversation_id: String,
    pub seq: u64,
    pub agent_id: Option<String>,
    pub rule_id: String,
    pub category: String,
    pub category_name: String,
    pub kind: String,
    pub severity: Severity,
    /// Hit spans, code points into the segment.
    pub spans: Vec<[usize; 2]>,
    pub matched: Option<String>,
    pub text: String,
    /// Where `text` starts in the segment (an excerpt of a long one).
    pub text_start: usize,
    pub note: Option<String>,
    pub lexicon_version: String,
}

impl Raised {
    pub(crate) fn of(v: &Violation) -> Raised {
        let spans = if v.spans.is_empty() {
            match (v.start, v.end) {
                (Some(s), Some(e)) => vec![[s, e]],
                _ => Vec::new(),
            }
        } else {
            v.spans.clone()
        };
        Raised {
            tenant: v.tenant.clone(),
            conversation_id: v.conversation_id.clone(),
            seq: v.seq,
            agent_id: v.agent_id.clone(),
            rule_id: v.rule_id.clone(),
            category: v.category.clone(),
            category_name: v.category_name.clone(),
            kind: v.kind.clone(),
            severity: v.severity,
            spans,
            matched: v.matched.clone(),
            text: v.text.clone(),
            text_start: v.text_start,
            note: v.note.clone(),
            lexicon_version: v.lexicon_version.clone(),
        }
    }
}

/// The shared state of one alert (the value under its violation id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AlertState {
    /// The violation's event id (the key).
    pub id: String,
    pub status: Status,
    pub acknowledged: Option<Mark>,
    pub false_alarm: Option<Mark>,
    pub assignee: Option<String>,
    pub assigned: Option<Mark>,
    pub notes: Vec<Note>,
    pub log: Vec<Logged>,
    pub alert: Raised,
    /// The bucket's revision of this value (set when read, not stored).
    #[serde(default)]
    pub revision: u64,
}

/// A validated action request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub action: Action,
    pub by: String,
    /// `assign`: the assignee; `None` unassigns.
    pub assignee: Option<String>,
    /// `note`: the text.
    pub note: Option<String>,
}

/// The body of `POST /api/alerts/{id}`, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequest {
    pub action: String,
    pub by: String,
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Why an action request is refused (`400 Bad Request`, the text its
/// body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// Its first 40 characters.
    #[error("unknown action {0:?} (acknowledge, assign, note, false_alarm, reopen)")]
    UnknownAction(String),
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{field}` is {chars} characters, over the limit of {limit}")]
    TooLong {
        field: &'static str,
        chars: usize,
        limit: usize,
    },
    #[error("`{0}` contains a control character")]
    ControlCharacter(&'static str),
    #[error("`assignee` goes with the assign action only")]
    AssigneeWithoutAssign,
    #[error("`note` goes with the note or false_alarm action")]
    NoteWithoutNote,
}

/// A name a person typed: trimmed, 1..=[`MAX_NAME_CHARS`] characters, no
/// control characters.
fn name(field: &'static str, raw: &str) -> Result<String, RequestError> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(RequestError::Empty(field));
    }
    let n = v.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(RequestError::TooLong {
            field,
            chars: n,
            limit: MAX_NAME_CHARS,
        });
    }
    if v.chars().any(char::is_control) {
        return Err(RequestError::ControlCharacter(field));
    }
    Ok(v.to_string())
}

impl RawRequest {
    pub(crate) fn validate(self) -> Result<Request, RequestError> {
        let action = match self.action.as_str() {
            "acknowledge" => Action::Acknowledge,
            "assign" => Action::Assign,
            "note" => Action::Note,
            "false_alarm" => Action::FalseAlarm,
            "reopen" => Action::Reopen,
            other => {
                return Err(RequestError::UnknownAction(
                    other.chars().take(40).collect::<String>(),
                ));
            }
        };
        let by = name("by", &self.by)?;
        let assignee = match (action, self.assignee.as_deref().map(str::trim)) {
            (Action::Assign, None | Some("")) => None,
            (Action::Assign, Some(a)) => Some(name("assignee", a)?),
            (_, None) => None,
            (_, Some(_)) => return Err(RequestError::AssigneeWithoutAssign),
        };
        let note = match (action, self.note.as_deref().map(str::trim)) {
            (Action::Note, None | Some("")) => return Err(RequestError::Empty("note")),
            (Action::Note, Some(t)) => {
                let n = t.chars().count();
                if n > MAX_NOTE_CHARS {
                    return Err(RequestError::TooLong {
                        field: "note",
                        chars: n,
                        limit: MAX_NOTE_CHARS,
                    });
                }
                if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(RequestError::ControlCharacter("note"));
                }
                Some(t.to_string())
            }
            // A false alarm may say why.
            (Action::FalseAlarm, Some(t)) if !t.is_empty() => {
                return RawRequest {
                    action: "note".into(),
                    by: by.clone(),
                    assignee: None,
                    note: Some(t.to_string()),
                }
                .validate()
                .map(|r| Request {
                    action,
                    by,
                    assignee: None,
                    note: r.note,
                });
            }
            (_, None | Some("")) => None,
            (_, Some(_)) => return Err(RequestError::NoteWithoutNote),
        };
        Ok(Request {
            action,
            by,
            assignee,
            note,
        })
    }
}

impl AlertState {
    pub(crate) fn new(id: &str, alert: Raised) -> AlertState {
        AlertState {
            id: id.to_string(),
            status: Status::Open,
            acknowledged: None,
            false_alarm: None,
            assignee: None,
            assigned: None,
            notes: Vec::new(),
            log: Vec::new(),
            alert,
            revision: 0,
        }
    }

    /// Applies `req` at `now_ms`. Repeating what is already so (acknowledge
    /// an acknowledged alert) changes nothing and logs nothing.
    pub(crate) fn apply(&mut self, req: &Request, now_ms: u64) -> bool {
        let mark = || Mark {
            by: req.by.clone(),
            at_ms: now_ms,
        };
        let changed = match req.action {
            Action::Acknowledge if self.status == Status::Acknowledged => false,
            Action::Acknowledge => {
                self.status = Status::Acknowledged;
                self.acknowledged = Some(mark());
                true
            }
            Action::FalseAlarm if self.status == Status::FalseAlarm && req.note.is_none() => false,
            Action::FalseAlarm => {
                self.status = Status::FalseAlarm;
                self.false_alarm = Some(mark());
                true
            }
            Action::Reopen if self.status == Status::Open => false,
            Action::Reopen => {
                self.status = Status::Open;
                self.acknowledged = None;
                self.false_alarm = None;
                true
            }
            Action::Assign if self.assignee == req.assignee => false,
            Action::Assign => {
                self.assignee = req.assignee.clone();
                self.assigned = Some(mark());
                true
            }
            Action::Note => true,
        };
        if !changed {
            return false;
        }
        if let Some(text) = &req.note {
            if self.notes.len() == MAX_NOTES {
                self.notes.remove(0);
            }
            self.notes.push(Note {
                by: req.by.clone(),
                at_ms: now_ms,
                text: text.clone(),
            });
        }
        if self.log.len() == MAX_LOG {
            self.log.remove(0);
        }
        self.log.push(Logged {
            action: req.action,
            by: req.by.clone(),
            at_ms: now_ms,
            value: match req.action {
                Action::Assign => Some(req.assignee.clone().unwrap_or_default()),
                _ => None,
            },
        });
        true
    }
}

/// One state as the console holds and sends it.
pub(crate) struct Shared {
    pub state: AlertState,
    /// The state as JSON, serialized once for every browser.
    pub json: String,
}

impl Shared {
    /// When it last changed (epoch ms).
    pub(crate) fn changed_ms(&self) -> u64 {
        self.state.log.last().map_or(0, |l| l.at_ms)
    }
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActError {
    /// The bucket could not be reached or created.
    #[error("the key-value bucket {bucket:?} is not available (see the daemon's log)")]
    Unavailable { bucket: String },
    /// The alert is not in the console's history and has no state yet.
    #[error("no such alert in the console's history")]
    UnknownAlert,
    /// Other supervisors kept changing it.
    #[error("other supervisors kept changing this alert; retry")]
    Conflict,
    /// The alert's value in the bucket is not an alert state.
    #[error("stored state unreadable: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// A state that does not serialize (a bug, not bad input).
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// Reading or writing the bucket.
    #[error("{0}")]
    Store(#[source] async_nats::Error),
}

/// Every alert state, mirrored from the bucket.
pub(crate) struct Desk {
    kv: Option<kv::Store>,
    bucket: String,
    states: Mutex<HashMap<String, Arc<Shared>>>,
    live: broadcast::Sender<Arc<Shared>>,
}

impl Desk {
    /// Opens (creating it if missing) the bucket; without it the desk is
    /// read-only and says why.
    pub(crate) async fn open(js: &jetstream::Context, bucket: String) -> Desk {
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => Some(kv),
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description:
                        "zhijian console: alerts acknowledged, assigned, noted, marked false alarms"
                            .into(),
                    history: 1,
                    max_age: MAX_AGE,
                    max_value_size: 64 * 1024,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => Some(kv),
                Err(e) => {
                    tracing::error!(bucket, error = %e, "console: cannot open or create the desk's key-value bucket; alerts cannot be worked");
                    None
                }
            },
        };
        Desk {
            kv,
            bucket,
            states: Mutex::new(HashMap::new()),
            live: broadcast::channel(BROADCAST_BUFFER).0,
        }
    }

    /// Takes a state read from the bucket, unless a newer one is known.
    fn learn(&self, mut state: AlertState, revision: u64) {
        state.revision = revision;
        let Ok(json) = serde_json::to_string(&state) else {
            return;
        };
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        if states
            .get(&state.id)
            .is_some_and(|s| s.state.revision >= revision)
        {
            return;
        }
        let shared = Arc::new(Shared { state, json });
        states.insert(shared.state.id.clone(), Arc::clone(&shared));
        // Under the lock: a browser takes its snapshot and its receiver
        // under the same lock, so it sees every change once.
        let _ = self.live.send(shared);
    }

    /// Every state known, and a receiver of the changes that follow.
    pub(crate) fn subscribe(&self) -> (Vec<Arc<Shared>>, broadcast::Receiver<Arc<Shared>>) {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        (states.values().cloned().collect(), self.live.subscribe())
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Shared>> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.get(id).cloned()
    }

    /// The status of an alert (open when no one worked it).
    pub(crate) fn status(&self, id: &str) -> Status {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.get(id).map_or(Status::Open, |s| s.state.status)
    }

    /// The false alarms, oldest mark first.
    pub(crate) fn false_alarms(&self) -> Vec<Arc<Shared>> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Arc<Shared>> = states
            .values()
            .filter(|s| s.state.status == Status::FalseAlarm)
            .cloned()
            .collect();
        sort_marked(&mut out);
        out
    }

    /// Follows the bucket (every key's last value, then changes) until
    /// stopped, re-watching after an error.
    pub(crate) async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(kv) = self.kv.clone() else {
            return;
        };
        loop {
            let watched = tokio::select! {
                r = self.follow_once(&kv) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Err(e) = watched {
                tracing::warn!(bucket = %self.bucket, error = %e, "console: watching the desk's bucket failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn follow_once(&self, kv: &kv::Store) -> Result<(), async_nats::Error> {
        let mut entries = kv.watch_with_history(">").await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.operation != kv::Operation::Put {
                continue;
            }
            match serde_json::from_slice::<AlertState>(&entry.value) {
                Ok(state) if state.id == entry.key => self.learn(state, entry.revision),
                Ok(_) | Err(_) => {
                    tracing::warn!(bucket = %self.bucket, key = %entry.key, "console: not an alert state; skipped");
                }
            }
        }
        Err("the watch ended".into())
    }

    /// Applies `req` to alert `id`: from its state in the bucket, or, the
    /// first time, from `raised` (the violation as the console shows it).
    /// Compare-and-set on the bucket's revision: of two supervisors acting
    /// at once, both actions land, one after the other.
    pub(crate) async fn act(
        &self,
        id: &str,
        req: &Request,
        raised: Option<Raised>,
        now_ms: u64,
    ) -> Result<Arc<Shared>, ActError> {
        let Some(kv) = &self.kv else {
            return Err(ActError::Unavailable {
                bucket: self.bucket.clone(),
            });
        };
        for _ in 0..ATTEMPTS {
            let entry = kv.entry(id).await.map_err(|e| ActError::Store(e.into()))?;
            let (mut state, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<AlertState>(&e.value).map_err(ActError::Unreadable)?,
                    Some(e.revision),
                ),
                _ => match &raised {
                    Some(r) => (AlertState::new(id, r.clone()), None),
                    None => return Err(ActError::UnknownAlert),
                },
            };
            if !state.apply(req, now_ms) {
                if let Some(rev) = revision {
                    self.learn(state, rev);
                }
                return self.get(id).ok_or(ActError::UnknownAlert);
            }
            let body = serde_json::to_vec(&state).map_err(ActError::Encode)?.into();
            let stored = match revision {
                Some(rev) => kv.update(id, body, rev).await.map_err(|e| {
                    matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                        .then_some(())
                        .ok_or_else(|| async_nats::Error::from(e))
                }),
                None => kv.create(id, body).await.map_err(|e| {
                    matches!(e.kind(), kv::CreateErrorKind::AlreadyExists)
                        .then_some(())
                        .ok_or_else(|| async_nats::Error::from(e))
                }),
            };
            match stored {
                Ok(rev) => {
                    self.learn(state, rev);
                    return self.get(id).ok_or(ActError::UnknownAlert);
                }
                // Another supervisor got there first: read again.
                Err(Ok(())) => continue,
                Err(Err(e)) => return Err(ActError::Store(e)),
            }
        }
        Err(ActError::Conflict)
    }
}

fn sort_marked(states: &mut [Arc<Shared>]) {
    states.sort_by_key(|s| {
        (
            s.state.false_alarm.as_ref().map_or(0, |m| m.at_ms),
            s.state.id.clone(),
        )
    });
}

/// Why the false alarms could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("key-value bucket {bucket:?}: {source} (the console creates it on its first start)")]
    Bucket {
        bucket: String,
        source: jetstream::context::KeyValueError,
    },
    /// Reading the bucket after it was found.
    #[error("{0}")]
    Read(#[source] async_nats::Error),
}

/// The false alarms in the bucket, read directly (`zhijian false-alarms`,
/// for a QA lead without the console), oldest mark first.
pub(crate) async fn read_false_alarms(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Vec<Arc<Shared>>, ReadError> {
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|source| ReadError::Bucket {
            bucket: bucket.to_string(),
            source,
        })?;
    let mut keys = kv.keys().await.map_err(|e| ReadError::Read(e.into()))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ReadError::Read(e.into()))?;
        let Some(entry) = kv
            .entry(key.as_str())
            .await
            .map_err(|e| ReadError::Read(e.into()))?
        else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        match serde_json::from_slice::<AlertState>(&entry.value) {
            Ok(mut state) if state.status == Status::FalseAlarm => {
                state.revision = entry.revision;
                let json = serde_json::to_string(&state).map_err(|e| ReadError::Read(e.into()))?;
                out.push(Arc::new(Shared { state, json }));
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("zhijian: key {key:?} of {bucket:?} is not an alert state ({e}); skipped")
            }
        }
    }
    sort_marked(&mut out);
    Ok(out)
}

/// The false alarms as CSV (RFC 4180; a cell a spreadsheet would take for
/// a formula is prefixed with `'`).
pub(crate) fn false_alarms_csv(states: &[Arc<Shared>]) -> String {
    // A UTF-8 byte order mark first: Excel on a Chinese Windows reads a
    // CSV without one as GBK and shows the Chinese as mojibake.
    let mut out = String::from(
        "\u{FEFF}alert_id,tenant,conversation_id,seq,agent_id,rule_id,category,category_name,severity,lexicon_version,spans,matched,text,marked_by,marked_at_ms,notes\n",
    );
    for s in states {
        let st = &s.state;
        let a = &st.alert;
        let (by, at) = st
            .false_alarm
            .as_ref()
            .map_or((String::new(), String::new()), |m| {
                (m.by.clone(), m.at_ms.to_string())
            });
        let spans = a
            .spans
            .iter()
            .map(|[s, e]| format!("{s}-{e}"))
            .collect::<Vec<_>>()
            .join(" ");
        let notes = st
            .notes
            .iter()
            .map(|n| format!("{}: {}", n.by, n.text))
            .collect::<Vec<_>>()
            .join(" | ");
        let cells = [
            st.id.as_str(),
            &a.tenant,
            &a.conversation_id,
            &a.seq.to_string(),
            a.agent_id.as_deref().unwrap_or(""),
            &a.rule_id,
            &a.category,
            &a.category_name,
            a.severity.as_str(),
            &a.lexicon_version,
            &spans,
            a.matched.as_deref().unwrap_or(""),
            &a.text,
            &by,
            &at,
            &notes,
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// The false alarms as JSON lines (each an [`AlertState`]).
pub(crate) fn false_alarms_jsonl(states: &[Arc<Shared>]) -> String {
    let mut out = String::new();
    for s in states {
        out.push_str(&s.json);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
