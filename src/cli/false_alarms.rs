//! `zhijian false-alarms`: export the alerts marked as false alarms.

use super::*;

pub(super) fn cmd_false_alarms(common: &Common, format: ExportFormat) -> Result<(), Failure> {
    use crate::console::desk;
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    let bucket = format!("{}{}", config.streams.state_bucket, desk::BUCKET_SUFFIX);
    let marked = runtime()?.block_on(async {
        let client = crate::nats_conn::connect(&config.nats).await?;
        let js = async_nats::jetstream::new(client);
        Ok::<_, Failure>(desk::read_false_alarms(&js, &bucket).await?)
    })?;
    let out = match format {
        ExportFormat::Csv => desk::false_alarms_csv(&marked),
        ExportFormat::Jsonl => desk::false_alarms_jsonl(&marked),
    };
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Failure::Runtime(format!("cannot write the export: {e}")))?;
    eprintln!("zhijian false-alarms: {} from {bucket:?}", marked.len());
    Ok(())
}
