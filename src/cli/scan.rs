//! `zhijian scan`: judge a JSONL file offline.

use super::*;

pub(super) fn cmd_scan(
    lexicons: &Path,
    file: &str,
    max_line_bytes: usize,
    raw_events: bool,
    fail_on: Option<crate::event::Severity>,
    text: bool,
) -> Result<(), Failure> {
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let mut config = EngineConfig::default();
    config.privacy.raw_events = raw_events;
    let mut engine = Engine::with_scanners(scanners, config);
    let stdout = io::stdout();
    let buffered = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut out: Box<dyn Write> = if text {
        Box::new(AsText {
            inner: buffered,
            pending: Vec::new(),
        })
    } else {
        Box::new(buffered)
    };
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let stats = if file == "-" {
        crate::scan::scan_limited(
            &mut engine,
            io::stdin().lock(),
            &mut out,
            &mut err,
            max_line_bytes,
        )?
    } else {
        if Path::new(file).is_dir() {
            return Err(Failure::Runtime(format!(
                "{file} is a directory: give a JSONL file, or - for standard input"
            )));
        }
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::Runtime(format!("cannot open {file}: {e}")))?;
        crate::scan::scan_limited(
            &mut engine,
            BufReader::with_capacity(1 << 16, f),
            &mut out,
            &mut err,
            max_line_bytes,
        )?
    };
    writeln!(
        err,
        "zhijian scan: {} lines, {} bad, {} segments judged, {} violations, {} summaries",
        stats.lines, stats.bad_lines, stats.judged, stats.violations, stats.summaries
    )?;
    if let Some(worst) = fail_on {
        let n: u64 = stats.by_severity[worst as usize..].iter().sum();
        if n > 0 {
            return Err(Failure::Runtime(format!(
                "{n} violation(s) of severity {} or above (--fail-on)",
                worst.as_str()
            )));
        }
    }
    Ok(())
}

/// Events as `zhijian tail` prints them: each JSON line the scan writes
/// becomes one readable line.
struct AsText<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> Write for AsText<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let event: crate::event::Event =
                serde_json::from_slice(&line[..end]).map_err(io::Error::other)?;
            writeln!(self.inner, "{}", crate::client::render(&event, false))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
