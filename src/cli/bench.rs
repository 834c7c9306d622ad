//! `zhijian bench | soak | passthrough | scan-bench` (feature `bench-tools`).

use super::*;

#[cfg(feature = "bench-tools")]
pub(super) fn cmd_passthrough(common: &Common) -> Result<(), Failure> {
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    init_logging(&config);
    Ok(runtime()?.block_on(crate::loadgen::passthrough(config))?)
}

#[cfg(feature = "bench-tools")]
pub(super) fn cmd_soak(opts: crate::loadgen::SoakOptions) -> Result<(), Failure> {
    if opts.rate <= 0.0 {
        return Err(Failure::Config("--rate must be > 0".into()));
    }
    let r = runtime()?.block_on(crate::loadgen::soak(&opts))?;
    println!("| t (s) | daemon RSS (MB) | inputs published | events received |");
    println!("|---|---|---|---|");
    for s in &r.samples {
        println!(
            "| {:.0} | {:.1} | {} | {} |",
            s.t_s, s.rss_mb, s.published, s.received
        );
    }
    println!(
        "soak: {} inputs ({} conversations) at {}/s over {:.0} s; events expected {}, received {}, lost {}, unexpected {}, stored {}, duplicated in stream {}",
        r.published,
        r.conversations,
        opts.rate,
        r.seconds,
        r.expected,
        r.received_unique,
        r.lost,
        r.unexpected,
        r.stored,
        r.duplicated_in_stream
    );
    if r.lost > 0 || r.duplicated_in_stream != 0 || r.unexpected > 0 {
        return Err(Failure::Runtime(
            "the soak lost or duplicated events".into(),
        ));
    }
    if r.undecodable > 0 {
        return Err(Failure::Runtime(format!(
            "the soak received {} outputs without a readable event id",
            r.undecodable
        )));
    }
    Ok(())
}

#[cfg(feature = "bench-tools")]
pub(super) fn cmd_bench(opts: crate::loadgen::BenchOptions) -> Result<(), Failure> {
    let reports = runtime()?.block_on(crate::loadgen::bench(&opts))?;
    println!(
        "{} conversations ({} open at once) x {} agent turns, rate {}",
        opts.conversations,
        opts.open,
        opts.agent_turns,
        if opts.rate > 0.0 {
            format!("{}/s", opts.rate)
        } else {
            "max".into()
        }
    );
    println!("{}", crate::loadgen::ModeReport::HEADER);
    for r in &reports {
        println!("{}", r.row());
    }
    if let (Some(p), Some(d)) = (
        reports.iter().find(|r| r.mode == "passthrough"),
        reports.iter().find(|r| r.mode == "daemon"),
    ) {
        println!(
            "daemon/passthrough throughput: {:.2}; p99 added: {:.2} ms; p99.9 added: {:.2} ms",
            d.inputs_per_second / p.inputs_per_second,
            d.latency_ms[2] - p.latency_ms[2],
            d.latency_ms[3] - p.latency_ms[3]
        );
    }
    let bad: Vec<&crate::loadgen::ModeReport> = reports
        .iter()
        .filter(|r| r.lost > 0 || r.duplicated_in_stream > 0)
        .collect();
    if !bad.is_empty() {
        return Err(Failure::Runtime(format!(
            "{} mode(s) lost or duplicated events",
            bad.len()
        )));
    }
    let garbled = reports
        .iter()
        .filter(|r| r.undecodable > 0 || r.without_msg_id > 0)
        .count();
    if garbled > 0 {
        return Err(Failure::Runtime(format!(
            "{garbled} mode(s) received outputs that do not decode or stored outputs without a Nats-Msg-Id"
        )));
    }
    Ok(())
}

#[cfg(feature = "bench-tools")]
pub(super) fn cmd_scan_bench(lexicons: &Path, passes: usize, file: &Path) -> Result<(), Failure> {
    let scanner = load_scanner(lexicons)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", file.display())))?;
    let agent: Vec<String> = text
        .lines()
        .filter_map(|l| crate::event::decode_str(l).ok())
        .filter_map(|i| match i.kind {
            crate::event::InputKind::Segment(s) if s.speaker == Speaker::Agent => {
                Some(s.text.into_owned())
            }
            _ => None,
        })
        .collect();
    let mut scratch = Scratch::default();
    let mut hits = 0usize;
    // One untimed pass warms the caches and the lazily built tables.
    for t in &agent {
        scanner.scan(t, Speaker::Agent, &mut scratch);
    }
    let started = std::time::Instant::now();
    for _ in 0..passes {
        for t in &agent {
            scanner.scan(t, Speaker::Agent, &mut scratch);
            hits += scratch
                .hits
                .iter()
                .filter(|h| {
                    let r = scanner.rule(scanner.group_rule(h.group));
                    scanner.lexicon().categories[r.category].id == "forbidden"
                })
                .count();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = agent.len() * passes;
    println!(
        "{{\"segments\": {n}, \"seconds\": {secs:.6}, \"segments_per_second\": {:.0}, \"forbidden_hits_per_pass\": {}}}",
        n as f64 / secs,
        hits / passes.max(1)
    );
    Ok(())
}
