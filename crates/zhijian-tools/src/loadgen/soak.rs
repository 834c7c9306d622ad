//! The soak: the daemon under steady live-like load for a long time,
//! conversations opening and closing, its RSS sampled, loss and duplicates
//! counted.

use super::*;

/// `zhijian-tools soak`: the daemon under steady live-like load for a long time.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub nats_url: String,
    pub lexicons: PathBuf,
    pub seconds: u64,
    /// Input segments per second.
    pub rate: f64,
    /// Conversations in progress at any time.
    pub open: usize,
    /// Sample the daemon's RSS this often.
    pub sample_every: Duration,
}

/// One RSS sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_s: f64,
    pub rss_mb: f64,
    pub published: u64,
    pub received: u64,
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub published: u64,
    pub conversations: u64,
    pub expected: u64,
    pub received_unique: u64,
    pub lost: u64,
    /// Ids received that no conversation should produce.
    pub unexpected: u64,
    /// Outputs received without a readable event id (not counted as
    /// received).
    pub undecodable: u64,
    pub stored: u64,
    pub duplicated_in_stream: i64,
    pub seconds: f64,
    pub samples: Vec<Sample>,
}

/// The 128-bit id of an output event (32 hex digits), as a number: the
/// soak keeps millions of them.
pub(super) fn id_number(id: &str) -> Option<u128> {
    u128::from_str_radix(id, 16).ok()
}

/// Runs the daemon for `seconds` at `rate`: rounds of fresh synthetic
/// conversations (each round's ids distinct, every conversation opened and
/// closed within it), expected events computed per round by the engine,
/// outputs received over core NATS, the daemon's RSS sampled. Loss:
/// expected ids never received. Duplicates: messages stored in the output
/// stream beyond the distinct expected ones.
pub async fn soak(opts: &SoakOptions) -> Result<SoakReport, BenchError> {
    let bench = BenchOptions {
        nats_url: opts.nats_url.clone(),
        lexicons: opts.lexicons.clone(),
        conversations: 0,
        open: opts.open,
        agent_turns: 6,
        rate: opts.rate,
        modes: Vec::new(),
        extra_phrases: 0,
        reload_every: None,
        daemon_bin: None,
    };
    let Child {
        client,
        js,
        mut child,
        dir,
        ..
    } = start_child(&bench, "run", "soak", false).await?;
    let pid = child.0.id();

    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let seen: Arc<Mutex<std::collections::HashSet<u128>>> = Arc::default();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let undecodable = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The child runs with the default subjects.
    let streams = StreamsConfig::default();
    let (mut outputs, mut summaries) = subscribe_outputs(&client).await?;
    let (seen_rx, received_rx, undecodable_rx) = (
        Arc::clone(&seen),
        Arc::clone(&received),
        Arc::clone(&undecodable),
    );
    let receiver = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = outputs.next() => m,
                m = summaries.next() => m,
            };
            let Some(msg) = msg else { break };
            let Some(n) = serde_json::from_slice::<IdOnly>(&msg.payload)
                .ok()
                .and_then(|e| id_number(&e.id))
            else {
                // Counted, not dropped: an output without a readable id is
                // a fault the report shows.
                undecodable_rx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            if let Ok(mut s) = seen_rx.lock()
                && s.insert(n)
            {
                received_rx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let (stop_sampling, mut sampling_stopped) = tokio::sync::watch::channel(false);
    let sampler = {
        let (samples, received, published) = (
            Arc::clone(&samples),
            Arc::clone(&received),
            Arc::clone(&published),
        );
        let every = opts.sample_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sampling_stopped.changed() => return,
                }
                let s = Sample {
                    t_s: started.elapsed().as_secs_f64(),
                    rss_mb: rss_mb(pid),
                    published: published.load(std::sync::atomic::Ordering::Relaxed),
                    received: received.load(std::sync::atomic::Ordering::Relaxed),
                };
                eprintln!(
                    "soak t={:.0}s rss={:.1}MB published={} received={}",
                    s.t_s, s.rss_mb, s.published, s.received
                );
                if let Ok(mut v) = samples.lock() {
                    v.push(s);
                }
            }
        })
    };

    let lexicon = Arc::new(zhijian::matcher::load_base(&opts.lexicons)?);
    let mix = Mix::default();
    // About five seconds of traffic per round.
    let per_round = ((opts.rate * 5.0) / (2.0 * mix.agent_turns as f64 + 1.0)).max(100.0) as usize;
    let mut expected: std::collections::HashSet<u128> = std::collections::HashSet::new();
    let mut conversations = 0u64;
    let mut sent = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(opts.seconds) {
        let convs = synth::conversations(round, per_round, &format!("soak{round}-"), &mix);
        let lines = synth::staggered_jsonl(&convs, opts.open, "soak", "call");
        let out = judge_offline(&lexicon, &lines)?;
        for l in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let e: IdOnly = serde_json::from_slice(l).map_err(BenchError::Expected)?;
            expected.insert(id_number(&e.id).ok_or(BenchError::EventId)?);
        }
        conversations += convs.len() as u64;
        for l in &lines {
            let due = started + Duration::from_secs_f64(sent as f64 / opts.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let subject = match zhijian::event::decode_str(l) {
                Ok(input) => subject::input(&streams, &input.tenant, &input.conversation_id),
                Err(e) => return Err(BenchError::InvalidLine(e)),
            };
            publish_windowed(&js, &mut in_flight, subject, l).await?;
            sent += 1;
            published.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
        round += 1;
    }
    for a in in_flight {
        a.await
            .map_err(|e| BenchError::nats("an input was not stored", e))?;
    }
    // Drain: until every expected event arrived, or nothing for 60 s.
    let mut last = (0u64, Instant::now());
    loop {
        let got = received.load(std::sync::atomic::Ordering::Relaxed);
        if got >= expected.len() as u64 || last.1.elapsed() > Duration::from_secs(60) {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_sampling.send(true);
    let _ = sampler.await;
    receiver.abort();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.0.wait();
    let stored = js
        .get_stream("VIOLATIONS")
        .await
        .map_err(|e| BenchError::nats("stream VIOLATIONS", e))?
        .info()
        .await
        .map_err(|e| BenchError::nats("stream VIOLATIONS", e))?
        .state
        .messages;
    let seen = seen.lock().map_err(|_| BenchError::Poisoned)?.clone();
    let lost = expected.iter().filter(|id| !seen.contains(id)).count() as u64;
    let unexpected = seen.iter().filter(|id| !expected.contains(id)).count() as u64;
    let _ = std::fs::remove_dir_all(&dir);
    let samples = samples.lock().map_err(|_| BenchError::Poisoned)?.clone();
    Ok(SoakReport {
        published: sent,
        conversations,
        expected: expected.len() as u64,
        received_unique: seen.len() as u64,
        lost,
        unexpected,
        undecodable: undecodable.load(std::sync::atomic::Ordering::Relaxed),
        stored,
        duplicated_in_stream: stored as i64 - expected.len() as i64 + lost as i64
            - unexpected as i64,
        seconds,
        samples,
    })
}

/// VmRSS of a process, in MB.
pub(super) fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}
