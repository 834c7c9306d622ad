//! `zhijian tail`: print violations and summaries as they are published.

use super::*;

pub(super) fn cmd_tail(
    common: &Common,
    [tenant, agent, category, severity]: [Option<String>; 4],
    json: bool,
    color: ColorChoice,
) -> Result<(), Failure> {
    let filter = &crate::filter::Filter::parse(
        tenant.as_deref(),
        agent.as_deref(),
        category.as_deref(),
        severity.as_deref(),
    )
    .map_err(|e| Failure::Config(e.to_string()))?;
    let colour = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            use std::io::IsTerminal;
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let style = if json {
        crate::client::Style::Json
    } else if colour {
        crate::client::Style::Colour
    } else {
        crate::client::Style::Plain
    };
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    runtime()?.block_on(async {
        tokio::select! {
            r = crate::client::tail(&config, filter, style) => Ok(r?),
            _ = terminate_signal() => Ok(()),
        }
    })
}
