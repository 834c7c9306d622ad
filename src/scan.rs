//! `zhijian scan`: the engine over a JSONL file, offline.
//!
//! The clock is event time: `now` is the largest `ts_ms` seen so far (0
//! before any), so the same input always yields the same output, byte for
//! byte. Idle timeouts do not apply offline; every conversation still open
//! at end of input is closed with reason `eof`.

use crate::engine::{Engine, Outcome};
use crate::event::{CloseReason, Event, InputKind, MAX_TEXT_BYTES, decode_plain, decode_str};
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

/// Default longest input line, in bytes (without its newline): far above
/// the largest valid event (a [`crate::event::MAX_TEXT_BYTES`] text even
/// when every character is a `\uXXXX` escape), small enough that one line
/// cannot exhaust memory.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// [`scan_limited`] with the default line limit.
pub fn scan<R: BufRead, W: Write, E: Write>(
    engine: &mut Engine,
    input: R,
    output: &mut W,
    errors: &mut E,
) -> io::Result<ScanStats> {
    scan_limited(engine, input, output, errors, DEFAULT_MAX_LINE_BYTES)
}

/// Scans `input` line by line, writing output events as JSONL to `output`
/// and one line per bad input line to `errors` (`line N: code: message`).
/// Blank lines are skipped. I/O errors end the scan; bad lines never do.
///
/// A line longer than `max_line_bytes` is a bad line (`line_too_long`): it
/// is never held in memory whole; its first `max_line_bytes` bytes are
/// buffered, the rest is read and dropped up to the next newline, and the
/// scan goes on with the line after it.
pub fn scan_limited<R: BufRead, W: Write, E: Write>(
    engine: &mut Engine,
    mut input: R,
    output: &mut W,
    errors: &mut E,
    max_line_bytes: usize,
) -> io::Result<ScanStats> {
    let mut stats = ScanStats::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut out = Out::new(output);
    let mut now_ms = 0u64;
    let mut line_no = 0u64;
    loop {
        // Fast path: a whole line in the reader's buffer is judged where it
        // lies, not copied.
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        if let Some(n) = memchr::memchr(b'\n', chunk)
            && n <= max_line_bytes
        {
            line_no += 1;
            let r = judge_line(
                engine,
                &chunk[..n],
                line_no,
                &mut now_ms,
                &mut events,
                &mut out,
                errors,
                &mut stats,
            );
            input.consume(n + 1);
            r?;
            continue;
        }
        // A line across the end of the buffer, the last line without a
        // newline, or one too long.
        match read_line_bounded(&mut input, &mut buf, max_line_bytes)? {
            LineRead::Eof => break,
            LineRead::Line => {}
            LineRead::TooLong { bytes } => {
                line_no += 1;
                stats.lines += 1;
                stats.bad_lines += 1;
                writeln!(
                    errors,
                    "line {line_no}: line_too_long: {bytes} bytes, over the limit of {max_line_bytes} bytes (--max-line-bytes); skipped"
                )?;
                continue;
            }
        }
        line_no += 1;
        judge_line(
            engine,
            &buf,
            line_no,
            &mut now_ms,
            &mut events,
            &mut out,
            errors,
            &mut stats,
        )?;
    }
    engine.close_all(CloseReason::Eof, now_ms, &mut events);
    out.events(&mut events, &mut stats)?;
    out.finish()?;
    Ok(stats)
}

/// Decodes and judges one line (without its newline): a blank line is
/// skipped, a bad one reported on `errors`.
#[allow(clippy::too_many_arguments)]
fn judge_line<W: Write, E: Write>(
    engine: &mut Engine,
    line: &[u8],
    line_no: u64,
    now_ms: &mut u64,
    events: &mut Vec<Event>,
    out: &mut Out<'_, W>,
    errors: &mut E,
    stats: &mut ScanStats,
) -> io::Result<()> {
    let decoded = match decode_plain(line, MAX_TEXT_BYTES) {
        Some(d) => d,
        None => {
            // Bytes, not a String: invalid UTF-8 is a bad line, not an I/O
            // error that would end the scan.
            let line = match std::str::from_utf8(line) {
                Ok(s) => s,
                Err(e) => {
                    stats.lines += 1;
                    stats.bad_lines += 1;
                    return writeln!(errors, "line {line_no}: invalid_utf8: {e}");
                }
            };
            let trimmed = line.trim();
            if trimmed.is_empty() {
                return Ok(());
            }
            decode_str(trimmed)
        }
    };
    stats.lines += 1;
    let parsed = match decoded {
        Ok(i) => i,
        Err(e) => {
            stats.bad_lines += 1;
            return writeln!(errors, "line {line_no}: {}: {e}", e.code());
        }
    };
    if let Some(ts) = parsed.ts_ms {
        *now_ms = (*now_ms).max(ts);
    }
    if engine.handle(&parsed, *now_ms, events) == Outcome::Judged {
        stats.judged += 1;
    }
    if matches!(parsed.kind, InputKind::End) || !events.is_empty() {
        out.events(events, stats)?;
    }
    Ok(())
}

/// The events of a JSONL text judged as [`scan`] judges it (the clock is
/// event time; open conversations close at the end), kept in memory for
/// tools that compare them (`lexicon eval`, `diff`): `(events, non-blank
/// lines, bad lines)`.
pub fn judge_text(engine: &mut Engine, input: &str) -> (Vec<Event>, usize, usize) {
    let (mut events, mut lines, mut bad) = (Vec::new(), 0, 0);
    let mut now_ms = 0u64;
    for line in input.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let Ok(i) = decode_str(line) else {
            bad += 1;
            continue;
        };
        if let Some(ts) = i.ts_ms {
            now_ms = now_ms.max(ts);
        }
        engine.handle(&i, now_ms, &mut events);
    }
    engine.close_all(CloseReason::Eof, now_ms, &mut events);
    (events, lines, bad)
}

/// What [`read_line_bounded`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// End of input, nothing read.
    Eof,
    /// A line (without its newline) is in the buffer.
    Line,
    /// The line had `bytes` bytes (without its newline), over the limit: it
    /// was read to its end and dropped; the buffer is empty.
    TooLong { bytes: u64 },
}

/// Reads one line into `buf` (cleared first, newline not included), holding
/// at most `max` bytes of it: a longer line is consumed up to and including
/// its newline (or the end of input) chunk by chunk and reported as
/// [`LineRead::TooLong`]. The memory used is `max` plus the reader's own
/// buffer, however long the line.
pub fn read_line_bounded<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    let mut total: u64 = 0;
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        read_any = true;
        let (part, used, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        total += part.len() as u64;
        if !too_long {
            if buf.len() + part.len() <= max {
                if buf.capacity() < buf.len() + part.len() {
                    // Grow as `Vec` would (doubling), but never past `max`.
                    let want = (buf.capacity() * 2).clamp(buf.len() + part.len(), max);
                    buf.reserve_exact(want - buf.len());
                }
                buf.extend_from_slice(part);
            } else {
                too_long = true;
                buf.clear();
            }
        }
        input.consume(used);
        if done {
            break;
        }
    }
    Ok(if !read_any {
        LineRead::Eof
    } else if too_long {
        LineRead::TooLong { bytes: total }
    } else {
        LineRead::Line
    })
}

/// The output: events are encoded into one buffer, written out in large
/// pieces.
struct Out<'w, W: Write> {
    w: &'w mut W,
    buf: Vec<u8>,
}

impl<'w, W: Write> Out<'w, W> {
    const FLUSH_AT: usize = 1 << 18;

    fn new(w: &'w mut W) -> Self {
        Out {
            w,
            buf: Vec::with_capacity(Self::FLUSH_AT + (1 << 14)),
        }
    }

    fn events(&mut self, events: &mut Vec<Event>, stats: &mut ScanStats) -> io::Result<()> {
        for e in events.drain(..) {
            match e {
                Event::Violation(_) => stats.violations += 1,
                Event::Summary(_) => stats.summaries += 1,
            }
            serde_json::to_writer(&mut self.buf, &e).map_err(io::Error::other)?;
            self.buf.push(b'\n');
        }
        if self.buf.len() >= Self::FLUSH_AT {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::{LineRead, read_line_bounded};
    use std::io::{self, BufRead, BufReader, Read};

    /// `len` bytes of `x` made on the fly (no 50 MB buffer in the test),
    /// then `tail`.
    struct Endless {
        left: u64,
        tail: io::Cursor<Vec<u8>>,
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return self.tail.read(out);
            }
            let n = out
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            out[..n].fill(b'x');
            self.left -= n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_50_mb_line_is_skipped_holding_at_most_the_limit() {
        const LIMIT: usize = 1024 * 1024;
        const LONG: u64 = 50 * 1024 * 1024;
        let mut input = BufReader::with_capacity(
            1 << 16,
            io::Cursor::new(b"first\n".to_vec()).chain(Endless {
                left: LONG,
                tail: io::Cursor::new(b"\nafter\nlast without newline".to_vec()),
            }),
        );
        let mut buf = Vec::new();
        let mut max_capacity = 0;
        let mut lines = Vec::new();
        loop {
            let r = read_line_bounded(&mut input, &mut buf, LIMIT).expect("read");
            max_capacity = max_capacity.max(buf.capacity());
            if r == LineRead::Eof {
                break;
            }
            lines.push((r, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(
            lines,
            vec![
                (LineRead::Line, "first".to_string()),
                (LineRead::TooLong { bytes: LONG }, String::new()),
                (LineRead::Line, "after".to_string()),
                (LineRead::Line, "last without newline".to_string()),
            ]
        );
        assert!(
            max_capacity <= LIMIT,
            "the line buffer grew to {max_capacity} bytes, over the limit of {LIMIT}"
        );
        assert!(input.fill_buf().expect("read").is_empty());
    }

    #[test]
    fn limits_are_exact_and_blank_lines_are_lines() {
        let mut input = io::Cursor::new(b"abcd\nabcde\n\n\r\nabcde".to_vec());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line_bounded(&mut input, &mut buf, 4).expect("read") {
                LineRead::Eof => break,
                r => got.push((r, buf.clone())),
            }
        }
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"abcd".to_vec()),
                (LineRead::TooLong { bytes: 5 }, vec![]),
                (LineRead::Line, vec![]),
                (LineRead::Line, b"\r".to_vec()),
                (LineRead::TooLong { bytes: 5 }, vec![]),
            ]
        );
    }
}
