//! Invariants that must hold for any input, checked by the cargo-fuzz
//! targets (`fuzz/`) and by the seeded smoke run of the test suite
//! (`tests/it/fuzz_smoke.rs`), so both test the same things. Each function
//! panics, naming the input, when an invariant does not hold; nothing here
//! runs in the daemon.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::{
    Event, Input, InputError, InputKind, MAX_AGENT_ID_CHARS, MAX_CONVERSATION_ID_CHARS,
    MAX_TENANT_CHARS, MAX_TEXT_BYTES, decode,
};
use zhijian::matcher::Scanner;
use zhijian::normalize::{Normalized, normalize};

/// Decodes `bytes` as [`decode`] does and checks the result: an accepted
/// event came from a JSON object and has fields within their limits; a
/// rejection has one of the documented codes and a message.
pub fn check_decode(bytes: &[u8]) -> Option<Input<'_>> {
    match decode(bytes) {
        Ok(input) => {
            let first = bytes
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
            assert_eq!(
                first,
                Some(&b'{'),
                "accepted a non-object: {:?}",
                String::from_utf8_lossy(bytes)
            );
            let id = &input.conversation_id;
            assert!(
                !id.is_empty() && id.chars().count() <= MAX_CONVERSATION_ID_CHARS,
                "conversation_id {id:?}"
            );
            assert!(
                !input.tenant.is_empty()
                    && input.tenant.chars().count() <= MAX_TENANT_CHARS
                    && !input
                        .tenant
                        .contains(zhijian::subject::token::is_subject_special),
                "tenant {:?}",
                input.tenant
            );
            if let Some(a) = &input.agent_id {
                assert!(
                    !a.is_empty() && a.chars().count() <= MAX_AGENT_ID_CHARS,
                    "agent_id {a:?}"
                );
            }
            if let InputKind::Segment(s) = &input.kind {
                assert!(
                    s.text.len() <= MAX_TEXT_BYTES,
                    "text of {} bytes",
                    s.text.len()
                );
            }
            Some(input)
        }
        Err(e) => {
            assert!(
                InputError::CODES.contains(&e.code()),
                "undocumented code {}",
                e.code()
            );
            assert!(!e.to_string().is_empty(), "empty message for {e:?}");
            None
        }
    }
}

/// Checks the normalisation of `src`: [`Normalized::fill`] and
/// [`normalize`] agree; the folded text is the concatenation of the folds
/// of `src`'s characters one by one (each at most one character); the
/// offset map takes characters of the folded text (the first and last and
/// up to 64 spread between them, so the check stays linear) back to one
/// original character, on character boundaries and in order, that folds to
/// exactly it; the clauses tile the folded text.
pub fn check_normalize(src: &str) {
    let mut n = Normalized::default();
    n.fill(src);
    assert_eq!(
        n.text,
        normalize(src),
        "fill and normalize differ on {src:?}"
    );
    let mut folded = n.text.chars();
    let mut one = [0u8; 4];
    for c in src.chars() {
        let f = normalize(c.encode_utf8(&mut one));
        let mut fc = f.chars();
        if let Some(k) = fc.next() {
            assert_eq!(
                fc.next(),
                None,
                "{c:?} folds to {f:?}, more than one character"
            );
            assert_eq!(
                folded.next(),
                Some(k),
                "{src:?}: the fold of {c:?} is not the next folded character"
            );
        }
    }
    assert_eq!(
        folded.next(),
        None,
        "{src:?}: folded text longer than its folds"
    );
    let positions: Vec<(usize, char)> = n.text.char_indices().collect();
    let step = (positions.len() / 64).max(1);
    let mut sampled: Vec<(usize, char)> = positions.iter().copied().step_by(step).collect();
    if let Some(&last) = positions.last() {
        sampled.push(last);
    }
    sampled.dedup();
    let mut last_end = 0;
    for (i, c) in sampled {
        let (s, e) = n.original_range(src, i, i + c.len_utf8());
        assert!(
            last_end <= s && s < e && e <= src.len(),
            "{src:?}: character at {i} maps to {s}..{e} after {last_end}"
        );
        assert!(
            src.is_char_boundary(s) && src.is_char_boundary(e),
            "{src:?}: {s}..{e} splits a character"
        );
        assert_eq!(
            normalize(&src[s..e]),
            c.to_string(),
            "{src:?}: {:?} at {s}..{e} does not fold to {c:?}",
            &src[s..e]
        );
        last_end = e;
    }
    if !n.text.is_empty() {
        let (s, e) = n.original_range(src, 0, n.text.len());
        assert_eq!(
            normalize(&src[s..e]),
            n.text,
            "{src:?}: whole range {s}..{e}"
        );
    }
    let mut tiled = String::new();
    let mut at = 0;
    for (start, end) in n.clauses() {
        assert!(at <= start && start < end, "{src:?}: clause {start}..{end}");
        tiled.push_str(&n.text[start..end]);
        at = end;
    }
    assert_eq!(tiled, n.text, "{src:?}: clauses do not tile the text");
}

/// An engine whose tombstones never expire, so that no event can
/// legitimately be produced twice (a conversation closed and reopened after
/// the tombstone TTL repeats its ids by design).
pub fn engine_for_checks(scanner: Arc<Scanner>) -> Engine {
    Engine::new(
        scanner,
        EngineConfig {
            tombstone_ttl_ms: u64::MAX,
            ..EngineConfig::default()
        },
    )
}

/// What [`check_scan`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanCounts {
    pub accepted: usize,
    pub rejected: usize,
    pub violations: usize,
    pub summaries: usize,
}

/// Feeds `lines` through [`check_decode`] and `engine` (clock: the largest
/// `ts_ms` so far, as `zhijian scan` does), each accepted input twice (a
/// redelivery must yield nothing), then closes what is open, and checks
/// every event: ids are unique; a violation names the input's
/// conversation and tenant; a phrase violation's span lies within its text
/// and `matched` is exactly that span; a close-time verdict has no span;
/// at most one summary per conversation.
pub fn check_scan<'a>(
    engine: &mut Engine,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> ScanCounts {
    let mut counts = ScanCounts::default();
    let mut ids: HashSet<String> = HashSet::new();
    let mut summaries: HashMap<(String, String), usize> = HashMap::new();
    let mut events = Vec::new();
    let mut now_ms = 0u64;
    for line in lines {
        let Some(input) = check_decode(line) else {
            counts.rejected += 1;
            continue;
        };
        counts.accepted += 1;
        if let Some(ts) = input.ts_ms {
            now_ms = now_ms.max(ts);
        }
        engine.handle(&input, now_ms, &mut events);
        for e in events.drain(..) {
            if let Event::Violation(v) = &e {
                assert_eq!(
                    (v.tenant.as_str(), v.conversation_id.as_str()),
                    (&*input.tenant, &*input.conversation_id),
                    "violation of another conversation: {v:?}"
                );
                if let InputKind::Segment(s) = &input.kind
                    && !v.spans.is_empty()
                {
                    check_phrase_violation(v, s.seq, &s.text);
                }
            }
            check_event(&e, &mut ids, &mut summaries, &mut counts);
        }
        // Redelivery (the daemon's at-least-once input): the same event
        // again changes nothing and yields nothing.
        engine.handle(&input, now_ms, &mut events);
        assert!(
            events.is_empty(),
            "a redelivered input produced events: {input:?} -> {events:?}"
        );
    }
    engine.close_all(zhijian::event::CloseReason::Eof, now_ms, &mut events);
    for e in events.drain(..) {
        check_event(&e, &mut ids, &mut summaries, &mut counts);
    }
    assert_eq!(engine.open_conversations(), 0, "open after close_all");
    counts
}

/// A phrase violation against the segment that produced it: its text is
/// the segment or an excerpt of it, its spans lie in the segment in order,
/// the first is `start..end`, and `matched` is that slice (capped).
fn check_phrase_violation(v: &zhijian::event::Violation, seq: u64, segment: &str) {
    let excerpt = zhijian::engine::EngineConfig::default().excerpt_chars;
    let chars: Vec<char> = segment.chars().collect();
    assert_eq!(v.seq, seq, "{v:?}");
    assert_eq!(v.text_chars, chars.len(), "{v:?}");
    let shown: String = chars.iter().skip(v.text_start).take(excerpt).collect();
    assert_eq!(
        v.text, shown,
        "text is not the segment from text_start: {v:?}"
    );
    let (Some(start), Some(end)) = (v.start, v.end) else {
        panic!("phrase violation without a span: {v:?}");
    };
    assert!(
        start < end && end <= chars.len(),
        "span {start}..{end} of {}: {v:?}",
        chars.len()
    );
    assert_eq!(v.spans.first(), Some(&[start, end]), "{v:?}");
    assert!(
        v.spans.len() <= zhijian::event::MAX_SPANS && v.spans.len() as u64 <= u64::from(v.count),
        "{v:?}"
    );
    assert!(
        v.spans
            .windows(2)
            .all(|w| w[0][1] <= w[1][0] && w[1][1] <= chars.len()),
        "spans out of order or overlapping: {v:?}"
    );
    let span: String = chars[start..end].iter().take(excerpt).collect();
    assert_eq!(v.matched.as_deref(), Some(span.as_str()), "{v:?}");
}

fn check_event(
    e: &Event,
    ids: &mut HashSet<String>,
    summaries: &mut HashMap<(String, String), usize>,
    counts: &mut ScanCounts,
) {
    assert!(ids.insert(e.id().to_string()), "duplicate event id: {e:?}");
    match e {
        Event::Violation(v) => {
            counts.violations += 1;
            // A match has a span; a verdict (a missing phrase, a late
            // reply) has none and says why.
            match v.kind.as_str() {
                "phrase" | "pattern" => {
                    assert!(v.start.is_some() && v.end.is_some(), "no span: {v:?}");
                    assert!(!v.spans.is_empty(), "no spans: {v:?}");
                }
                _ => {
                    assert_eq!((v.start, v.end, &v.matched), (None, None, &None), "{v:?}");
                    assert!(v.note.is_some(), "a verdict without a note: {v:?}");
                }
            }
        }
        Event::Summary(s) => {
            counts.summaries += 1;
            let n = summaries
                .entry((s.tenant.clone(), s.conversation_id.clone()))
                .or_default();
            *n += 1;
            assert_eq!(*n, 1, "second summary: {s:?}");
            assert!(
                s.score.is_finite() && s.score <= 100.0,
                "score {}: {s:?}",
                s.score
            );
        }
    }
}
