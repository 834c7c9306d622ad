//! Many instances on a three-node nats-server cluster (R3 streams and
//! bucket), thousands of conversations replayed while something fails:
//! `kill -9` of the instance holding the most partitions, SIGTERM of one
//! (hand-over), a fourth instance joining (rebalance), the server leading
//! the most streams killed and restarted, and an instance paused past its
//! lease. Every time: the stored events equal `zhijian scan` of the same
//! input (0 lost), each id is stored once (0 duplicated), no partition's
//! events go back to an older holder after a newer one published (never
//! two holders at once), and every orphaned partition produces again
//! within 10 s.

use crate::daemon::{assert_no_duplicate_ids, assert_same, lexicons, metric_series, scan, traffic};
use crate::nats_support::{free_port, http_get, nats_server_bin, tempdir};
use crate::support::TempDir;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use zhijian::config::{Overrides, RawConfig};
use zhijian::daemon::assignment;
use zhijian::event::Event;

const PARTITIONS: u32 = 8;

/// Short leases keep the test quick; CLUSTER_TEST_LEASE_MS and
/// CLUSTER_TEST_HEARTBEAT_MS measure others (the defaults: 5000 and 1000).
fn timing() -> (u64, u64) {
    let get = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        get("CLUSTER_TEST_HEARTBEAT_MS", 250),
        get("CLUSTER_TEST_LEASE_MS", 1_500),
    )
}
const DEADLINE: Duration = Duration::from_secs(120);

/// One node of the cluster: its ports and store survive a restart.
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    route: u16,
    child: Option<Child>,
    store: TempDir,
}

struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    fn start(n: usize) -> NatsCluster {
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                monitor: free_port(),
                route: free_port(),
                child: None,
                store: tempdir(&format!("cluster-n{i}")),
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route))
            .collect();
        for node in &mut nodes {
            node.child = Some(spawn_node(node, &routes));
        }
        let c = NatsCluster { nodes };
        for i in 0..n {
            c.wait_ready(i);
        }
        c
    }

    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = &self.nodes[i];
        loop {
            if http_get(node.monitor, "/healthz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy after 60 s ({:?}):\n{}",
                node.name,
                http_get(node.monitor, "/healthz"),
                node_log_tail(node)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route))
            .collect();
        let child = spawn_node(&self.nodes[i], &routes);
        self.nodes[i].child = Some(child);
        self.wait_ready(i);
    }

    /// The node leading the most streams (and their consumers).
    fn busiest_leader(&self) -> usize {
        let mut leads: HashMap<String, usize> = HashMap::new();
        for node in &self.nodes {
            let Some((200, body)) = http_get(node.monitor, "/jsz?streams=true&consumers=true")
            else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            for account in v["account_details"].as_array().into_iter().flatten() {
                for s in account["stream_detail"].as_array().into_iter().flatten() {
                    if let Some(l) = s["cluster"]["leader"].as_str() {
                        *leads.entry(l.to_string()).or_default() += 1;
                    }
                    for c in s["consumer_detail"].as_array().into_iter().flatten() {
                        if let Some(l) = c["cluster"]["leader"].as_str() {
                            *leads.entry(l.to_string()).or_default() += 1;
                        }
                    }
                }
            }
            break;
        }
        let best = leads
            .iter()
            .max_by_key(|(name, n)| (**n, name.as_str()))
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        self.nodes.iter().position(|n| n.name == best).unwrap_or(0)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn spawn_node(node: &Node, routes: &[String]) -> Child {
    let bin = nats_server_bin();
    Command::new(&bin)
        .args(["-a", "127.0.0.1", "-n", &node.name])
        .args([
            "-p",
            &node.port.to_string(),
            "-m",
            &node.monitor.to_string(),
        ])
        .args(["-js", "-sd"])
        .arg(node.store.as_os_str())
        .args(["--cluster_name", "zj"])
        .args(["--cluster", &format!("nats://127.0.0.1:{}", node.route)])
        .args(["--routes", &routes.join(",")])
        .stdout(Stdio::null())
        .stderr(node_log(node))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// The node's log, appended to across restarts, kept beside its store.
fn node_log(node: &Node) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.store.join("node.log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The last lines of a node's log (for failure messages).
fn node_log_tail(node: &Node) -> String {
    let text = std::fs::read_to_string(node.store.join("node.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A zhijian instance, the real binary.
struct Instance {
    name: String,
    child: Child,
    metrics: u16,
}

impl Instance {
    fn start(dir: &Path, name: &str, toml: &str) -> Instance {
        let metrics = free_port();
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "{toml}\n[metrics]\naddr = \"127.0.0.1:{metrics}\"\n[cluster]\ninstance = \"{name}\"\npartitions = {PARTITIONS}\nreplicas = 3\nheartbeat_ms = {}\nlease_ms = {}\ncheckpoint_ms = 200\nbucket = \"{}\"\n",
                timing().0,
                timing().1,
                bucket_of(toml)
            ),
        )
        .expect("instance config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_zhijian"))
            .args(["run", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn zhijian run");
        Instance {
            name: name.to_string(),
            child,
            metrics,
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    fn ready(&self) -> bool {
        http_get(self.metrics, "/readyz").is_some_and(|(code, _)| code == 200)
    }

    /// SIGTERM and wait (a clean exit is expected).
    fn stop(mut self) -> bool {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Resumed first, or a stopped process never dies.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scenario's own names, so scenarios share the cluster, not streams.
fn names(k: usize, urls: &str) -> String {
    format!(
        "[nats]\nurl = \"{urls}\"\n[streams]\ninput_stream = \"IN{k}\"\ninput_prefix = \"tr{k}\"\noutput_stream = \"OUT{k}\"\nviolations_prefix = \"vi{k}\"\nsummaries_prefix = \"su{k}\"\ndeadletter_stream = \"DL{k}\"\ndeadletter_subject = \"dl{k}\"\nstate_bucket = \"st{k}\"\nduplicate_window_s = 600\n[engine]\nlexicons = \"{}\"\n[daemon]\nshutdown_grace_s = 10\n[console]\nenabled = false\n[log]\nlevel = \"info\"\n",
        lexicons().display()
    )
}

fn bucket_of(toml: &str) -> String {
    let k = toml
        .split("input_stream = \"IN")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("0");
    format!("cl{k}")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    Kill9,
    Sigterm,
    Join,
    ServerRestart,
    Pause,
}

/// Lease owners and revisions, by partition.
async fn leases(kv: &jetstream::kv::Store) -> BTreeMap<u32, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        if let Ok(Some(e)) = kv.entry(format!("lease.{p}")).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&e.value)
        {
            let owner = v["owner"].as_str().unwrap_or_default().to_string();
            let until = v["until_ms"].as_u64().unwrap_or(0);
            out.insert(p, (owner, until, e.revision));
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Waits until every partition is leased to its rendezvous owner among
/// `members`.
async fn wait_balanced(kv: &jetstream::kv::Store, members: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leases(kv).await;
        let now = now_ms();
        let table = assignment(members, PARTITIONS);
        let balanced = (0..PARTITIONS).all(|p| {
            l.get(&p).is_some_and(|(owner, until, _)| {
                *until > now
                    && table[p as usize].map(|m| members[m].as_str()) == Some(owner.as_str())
            })
        });
        if balanced {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not balanced over {members:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of a stream, in order, with its JetStream metadata.
async fn messages(js: &jetstream::Context, stream: &str) -> Vec<jetstream::Message> {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let n = s.info().await.expect("stream info").state.messages as usize;
    if n == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut out = Vec::with_capacity(n);
    let mut m = consumer.messages().await.expect("messages");
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), m.next()).await {
            Ok(Some(Ok(msg))) => out.push(msg),
            Ok(Some(Err(_))) => continue,
            _ => break,
        }
    }
    out
}

/// The instances' logs, last lines (for failure messages).
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for i in 1..=4 {
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("i{i}.log"))) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines.len().saturating_sub(15);
            out.push_str(&format!("--- i{i}\n"));
            // Warnings and errors first (the last 30 before the tail), then
            // the tail.
            let warned: Vec<&&str> = lines[..tail]
                .iter()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            for l in &warned[warned.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("...\n");
            for l in &lines[tail..] {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// Waits until every running instance's partitions have a checkpoint
/// younger than a second (they are written every 200 ms).
async fn wait_checkpoints_fresh(instances: &[Instance], dir: &Path, failure: Failure) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut oldest = 0.0f64;
        for i in instances {
            if let Some(ages) = metric_series(i.metrics, "zhijian_checkpoint_age_seconds").await {
                oldest = ages.into_iter().fold(oldest, f64::max);
            }
        }
        if oldest < 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{failure:?}: a checkpoint {oldest:.1} s old after {DEADLINE:?}:\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn header(m: &jetstream::Message, name: &str) -> Option<u64> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
}

async fn scenario(cluster: &mut NatsCluster, k: usize, failure: Failure) {
    let dir = tempdir(&format!("cluster-{k}"));
    let toml = names(k, &cluster.urls());
    let mut instances: Vec<Instance> = (1..=3)
        .map(|i| Instance::start(&dir, &format!("i{i}"), &toml))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !instances.iter().all(Instance::ready) {
        for i in &mut instances {
            if let Ok(Some(status)) = i.child.try_wait() {
                panic!("{} exited at start ({status}):\n{}", i.name, logs(&dir));
            }
        }
        assert!(
            Instant::now() < deadline,
            "instances not ready:\n{}",
            logs(&dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|u| u.parse().expect("server address"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connect");
    let js = jetstream::new(client);
    let kv = js
        .get_key_value(format!("cl{k}"))
        .await
        .expect("cluster bucket");
    let members: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let mut sorted = members.clone();
    sorted.sort();
    wait_balanced(&kv, &sorted).await;

    // Thousands of conversations, published while the failure happens.
    let lines = traffic(1200, 40 + k as u64);
    let want = scan(&lines);
    let input = dir.join("input.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("input");
    let client_cfg = RawConfig::parse(&toml)
        .expect("client config parses")
        .validate(&Overrides::default())
        .expect("client config");
    // Its own thread and runtime (the publisher's reader is not Send).
    let publisher = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(zhijian::client::publish(&client_cfg, &input, 3000.0))
            .map_err(|e| e.to_string())
    });
    // The failure comes with the traffic under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = match js.get_stream(format!("IN{k}")).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if stored >= 2_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} inputs stored after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = leases(&kv).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (owner, _, _) in before.values() {
        *counts.entry(owner.clone()).or_default() += 1;
    }
    let victim_name = counts
        .iter()
        .max_by_key(|(name, n)| (**n, name.as_str()))
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    let victim = instances
        .iter()
        .position(|i| i.name == victim_name)
        .unwrap_or(0);
    let failed_at = now_ms();
    let mut orphaned: Vec<(u32, u64)> = Vec::new();
    let orphans_of = |name: &str| -> Vec<(u32, u64)> {
        before
            .iter()
            .filter(|(_, (owner, _, _))| owner == name)
            .map(|(p, (_, _, rev))| (*p, *rev))
            .collect()
    };
    match failure {
        Failure::Kill9 => {
            orphaned = orphans_of(&victim_name);
            instances[victim].signal("-KILL");
        }
        Failure::Sigterm => {
            orphaned = orphans_of(&victim_name);
            let i = instances.remove(victim);
            let clean = tokio::task::spawn_blocking(move || i.stop())
                .await
                .unwrap_or(false);
            assert!(
                clean,
                "SIGTERM: {victim_name} did not exit cleanly:\n{}",
                logs(&dir)
            );
        }
        Failure::Join => {
            instances.push(Instance::start(&dir, "i4", &toml));
        }
        Failure::ServerRestart => {
            let node = cluster.busiest_leader();
            cluster.kill(node);
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| cluster.restart(node));
        }
        Failure::Pause => {
            orphaned = orphans_of(&victim_name);
            instances[victim].signal("-STOP");
            tokio::time::sleep(Duration::from_millis(timing().1 * 3)).await;
            instances[victim].signal("-CONT");
        }
    }
    let published = tokio::time::timeout(DEADLINE, publisher)
        .await
        .expect("publisher finished")
        .expect("publisher task")
        .expect("published");
    assert_eq!(published as usize, lines.len());

    // Everything judged: as many events stored as scan produced, for a
    // while (a late duplicate would not be stored, a late extra would).
    let deadline = Instant::now() + DEADLINE;
    let mut stable_since: Option<(usize, Instant)> = None;
    loop {
        // The stream may be electing a leader: ask again.
        let n = match js.get_stream(format!("OUT{k}")).await {
            Ok(mut out) => match out.info().await {
                Ok(info) => info.state.messages as usize,
                Err(_) => stable_since.map_or(0, |(m, _)| m),
            },
            Err(_) => stable_since.map_or(0, |(m, _)| m),
        };
        match stable_since {
            Some((m, since)) if m == n && n >= want.len() => {
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            _ => stable_since = Some((n, Instant::now())),
        }
        assert!(
            Instant::now() < deadline,
            "{failure:?}: {n} of {} events stored after {DEADLINE:?}:\n{}",
            want.len(),
            logs(&dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = messages(&js, &format!("OUT{k}")).await;
    let events: Vec<Event> = stored
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("event JSON"))
        .collect();
    assert_no_duplicate_ids(&events);
    assert_same(
        &events,
        &want,
        &format!("{failure:?}: stored events vs scan"),
    );

    // Never two holders at once: per partition, the holder's epoch (its
    // lease revision) never goes back in the stream.
    let mut newest: HashMap<u64, u64> = HashMap::new();
    for m in &stored {
        let (Some(p), Some(epoch)) = (header(m, "Zhijian-Partition"), header(m, "Zhijian-Epoch"))
        else {
            panic!("an event without partition and epoch headers");
        };
        let top = newest.entry(p).or_insert(epoch);
        assert!(
            epoch >= *top,
            "{failure:?}: partition {p} got an event of epoch {epoch} after epoch {top}"
        );
        *top = epoch;
    }

    // Failover time: from the failure to the first event of each orphaned
    // partition from its next holder.
    let mut worst = Duration::ZERO;
    for (p, old) in &orphaned {
        let first = stored.iter().find_map(|m| {
            let ok = header(m, "Zhijian-Partition") == Some(u64::from(*p))
                && header(m, "Zhijian-Epoch").is_some_and(|e| e > *old);
            if !ok {
                return None;
            }
            let info = m.info().ok()?;
            let ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
            Some(Duration::from_millis(ms.saturating_sub(failed_at)))
        });
        let took = first.unwrap_or_else(|| {
            panic!("{failure:?}: orphaned partition {p} produced nothing after the failure")
        });
        worst = worst.max(took);
    }
    if !orphaned.is_empty() {
        eprintln!(
            "cluster {failure:?}: {} partitions of {victim_name} orphaned; first event again after at most {:.2} s",
            orphaned.len(),
            worst.as_secs_f64()
        );
        assert!(
            worst < Duration::from_secs(10),
            "{failure:?}: failover took {worst:?}"
        );
    }
    eprintln!(
        "cluster {failure:?}: {} inputs, {} events stored, none lost or duplicated",
        lines.len(),
        events.len()
    );
    // A clean stop is owed once the cluster has recovered: every partition's
    // checkpoint is fresh again (after a server restart the state bucket
    // may take seconds to elect a leader; a stop during that outage is
    // honest about what it could not save, see faults.rs).
    wait_checkpoints_fresh(&instances, &dir, failure).await;
    let stopped: Vec<bool> =
        tokio::task::spawn_blocking(move || instances.into_iter().map(Instance::stop).collect())
            .await
            .expect("stop instances");
    // The killed instance cannot exit cleanly; the others must.
    let clean = stopped.iter().filter(|ok| **ok).count();
    let expected_clean = match failure {
        Failure::Kill9 => stopped.len() - 1,
        _ => stopped.len(),
    };
    assert!(
        clean >= expected_clean,
        "{failure:?}: {clean} of {} instances stopped cleanly:\n{}",
        stopped.len(),
        logs(&dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_three_node_cluster_lose_and_duplicate_nothing() {
    let mut cluster = NatsCluster::start(3);
    for (k, failure) in [
        Failure::Kill9,
        Failure::Sigterm,
        Failure::Join,
        Failure::ServerRestart,
        Failure::Pause,
    ]
    .into_iter()
    .enumerate()
    {
        // CLUSTER_TEST_ONLY=Pause (for instance) runs one scenario.
        if let Ok(only) = std::env::var("CLUSTER_TEST_ONLY")
            && format!("{failure:?}") != only
        {
            continue;
        }
        scenario(&mut cluster, k, failure).await;
    }
}
