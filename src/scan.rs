//! `zhijian scan`: the engine over a JSONL file, offline.
//!
//! The clock is event time: `now` is the largest `ts_ms` seen so far (0
//! before any), so the same input always yields the same output, byte for
//! byte. Idle timeouts do not apply offline; every conversation still open
//! at end of input is closed with reason `eof`.

use crate::engine::{Engine, Outcome};
use crate::event::{CloseReason, Event, InputKind, decode_str};
use std::io::{self, BufRead, Write};

/// Totals of one scan, reported on stderr.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub lines: u64,
    pub bad_lines: u64,
    pub judged: u64,
    pub violations: u64,
    pub summaries: u64,
}

/// Scans `input` line by line, writing output events as JSONL to `output`
/// and one line per bad input line to `errors` (`line N: code: message`).
/// Blank lines are skipped. I/O errors end the scan; bad lines never do.
pub fn scan<R: BufRead, W: Write, E: Write>(
    engine: &mut Engine,
    mut input: R,
    output: &mut W,
    errors: &mut E,
) -> io::Result<ScanStats> {
    let mut stats = ScanStats::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut now_ms = 0u64;
    let mut line_no = 0u64;
    loop {
        buf.clear();
        // Bytes, not a String: invalid UTF-8 is a bad line, not an I/O error
        // that would end the scan.
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let line = match std::str::from_utf8(&buf) {
            Ok(s) => s,
            Err(e) => {
                stats.lines += 1;
                stats.bad_lines += 1;
                writeln!(errors, "line {line_no}: invalid_utf8: {e}")?;
                continue;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        stats.lines += 1;
        let parsed = match decode_str(trimmed) {
            Ok(i) => i,
            Err(e) => {
                stats.bad_lines += 1;
                writeln!(errors, "line {line_no}: {}: {e}", e.code())?;
                continue;
            }
        };
        if let Some(ts) = parsed.ts_ms {
            now_ms = now_ms.max(ts);
        }
        if engine.handle(&parsed, now_ms, &mut events) == Outcome::Judged {
            stats.judged += 1;
        }
        if matches!(parsed.kind, InputKind::End) || !events.is_empty() {
            write_events(&mut events, output, &mut stats)?;
        }
    }
    engine.close_all(CloseReason::Eof, now_ms, &mut events);
    write_events(&mut events, output, &mut stats)?;
    output.flush()?;
    Ok(stats)
}

fn write_events<W: Write>(
    events: &mut Vec<Event>,
    out: &mut W,
    stats: &mut ScanStats,
) -> io::Result<()> {
    for e in events.drain(..) {
        match e {
            Event::Violation(_) => stats.violations += 1,
            Event::Summary(_) => stats.summaries += 1,
        }
        serde_json::to_writer(&mut *out, &e).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
