//! A lexicon directory compiled: the base and every tenant overlay sharing
//! one automaton, and the loader tools use.

use super::*;

/// The compiled lexicons of a lexicon directory: the base, and one per
/// tenant overlay. A tenant without an overlay is judged by the base.
pub struct Scanners {
    base: Arc<Scanner>,
    /// hashbrown's default hasher: looked up on every segment, with
    /// tenants from outside (seeded per process, like the engine's maps).
    tenants: hashbrown::HashMap<String, Arc<Scanner>>,
}

/// Why a lexicon directory cannot be judged with.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no lexicon directory at {} (relative to {cwd}); point to one with --lexicons DIR, \
         [engine] lexicons in the config, or ZHIJIAN_ENGINE_LEXICONS (the repository's \
         lexicons/ holds the default lexicon)",
        dir.display()
    )]
    NoDirectory { dir: PathBuf, cwd: String },
    #[error("invalid lexicon {}:\n{source}", dir.display())]
    Invalid { dir: PathBuf, source: LexiconError },
    #[error("cannot compile lexicon {}: {source}", dir.display())]
    Compile { dir: PathBuf, source: BuildError },
}

/// Loads and compiles a lexicon directory's base lexicon (tools that do not
/// judge by tenant).
pub fn load_base(dir: &Path) -> Result<Arc<Scanner>, LoadError> {
    Scanners::load(dir).map(|s| Arc::clone(s.base()))
}

impl Scanners {
    /// Loads and compiles a lexicon directory: the base lexicon and every
    /// tenant overlay under `tenants/`.
    pub fn load(dir: &Path) -> Result<Scanners, LoadError> {
        if !dir.is_dir() {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(LoadError::NoDirectory {
                dir: dir.to_path_buf(),
                cwd,
            });
        }
        let set = crate::lexicon::load_set(dir).map_err(|source| LoadError::Invalid {
            dir: dir.to_path_buf(),
            source,
        })?;
        Scanners::new(set, default_segmenter()).map_err(|source| LoadError::Compile {
            dir: dir.to_path_buf(),
            source,
        })
    }

    /// Compiles a validated lexicon set. The base and every overlay share
    /// one automaton over all their patterns: overlays mostly repeat the
    /// base, and one table stays in the cache where one per tenant would
    /// not.
    pub fn new(set: LexiconSet, segmenter: Arc<Jieba>) -> Result<Scanners, BuildError> {
        let mut table = PatternTable::default();
        let base = Parts::new(set.base, &mut table)?;
        let mut tenant_parts = Vec::new();
        for (tenant, lex) in set.tenants {
            let p = Parts::new(lex, &mut table).map_err(|e| BuildError::Tenant {
                tenant: tenant.clone(),
                source: Box::new(e),
            })?;
            tenant_parts.push((tenant, p));
        }
        let (automaton, patterns) = table.build()?;
        let scanner = |p: Parts| {
            Arc::new(p.into_scanner(
                Arc::clone(&automaton),
                Arc::clone(&patterns),
                Arc::clone(&segmenter),
            ))
        };
        let base = scanner(base);
        let tenants = tenant_parts
            .into_iter()
            .map(|(t, p)| (t, scanner(p)))
            .collect();
        Ok(Scanners { base, tenants })
    }

    /// One lexicon for every tenant.
    pub fn single(base: Arc<Scanner>) -> Scanners {
        Scanners {
            base,
            tenants: hashbrown::HashMap::new(),
        }
    }

    /// The lexicon that judges `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> &Arc<Scanner> {
        if self.tenants.is_empty() {
            return &self.base;
        }
        // A handful of overlays: comparing is cheaper than hashing.
        if self.tenants.len() <= 8 {
            return self
                .tenants
                .iter()
                .find(|(t, _)| t.as_str() == tenant)
                .map_or(&self.base, |(_, s)| s);
        }
        self.tenants.get(tenant).unwrap_or(&self.base)
    }

    pub fn base(&self) -> &Arc<Scanner> {
        &self.base
    }

    /// The tenants with an overlay, by name, and their lexicons.
    pub fn tenants(&self) -> impl Iterator<Item = (&str, &Arc<Scanner>)> {
        let mut v: Vec<(&str, &Arc<Scanner>)> =
            self.tenants.iter().map(|(t, s)| (t.as_str(), s)).collect();
        v.sort_by_key(|(t, _)| *t);
        v.into_iter()
    }

    /// Whether a tenant has its own lexicon.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }
}
