//! Prometheus metrics of the daemon, named by Prometheus conventions with a
//! `zhijian_` prefix. Labels come from bounded sets only (channel, speaker,
//! category and its display name, rule id, severity, error code, close
//! reason): never a conversation or agent id, which would grow without
//! bound. Tenants label one counter, capped: the first `max_tenants` seen
//! get their own series, later ones share [`OTHER_TENANT`].
//!
//! Per-segment counters are resolved to label handles once (a labelled
//! lookup costs ≈25 ns, a resolved counter ≈3 ns).

use crate::engine::Outcome;
use crate::event::{Channel, CloseReason, InputError, Speaker};
use crate::matcher::Scanners;
use hashbrown::HashSet;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Mutex;

/// The `tenant` label of tenants beyond the cap.
pub(crate) const OTHER_TENANT: &str = "_other";

/// Tenants with their own series by default (`[metrics] max_tenants`).
pub(crate) use crate::config::DEFAULT_MAX_TENANTS;

/// Every metric the daemon exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// `zhijian_segments_received_total`, resolved per
    /// `[channel][speaker]`, channel index 4 = unknown.
    segments_resolved: [[IntCounter; 3]; 5],
    /// `zhijian_input_events_total`, resolved per [`Outcome`].
    input_events: [IntCounter; 7],
    pub violations: IntCounterVec,
    /// `zhijian_suppressed_hits_total{rule,reason}`.
    pub suppressed_hits: IntCounterVec,
    /// `zhijian_shadow_violations_total{rule,agreement}`.
    pub shadow_violations: IntCounterVec,
    pub shadow_publish_failures: IntCounter,
    /// `zhijian_tenant_violations_total{tenant,category}`: use
    /// [`Metrics::tenant_violation`], which caps the tenants.
    tenant_violations: IntCounterVec,
    tenants: Mutex<HashSet<String>>,
    max_tenants: usize,
    pub bad_messages: IntCounterVec,
    pub deadlettered: IntCounterVec,
    pub publish_failures: IntCounterVec,
    pub publish_retries: IntCounter,
    pub scan_seconds: Histogram,
    pub latency_seconds: HistogramVec,
    pub open_conversations: IntGauge,
    pub conversations_closed: IntCounterVec,
    pub lexicon_info: IntGaugeVec,
    /// `zhijian_privacy_raw_tenants{tenant}`: 1 for each tenant whose
    /// events carry personal numbers in clear (`*`: every tenant).
    pub privacy_raw_tenants: IntGaugeVec,
    /// `zhijian_category_info{category,name}`: see [`Metrics::set_categories`].
    pub category_info: IntGaugeVec,
    pub lexicon_reloads: IntCounterVec,
    pub nats_connected: IntGauge,
    pub nats_disconnects: IntCounter,
    /// `zhijian_nats_reader_disconnects_total{connection}`: input, console.
    pub reader_disconnects: IntCounterVec,
    pub consumer_pending: IntGauge,
    pub state_restored: IntCounter,
    /// Events an earlier holder had stored, not stored again on replay.
    pub replay_skipped: IntCounter,
    /// Take-overs whose scan of what was stored found events removed by
    /// retention (a replay may then store some again).
    pub replay_incomplete: IntCounter,
    /// Restored conversations judged on by another lexicon version than
    /// the one that opened them.
    pub lexicon_fallbacks: IntCounter,
    pub console_clients: IntGauge,
    pub console_events: IntCounter,
    pub console_bad_events: IntCounter,
    pub console_lagged: IntCounter,
    pub console_alert_actions: IntCounter,
    pub output_pending: IntGauge,
    pub output_oldest_unstored: prometheus::Gauge,
    pub output_stalled: IntGauge,
    pub output_stalls: IntCounter,
    pub limits: IntCounterVec,
    pub poison_removed: IntCounter,
    /// Partitions, leases, checkpoints: see `daemon::membership`.
    pub cluster: ClusterMetrics,
}

/// Metrics of an instance in a cluster (`[cluster] partitions`).
pub(crate) struct ClusterMetrics {
    pub members: IntGauge,
    pub partitions_owned: IntGauge,
    /// Partitions the assignment gives this instance.
    pub partitions_assigned: IntGauge,
    /// `zhijian_partition_handovers_total{event}`: acquired (a free or
    /// released partition), failover (taken from a member whose lease
    /// expired), released, lost.
    pub handovers: IntCounterVec,
    /// `zhijian_checkpoints_total{outcome}`: ok, fenced, failed, unreadable,
    /// other_stream.
    pub checkpoints: IntCounterVec,
    pub checkpoint_seconds: Histogram,
    checkpoint_age: prometheus::GaugeVec,
    checkpoint_bytes: IntGaugeVec,
    /// `zhijian_checkpoint_written_bytes_total{kind}`: base, delta.
    pub checkpoint_written: IntCounterVec,
    pub replayed: IntCounter,
    /// `zhijian_partition_consumer_restarts_total`.
    pub consumer_restarts: IntCounter,
}

impl ClusterMetrics {
    fn new(r: &Registry) -> ClusterMetrics {
        let handovers = counter_vec(
            r,
            "zhijian_partition_handovers_total",
            "Partitions changing hands at this instance, by event: acquired (free or released), failover (taken from a member whose lease expired), released, lost (taken by another member).",
            &["event"],
        );
        for e in ["acquired", "failover", "released", "lost"] {
            handovers.with_label_values(&[e]);
        }
        let checkpoints = counter_vec(
            r,
            "zhijian_checkpoints_total",
            "Partition checkpoints written, by outcome: ok, fenced (a newer holder's checkpoint exists), failed; chunks found unreadable when loading one (unreadable: their conversations continued without state), and checkpoints of an earlier stream of the same name, ignored (other_stream).",
            &["outcome"],
        );
        for o in ["ok", "fenced", "failed", "unreadable", "other_stream"] {
            checkpoints.with_label_values(&[o]);
        }
        let checkpoint_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "zhijian_checkpoint_seconds",
                "Time to write one partition checkpoint (after its events are stored).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric definition");
        r.register(Box::new(checkpoint_seconds.clone()))
            .expect("unique metric name");
        let checkpoint_age = prometheus::GaugeVec::new(
            Opts::new(
                "zhijian_checkpoint_age_seconds",
                "Seconds since the partition's last checkpoint, per partition held here.",
            ),
            &["partition"],
        )
        .expect("static metric definition");
        r.register(Box::new(checkpoint_age.clone()))
            .expect("unique metric name");
        let checkpoint_bytes = IntGaugeVec::new(
            Opts::new(
                "zhijian_checkpoint_bytes",
                "Bytes the partition's last checkpoint wrote (a base: every open conversation; a delta: those changed or closed since the checkpoint before), per partition held here.",
            ),
            &["partition"],
        )
        .expect("static metric definition");
        r.register(Box::new(checkpoint_bytes.clone()))
            .expect("unique metric name");
        let checkpoint_written = counter_vec(
            r,
            "zhijian_checkpoint_written_bytes_total",
            "Bytes of checkpoint chunks written to the cluster bucket, by kind: base (every open conversation of a partition) or delta (what changed since the checkpoint before).",
            &["kind"],
        );
        for k in ["base", "delta"] {
            checkpoint_written.with_label_values(&[k]);
        }
        ClusterMetrics {
            members: gauge(
                r,
                "zhijian_cluster_members",
                "Live members of the cluster this instance sees (itself included).",
            ),
            partitions_owned: gauge(
                r,
                "zhijian_partitions_owned",
                "Partitions of the input stream this instance holds the lease of now.",
            ),
            partitions_assigned: gauge(
                r,
                "zhijian_partitions_assigned",
                "Partitions the assignment of the live members gives this instance (it is ready when it judges all of them).",
            ),
            handovers,
            checkpoints,
            checkpoint_seconds,
            checkpoint_age,
            checkpoint_bytes,
            checkpoint_written,
            consumer_restarts: counter(
                r,
                "zhijian_partition_consumer_restarts_total",
                "Partition consumers made again because they delivered nothing while inputs waited.",
            ),
            replayed: counter(
                r,
                "zhijian_replayed_messages_total",
                "Inputs judged again after a take-over or restart: inputs after the partition's checkpoint that an earlier holder had judged (it had stored events of them or of later inputs). A backlog never judged is not counted.",
            ),
        }
    }

    pub(crate) fn observe_checkpoint_age(&self, partition: u32, age: std::time::Duration) {
        self.checkpoint_age
            .with_label_values(&[&partition.to_string()])
            .set(age.as_secs_f64());
    }

    pub(crate) fn set_checkpoint_bytes(&self, partition: u32, bytes: u64) {
        self.checkpoint_bytes
            .with_label_values(&[&partition.to_string()])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The partition is no longer held here: its series go.
    pub(crate) fn forget(&self, partition: u32) {
        let p = partition.to_string();
        let _ = self.checkpoint_age.remove_label_values(&[&p]);
        let _ = self.checkpoint_bytes.remove_label_values(&[&p]);
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The `limit` label values of `zhijian_limits_applied_total`.
/// (The conversation limits close conversations with reason `limit`:
/// `zhijian_conversations_closed_total{reason="limit"}`.)
pub(crate) const LIMITS: [&str; 3] = ["excerpt", "repeated_hits", "deadletter_truncated"];

impl Metrics {
    /// Registers every metric, with the default tenant cap.
    pub(crate) fn new() -> Metrics {
        Metrics::with_max_tenants(DEFAULT_MAX_TENANTS)
    }

    /// Registers every metric (definitions are static: a failure here is a
    /// programming error, caught by the tests); at most `max_tenants`
    /// tenants get their own `zhijian_tenant_violations_total` series.
    pub(crate) fn with_max_tenants(max_tenants: usize) -> Metrics {
        let r = Registry::new();
        let segments = counter_vec(
            &r,
            "zhijian_segments_received_total",
            "Transcript segments received, by channel and speaker.",
            &["channel", "speaker"],
        );
        let channels = ["call", "chat", "social", "email", "unknown"];
        let segments_resolved =
            channels.map(|c| Speaker::ALL.map(|s| segments.with_label_values(&[c, s.as_str()])));
        let input_events = counter_vec(
            &r,
            "zhijian_input_events_total",
            "Valid input events by what the engine did with them (judged, recorded, provisional, duplicate, late, closed, unknown_end).",
            &["outcome"],
        );
        let violations = counter_vec(
            &r,
            "zhijian_violations_total",
            "Violations published, by category, rule and severity.",
            &["category", "rule", "severity"],
        );
        let suppressed_hits = counter_vec(
            &r,
            "zhijian_suppressed_hits_total",
            "Candidate hits a rule dropped, by rule and reason (exception, word_boundary, position, overlap): what the rules keep quiet.",
            &["rule", "reason"],
        );
        let shadow_violations = counter_vec(
            &r,
            "zhijian_shadow_violations_total",
            "Shadow mode: violations by rule and agreement of the live and the candidate lexicon (both, live_only, shadow_only).",
            &["rule", "agreement"],
        );
        let shadow_publish_failures = IntCounter::new(
            "zhijian_shadow_publish_failures_total",
            "Shadow events that could not be sent (they never hold up the live path).",
        )
        .expect("valid metric");
        r.register(Box::new(shadow_publish_failures.clone()))
            .expect("unique metric");
        let tenant_violations = counter_vec(
            &r,
            "zhijian_tenant_violations_total",
            "Violations published, by tenant (the first [metrics] max_tenants tenants; later ones as tenant=\"_other\") and category.",
            &["tenant", "category"],
        );
        let bad_messages = counter_vec(
            &r,
            "zhijian_bad_messages_total",
            "Input messages rejected as bad input, by reason.",
            &["reason"],
        );
        let deadlettered = counter_vec(
            &r,
            "zhijian_deadlettered_total",
            "Input messages published to the dead-letter subject, by reason.",
            &["reason"],
        );
        for code in InputError::CODES.into_iter().chain([
            crate::subject::SUBJECT_MISMATCH,
            crate::subject::INVALID_SUBJECT,
            crate::subject::UNROUTABLE_SUBJECT,
        ]) {
            bad_messages.with_label_values(&[code]);
            deadlettered.with_label_values(&[code]);
        }
        let publish_failures = counter_vec(
            &r,
            "zhijian_publish_failures_total",
            "JetStream publishes that failed (each attempt), by kind of message.",
            &["kind"],
        );
        // Every series an alert or dashboard looks at exists from start-up
        // (at 0), so `increase()` sees the first event.
        for kind in ["violation", "summary", "deadletter"] {
            publish_failures.with_label_values(&[kind]);
        }
        let scan_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "zhijian_scan_duration_seconds",
                "Time to decode and judge one input message.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
            ]),
        )
        .expect("static metric definition");
        r.register(Box::new(scan_seconds.clone()))
            .expect("unique metric name");
        let latency_seconds = HistogramVec::new(
            HistogramOpts::new(
                "zhijian_end_to_end_latency_seconds",
                "From the input's arrival in the stream (or its receipt) to the output event acknowledged by JetStream, by event type.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["event"],
        )
        .expect("static metric definition");
        r.register(Box::new(latency_seconds.clone()))
            .expect("unique metric name");
        for event in ["violation", "summary"] {
            latency_seconds.with_label_values(&[event]);
        }
        let conversations_closed = counter_vec(
            &r,
            "zhijian_conversations_closed_total",
            "Conversations closed, by reason.",
            &["reason"],
        );
        for reason in CloseReason::ALL {
            conversations_closed.with_label_values(&[reason.as_str()]);
        }
        let privacy_raw_tenants = IntGaugeVec::new(
            Opts::new(
                "zhijian_privacy_raw_tenants",
                "Tenants whose events carry personal numbers (mobile, identity card, bank card) in clear, by opt-in (value 1; tenant \"*\": every tenant). Absent: every event is masked.",
            ),
            &["tenant"],
        )
        .expect("static metric definition");
        r.register(Box::new(privacy_raw_tenants.clone()))
            .expect("unique metric name");
        let lexicon_info = IntGaugeVec::new(
            Opts::new(
                "zhijian_lexicon_info",
                "The lexicon in use (value 1), by version.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        r.register(Box::new(lexicon_info.clone()))
            .expect("unique metric name");
        let category_info = IntGaugeVec::new(
            Opts::new(
                "zhijian_category_info",
                "The violation categories of the lexicons in use (value 1): category id and its display name, to label dashboards by name.",
            ),
            &["category", "name"],
        )
        .expect("static metric definition");
        r.register(Box::new(category_info.clone()))
            .expect("unique metric name");
        let lexicon_reloads = counter_vec(
            &r,
            "zhijian_lexicon_reloads_total",
            "Lexicon reloads, by result (success, failure).",
            &["result"],
        );
        for result in ["success", "failure"] {
            lexicon_reloads.with_label_values(&[result]);
        }
        let build = IntGaugeVec::new(
            Opts::new("zhijian_build_info", "Build information (value 1)."),
            &["version"],
        )
        .expect("static metric definition");
        r.register(Box::new(build.clone()))
            .expect("unique metric name");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let limits = counter_vec(
            &r,
            "zhijian_limits_applied_total",
            "Times a limit acted, by limit: excerpt (a stored violation carries part of a long segment), repeated_hits (hits folded into a stored violation's count), deadletter_truncated (a dead letter's payload cut to fit). Conversations closed by a limit: zhijian_conversations_closed_total{reason=\"limit\"}.",
            &["limit"],
        );
        for limit in LIMITS {
            limits.with_label_values(&[limit]);
        }
        let cluster = ClusterMetrics::new(&r);
        Metrics {
            cluster,
            segments_resolved,
            input_events: Outcome::ALL.map(|o| input_events.with_label_values(&[o.as_str()])),
            violations,
            suppressed_hits,
            shadow_violations,
            shadow_publish_failures,
            tenant_violations,
            tenants: Mutex::new(HashSet::new()),
            max_tenants,
            bad_messages,
            deadlettered,
            publish_failures,
            publish_retries: counter(
                &r,
                "zhijian_publish_retries_total",
                "JetStream publishes retried.",
            ),
            scan_seconds,
            latency_seconds,
            open_conversations: gauge(
                &r,
                "zhijian_open_conversations",
                "Conversations open in memory.",
            ),
            conversations_closed,
            lexicon_info,
            privacy_raw_tenants,
            category_info,
            lexicon_reloads,
            nats_connected: gauge(
                &r,
                "zhijian_nats_connected",
                "1 while connected to NATS, else 0.",
            ),
            nats_disconnects: counter(
                &r,
                "zhijian_nats_disconnects_total",
                "Disconnections from NATS.",
            ),
            reader_disconnects: {
                let v = counter_vec(
                    &r,
                    "zhijian_nats_reader_disconnects_total",
                    "Disconnections of the connections that read input, by connection (input: the partitions' consumers; console). A subject that is not UTF-8 costs the input connection one.",
                    &["connection"],
                );
                for c in ["input", "console"] {
                    v.with_label_values(&[c]);
                }
                v
            },
            consumer_pending: gauge(
                &r,
                "zhijian_consumer_pending_messages",
                "Inputs of the partitions held here not yet judged.",
            ),
            state_restored: counter(
                &r,
                "zhijian_state_restored_conversations_total",
                "Open conversations restored from partition checkpoints.",
            ),
            replay_skipped: counter(
                &r,
                "zhijian_replay_skipped_events_total",
                "Events of replayed inputs that an earlier holder of the partition had stored already, not stored again.",
            ),
            replay_incomplete: counter(
                &r,
                "zhijian_replay_incomplete_total",
                "Take-overs that found events stored since the partition's checkpoint removed by the stream's retention: a replay may store those again.",
            ),
            lexicon_fallbacks: counter(
                &r,
                "zhijian_lexicon_fallbacks_total",
                "Restored conversations whose lexicon version could not be had: judged on by the current version (their summary names both).",
            ),
            console_clients: gauge(
                &r,
                "zhijian_console_clients",
                "Browsers connected to the console's live feed.",
            ),
            console_events: counter(
                &r,
                "zhijian_console_events_total",
                "Output events the console read from the output stream.",
            ),
            console_bad_events: counter(
                &r,
                "zhijian_console_bad_events_total",
                "Messages in the output stream that are not output events (skipped by the console, kept in the stream).",
            ),
            console_lagged: counter(
                &r,
                "zhijian_console_lagged_events_total",
                "Live events a slow browser fell behind on; it is disconnected and catches up from the console's history on reconnect.",
            ),
            console_alert_actions: counter(
                &r,
                "zhijian_console_alert_actions_total",
                "Alert actions (acknowledge, assign, note, false alarm, reopen) stored by this console.",
            ),
            output_pending: gauge(
                &r,
                "zhijian_output_pending_events",
                "Output events and dead letters sent and not yet stored.",
            ),
            output_oldest_unstored: {
                let g = prometheus::Gauge::new(
                    "zhijian_output_oldest_unstored_seconds",
                    "How long the oldest event not yet stored has waited (0: none waits).",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("unique metric name");
                g
            },
            output_stalled: gauge(
                &r,
                "zhijian_output_stalled",
                "1 while an event has waited longer than [daemon] watchdog_s to be stored (then /readyz fails), else 0.",
            ),
            output_stalls: counter(
                &r,
                "zhijian_output_stalls_total",
                "Times the watchdog found the output stalled.",
            ),
            limits,
            poison_removed: counter(
                &r,
                "zhijian_undecodable_messages_removed_total",
                "Input messages the client cannot decode (a subject that is not UTF-8), copied to the dead-letter stream by sequence and deleted from the input stream.",
            ),
            registry: {
                r.register(Box::new(crate::process_metrics::ProcessCollector::new()))
                    .expect("unique metric name");
                r
            },
        }
    }

    /// Counts a received segment.
    pub(crate) fn segment(&self, channel: Option<Channel>, speaker: Speaker) {
        let c = match channel {
            Some(Channel::Call) => 0,
            Some(Channel::Chat) => 1,
            Some(Channel::Social) => 2,
            Some(Channel::Email) => 3,
            None => 4,
        };
        self.segments_resolved[c][speaker as usize].inc();
    }

    /// Counts a published violation of `tenant`, under [`OTHER_TENANT`]
    /// once `max_tenants` other tenants have their own series.
    pub(crate) fn tenant_violation(&self, tenant: &str, category: &str) {
        let own = {
            // A poisoned lock only means another thread panicked mid-insert;
            // the set is still usable.
            let mut seen = self
                .tenants
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains(tenant) {
                true
            } else if seen.len() < self.max_tenants {
                seen.insert(tenant.to_owned());
                true
            } else {
                false
            }
        };
        let label = if own { tenant } else { OTHER_TENANT };
        self.tenant_violations
            .with_label_values(&[label, category])
            .inc();
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        self.input_events[outcome as usize].inc();
    }

    /// Marks `version` as the lexicon in use (and no other).
    pub(crate) fn set_lexicon(&self, version: &str) {
        self.lexicon_info.reset();
        self.lexicon_info.with_label_values(&[version]).set(1);
    }

    /// Publishes the categories of the base lexicon and of every tenant
    /// lexicon as `zhijian_category_info{category,name} 1` (and no others:
    /// categories removed by a reload disappear).
    pub(crate) fn set_categories(&self, scanners: &Scanners) {
        let lexicons = std::iter::once(scanners.base())
            .chain(scanners.tenants().map(|(_, s)| s))
            .map(|s| s.lexicon());
        self.set_category_names(lexicons.flat_map(|l| {
            l.categories
                .iter()
                .map(|c| (c.id.as_str(), c.name.as_str()))
        }));
    }

    /// One series per category id, named by the first `(id, name)` given
    /// for it: two tenants that define the same new id with different names
    /// must not give one id two series, or a dashboard's join on `category`
    /// would match many-to-many and fail.
    pub(crate) fn set_category_names<'a>(
        &self,
        categories: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.category_info.reset();
        let mut seen = HashSet::new();
        for (id, name) in categories {
            if seen.insert(id) {
                self.category_info.with_label_values(&[id, name]).set(1);
            }
        }
    }

    /// The exposition in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        // Fails only for a metric family the registry itself refuses to
        // hold (e.g. clashing labels): said, and what was encoded served.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics exposition incomplete");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_beyond_the_cap_share_one_series() {
        let m = Metrics::with_max_tenants(2);
        for tenant in ["acme", "globex", "acme", "initech", "umbrella"] {
            m.tenant_violation(tenant, "forbidden");
        }
        m.tenant_violation("globex", "filler");
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("zhijian_tenant_violations_total{"))
            .collect();
        assert_eq!(
            series,
            [
                r#"zhijian_tenant_violations_total{category="filler",tenant="globex"} 1"#,
                r#"zhijian_tenant_violations_total{category="forbidden",tenant="_other"} 2"#,
                r#"zhijian_tenant_violations_total{category="forbidden",tenant="acme"} 2"#,
                r#"zhijian_tenant_violations_total{category="forbidden",tenant="globex"} 1"#,
            ]
        );
    }

    /// `zhijian_category_info` samples as `(category, name, value)`, read
    /// back from the text exposition.
    fn category_info(m: &Metrics) -> Vec<(String, String, f64)> {
        let text = m.render();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        let mut out: Vec<(String, String, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "zhijian_category_info")
            .map(|s| {
                let label = |k: &str| s.labels.get(k).unwrap_or_default().to_string();
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                };
                (label("category"), label("name"), value)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn category_info_names_every_category_once_and_is_reset_on_reload() {
        let m = Metrics::new();
        let base = (
            std::path::PathBuf::from("lexicon.toml"),
            include_str!("../tests/fixtures/lexicon/lexicon.toml").to_string(),
        );
        // Two tenants add categories; both add `vip` under different names:
        // the id keeps one series (the first tenant's name).
        let overlay = |tenant: &str, name: &str| {
            (
                tenant.to_string(),
                vec![(
                    std::path::PathBuf::from(format!("tenants/{tenant}/extra.toml")),
                    format!(
                        "[[category]]\nid = \"escalation\"\nname = \"客户投诉升级\"\n\n[[category]]\nid = \"vip\"\nname = \"{name}\"\n"
                    ),
                )],
            )
        };
        let set = crate::lexicon::load_set_sources(
            vec![base.clone()],
            vec![overlay("acme", "贵宾客户"), overlay("globex", "VIP")],
        )
        .expect("valid lexicons");
        let scanners = Scanners::new(set, crate::matcher::default_segmenter()).expect("compiles");
        m.set_categories(&scanners);
        let row = |c: &str, n: &str| (c.to_string(), n.to_string(), 1.0);
        assert_eq!(
            category_info(&m),
            [
                row("escalation", "客户投诉升级"),
                row("filler", "语气词"),
                row("forbidden", "服务忌语"),
                row("missing_closing", "缺少结束语"),
                row("missing_greeting", "缺少开头语"),
                row("vip", "贵宾客户"),
            ]
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE zhijian_category_info gauge\n")
                && text.contains(
                    "zhijian_category_info{category=\"escalation\",name=\"客户投诉升级\"} 1\n"
                ),
            "{text}"
        );
        // A reload without the tenants: their categories are gone.
        let set = crate::lexicon::load_set_sources(vec![base], Vec::new()).expect("valid");
        let scanners = Scanners::new(set, crate::matcher::default_segmenter()).expect("compiles");
        m.set_categories(&scanners);
        let ids: Vec<String> = category_info(&m).into_iter().map(|r| r.0).collect();
        assert_eq!(
            ids,
            ["filler", "forbidden", "missing_closing", "missing_greeting"]
        );
    }
}
