//! `zhijian publish`: replay a JSONL file onto the input subjects.

use super::*;

pub(super) fn cmd_publish(common: &Common, rate: f64, file: &Path) -> Result<(), Failure> {
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    let sent = runtime()?.block_on(crate::client::publish(&config, file, rate))?;
    eprintln!("zhijian publish: {sent} messages published and acknowledged");
    Ok(())
}
