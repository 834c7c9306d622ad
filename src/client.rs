//! `zhijian publish` and `zhijian tail`: the daemon from a terminal.

use crate::config::Config;
use crate::event::{Event, Severity, decode_str};
use crate::filter::Filter;
use crate::nats_conn::{self, ConnectError};
use crate::subject;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::context::{GetStreamError, PublishError};
use async_nats::jetstream::stream::ConsumerError;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why `publish`, `tail` or a transcript read stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("publish failed: {0}")]
    Publish(#[source] PublishError),
    #[error("publish not acknowledged: {0}")]
    NotAcknowledged(#[source] PublishError),
    #[error("stream {name:?}: {source}")]
    Stream {
        name: String,
        source: GetStreamError,
    },
    #[error("output stream {name:?}: {source} (the daemon creates it on its first start)")]
    OutputStream {
        name: String,
        source: GetStreamError,
    },
    #[error("start time: {0}")]
    StartTime(#[source] time::error::ComponentRange),
    #[error("ordered consumer: {0}")]
    Consumer(#[source] ConsumerError),
    /// Reading from the server after the start.
    #[error("{0}")]
    Nats(#[source] async_nats::Error),
}

/// A server error met while reading.
fn nats(e: impl Into<async_nats::Error>) -> ClientError {
    ClientError::Nats(e.into())
}

async fn connect(config: &Config) -> Result<async_nats::Client, ConnectError> {
    nats_conn::connect(&config.nats).await
}

/// Publishes a JSONL file onto the input subjects through JetStream, waiting
/// for every ack. Lines that are not valid input are published too (to
/// `<prefix>.invalid.line-N`), so the daemon's dead-lettering can be seen.
pub async fn publish(config: &Config, file: &Path, rate: f64) -> Result<u64, ClientError> {
    let client = connect(config).await?;
    let js = async_nats::jetstream::new(client.clone());
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(file).map_err(|source| ClientError::Open {
            path: file.to_path_buf(),
            source,
        })?;
        Box::new(std::io::BufReader::new(f))
    };
    let streams = &config.streams;
    let started = Instant::now();
    // Ids for the stream's de-duplication: a message sent again after a
    // lost ack (a server failing over) is stored once. Unique per run, so
    // publishing a file twice still publishes it twice.
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut in_flight = InFlight::default();
    let mut sent = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ClientError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let subject = match decode_str(&line) {
            Ok(input) => subject::input(streams, &input.tenant, &input.conversation_id),
            Err(_) => subject::input_invalid_line(streams, i + 1),
        };
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        // One line of a conversation in flight at a time: a line lost in a
        // server failure is sent again before the conversation's next line
        // is sent, so the stream stores each conversation in file order.
        // Lines of other conversations go on meanwhile (a conversation's
        // next lines wait for it), up to a bound on what is held.
        while in_flight.held() >= MAX_HELD {
            in_flight.settle_oldest(&js).await?;
        }
        in_flight
            .offer(
                &js,
                Outgoing {
                    subject,
                    id: format!("{run}-{i}"),
                    payload: line.into_bytes().into(),
                },
            )
            .await?;
        sent += 1;
    }
    while in_flight.held() > 0 {
        in_flight.settle_oldest(&js).await?;
    }
    client.flush().await.map_err(nats)?;
    Ok(sent)
}

/// A message being published.
struct Outgoing {
    subject: String,
    id: String,
    payload: bytes::Bytes,
}

impl Outgoing {
    /// Publishes it, with its id as `Nats-Msg-Id`; the ack is the future's.
    async fn publish(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<PublishAckFuture, PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.id.as_str());
        js.publish_with_headers(self.subject.clone(), headers, self.payload.clone())
            .await
    }
}

/// How long a message is sent again while its ack fails (a JetStream
/// leader election takes a few seconds).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);

/// Lines `zhijian publish` holds at most: sent and not acknowledged, or
/// waiting for their conversation's line in flight.
const MAX_HELD: usize = 1024;

/// Messages sent and not yet acknowledged, oldest first, the subjects
/// (conversations) they are on, and per subject the lines that wait for it.
#[derive(Default)]
struct InFlight {
    queue: VecDeque<(Outgoing, PublishAckFuture)>,
    subjects: std::collections::HashSet<String>,
    waiting: std::collections::HashMap<String, VecDeque<Outgoing>>,
    waiting_len: usize,
}

impl InFlight {
    fn held(&self) -> usize {
        self.queue.len() + self.waiting_len
    }

    /// Sends `out`, or keeps it until its conversation's line in flight is
    /// stored.
    async fn offer(
        &mut self,
        js: &async_nats::jetstream::Context,
        out: Outgoing,
    ) -> Result<(), ClientError> {
        if self.subjects.contains(&out.subject) {
            self.waiting
                .entry(out.subject.clone())
                .or_default()
                .push_back(out);
            self.waiting_len += 1;
            return Ok(());
        }
        let ack = out.publish(js).await.map_err(ClientError::Publish)?;
        self.subjects.insert(out.subject.clone());
        self.queue.push_back((out, ack));
        Ok(())
    }

    /// Waits for the oldest message's ack. When it fails (a server failing
    /// over, a reconnect), every message in flight is sent again at once
    /// (same ids: the stream stores each once), the oldest first: their
    /// acks were as likely lost, and waiting out one ack timeout each, in
    /// turn, would slow publishing to a trickle. Until it is stored or the
    /// patience is out.
    async fn settle_oldest(
        &mut self,
        js: &async_nats::jetstream::Context,
    ) -> Result<(), ClientError> {
        let Some((out, ack)) = self.queue.pop_front() else {
            return Ok(());
        };
        let mut result = ack.await.map(|_| ());
        let mut delay = Duration::from_millis(100);
        let since = Instant::now();
        while let Err(e) = result {
            if since.elapsed() > PUBLISH_PATIENCE {
                return Err(ClientError::NotAcknowledged(e));
            }
            tracing::warn!(
                error = %e,
                in_flight = self.queue.len() + 1,
                "publish not acknowledged; sending every message in flight again"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            let again = out.publish(js).await;
            for (o, a) in self.queue.iter_mut() {
                // Not sent now (still disconnected): its old ack fails in
                // turn and it is sent again then.
                if let Ok(fresh) = o.publish(js).await {
                    *a = fresh;
                }
            }
            result = match again {
                Ok(ack) => ack.await.map(|_| ()),
                Err(e) => Err(e),
            };
        }
        self.subjects.remove(&out.subject);
        let next = match self.waiting.get_mut(&out.subject) {
            Some(lines) => {
                let next = lines.pop_front();
                if lines.is_empty() {
                    self.waiting.remove(&out.subject);
                }
                next
            }
            None => None,
        };
        if let Some(next) = next {
            self.waiting_len -= 1;
            self.offer(js, next).await?;
        }
        Ok(())
    }
}

/// How `zhijian tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// The events' JSON, one per line, for scripts.
    Json,
    /// One readable line per event, the matched words in 【】.
    Plain,
    /// As `Plain`, coloured by severity (ANSI), the matched words bold.
    Colour,
}

/// The input events stored in the transcripts stream from `since_ms`
/// (epoch milliseconds) on, in stream order, as JSONL lines: read with an
/// ephemeral ordered consumer of its own (never the daemon's), up to what
/// the stream held when the read began.
pub(crate) async fn read_transcripts(
    config: &Config,
    since_ms: u64,
) -> Result<Vec<String>, ClientError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use futures_util::StreamExt;
    let client = connect(config).await?;
    let js = async_nats::jetstream::new(client);
    let s = &config.streams;
    let stream = js
        .get_stream(&s.input_stream)
        .await
        .map_err(|source| ClientError::Stream {
            name: s.input_stream.clone(),
            source,
        })?;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(ClientError::StartTime)?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject::inputs(s),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(ClientError::Consumer)?;
    let pending = consumer.info().await.map_err(nats)?.num_pending;
    let mut lines = Vec::new();
    if pending == 0 {
        return Ok(lines);
    }
    // Up to what the stream held now: the daemon's inputs keep coming.
    let mut stream = stream;
    let last = stream.info().await.map_err(nats)?.state.last_sequence;
    let mut messages = consumer.messages().await.map_err(nats)?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(nats)?;
        let info = m.info().map_err(nats)?;
        let (seq, left) = (info.stream_sequence, info.pending);
        if seq > last {
            break;
        }
        lines.push(String::from_utf8_lossy(&m.payload).into_owned());
        if left == 0 || seq >= last {
            break;
        }
    }
    Ok(lines)
}

/// Prints violations and summaries as they are stored, those `filter` lets
/// through. One ordered consumer of its own
/// on the output stream, which holds violations and summaries in the order
/// the daemon stored them: a conversation's summary prints after its
/// violations (two subscriptions, one per subject, raced).
pub(crate) async fn tail(
    config: &Config,
    filter: &Filter,
    style: Style,
) -> Result<(), ClientError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let client = connect(config).await?;
    let js = async_nats::jetstream::new(client);
    let s = &config.streams;
    let stream =
        js.get_stream(&s.output_stream)
            .await
            .map_err(|source| ClientError::OutputStream {
                name: s.output_stream.clone(),
                source,
            })?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(ClientError::Consumer)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    eprintln!(
        "zhijian tail: listening on {} (Ctrl-C to stop)",
        subject::outputs(s).join(" and ")
    );
    let stdout = std::io::stdout();
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(nats)?;
        let text = String::from_utf8_lossy(&msg.payload);
        let line = match serde_json::from_str::<Event>(&text) {
            Ok(e) if !filter.matches(&e) => continue,
            Ok(e) if style != Style::Json => render(&e, style == Style::Colour),
            // Not an event: shown, never dropped silently.
            Err(e) if style != Style::Json => {
                format!("? {} ({e}): {}", msg.subject, printable(&text))
            }
            _ => text.into_owned(),
        };
        if writeln!(stdout.lock(), "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

const RESET: &str = "\x1b[0m";

fn severity_colour(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "\x1b[1;97;41m",
        Severity::High => "\x1b[1;31m",
        Severity::Medium => "\x1b[33m",
        Severity::Low => "\x1b[36m",
    }
}

/// Control characters of untrusted text shown as `\u{..}` escapes: a
/// transcript must not move the cursor, retitle the window or reach the
/// clipboard of a supervisor's terminal (ESC and OSC sequences).
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// One readable line per event; the matched words in 【】 (and bold, with
/// colour), then a verdict's note and the rules the violation stands for
/// (`also`), each after ` | `. Control characters in the text are escaped.
pub fn render(e: &Event, colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    };
    match e {
        Event::Violation(v) => {
            let text = match (v.start, v.end) {
                (Some(s), Some(en)) => {
                    // Offsets are into the segment; `text` may be an
                    // excerpt of it starting at `text_start`.
                    let chars: Vec<char> = v.text.chars().collect();
                    let en = en.saturating_sub(v.text_start).min(chars.len());
                    let s = s.saturating_sub(v.text_start).min(en);
                    let matched: String = chars[s..en].iter().collect();
                    format!(
                        "{}{}{}",
                        printable(&chars[..s].iter().collect::<String>()),
                        paint("\x1b[1;4m", &format!("【{}】", printable(&matched))),
                        printable(&chars[en..].iter().collect::<String>())
                    )
                }
                _ => printable(&v.text).into_owned(),
            };
            let head = format!(
                "VIOLATION {:<8} {:<8} {:<16} {:<10} seq={:<3} {:<16} {:<24}",
                v.severity.as_str(),
                v.tenant,
                v.conversation_id,
                v.agent_id.as_deref().unwrap_or("-"),
                v.seq,
                category_label(v),
                v.rule_id,
            );
            // A verdict (a required phrase missing, a reply too late) has
            // no matched words: its note says why (in place of the text
            // when there is none); `also` names the rules this violation
            // stands for.
            let note = v.note.as_deref().filter(|n| !n.is_empty());
            let mut parts = Vec::new();
            if note.is_none() || !v.text.is_empty() {
                parts.push(text);
            }
            if let Some(note) = note {
                parts.push(paint("\x1b[3m", &format!("note: {}", printable(note))));
            }
            if !v.also.is_empty() {
                let also: Vec<String> = v
                    .also
                    .iter()
                    .map(|a| format!("{} ({})", printable(&a.rule_id), printable(&a.category)))
                    .collect();
                parts.push(paint("\x1b[2m", &format!("also: {}", also.join(", "))));
            }
            format!(
                "{} | {}",
                paint(severity_colour(v.severity), &head),
                parts.join(" | ")
            )
        }
        Event::Summary(s) => paint(
            "\x1b[32m",
            &format!(
                "SUMMARY   {:<8} {:<16} {:<10} score={:<5} reason={} greeted={} closed={} {}",
                s.tenant,
                s.conversation_id,
                s.agent_id.as_deref().unwrap_or("-"),
                s.score,
                s.reason.as_str(),
                s.greeted.map_or("-".to_string(), |g| g.to_string()),
                s.closed.map_or("-".to_string(), |g| g.to_string()),
                summary_counts(&s.counts)
            ),
        ),
    }
}

/// The category as people read it: its display name (v1.2 events), or
/// its id.
fn category_label(v: &crate::event::Violation) -> &str {
    if v.category_name.is_empty() {
        &v.category
    } else {
        &v.category_name
    }
}

/// `forbidden=1 escalation=2`: the categories that occurred.
fn summary_counts(c: &crate::event::Counts) -> String {
    let parts: Vec<String> = c
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| format!("{id}={n}"))
        .collect();
    if parts.is_empty() {
        "no violations".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_control_sequences_in_transcripts_are_escaped() {
        let v: Event = serde_json::from_value(serde_json::json!({
            "type": "violation", "id": "x", "conversation_id": "c", "tenant": "t",
            "channel": null, "agent_id": "a", "seq": 1, "rule_id": "r",
            "category": "forbidden", "severity": "high", "deduct": 1.0,
            "matched": "急什么", "start": 0, "end": 3,
            "text": "急什么\u{1b}]52;c;cGF5bG9hZA==\u{7}\u{1b}[2J", "lexicon_version": "v", "ts_ms": 0
        }))
        .expect("a violation");
        for colour in [false, true] {
            let line = render(&v, colour);
            let text = line.split(" | ").nth(1).expect("text part");
            assert!(
                !text.contains("\u{1b}]") && !text.contains("\u{7}"),
                "{line:?}"
            );
            assert!(
                text.contains("\\u{1b}]52;c;") && text.contains("急什么"),
                "{line:?}"
            );
        }
    }

    fn violation(extra: serde_json::Value) -> Event {
        let mut v = serde_json::json!({
            "type": "violation", "id": "x", "conversation_id": "c", "tenant": "t",
            "channel": "call", "agent_id": "a", "seq": 1, "rule_id": "r",
            "category": "forbidden", "severity": "high", "deduct": 1.0,
            "matched": null, "start": null, "end": null,
            "text": "", "lexicon_version": "v", "ts_ms": 0
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        serde_json::from_value(v).expect("a violation")
    }

    #[test]
    fn verdicts_show_their_note_and_folded_rules_are_named() {
        // A verdict without text: the note takes the text's place.
        let verdict = violation(serde_json::json!({
            "rule_id": "greeting.required", "category": "missing_greeting",
            "category_name": "缺少开头语", "kind": "required", "severity": "medium",
            "note": "none of 您好, 你好 in the first 2 segment(s)"
        }));
        let line = render(&verdict, false);
        let parts: Vec<&str> = line.split(" | ").collect();
        assert_eq!(
            parts[1..],
            ["note: none of 您好, 你好 in the first 2 segment(s)"],
            "{line}"
        );
        assert!(
            parts[0].contains(" 缺少开头语 ")
                && parts[0].trim_end().ends_with(" greeting.required"),
            "{line}"
        );
        // A verdict about a segment: its text, then the note (control
        // characters escaped there too).
        let late = violation(serde_json::json!({
            "category": "slow_reply", "category_name": "响应超时", "kind": "timing",
            "text": "在的", "note": "first reply after 95 s\u{1b}[2J"
        }));
        assert!(
            render(&late, false).ends_with("| 在的 | note: first reply after 95 s\\u{1b}[2J"),
            "{}",
            render(&late, false)
        );
        let coloured = render(&late, true);
        assert!(
            coloured.ends_with("| 在的 | \x1b[3mnote: first reply after 95 s\\u{1b}[2J\x1b[0m"),
            "{coloured:?}"
        );
        // A match that stands for other rules of the same span.
        let folded = violation(serde_json::json!({
            "rule_id": "escalation.complaint", "category": "escalation",
            "category_name": "客户投诉升级", "severity": "critical",
            "matched": "投诉", "start": 2, "end": 4, "text": "我要投诉你",
            "also": [{"rule_id": "forbidden.core", "category": "forbidden"},
                     {"rule_id": "filler.basic", "category": "filler"}]
        }));
        let plain = render(&folded, false);
        assert!(plain.starts_with("VIOLATION critical"), "{plain}");
        assert!(
            plain.contains(" 客户投诉升级 ")
                && plain.ends_with(
                    "| 我要【投诉】你 | also: forbidden.core (forbidden), filler.basic (filler)"
                ),
            "{plain}"
        );
        let coloured = render(&folded, true);
        assert!(
            coloured.starts_with("\x1b[1;97;41mVIOLATION critical")
                && coloured.ends_with(
                    " | \x1b[2malso: forbidden.core (forbidden), filler.basic (filler)\x1b[0m"
                ),
            "{coloured:?}"
        );
        // Neither: the line is as before (text last), and a v1 event
        // without category_name shows its id.
        let plain_match = violation(serde_json::json!({
            "matched": "急什么", "start": 0, "end": 3, "text": "急什么"
        }));
        let line = render(&plain_match, false);
        assert!(line.ends_with("| 【急什么】"), "{line}");
        assert!(line.contains(" forbidden "), "{line}");
        assert!(!line.contains("note:") && !line.contains("also:"), "{line}");
    }

    #[test]
    fn the_match_is_marked_in_an_excerpt_of_a_long_segment() {
        // Offsets are the segment's; the text starts at text_start.
        let excerpt = violation(serde_json::json!({
            "matched": "急什么", "start": 400, "end": 403, "text_start": 336,
            "text": format!("{}急什么，我在查", "好".repeat(64))
        }));
        let line = render(&excerpt, false);
        assert!(line.ends_with("好【急什么】，我在查"), "{line}");
    }
}
