//! The process metrics Prometheus clients usually export
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds` …), read from `/proc/self` at each scrape. Elsewhere
//! than Linux there is no `/proc`: the families are absent.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};
use std::sync::Mutex;

/// Clock ticks per second of `/proc/self/stat` (USER_HZ: 100 in Linux's
/// user-space ABI on every architecture).
const TICKS: f64 = 100.0;

pub(crate) struct ProcessCollector {
    cpu: Counter,
    /// The CPU seconds already counted (a counter only goes up by deltas).
    cpu_counted: Mutex<f64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        let gauge = |name: &str, help: &str| {
            Gauge::with_opts(Opts::new(name, help)).expect("static metric definition")
        };
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("static metric definition");
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let descs = [
            cpu.desc(),
            resident.desc(),
            virtual_memory.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        ProcessCollector {
            cpu,
            cpu_counted: Mutex::new(0.0),
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            descs,
        }
    }

    /// Reads `/proc/self`; false when it cannot (not Linux).
    fn read(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return false;
        };
        // The fields after the command name (which may hold spaces).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime, stime, starttime, vsize, rss: fields 14, 15, 22, 23, 24
        // of proc(5), counted from 1; `fields` starts at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let seconds = (utime + stime) / TICKS;
            if let Ok(mut counted) = self.cpu_counted.lock()
                && seconds > *counted
            {
                self.cpu.inc_by(seconds - *counted);
                *counted = seconds;
            }
        }
        if let Some(v) = field(23) {
            self.virtual_memory.set(v);
        }
        if let Some(kb) = status_kb("VmRSS:") {
            self.resident.set(kb * 1024.0);
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            self.start_time.set(boot + start / TICKS);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as f64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
        true
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.read() {
            return Vec::new();
        }
        [
            self.cpu.collect(),
            self.resident.collect(),
            self.virtual_memory.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
            self.start_time.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A `… kB` line of `/proc/self/status`.
fn status_kb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Seconds since the epoch at boot (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// The soft limit of open files (`/proc/self/limits`).
fn max_open_files() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
