//! What operations teams see: a real Prometheus server scrapes a running
//! daemon, loads the shipped alert rules and evaluates them; the Grafana
//! dashboard and the rules name only metrics the daemon exports.

use crate::daemon::{
    DEADLINE, Daemon, config, js, lexicons, publish, summaries_in, traffic, wait_done,
};
use crate::nats_support::{NatsServer, free_port, http_get, tempdir};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zhijian::event::Event;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A Prometheus server on a free loopback port scraping one target every
/// second with the shipped rules, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempdir("prometheus");
        let config = dir.join("prometheus.yml");
        let rules = deploy().join("prometheus/rules/*.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: zhijian\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n",
                rules.display().to_string()
            ),
        )
        .expect("write prometheus.yml");
        let bin = std::env::var_os("PROMETHEUS_BIN").unwrap_or_else(|| "prometheus".into());
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {bin:?} ({e}): install Prometheus (Debian: apt-get install prometheus; ./dev test does)"
                )
            });
        let p = Prometheus { child, port };
        let deadline = Instant::now() + DEADLINE;
        while http_get(port, "/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// `GET path` on the HTTP API: the `data` of a successful answer.
    fn api(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.port, path).expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).expect("API answers JSON");
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query: each series' labels (as `k=v,…`) → value.
    fn query(&self, promql: &str) -> BTreeMap<String, f64> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        let mut out = BTreeMap::new();
        for r in data["result"].as_array().into_iter().flatten() {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            out.insert(labels, value);
        }
        out
    }

    /// Polls `promql` until it answers `want` (series with value 0 ignored).
    async fn wait_for(&self, promql: &str, want: &BTreeMap<String, f64>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = self.query(promql);
            seen.retain(|_, v| *v != 0.0);
            if &seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: Prometheus has {seen:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Prometheus {
    /// Polls `promql` until its series' label sets are `want`.
    async fn wait_for_labels(&self, promql: &str, want: &BTreeSet<String>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen: BTreeSet<String> = self.query(promql).into_keys().collect();
            if &seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: Prometheus has {seen:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The expression of the dashboard panel titled `title` (its one query).
fn dashboard_expr(title: &str) -> String {
    let text = std::fs::read_to_string(deploy().join("grafana/dashboards/zhijian.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panel = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    panel["targets"][0]["expr"]
        .as_str()
        .expect("an expr")
        .to_string()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Counts of the daemon's published violations by the given labels.
fn count_by(
    events: &[Event],
    labels: impl Fn(&zhijian::event::Violation) -> String,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for e in events {
        if let Event::Violation(v) = e {
            *out.entry(labels(v)).or_insert(0.0) += 1.0;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon_and_evaluates_the_shipped_rules() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let prom = Prometheus::start(daemon.metrics_port);
    let lines = traffic(20, 3);
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, summaries_in(&lines)).await;

    let by_category = count_by(&got, |v| format!("category={}", v.category));
    assert!(by_category.len() >= 3, "traffic too thin: {by_category:?}");
    prom.wait_for("sum by (category) (zhijian_violations_total)", &by_category)
        .await;
    let by_tenant = count_by(&got, |v| {
        format!("category={},tenant={}", v.category.as_str(), v.tenant)
    });
    prom.wait_for(
        "sum by (tenant, category) (zhijian_tenant_violations_total)",
        &by_tenant,
    )
    .await;
    // The dashboard's breakdown by category names each category as the
    // lexicon does (zhijian_category_info joined on the id).
    let by_name: BTreeSet<String> = got
        .iter()
        .filter_map(|e| match e {
            Event::Violation(v) => {
                Some(format!("category={},name={}", v.category, v.category_name))
            }
            Event::Summary(_) => None,
        })
        .collect();
    assert!(
        by_name.iter().all(|l| !l.ends_with("name=")),
        "violations without category_name: {by_name:?}"
    );
    let panel = dashboard_expr("Violations by category / 按类别违规速率")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m");
    prom.wait_for_labels(&panel, &by_name).await;
    let up = prom.query("up{job=\"zhijian\"}");
    assert_eq!(up.values().copied().collect::<Vec<_>>(), [1.0], "{up:?}");

    // Every shipped rule is loaded and has been evaluated against the
    // daemon's series without error.
    let deadline = Instant::now() + DEADLINE;
    let alerts = loop {
        let data = prom.api("/api/v1/rules");
        let rules: Vec<serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001"))
        });
        if !rules.is_empty() && evaluated {
            for r in &rules {
                assert_eq!(r["health"], "ok", "rule failed: {r}");
            }
            break rules
                .iter()
                .filter(|r| r["type"] == "alerting")
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect::<BTreeSet<_>>();
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {data}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for needed in [
        "ZhijianViolationRateSpike",
        "ZhijianForbiddenBurstTenant",
        "ZhijianNoSegments",
        "ZhijianNatsDisconnected",
        "ZhijianDeadLetters",
        "ZhijianLexiconReloadFailed",
        "ZhijianLatencyP99High",
        "ZhijianConsumerLagGrowing",
    ] {
        assert!(alerts.contains(needed), "{needed} not among {alerts:?}");
    }
    // Healthy traffic activates none of the outage alerts, pending or
    // firing: this test lasts seconds, so an alert with `for: 2m`
    // (ZhijianDown) can only ever be pending here, however wrong its
    // expression. Rules are evaluated from Prometheus's start, before it has
    // scraped anything; the verdict is read from the first evaluation that
    // sees the daemon's `up` (ZhijianTargetMissing, `absent(up)`, inactive:
    // the alerts of one group are evaluated at one timestamp).
    let deadline = Instant::now() + DEADLINE;
    let states = loop {
        let data = prom.api("/api/v1/rules");
        let states: BTreeMap<String, String> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["type"] == "alerting")
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if states.get("ZhijianTargetMissing").map(String::as_str) == Some("inactive") {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "no rule evaluation saw up{{job=\"zhijian\"}}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for outage in [
        "ZhijianNatsDisconnected",
        "ZhijianDeadLetters",
        "ZhijianDown",
        "ZhijianTargetMissing",
    ] {
        assert_eq!(
            states.get(outage).map(String::as_str),
            Some("inactive"),
            "{outage} is active on healthy traffic: {states:?}"
        );
    }
    daemon.stop().await;
}

/// Metric families in a Prometheus text exposition.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The `zhijian_*` metric names in a PromQL expression (or any text), with
/// a histogram's `_bucket`/`_sum`/`_count` mapped to its family. Names of
/// recording rules (`level:metric:operations`) are not metrics: skipped.
fn metric_names(text: &str, families: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("zhijian_") {
        let inside_name = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let start = &rest[i..];
        let end = start
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(start.len());
        let name = &start[..end];
        if inside_name || start[end..].starts_with(':') {
            rest = &start[end..];
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| families.get(*base).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &start[end..];
    }
    out
}

/// Panels of a dashboard, rows' nested panels included.
fn panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_metrics_the_daemon_exports() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    // Labelled families appear with their first series: some traffic first.
    let lines = traffic(10, 4);
    publish(&nats, &lines).await;
    wait_done(&js(&nats).await, summaries_in(&lines)).await;
    let exported = families(&daemon.metrics());
    daemon.stop().await;
    assert!(exported.len() > 20, "{exported:?}");

    let path = deploy().join("grafana/dashboards/zhijian.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "zhijian");
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64()),
            "duplicate panel id: {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in &targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            let names = metric_names(expr, &exported);
            assert!(
                !names.is_empty() || expr.contains("up{"),
                "panel {title:?}: {expr:?} names no zhijian metric"
            );
            for name in names {
                assert!(
                    exported.contains_key(&name),
                    "panel {title:?}: {name} is not exported by the daemon"
                );
                used.insert(name);
            }
        }
    }
    for needed in [
        "zhijian_violations_total",
        "zhijian_segments_received_total",
        "zhijian_end_to_end_latency_seconds",
        "zhijian_open_conversations",
        "zhijian_deadlettered_total",
        "zhijian_lexicon_reloads_total",
        "zhijian_nats_connected",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }

    let rules_dir = deploy().join("prometheus/rules");
    let mut rule_files = 0;
    for entry in std::fs::read_dir(&rules_dir).expect("rules dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "yml") {
            continue;
        }
        rule_files += 1;
        let text = std::fs::read_to_string(&path).expect("rules file");
        for name in metric_names(&text, &exported) {
            assert!(
                exported.contains_key(&name),
                "{}: {name} is not exported by the daemon",
                path.display()
            );
        }
    }
    assert!(rule_files > 0, "no rule files in {}", rules_dir.display());
}

/// Raw events are an opt-in the daemon shows: `zhijian_privacy_raw_tenants`
/// has a series for each tenant whose events carry personal numbers in
/// clear, and none for anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_opted_in_to_raw_events_are_shown_in_metrics() {
    let nats = NatsServer::start();
    let extra = "[privacy]\nraw_tenants = [\"lab\"]\n";
    let daemon = Daemon::start(config(&nats, &lexicons(), extra)).await;
    let text = daemon.metrics();
    daemon.stop().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("zhijian_privacy_raw_tenants{"))
        .collect();
    assert_eq!(
        series,
        ["zhijian_privacy_raw_tenants{tenant=\"lab\"} 1"],
        "{text}"
    );
}

/// Every stream the daemon creates has a retention: transcripts 7 days,
/// events 30, dead letters 14 (`[streams] *_max_age_h`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_the_daemon_creates_keep_data_for_a_set_time() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "");
    cfg.streams.output_max_age_h = 48;
    let daemon = Daemon::start(cfg).await;
    let js = js(&nats).await;
    let mut ages = Vec::new();
    for name in ["TRANSCRIPTS", "VIOLATIONS", "ZHIJIAN_DEADLETTER"] {
        let mut stream = js.get_stream(name).await.expect("stream");
        let info = stream.info().await.expect("info");
        ages.push(info.config.max_age.as_secs() / 3600);
    }
    daemon.stop().await;
    assert_eq!(ages, [168, 48, 336]);
}

/// `zhijian healthcheck` asks the daemon its config names: 0 while it is
/// alive (and, with --ready, judging), 1 once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_says_alive_and_ready_then_gone() {
    let nats = NatsServer::start();
    let (files, daemon) =
        crate::daemon::ChildDaemon::with_config(&nats, "healthcheck", "", 5).await;
    let check = |ready: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zhijian"));
        cmd.arg("healthcheck").arg("--config").arg(&files.cfg);
        if ready {
            cmd.arg("--ready");
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run zhijian healthcheck")
            .code()
    };
    assert_eq!(check(false), Some(0));
    assert_eq!(check(true), Some(0));
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
    assert_eq!(check(false), Some(1));
}
