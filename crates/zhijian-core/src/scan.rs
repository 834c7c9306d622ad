//! `zhijian scan`: the engine over a JSONL file, offline.
//!
//! The clock is event time: `now` is the largest `ts_ms` seen so far (0
//! before any), so the same input always yields the same output, byte for
//! byte. Idle timeouts do not apply offline; every conversation still open
//! at end of input is closed with reason `eof`.

use crate::engine::{Engine, Outcome};
use crate::event::{
    Channel, CloseReason, Event, Input, InputKind, MAX_TEXT_BYTES, Segment, Speaker, decode_plain,
    decode_str,
};
use std::borrow::Cow;
use std::io::{self, BufRead, Write};
use std::sync::mpsc;

/// Totals of one scan, reported on stderr.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub lines: u64,
    pub bad_lines: u64,
    pub judged: u64,
    pub violations: u64,
    pub summaries: u64,
    /// Violations by severity, in [`crate::event::Severity`] order (low
    /// first).
    pub by_severity: [u64; 4],
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
///
/// The engine runs on a second thread, fed batches of decoded lines in
/// input order; the output is byte for byte what judging line by line on
/// one thread gives. Output is written a batch at a time (2,048 lines),
/// so a slow trickle of input (`tail -f | zhijian scan -`) shows its
/// events a batch late.
pub fn scan_limited<R: BufRead, W: Write, E: Write>(
    engine: &mut Engine,
    mut input: R,
    output: &mut W,
    errors: &mut E,
    max_line_bytes: usize,
) -> io::Result<ScanStats> {
    // Two threads, in turn over batches of lines: this one reads and
    // decodes, and encodes and writes the events the other found; the
    // other judges, one batch after another, in input order. The engine stays
    // on one thread and sees the lines in the same order with the same
    // clock, so the output is the same as judging line by line.
    std::thread::scope(|scope| {
        let (to_judge, batches) = mpsc::sync_channel::<Batch>(2);
        let (judged_tx, judged) = mpsc::channel::<Batch>();
        let judging = std::thread::Builder::new()
            .name("scan-judge".into())
            .spawn_scoped(scope, move || judge_batches(engine, &batches, &judged_tx))?;
        let mut reader = Reader {
            output,
            errors,
            stats: ScanStats::default(),
            now_ms: 0,
            line_no: 0,
            batch: Batch::default(),
            spare: Vec::new(),
            out: Vec::new(),
            to_judge,
            judged,
        };
        let read = reader.read_all(&mut input, max_line_bytes);
        let Reader {
            output,
            mut stats,
            batch,
            mut out,
            to_judge,
            judged,
            ..
        } = reader;
        let written = read.and_then(|()| {
            // The last lines, then every batch back in order until the
            // judge is done (it hangs up after the end-of-input summaries).
            if !batch.lines.is_empty() {
                // Fails only if the judge panicked: join says so below.
                let _ = to_judge.send(batch);
            }
            drop(to_judge);
            for mut b in judged.iter() {
                encode(&mut b.events, &mut out, &mut stats)?;
                output.write_all(&out)?;
                out.clear();
            }
            output.flush()
        });
        // After an error the judge's sends fail and it stops.
        drop(judged);
        match judging.join() {
            Ok(judged) => stats.judged = judged,
            Err(panic) => std::panic::resume_unwind(panic),
        }
        written.map(|()| stats)
    })
}

/// Lines per batch handed to the judging thread.
const BATCH_LINES: usize = 2048;

/// Decoded lines and the strings they use, on their way to the judge; the
/// events it found on the way back.
#[derive(Default)]
struct Batch {
    /// The strings of `lines`, one after another.
    arena: String,
    lines: Vec<Line>,
    events: Vec<Event>,
}

/// A byte range of [`Batch::arena`].
type Span = (usize, usize);

/// One decoded input event (an [`Input`] whose strings are in the arena)
/// and the clock at its line.
struct Line {
    now_ms: u64,
    conversation_id: Span,
    tenant: Span,
    channel: Option<Channel>,
    agent_id: Option<Span>,
    ts_ms: Option<u64>,
    continued: bool,
    /// `None` for an end event.
    segment: Option<(u64, Speaker, Span, bool)>,
}

impl Line {
    fn new(arena: &mut String, i: &Input<'_>, now_ms: u64) -> Line {
        let mut keep = |s: &str| {
            let start = arena.len();
            arena.push_str(s);
            (start, arena.len())
        };
        Line {
            now_ms,
            conversation_id: keep(&i.conversation_id),
            tenant: keep(&i.tenant),
            channel: i.channel,
            agent_id: i.agent_id.as_deref().map(&mut keep),
            ts_ms: i.ts_ms,
            continued: i.continued,
            segment: match &i.kind {
                InputKind::Segment(s) => Some((s.seq, s.speaker, keep(&s.text), s.is_final)),
                InputKind::End => None,
            },
        }
    }

    fn input<'a>(&self, arena: &'a str) -> Input<'a> {
        let at = |(a, b): Span| Cow::Borrowed(&arena[a..b]);
        Input {
            conversation_id: at(self.conversation_id),
            tenant: at(self.tenant),
            channel: self.channel,
            agent_id: self.agent_id.map(at),
            ts_ms: self.ts_ms,
            continued: self.continued,
            kind: match self.segment {
                Some((seq, speaker, text, is_final)) => InputKind::Segment(Segment {
                    seq,
                    speaker,
                    text: at(text),
                    is_final,
                }),
                None => InputKind::End,
            },
        }
    }
}

/// The judging thread: every batch through the engine, its events into
/// the batch, the batch sent back; at the end of input, the summaries of
/// the conversations still open, in a batch of their own. Returns the
/// number of segments judged.
fn judge_batches(
    engine: &mut Engine,
    batches: &mpsc::Receiver<Batch>,
    judged: &mpsc::Sender<Batch>,
) -> u64 {
    let mut count = 0;
    let mut now_ms = 0;
    for mut batch in batches.iter() {
        for line in &batch.lines {
            now_ms = line.now_ms;
            let input = line.input(&batch.arena);
            if engine.handle(&input, now_ms, &mut batch.events) == Outcome::Judged {
                count += 1;
            }
        }
        if judged.send(batch).is_err() {
            // The reader stopped on an error.
            return count;
        }
    }
    let mut last = Batch::default();
    engine.close_all(CloseReason::Eof, now_ms, &mut last.events);
    let _ = judged.send(last);
    count
}

fn encode(events: &mut Vec<Event>, out: &mut Vec<u8>, stats: &mut ScanStats) -> io::Result<()> {
    for e in events.drain(..) {
        match e {
            Event::Violation(ref v) => {
                stats.violations += 1;
                stats.by_severity[v.severity as usize] += 1;
            }
            Event::Summary(_) => stats.summaries += 1,
        }
        serde_json::to_writer(&mut *out, &e).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    Ok(())
}

/// The reading side of [`scan_limited`].
struct Reader<'o, W: Write, E: Write> {
    output: &'o mut W,
    errors: &'o mut E,
    stats: ScanStats,
    /// The clock: the largest `ts_ms` decoded so far.
    now_ms: u64,
    line_no: u64,
    /// The batch being filled.
    batch: Batch,
    /// Batches back from the judge, written out, to fill again.
    spare: Vec<Batch>,
    /// Encoded events.
    out: Vec<u8>,
    to_judge: mpsc::SyncSender<Batch>,
    judged: mpsc::Receiver<Batch>,
}

impl<W: Write, E: Write> Reader<'_, W, E> {
    fn read_all<R: BufRead>(&mut self, input: &mut R, max_line_bytes: usize) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // Fast path: a whole line in the reader's buffer is decoded
            // where it lies, not copied.
            let chunk = fill(input)?;
            if chunk.is_empty() {
                return Ok(());
            }
            if let Some(n) = memchr::memchr(b'\n', chunk)
                && n <= max_line_bytes
            {
                let r = self.line(&chunk[..n]);
                input.consume(n + 1);
                r?;
                continue;
            }
            // A line across the end of the buffer, the last line without a
            // newline, or one too long.
            match read_line_bounded(input, &mut buf, max_line_bytes)? {
                LineRead::Eof => return Ok(()),
                LineRead::Line => self.line(&buf)?,
                LineRead::TooLong { bytes } => {
                    self.line_no += 1;
                    self.stats.lines += 1;
                    self.stats.bad_lines += 1;
                    writeln!(
                        self.errors,
                        "line {}: line_too_long: {bytes} bytes, over the limit of {max_line_bytes} bytes (--max-line-bytes); skipped",
                        self.line_no
                    )?;
                }
            }
        }
    }

    /// Decodes one line (without its newline) into the batch: a blank line
    /// is skipped, a bad one reported on `errors`.
    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.line_no += 1;
        let line_no = self.line_no;
        let decoded = match decode_plain(line, MAX_TEXT_BYTES) {
            Some(d) => d,
            None => {
                // Bytes, not a String: invalid UTF-8 is a bad line, not an
                // I/O error that would end the scan.
                let line = match std::str::from_utf8(line) {
                    Ok(s) => s,
                    Err(e) => {
                        self.stats.lines += 1;
                        self.stats.bad_lines += 1;
                        return writeln!(self.errors, "line {line_no}: invalid_utf8: {e}");
                    }
                };
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    return Ok(());
                }
                decode_str(trimmed)
            }
        };
        self.stats.lines += 1;
        let parsed = match decoded {
            Ok(i) => i,
            Err(e) => {
                self.stats.bad_lines += 1;
                return writeln!(self.errors, "line {line_no}: {}: {e}", e.code());
            }
        };
        if let Some(ts) = parsed.ts_ms {
            self.now_ms = self.now_ms.max(ts);
        }
        let b = &mut self.batch;
        b.lines.push(Line::new(&mut b.arena, &parsed, self.now_ms));
        if b.lines.len() >= BATCH_LINES {
            self.send()?;
        }
        Ok(())
    }

    /// Hands the full batch to the judge and writes out what came back.
    fn send(&mut self) -> io::Result<()> {
        while let Ok(mut b) = self.judged.try_recv() {
            encode(&mut b.events, &mut self.out, &mut self.stats)?;
            self.output.write_all(&self.out)?;
            self.out.clear();
            self.spare.push(b);
        }
        let mut next = self.spare.pop().unwrap_or_default();
        next.arena.clear();
        next.lines.clear();
        let full = std::mem::replace(&mut self.batch, next);
        // Fails only if the judge panicked: scan_limited's join says so.
        self.to_judge
            .send(full)
            .map_err(|_| io::Error::other("the judging thread stopped"))
    }
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
pub(crate) enum LineRead {
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
pub(crate) fn read_line_bounded<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    let mut total: u64 = 0;
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = fill(input)?;
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

/// The reader's buffered bytes, refilled if empty (empty at the end);
/// interrupted reads are retried.
fn fill<R: BufRead>(input: &mut R) -> io::Result<&[u8]> {
    loop {
        match input.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    input.fill_buf()
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
