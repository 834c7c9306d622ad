//! `zhijian label`: label a sample of conversations in the terminal.

use super::*;

pub(super) fn cmd_label(out: &Path, sample: Option<usize>, input: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", input.display())))?;
    let existing = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::Runtime(format!(
                "cannot read {}: {e}",
                out.display()
            )));
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    let summary = crate::label::run(
        &text,
        &existing,
        sample,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        &mut file,
    )
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    eprintln!(
        "zhijian: {} conversation(s) labelled, {} skipped, {} labelled before; labels in {}",
        summary.labelled,
        summary.skipped,
        summary.already,
        out.display()
    );
    Ok(())
}
