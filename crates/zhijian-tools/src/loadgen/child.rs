//! The daemon or the pass-through as a child process: its configuration,
//! start, readiness, and what it used.

use super::*;

/// A consumer under test, started on reset streams.
pub(super) struct Child {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) metrics_port: u16,
    pub(super) child: KillOnDrop,
    /// Holds its config file.
    pub(super) dir: PathBuf,
}

/// Resets the zhijian streams and state, then starts `zhijian <sub>` with
/// the bench config (in a temporary directory named after `what`) and waits
/// until its consumer exists (both the daemon and the pass-through create
/// it at start).
pub(super) async fn start_child(
    opts: &BenchOptions,
    sub: &str,
    what: &str,
    shadow: bool,
) -> Result<Child, BenchError> {
    let client = async_nats::connect(opts.nats_url.as_str())
        .await
        .map_err(|e| BenchError::nats(format!("cannot connect to {}", opts.nats_url), e))?;
    let js = jetstream::new(client.clone());
    for s in [
        "TRANSCRIPTS",
        "TRANSCRIPTS_UNROUTABLE",
        "VIOLATIONS",
        "ZHIJIAN_DEADLETTER",
        "SHADOW",
    ] {
        let _ = js.delete_stream(s).await;
    }
    for bucket in ["zhijian_state", "zhijian_cluster"] {
        let _ = js.delete_key_value(bucket).await;
    }
    let dir = std::env::temp_dir().join(format!("zhijian-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("cannot create {}", dir.display()), e))?;
    let metrics_port = free_port()?;
    let cfg = dir.join(format!("{sub}.toml"));
    std::fs::write(&cfg, config_text(opts, metrics_port, shadow))
        .map_err(|e| BenchError::io(format!("cannot write {}", cfg.display()), e))?;
    let this =
        std::env::current_exe().map_err(|e| BenchError::io("cannot find this executable", e))?;
    // The daemon is the product binary (`zhijian`, beside this one in the
    // same target directory, unless --daemon-bin names another build); the
    // pass-through is this binary's own `passthrough`.
    let exe = match (&opts.daemon_bin, sub) {
        (Some(bin), "run") => bin.clone(),
        (None, "run") => this.with_file_name("zhijian"),
        _ => this,
    };
    let child = std::process::Command::new(exe)
        .args([sub, "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|source| {
            let _ = std::fs::remove_dir_all(&dir);
            BenchError::Start {
                sub: sub.to_string(),
                source,
            }
        })?;
    let child = KillOnDrop(child);
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        // The daemon: its first `/readyz` 200 (every partition judging),
        // where the latency is measured from. The pass-through: a consumer
        // on each partition.
        let ready = if sub == "run" {
            readyz_ok(metrics_port).await
        } else {
            passthrough_ready(&js).await
        };
        if ready {
            break;
        }
        if Instant::now() > ready_by {
            drop(child);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(BenchError::NotReady(sub.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Child {
        client,
        js,
        metrics_port,
        child,
        dir,
    })
}

/// `/readyz` answers 200.
pub(super) async fn readyz_ok(port: u16) -> bool {
    let read = tokio::task::spawn_blocking(move || -> Option<bool> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200"))
    })
    .await;
    matches!(read, Ok(Some(true)))
}

/// The input stream has a consumer on each of its partitions.
pub(super) async fn passthrough_ready(js: &jetstream::Context) -> bool {
    let Ok(mut s) = js.get_stream("TRANSCRIPTS").await else {
        return false;
    };
    let Ok(info) = s.info().await else {
        return false;
    };
    let partitions = zhijian::daemon::partitions_of(&info.config).unwrap_or(1);
    info.state.consumer_count >= partitions as usize
}

/// A child process killed when the bench returns early.
pub(super) struct KillOnDrop(pub(super) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(super) fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("cannot pick a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("cannot pick a free port", e))
}

/// VmHWM of a process, in MB.
pub(super) fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// A size in `/proc/<pid>/status`, in MB; NaN when unreadable (the process
/// gone), not 0, which would pass for a small footprint.
pub(super) fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
