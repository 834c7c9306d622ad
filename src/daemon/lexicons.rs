//! The daemon's lexicons: hot reload, and the store that lets any instance
//! judge a conversation on with the lexicon version that opened it.
//!
//! A conversation is judged by one lexicon from its first segment to its
//! summary (`Engine::set_scanners`). Within one instance that only means
//! keeping the old lexicon while its conversations are open. Across a
//! rolling upgrade, an instance restoring a partition meets conversations
//! opened by another instance's lexicon: every instance puts the files of
//! each lexicon it loads into the cluster bucket (`lexicon.<digest>`, a few
//! tens of kilobytes), and the new holder compiles the version it needs
//! from there. Only when that version cannot be had (a bucket entry too
//! large, or put by nobody) does the conversation go on with the current
//! lexicon, its summary naming the version that judged it before
//! (`earlier_lexicon_versions`) and `zhijian_lexicon_fallbacks_total`
//! counting it.

use crate::engine::{Conversation, Engine};
use crate::lexicon;
use crate::matcher::{LoadError, Scanners, default_segmenter};
use crate::metrics::Metrics;
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The files of one lexicon set, as stored in the bucket.
#[derive(Debug, Serialize, Deserialize)]
struct Sources {
    /// The base version they compile to.
    version: String,
    base: Vec<(String, String)>,
    tenants: Vec<(String, Vec<(String, String)>)>,
}

/// Lexicon sources in the cluster bucket, and those compiled here.
pub(crate) struct LexiconStore {
    kv: kv::Store,
    /// Compiled sets by base version (shared by every partition here).
    /// A std Mutex: never held across an await.
    compiled: Mutex<HashMap<String, Arc<Scanners>>>,
    metrics: Arc<Metrics>,
}

/// One request to the bucket may take this long.
const REQUEST: Duration = Duration::from_secs(2);

fn key(base_version: &str) -> String {
    format!(
        "lexicon.{}",
        &crate::event::event_id(&[base_version.as_bytes()])[..16]
    )
}

impl LexiconStore {
    pub(crate) fn new(kv: kv::Store, metrics: Arc<Metrics>) -> LexiconStore {
        LexiconStore {
            kv,
            compiled: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Puts the files of `dir` into the bucket, if they are the lexicon
    /// `scanners` was compiled from (the files may have changed since: then
    /// the next reload puts them).
    pub(crate) async fn publish(&self, dir: &Path, scanners: &Arc<Scanners>) {
        let version = scanners.base().version().to_string();
        if let Ok(mut c) = self.compiled.lock() {
            c.insert(version.clone(), Arc::clone(scanners));
        }
        let d = dir.to_path_buf();
        let read = tokio::task::spawn_blocking(move || sources_of(&d)).await;
        let sources = match read {
            Ok(Ok(s)) if s.version == version => s,
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lexicon files not put in the bucket");
                return;
            }
            Err(_) => return,
        };
        let bytes = match serde_json::to_vec(&sources) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "lexicon files not put in the bucket");
                return;
            }
        };
        match tokio::time::timeout(REQUEST, self.kv.create(key(&version), bytes.into())).await {
            Ok(Ok(_)) => {
                tracing::info!(lexicon = %version, "lexicon files put in the cluster bucket")
            }
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Ok(Err(e)) => {
                tracing::warn!(lexicon = %version, error = %e, "lexicon files not put in the bucket: a conversation it opens is judged on by a newer version after a take-over")
            }
            Err(_) => tracing::warn!(lexicon = %version, "putting the lexicon files timed out"),
        }
    }

    /// Makes the lexicon versions of restored conversations known to
    /// `engine`, fetching and compiling those it lacks; counts those it
    /// cannot have. Returns how many versions it added.
    pub(crate) async fn register_versions_of(
        &self,
        engine: &mut Engine,
        conversations: &[(String, String, Conversation)],
    ) -> usize {
        let mut wanted: Vec<String> = Vec::new();
        for (tenant, _, c) in conversations {
            if engine.knows(tenant, &c.lexicon_version) {
                continue;
            }
            let base = c
                .lexicon_version
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            if !wanted.contains(&base) {
                wanted.push(base);
            }
        }
        let mut added = 0;
        for base in wanted {
            match self.get(&base).await {
                Some(s) => {
                    engine.register(s);
                    added += 1;
                }
                None => tracing::warn!(
                    lexicon = %base,
                    "a restored conversation's lexicon version cannot be had: judged on by the current one"
                ),
            }
        }
        for (tenant, _, c) in conversations {
            if !engine.knows(tenant, &c.lexicon_version) {
                self.metrics.lexicon_fallbacks.inc();
            }
        }
        added
    }

    /// The compiled lexicon of `base_version`: compiled here already, or
    /// from the bucket.
    async fn get(&self, base_version: &str) -> Option<Arc<Scanners>> {
        if let Some(s) = self
            .compiled
            .lock()
            .ok()
            .and_then(|c| c.get(base_version).cloned())
        {
            return Some(s);
        }
        let entry = tokio::time::timeout(REQUEST, self.kv.get(key(base_version)))
            .await
            .ok()?
            .ok()??;
        let sources: Sources = serde_json::from_slice(&entry).ok()?;
        let compiled = tokio::task::spawn_blocking(move || compile(sources))
            .await
            .ok()?;
        let scanners = match compiled {
            Ok(s) if s.base().version() == base_version => Arc::new(s),
            Ok(s) => {
                tracing::warn!(want = %base_version, got = %s.base().version(), "lexicon files in the bucket compile to another version");
                return None;
            }
            Err(e) => {
                tracing::warn!(lexicon = %base_version, error = %e, "lexicon files in the bucket do not compile");
                return None;
            }
        };
        if let Ok(mut c) = self.compiled.lock() {
            c.insert(base_version.to_string(), Arc::clone(&scanners));
        }
        Some(scanners)
    }
}

/// The files of a lexicon directory and the base version they make.
fn sources_of(dir: &Path) -> Result<Sources, lexicon::LexiconError> {
    let (base, tenants) = lexicon::read_set_files(dir)?;
    let name = |(p, text): (PathBuf, String)| {
        (
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text,
        )
    };
    let base: Vec<(String, String)> = base.into_iter().map(name).collect();
    let tenants: Vec<(String, Vec<(String, String)>)> = tenants
        .into_iter()
        .map(|(t, files)| (t, files.into_iter().map(name).collect()))
        .collect();
    let set = lexicon::load_set_sources(paths(&base), tenant_paths(&tenants))?;
    Ok(Sources {
        version: set.base.version.clone(),
        base,
        tenants,
    })
}

fn paths(files: &[(String, String)]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.clone()))
        .collect()
}

fn tenant_paths(
    tenants: &[(String, Vec<(String, String)>)],
) -> Vec<(String, Vec<(PathBuf, String)>)> {
    tenants
        .iter()
        .map(|(t, files)| (t.clone(), paths(files)))
        .collect()
}

fn compile(sources: Sources) -> Result<Scanners, String> {
    let set = lexicon::load_set_sources(paths(&sources.base), tenant_paths(&sources.tenants))
        .map_err(|e| e.to_string())?;
    Scanners::new(set, default_segmenter()).map_err(|e| e.to_string())
}

/// Reloads the lexicon on SIGHUP and when its files change (polled,
/// debounced by one poll interval); swaps it in atomically. A bad lexicon is
/// rejected and the current one keeps serving.
pub(super) async fn reloader(
    dir: PathBuf,
    poll: Option<Duration>,
    requires_tests: bool,
    tx: watch::Sender<Arc<Scanners>>,
    // None for the shadow lexicon: it never touches the live metrics.
    metrics: Option<Arc<Metrics>>,
    store: Option<Arc<LexiconStore>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut seen = fingerprint(&dir);
    let mut changed_at: Option<Vec<(String, u64, SystemTime)>> = None;
    let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_signal = tokio::select! {
            _ = stop.changed() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        if !by_signal {
            if poll.is_none() {
                continue;
            }
            let now = fingerprint(&dir);
            if now == seen {
                changed_at = None;
                continue;
            }
            // Debounce: reload once the files stopped changing for a tick.
            if changed_at.as_ref() != Some(&now) {
                changed_at = Some(now);
                continue;
            }
            seen = now;
            changed_at = None;
        }
        let d = dir.clone();
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || load_tested(&d, requires_tests)).await;
        match built {
            Ok(Ok(scanners)) => {
                // Swapped in before the metrics say so.
                let _ = tx.send(Arc::clone(&scanners));
                if let Some(m) = &metrics {
                    m.set_lexicon(scanners.base().version());
                    m.set_categories(&scanners);
                    m.lexicon_reloads.with_label_values(&["success"]).inc();
                }
                log_lexicons(&scanners, &dir, "lexicon reloaded");
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    by_signal,
                    "reload done"
                );
                if let Some(store) = &store {
                    store.publish(&dir, &scanners).await;
                }
            }
            Ok(Err(e)) => {
                if let Some(m) = &metrics {
                    m.lexicon_reloads.with_label_values(&["failure"]).inc();
                }
                tracing::error!(error = %e, dir = %dir.display(), "lexicon reload rejected; the previous lexicon keeps serving");
            }
            Err(e) => {
                if let Some(m) = &metrics {
                    m.lexicon_reloads.with_label_values(&["failure"]).inc();
                }
                tracing::error!(error = %e, "lexicon reload task failed");
            }
        }
        if by_signal {
            seen = fingerprint(&dir);
        }
    }
}

/// [`Scanners::load`], then, when `requires_tests` and the directory has a
/// `tests/` suite, the suite: a lexicon whose tests fail is an error.
fn load_tested(dir: &Path, requires_tests: bool) -> Result<Arc<Scanners>, ReloadError> {
    let scanners = Arc::new(Scanners::load(dir)?);
    let tests = dir.join("tests");
    if requires_tests && tests.is_dir() {
        let outcome = crate::suite::run(&tests, &scanners).map_err(ReloadError::Suite)?;
        if outcome.failed > 0 {
            return Err(ReloadError::TestsFail {
                failed: outcome.failed,
                cases: outcome.cases,
                report: outcome.report,
            });
        }
    }
    Ok(scanners)
}

/// Why a lexicon reload was rejected (the previous lexicon keeps serving).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The test suite could not be read.
    #[error("{0}")]
    Suite(String),
    #[error(
        "{failed} of {cases} lexicon test cases fail ([engine] reload_requires_tests):\n{report}"
    )]
    TestsFail {
        failed: usize,
        cases: usize,
        report: String,
    },
}

/// One log line per lexicon: the base and each tenant's.
pub(super) fn log_lexicons(scanners: &Scanners, dir: &Path, what: &str) {
    tracing::info!(lexicon = %scanners.base().version(), dir = %dir.display(), "{what}");
    for (tenant, s) in scanners.tenants() {
        tracing::info!(tenant, lexicon = %s.version(), rules = s.rules().len(), "{what} (tenant overlay)");
    }
}

/// Name, size and mtime of every `*.toml` of the lexicon directory, of its
/// test suite (`tests/*.toml`: fixing a failing test retries the reload)
/// and of its tenant overlays (`tenants/<tenant>/*.toml`).
fn fingerprint(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut out = fingerprint_files(dir, "");
    out.extend(fingerprint_files(&dir.join("tests"), "tests/"));
    if let Ok(rd) = std::fs::read_dir(dir.join("tenants")) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            out.extend(fingerprint_files(&e.path(), &format!("tenants/{name}/")));
        }
    }
    out.sort();
    out
}

fn fingerprint_files(dir: &Path, prefix: &str) -> Vec<(String, u64, SystemTime)> {
    let mut out: Vec<(String, u64, SystemTime)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .filter_map(|e| {
                    // Follows symlinks: in a Kubernetes ConfigMap volume each
                    // file is a link into a directory the kubelet swaps on
                    // update, and the link itself never changes.
                    let m = std::fs::metadata(e.path()).ok()?;
                    Some((
                        format!("{prefix}{}", e.file_name().to_string_lossy()),
                        m.len(),
                        m.modified().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_configmap_style_symlink_swap_changes_the_fingerprint() {
        // The kubelet's layout: a.toml -> ..data/a.toml, ..data -> ..v1;
        // an update writes ..v2 and swaps the ..data link.
        let dir = std::env::temp_dir().join(format!("zhijian-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (version, body) in [("..v1", "a = 1\n"), ("..v2", "a = 22\n")] {
            std::fs::create_dir_all(dir.join(version)).expect("mkdir");
            std::fs::write(dir.join(version).join("a.toml"), body).expect("write");
        }
        let link = |target: &str, name: &str| {
            let tmp = dir.join(format!("{name}.tmp"));
            std::os::unix::fs::symlink(target, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join(name)).expect("swap");
        };
        link("..v1", "..data");
        link("..data/a.toml", "a.toml");
        let before = fingerprint(&dir);
        assert_eq!(before.len(), 1, "{before:?}");
        link("..v2", "..data");
        assert_ne!(fingerprint(&dir), before, "the swap must be seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tenant_overlay_edit_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("zhijian-fpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let overlay = dir.join("tenants/acme");
        std::fs::create_dir_all(&overlay).expect("mkdir");
        std::fs::write(dir.join("a.toml"), "a = 1\n").expect("write");
        let base_only = fingerprint(&dir);
        std::fs::write(overlay.join("o.toml"), "disable = []\n").expect("write");
        let with_overlay = fingerprint(&dir);
        let names: Vec<&str> = with_overlay.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["a.toml", "tenants/acme/o.toml"]);
        std::fs::write(overlay.join("o.toml"), "disable = [\"x\"]\n").expect("write");
        let edited = fingerprint(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(base_only, with_overlay);
        assert_ne!(with_overlay, edited, "the overlay edit must be seen");
    }
}
