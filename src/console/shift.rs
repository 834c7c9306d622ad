//! An agent's shift, whatever the feed's history holds: every alert and
//! closed conversation of the last [`KEEP`], counted per tenant, agent and
//! hour, read from the output stream by a consumer of its own (at most
//! [`MAX_REPLAY`] events back at start). A few counters per agent-hour:
//! a contact centre's day fits in kilobytes.

use crate::event::{Event, Severity};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How far back the counts reach (the longest shift asked for is 24 h).
pub(crate) const KEEP: Duration = Duration::from_secs(25 * 3600);

/// Events read back at start, at most.
pub(crate) const MAX_REPLAY: u64 = 5_000_000;

const HOUR_MS: u64 = 3_600_000;

/// One agent's hour.
#[derive(Debug, Default, Clone, Copy)]
struct Hour {
    by_severity: [u64; 4],
    closed: u64,
    score_sum: f64,
}

/// What an agent did since a time.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Totals {
    pub alerts: u64,
    pub by_severity: BTreeMap<&'static str, u64>,
    pub closed: u64,
    pub average_score: Option<f64>,
}

#[derive(Default)]
pub(crate) struct Shift {
    /// (tenant, agent) → hour (ms since the epoch / 1 h) → counts.
    hours: Mutex<HashMap<(String, String), BTreeMap<u64, Hour>>>,
    /// When the oldest event counted was stored (0: none yet).
    from_ms: AtomicU64,
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

impl Shift {
    /// Counts one output event stored at `at_ms` (a payload that is not an
    /// event is the feed's to report; it is skipped here).
    pub(crate) fn on_output(&self, payload: &[u8], at_ms: u64) {
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            return;
        };
        self.record(&event, at_ms);
    }

    pub(crate) fn record(&self, event: &Event, at_ms: u64) {
        let (tenant, agent) = match event {
            Event::Violation(v) => (&v.tenant, &v.agent_id),
            Event::Summary(s) => (&s.tenant, &s.agent_id),
        };
        let Some(agent) = agent else { return };
        let _ =
            self.from_ms
                .compare_exchange(0, at_ms.max(1), Ordering::Relaxed, Ordering::Relaxed);
        let Ok(mut hours) = self.hours.lock() else {
            return;
        };
        let agent_hours = hours.entry((tenant.clone(), agent.clone())).or_default();
        let hour = agent_hours.entry(at_ms / HOUR_MS).or_default();
        match event {
            Event::Violation(v) => hour.by_severity[severity_index(v.severity)] += 1,
            Event::Summary(s) => {
                hour.closed += 1;
                hour.score_sum += s.score;
            }
        }
        // Drop what is older than KEEP once an agent has more hours than
        // that (an agent no longer seen keeps at most 26 hours' counters).
        if agent_hours.len() > 26 {
            let oldest = (at_ms.saturating_sub(KEEP.as_millis() as u64)) / HOUR_MS;
            agent_hours.retain(|h, _| *h >= oldest);
        }
    }

    /// The agent's totals in the hours from `since_ms` on (whole hours:
    /// the hour `since_ms` falls in counts whole), all tenants or one.
    pub(crate) fn totals(&self, agent: &str, tenant: Option<&str>, since_ms: u64) -> Totals {
        let mut t = Totals::default();
        let mut counts = [0u64; 4];
        let mut score_sum = 0.0;
        if let Ok(hours) = self.hours.lock() {
            for ((tn, a), by_hour) in hours.iter() {
                if a != agent || tenant.is_some_and(|want| want != tn) {
                    continue;
                }
                for (_, h) in by_hour.range(since_ms / HOUR_MS..) {
                    for (c, n) in counts.iter_mut().zip(h.by_severity) {
                        *c += n;
                    }
                    t.closed += h.closed;
                    score_sum += h.score_sum;
                }
            }
        }
        for (s, n) in Severity::ALL.iter().zip(counts) {
            if n > 0 {
                t.by_severity.insert(s.as_str(), n);
            }
        }
        t.alerts = counts.iter().sum();
        t.average_score =
            (t.closed > 0).then(|| ((score_sum / t.closed as f64) * 100.0).round() / 100.0);
        t
    }

    /// When the oldest event counted was stored (None: nothing yet).
    pub(crate) fn counted_since_ms(&self) -> Option<u64> {
        Some(self.from_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(agent: &str, severity: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "type": "violation", "id": "0123456789abcdef0123456789abcdef",
            "conversation_id": "c", "tenant": "t", "channel": "call", "agent_id": agent,
            "seq": 1, "rule_id": "r", "category": "forbidden", "category_name": "服务忌语",
            "kind": "phrase", "severity": severity, "deduct": 1.0, "matched": "x",
            "start": 0, "end": 1, "count": 1, "spans": [[0, 1]], "text": "x",
            "text_start": 0, "text_chars": 1, "lexicon_version": "v", "ts_ms": 1
        }))
        .expect("a violation")
    }

    fn summary(agent: &str, score: f64) -> Event {
        serde_json::from_value(serde_json::json!({
            "type": "summary", "id": "0123456789abcdef0123456789abcdee",
            "conversation_id": "c", "tenant": "t", "channel": "call", "agent_id": agent,
            "reason": "end", "segments": 2, "agent_segments": 1, "counts": {},
            "greeted": true, "closed": true, "score": score, "lexicon_version": "v", "ts_ms": 2
        }))
        .expect("a summary")
    }

    #[test]
    fn an_agents_hours_add_up_from_the_asked_time() {
        let s = Shift::default();
        let h = HOUR_MS;
        s.record(&violation("a", "critical"), 10 * h + 5);
        s.record(&violation("a", "low"), 12 * h + 5);
        s.record(&violation("b", "low"), 12 * h + 6);
        s.record(&summary("a", 90.0), 12 * h + 7);
        s.record(&summary("a", 95.0), 13 * h);
        let all = s.totals("a", None, 0);
        assert_eq!(all.alerts, 2);
        assert_eq!(all.by_severity.get("critical"), Some(&1));
        assert_eq!(all.closed, 2);
        assert_eq!(all.average_score, Some(92.5));
        let later = s.totals("a", Some("t"), 11 * h);
        assert_eq!((later.alerts, later.closed), (1, 2));
        assert_eq!(s.totals("a", Some("other"), 0), Totals::default());
        assert_eq!(s.counted_since_ms(), Some(10 * h + 5));
        // Past KEEP, old hours go.
        for i in 0..30 {
            s.record(&violation("a", "low"), (40 + i) * h);
        }
        assert_eq!(s.totals("a", None, 0).by_severity.get("critical"), None);
    }
}
