//! `zhijian lexicon test`: how utterances are normalised, segmented and judged, with the reason for each decision.

use super::*;

pub(super) struct TestOptions {
    pub(super) speaker: Speaker,
    pub(super) tenant: Option<String>,
    pub(super) channel: Option<crate::event::Channel>,
    pub(super) gap_ms: u64,
}

/// Splits `agent:您好` into its speaker and text.
fn speaker_prefix(text: &str, default: Speaker) -> (Speaker, &str) {
    for s in Speaker::ALL {
        if let Some(rest) = text
            .strip_prefix(s.as_str())
            .and_then(|r| r.strip_prefix(':').or_else(|| r.strip_prefix('：')))
        {
            return (s, rest.trim_start());
        }
    }
    (default, text)
}

pub(super) fn cmd_test(
    lexicons: &Path,
    opts: TestOptions,
    texts: &[String],
) -> Result<(), Failure> {
    use crate::event::{InputKind, Segment};
    use crate::matcher::Suppression;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let tenant = opts.tenant.as_deref().unwrap_or("default");
    let scanner = Arc::clone(scanners.for_tenant(tenant));
    // The text is the lead's own, typed here: shown as typed.
    let mut config = EngineConfig::default();
    config.privacy.raw_events = true;
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), config);
    let mut scratch = Scratch::default();
    let mut out = io::stdout().lock();
    writeln!(out, "lexicon:    {}", scanner.version())?;
    if opts.tenant.is_some() && !scanners.has_tenant(tenant) {
        writeln!(
            out,
            "tenant {tenant} has no overlay: the base lexicon judges it"
        )?;
    }
    let mut events = Vec::new();
    let mut ts = 0u64;
    let mut explain = Vec::new();
    for (seq, raw) in texts.iter().enumerate() {
        let (speaker, text) = speaker_prefix(raw, opts.speaker);
        let suppressed = scanner.scan_explained(text, speaker, &mut scratch);
        let norm = &scratch.norm;
        writeln!(
            out,
            "\n[{seq}] {} at {} s: {text}",
            speaker.as_str(),
            ts / 1000
        )?;
        writeln!(out, "  normalised: {}", norm.text)?;
        writeln!(out, "  tokens:     {}", scanner.tokens(norm).join(" / "))?;
        if !scanner.judges(speaker) {
            writeln!(out, "  no rule reads speaker {}", speaker.as_str())?;
        }
        let span = |(s, e): (usize, usize)| {
            let start = char_offset(text, s);
            (start, start + char_offset(&text[s..], e - s))
        };
        for h in &scratch.hits {
            let r = scanner.rule(scanner.group_rule(h.group));
            let orig = norm.original_range(text, h.norm.0, h.norm.1);
            let (s, e) = span(orig);
            let channel = match (r.applies_on(opts.channel), opts.channel) {
                (false, Some(c)) => format!(" (the rule does not apply on {})", c.as_str()),
                _ => String::new(),
            };
            writeln!(
                out,
                "  FOUND {:<28} {:<10} chars {s}..{e} {:?}{channel}",
                r.id,
                r.kind(),
                &text[orig.0..orig.1]
            )?;
        }
        for x in &suppressed {
            let r = scanner.rule(scanner.group_rule(x.group));
            let (s, e) = span(x.orig);
            let why = match x.why {
                Suppression::Exception { norm: (a, b) } => {
                    format!("inside exception {:?}", &norm.text[a..b])
                }
                Suppression::WordBoundary => "inside a longer word (jieba)".to_string(),
                Suppression::Position => {
                    "not at the start of a clause (sentence-final particle or mid-clause)"
                        .to_string()
                }
                Suppression::Overlap => "covered by another hit of the same rule".to_string(),
            };
            writeln!(
                out,
                "  DROP  {:<28} {:<10} chars {s}..{e} {:?}: {why}",
                r.id,
                r.kind(),
                &text[x.orig.0..x.orig.1]
            )?;
        }
        let input = test_input(
            tenant,
            opts.channel,
            ts,
            InputKind::Segment(Segment {
                seq: seq as u64,
                speaker,
                text: text.into(),
                is_final: true,
            }),
        );
        explain.clear();
        engine.handle_explained(&input, ts, &mut events, Some(&mut explain));
        for line in &explain {
            writeln!(out, "  RULE  {line}")?;
        }
        print_events(&mut out, &mut events)?;
        ts += opts.gap_ms;
    }
    let end = test_input(tenant, opts.channel, ts, InputKind::End);
    explain.clear();
    writeln!(out, "\n[end] the conversation closes")?;
    engine.handle_explained(&end, ts, &mut events, Some(&mut explain));
    for line in &explain {
        writeln!(out, "  RULE  {line}")?;
    }
    print_events(&mut out, &mut events)?;
    Ok(())
}

/// An event of the conversation `lexicon test` plays.
fn test_input<'a>(
    tenant: &'a str,
    channel: Option<crate::event::Channel>,
    ts: u64,
    kind: crate::event::InputKind<'a>,
) -> crate::event::Input<'a> {
    crate::event::Input {
        conversation_id: "test".into(),
        tenant: tenant.into(),
        channel,
        agent_id: None,
        ts_ms: Some(ts),
        continued: false,
        kind,
    }
}

/// The events of `lexicon test`, one line each (and drains them).
fn print_events(out: &mut impl Write, events: &mut Vec<crate::event::Event>) -> io::Result<()> {
    use crate::event::Event;
    for e in events.drain(..) {
        match e {
            Event::Violation(v) => {
                let what = match (&v.matched, &v.note) {
                    (Some(m), _) => format!("{m:?} x{}", v.count),
                    (None, Some(n)) => n.clone(),
                    (None, None) => String::new(),
                };
                let also: Vec<String> = v.also.iter().map(|a| a.rule_id.clone()).collect();
                writeln!(
                    out,
                    "  VIOLATION {} {} ({}) {} deduct {} at seq {}: {what}{}",
                    v.rule_id,
                    v.category,
                    v.category_name,
                    v.severity.as_str(),
                    v.deduct,
                    v.seq,
                    if also.is_empty() {
                        String::new()
                    } else {
                        format!(" (also matched: {})", also.join(", "))
                    }
                )?;
            }
            Event::Summary(s) => {
                let counts: Vec<String> = s
                    .counts
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| format!("{c}={n}"))
                    .collect();
                writeln!(
                    out,
                    "  SUMMARY score {} greeted {:?} closed {:?} {}",
                    s.score,
                    s.greeted,
                    s.closed,
                    counts.join(" ")
                )?;
            }
        }
    }
    Ok(())
}
