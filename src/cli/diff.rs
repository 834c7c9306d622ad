//! `zhijian diff`: what a lexicon change does to the same conversations.

use super::*;

pub(super) fn cmd_diff(
    old: &Path,
    new: &Path,
    format: DiffFormat,
    input: Option<&Path>,
    last_minutes: Option<u64>,
    common: &Common,
) -> Result<(), Failure> {
    let load = |d: &Path| Scanners::load(d).map(Arc::new).map_err(Failure::from);
    let (old, new) = (load(old)?, load(new)?);
    let text = match (input, last_minutes) {
        (Some(input), _) => std::fs::read_to_string(input)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", input.display())))?,
        (None, Some(minutes)) => {
            let flags = Overrides {
                nats_url: common.nats_url.clone(),
                ..Overrides::default()
            };
            let config = load_config(common, &flags)?;
            let since = crate::daemon::now_ms().saturating_sub(minutes.saturating_mul(60_000));
            runtime()?
                .block_on(crate::client::read_transcripts(&config, since))?
                .join("\n")
        }
        (None, None) => return Err(Failure::Config("give INPUT or --last-minutes".into())),
    };
    let report = crate::diff::compare(old, new, &text);
    let mut out = io::stdout().lock();
    match format {
        DiffFormat::Text => write!(out, "{}", report.text())?,
        DiffFormat::Html => write!(out, "{}", report.html())?,
        DiffFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            writeln!(out)?;
        }
    }
    Ok(())
}
