//! From what the rules found to events: spans of a segment (overlaps, the
//! most severe rule standing for the others), verdicts, and the score.

use super::*;

/// Borrowed context of the segment being judged.
pub(super) struct Ctx<'a, 'i> {
    pub(super) tenant: &'a str,
    pub(super) id: &'a str,
    pub(super) input: &'a Input<'i>,
    pub(super) segment: &'a Segment<'i>,
    pub(super) channel: Option<Channel>,
    pub(super) excerpt_chars: usize,
    /// Personal numbers are masked in the events ([`crate::privacy`]).
    pub(super) mask: bool,
    pub(super) now_ms: u64,
}

impl<'a, 'i> Ctx<'a, 'i> {
    /// The context of `segment` of `input`, judged on `channel`.
    pub(super) fn new(
        config: &EngineConfig,
        key: &KeyRef<'a>,
        input: &'a Input<'i>,
        segment: &'a Segment<'i>,
        channel: Option<Channel>,
        now_ms: u64,
    ) -> Ctx<'a, 'i> {
        Ctx {
            tenant: key.tenant,
            id: key.id,
            input,
            segment,
            channel,
            excerpt_chars: config.excerpt_chars,
            mask: config.privacy.masks(key.tenant),
            now_ms,
        }
    }
}

/// Scans a segment, runs the rules on it and emits their violations.
/// `conv` is `None` for a late segment (no state: phrase and pattern rules
/// only).
#[allow(clippy::too_many_arguments)]
pub(super) fn judge(
    scanner: &Scanner,
    scratch: &mut Scratch,
    pattern_scratch: &mut rules::pattern::Scratch,
    found: &mut Vec<Found>,
    cx: &Ctx<'_, '_>,
    mut conv: Option<&mut Conversation>,
    out: &mut Vec<Event>,
    explain: Option<&mut Explain>,
) {
    let said = cx.segment.text.as_ref();
    scanner.scan_on(said, cx.segment.speaker, cx.channel, scratch);
    // What events and state keep of the segment: the text with personal
    // numbers masked (same characters, so the same offsets), unless the
    // tenant opted in to the raw text.
    let masked = if cx.mask {
        crate::privacy::mask(said, &scratch.norm, &mut Vec::new())
    } else {
        std::borrow::Cow::Borrowed(said)
    };
    let text = masked.as_ref();
    let ts_ms = cx.input.ts_ms.unwrap_or(cx.now_ms);
    let seg = rules::Seg {
        seq: cx.segment.seq,
        speaker: cx.segment.speaker,
        channel: cx.channel,
        ts_ms,
        text,
        norm: &scratch.norm,
        hits: &scratch.hits,
        midway: conv.as_ref().is_some_and(|c| c.midway),
        excerpt_chars: cx.excerpt_chars,
        fingerprint: std::cell::OnceCell::new(),
    };
    found.clear();
    {
        let mut sink = rules::Sink { found, explain };
        let mut no_state: [State; 0] = [];
        let states = match conv.as_deref_mut() {
            Some(c) => &mut c.states[..],
            None => &mut no_state[..],
        };
        scanner
            .book()
            .on_segment(scanner.lexicon(), states, &seg, pattern_scratch, &mut sink);
    }
    let lexicon = scanner.lexicon();
    if let Some(c) = conv.as_deref_mut() {
        c.deadline = scanner.book().next_deadline(lexicon, &c.states);
    }
    if !found.is_empty() {
        emit_spans(scanner, cx, &seg, found, conv.as_deref_mut(), out);
        if let Some(c) = conv.as_deref_mut() {
            let current = Some((cx.segment.seq, text));
            emit_verdicts(
                scanner,
                cx.tenant,
                cx.id,
                c,
                found,
                current,
                cx.excerpt_chars,
                out,
            );
        }
    }
    if cx.segment.speaker == Speaker::Agent
        && let Some(c) = conv
    {
        c.agent_segments += 1;
        c.last_agent_seq = cx.segment.seq;
        c.last_agent_text.clear();
        let (head, _) = excerpt(text, 0, cx.excerpt_chars);
        c.last_agent_text.push_str(head);
        c.last_agent_chars = text.chars().count();
    }
}

/// Character offsets in the original text of a normalised byte range.
pub(super) fn char_span(
    text: &str,
    norm: &crate::normalize::Normalized,
    (s, e): (usize, usize),
) -> (usize, usize, usize, usize) {
    let (os, oe) = norm.original_range(text, s, e);
    let start = char_offset(text, os);
    let end = start + char_offset(&text[os..], oe - os);
    (start, end, os, oe)
}

pub(super) fn severity_rank(
    scanner: &Scanner,
    rule: u16,
) -> (
    std::cmp::Reverse<crate::event::Severity>,
    std::cmp::Reverse<u64>,
    u16,
) {
    let r = scanner.rule(rule);
    (
        std::cmp::Reverse(r.severity),
        std::cmp::Reverse((r.deduct * 1000.0) as u64),
        rule,
    )
}

/// One rule's matches in a segment, while overlaps are resolved.
pub(super) struct SpanReport {
    pub(super) rule: u16,
    /// Byte ranges of the normalised text.
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) count: u32,
    /// Rules whose spans this one took.
    pub(super) also: Vec<Also>,
}

/// Turns the span reports of one segment into violations: one per rule,
/// and one per span across rules: where spans of several rules overlap,
/// the most severe rule (then the larger deduction, then file order) keeps
/// the span and names the others in `also`. Span reports are removed from
/// `found`; verdicts stay.
/// `seg.text` is the text events show (masked, see [`crate::privacy`]);
/// offsets are counted in the segment as said (the same characters).
pub(super) fn emit_spans(
    scanner: &Scanner,
    cx: &Ctx<'_, '_>,
    seg: &rules::Seg<'_>,
    found: &mut Vec<Found>,
    mut conv: Option<&mut Conversation>,
    out: &mut Vec<Event>,
) {
    let (shown_text, norm, ts_ms) = (seg.text, seg.norm, seg.ts_ms);
    let mut spans: Vec<SpanReport> = Vec::new();
    // Move the span reports out, keep the verdicts in order (no clones).
    let mut i = 0;
    while i < found.len() {
        if matches!(found[i], Found::Spans { .. }) {
            if let Found::Spans {
                rule,
                spans: s,
                count,
            } = found.remove(i)
            {
                spans.push(SpanReport {
                    rule,
                    spans: s,
                    count,
                    also: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return;
    }
    spans.sort_by_key(|s| severity_rank(scanner, s.rule));
    let lexicon = scanner.lexicon();
    let text = cx.segment.text.as_ref();
    // Accepted spans: (start, end, index into `kept`).
    let mut taken: Vec<(usize, usize, usize)> = Vec::new();
    let mut kept: Vec<SpanReport> = Vec::new();
    for SpanReport {
        rule,
        spans: list,
        count,
        ..
    } in spans
    {
        let r = scanner.rule(rule);
        let mut left = Vec::with_capacity(list.len());
        let mut dropped = 0u32;
        for (s, e) in list {
            match taken.iter().find(|&&(ts, te, _)| s < te && ts < e) {
                Some(&(_, _, winner)) => {
                    dropped += 1;
                    let also = Also {
                        rule_id: r.id.clone(),
                        category: lexicon.categories[r.category].id.clone(),
                    };
                    if !kept[winner].also.contains(&also) {
                        kept[winner].also.push(also);
                    }
                }
                None => left.push((s, e)),
            }
        }
        if left.is_empty() {
            continue;
        }
        let k = kept.len();
        taken.extend(left.iter().map(|&(s, e)| (s, e, k)));
        kept.push(SpanReport {
            rule,
            spans: left,
            count: count.saturating_sub(dropped).max(1),
            also: Vec::new(),
        });
    }
    // Violations in order of their first span.
    kept.sort_by_key(|k| k.spans[0]);
    let seq = cx.segment.seq.to_string();
    for SpanReport {
        rule,
        spans: list,
        count,
        also,
    } in kept
    {
        let r = scanner.rule(rule);
        let category = &lexicon.categories[r.category];
        if let Some(c) = conv.as_deref_mut() {
            c.counts.add_n(&category.id, count);
            if let Some(section) = r.section
                && r.deduct > 0.0
            {
                c.deduct(&lexicon.sections[section].id, r.deduct * f64::from(count));
            }
        }
        let char_spans: Vec<(usize, usize, usize, usize)> =
            list.iter().map(|&sp| char_span(text, norm, sp)).collect();
        let (start, end, _, _) = char_spans[0];
        let (s, e) = (start.to_string(), end.to_string());
        let id = event_id(&[
            cx.tenant.as_bytes(),
            cx.id.as_bytes(),
            seq.as_bytes(),
            r.id.as_bytes(),
            s.as_bytes(),
            e.as_bytes(),
        ]);
        let (shown, text_start) = excerpt(shown_text, start, cx.excerpt_chars);
        // The match as shown (masked like the text): the same characters.
        let matched: String = shown_text
            .chars()
            .skip(start)
            .take(end - start)
            .take(cx.excerpt_chars)
            .collect();
        out.push(Event::Violation(Violation {
            id,
            conversation_id: cx.id.to_string(),
            tenant: cx.tenant.to_string(),
            channel: cx.channel,
            agent_id: cx.input.agent_id.as_deref().map(str::to_string),
            seq: cx.segment.seq,
            rule_id: r.id.clone(),
            category: category.id.clone(),
            category_name: category.name.clone(),
            kind: r.kind().to_string(),
            severity: r.severity,
            deduct: r.deduct * f64::from(count),
            // A hit can span any number of dropped characters
            // (zero-width, marks): `matched` is capped like `text`.
            matched: Some(matched),
            start: Some(start),
            end: Some(end),
            count,
            spans: char_spans.iter().map(|&(s, e, _, _)| [s, e]).collect(),
            text: shown.to_string(),
            text_start,
            text_chars: text.chars().count(),
            also,
            note: None,
            lexicon_version: scanner.version().to_string(),
            ts_ms,
        }));
    }
}

/// Turns verdicts into violations. `current` is the segment being judged
/// (`(seq, text)`), when there is one.
#[allow(clippy::too_many_arguments)]
pub(super) fn emit_verdicts(
    scanner: &Scanner,
    tenant: &str,
    id: &str,
    conv: &mut Conversation,
    found: &mut Vec<Found>,
    current: Option<(u64, &str)>,
    excerpt_chars: usize,
    out: &mut Vec<Event>,
) {
    let lexicon = scanner.lexicon();
    // Drained, so the caller's buffer is kept for the next segment.
    for f in found.drain(..) {
        let Found::Verdict {
            rule,
            seq,
            ts_ms,
            key,
            note,
            text,
        } = f
        else {
            continue;
        };
        let r = scanner.rule(rule);
        let category = &lexicon.categories[r.category];
        conv.counts.add(&category.id);
        if let Some(section) = r.section
            && r.deduct > 0.0
        {
            conv.deduct(&lexicon.sections[section].id, r.deduct);
        }
        let (shown, chars) = match (text, current) {
            (Some(t), _) => (t.text, t.chars),
            (None, Some((cs, ct))) if cs == seq => {
                let (head, _) = excerpt(ct, 0, excerpt_chars);
                (head.to_string(), ct.chars().count())
            }
            (None, _) if conv.agent_segments > 0 && conv.last_agent_seq == seq => {
                (conv.last_agent_text.clone(), conv.last_agent_chars)
            }
            (None, _) => (String::new(), 0),
        };
        let mut parts: Vec<&[u8]> = vec![
            tenant.as_bytes(),
            id.as_bytes(),
            r.id.as_bytes(),
            category.id.as_bytes(),
        ];
        if !key.is_empty() {
            parts.push(key.as_bytes());
        }
        out.push(Event::Violation(Violation {
            id: event_id(&parts),
            conversation_id: id.to_string(),
            tenant: tenant.to_string(),
            channel: conv.channel,
            agent_id: conv.agent_id.clone(),
            seq,
            rule_id: r.id.clone(),
            category: category.id.clone(),
            category_name: category.name.clone(),
            kind: r.kind().to_string(),
            severity: r.severity,
            deduct: r.deduct,
            matched: None,
            start: None,
            end: None,
            count: 1,
            spans: Vec::new(),
            text: shown,
            text_start: 0,
            text_chars: chars,
            also: Vec::new(),
            note: Some(note),
            lexicon_version: scanner.version().to_string(),
            ts_ms,
        }));
    }
}
