//! A rolling upgrade of the lexicon across a cluster: each conversation
//! is judged with one lexicon, the one that opened it, also when it moves
//! to an instance that runs the next version.

use crate::daemon::{
    ChildDaemon, assert_no_duplicate_ids, assert_same, js, lexicons, metric, publish, wait_done,
    wait_until,
};
use crate::faults::config_file;
use crate::nats_support::{NatsServer, free_port, tempdir};
use std::path::Path;
use zhijian::event::Event;

/// A lexicon directory: the default lexicon, plus `extra` as a file of its
/// own when given.
fn lexicon_dir(name: &str, extra: Option<&str>) -> crate::support::TempDir {
    let dir = tempdir(name);
    for entry in std::fs::read_dir(lexicons()).expect("lexicons") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    if let Some(extra) = extra {
        std::fs::write(dir.join("zz-extra.toml"), extra).expect("extra rule");
    }
    dir
}

const EXTRA_RULE: &str = "[[rule]]\nid = \"forbidden.rollout\"\ncategory = \"forbidden\"\nseverity = \"high\"\ndeduct = 2\nsection = \"service_language\"\nphrases = [\"立即处理不了\"]\n";

fn scan_with(dir: &Path, lines: &[String]) -> Vec<Event> {
    let scanner = std::sync::Arc::new(crate::support::compile(dir));
    let mut engine =
        zhijian::engine::Engine::new(scanner, zhijian::engine::EngineConfig::default());
    crate::support::scan_jsonl(&mut engine, &lines.join("\n")).0
}

/// Fault 7: a rolling upgrade mixed verdicts: conversations judged half by
/// one lexicon version and half by the next, their score matching neither.
/// Instance A (the old lexicon) opens conversations and stops; instance B
/// (the new one, a rule more) takes them over: they are judged to their end
/// by A's version (B fetches it from the bucket), new ones by B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_judges_each_conversation_with_one_lexicon() {
    rolling_upgrade(true).await;
}

/// The same when the old version cannot be had (its files gone from the
/// bucket): the conversations go on with the new version, and their
/// summaries name the one that judged them before; counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_without_the_old_lexicon_names_both_versions() {
    rolling_upgrade(false).await;
}

async fn rolling_upgrade(old_lexicon_in_bucket: bool) {
    let nats = NatsServer::start();
    let (old, new) = (
        lexicon_dir("lex-old", None),
        lexicon_dir("lex-new", Some(EXTRA_RULE)),
    );
    // A customer's question waits for no reply across the take-over (a
    // reply rule would pass its deadline by the clock meanwhile).
    let opened: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"conversation_id":"r{i}","tenant":"acme","seq":0,"ts_ms":0,"speaker":"agent","text":"您好，请问有什么可以帮您"}}"#))
        .collect();
    let finished: Vec<String> = (0..20)
        .flat_map(|i| {
            [
                format!(r#"{{"conversation_id":"r{i}","tenant":"acme","seq":1,"ts_ms":1000,"speaker":"customer","text":"我的订单怎么还没到"}}"#),
                format!(r#"{{"conversation_id":"r{i}","tenant":"acme","seq":2,"ts_ms":2000,"speaker":"agent","text":"这个今天立即处理不了，再见"}}"#),
                format!(r#"{{"conversation_id":"r{i}","tenant":"acme","type":"end","ts_ms":3000}}"#),
            ]
        })
        .collect();
    let fresh = vec![
        r#"{"conversation_id":"n1","tenant":"acme","seq":0,"speaker":"agent","text":"您好，这个立即处理不了，再见"}"#.to_string(),
        r#"{"conversation_id":"n1","tenant":"acme","type":"end"}"#.to_string(),
    ];
    let cluster =
        "[cluster]\npartitions = 2\nheartbeat_ms = 100\nlease_ms = 400\ncheckpoint_ms = 100\n";
    let dir = tempdir("rolling");
    let metrics_port = free_port();
    let cfg_old = config_file(&nats, &dir, &old, metrics_port, cluster, 5);
    let a = ChildDaemon::start(&cfg_old, metrics_port).await;
    publish(&nats, &opened).await;
    let js = js(&nats).await;
    wait_until("the opened conversations checkpointed", async || {
        crate::daemon::all_judged(&js).await
    })
    .await;
    a.signal("-TERM");
    assert!(a.wait().await.success());
    if !old_lexicon_in_bucket {
        let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
        kv.stream
            .purge()
            .filter(format!("{}lexicon.>", kv.prefix))
            .await
            .expect("purge the lexicon sources");
    }
    let dir_new = tempdir("rolling-new");
    let cfg_new = config_file(&nats, &dir_new, &new, metrics_port, cluster, 5);
    let b = ChildDaemon::start(&cfg_new, metrics_port).await;
    publish(&nats, &finished).await;
    publish(&nats, &fresh).await;
    let got = wait_done(&js, 21).await;
    assert_no_duplicate_ids(&got);
    let mut taken_over = opened.clone();
    taken_over.extend(finished.clone());
    let (by_old, by_new) = (scan_with(&old, &taken_over), scan_with(&new, &taken_over));
    let of = |events: &[Event], prefix: &str| -> Vec<Event> {
        events
            .iter()
            .filter(|e| match e {
                Event::Violation(v) => v.conversation_id.starts_with(prefix),
                Event::Summary(s) => s.conversation_id.starts_with(prefix),
            })
            .cloned()
            .collect()
    };
    let old_version = summaries_version(&by_old);
    if old_lexicon_in_bucket {
        assert_same(
            &of(&got, "r"),
            &by_old,
            "taken over: the old version to the end",
        );
        for s in crate::support::summaries(&of(&got, "r")) {
            assert_eq!(s.lexicon_version, old_version);
            assert!(s.earlier_lexicon_versions.is_empty(), "{s:?}");
        }
        assert_eq!(
            metric(metrics_port, "zhijian_lexicon_fallbacks_total").await,
            0.0
        );
    } else {
        // The new version judged what came after the take-over.
        let got_r = of(&got, "r");
        assert!(
            crate::support::violations_of(&got_r, "forbidden")
                .iter()
                .any(|v| v.rule_id == "forbidden.rollout")
        );
        for s in crate::support::summaries(&got_r) {
            assert_eq!(
                s.earlier_lexicon_versions,
                std::slice::from_ref(&old_version),
                "{s:?}"
            );
            assert_eq!(s.lexicon_version, summaries_version(&by_new));
        }
        assert_eq!(
            metric(metrics_port, "zhijian_lexicon_fallbacks_total").await,
            20.0
        );
    }
    assert_same(
        &of(&got, "n"),
        &scan_with(&new, &fresh),
        "opened after: the new version",
    );
    drop(b);
}

fn summaries_version(events: &[Event]) -> String {
    crate::support::summaries(events)
        .first()
        .map(|s| s.lexicon_version.clone())
        .expect("a summary")
}
