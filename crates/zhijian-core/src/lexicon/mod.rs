//! Lexicons: the human-editable TOML files a QA lead maintains, and their
//! strict validation into [`Lexicon`].
//!
//! A lexicon is a directory of `*.toml` files read in name order. Exactly one
//! file holds the `[lexicon]` table (name, version); any file may hold
//! `[[section]]` (scorecard sections), `[[category]]` (what violations are
//! about, with a display name) and `[[rule]]` entries. A rule names its
//! `kind`; the fields a kind takes are read and validated by that kind's
//! module in `crate::rules`. A tenant overlay (`tenants/<tenant>/*.toml`
//! under the lexicon directory) adds, overrides or disables rules of the
//! base for one tenant. See `lexicons/README.md` for the format.
//!
//! Error policy: a lexicon is configuration, so every problem is an error
//! that names the file, the line and the entry, and the program refuses to
//! start with it (the daemon keeps the previous lexicon on reload). Nothing
//! is guessed or skipped silently.

use crate::event::{Channel, Severity, Speaker};
pub use crate::fields::Problem;
use crate::fields::{Fields, SourceFile};
use crate::rules::{self, Spec};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::{Spanned, Table, Value};

/// One validated rule: the fields every kind shares, and the kind's own
/// settings in `spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable id: a metric label and part of event ids.
    pub id: String,
    /// Index into [`Lexicon::categories`].
    pub category: usize,
    pub severity: Severity,
    /// Points deducted per violation; 0 for a rule that only alerts.
    pub deduct: f64,
    /// Index into [`Lexicon::sections`]; `None` for a rule that only alerts.
    pub section: Option<usize>,
    /// Whose segments the rule reads (kinds with their own speaker fields,
    /// such as `response`, keep theirs in `spec`).
    pub speakers: Vec<Speaker>,
    /// The channels the rule applies to; empty: every channel. A
    /// conversation whose channel is not known is judged by every rule
    /// except those for written channels only (see [`Rule::applies_on`]).
    pub channels: Vec<Channel>,
    pub description: Option<String>,
    /// Where the rule came from, e.g. the service standard it implements.
    pub source: Option<String>,
    /// Where the rule is defined (`file:line`), for tools.
    pub location: String,
    pub spec: Spec,
}

impl Rule {
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// Every phrase of the rule's phrase lists, as written.
    pub fn phrases(&self) -> impl Iterator<Item = &String> {
        self.spec
            .phrase_lists()
            .into_iter()
            .flat_map(|l| l.phrases.iter())
    }

    /// Every exception of the rule's phrase lists, as written.
    pub fn exceptions(&self) -> impl Iterator<Item = &String> {
        self.spec
            .phrase_lists()
            .into_iter()
            .flat_map(|l| l.exceptions.iter())
    }

    /// Whether the rule applies in a conversation on `channel`.
    ///
    /// A conversation whose channel is not known is judged as before
    /// written channels existed: by every rule that is not limited to
    /// written channels (`social`, `email`). A rule for written service
    /// only is a genre's variant of a spoken or chat rule (its greeting,
    /// its closing); judging an unlabelled call by both would give it two
    /// verdicts.
    pub fn applies_on(&self, channel: Option<Channel>) -> bool {
        match channel {
            Some(c) => self.channels.is_empty() || self.channels.contains(&c),
            None => self.channels.is_empty() || self.channels.iter().any(|c| !c.is_written()),
        }
    }
}

/// A scorecard section: deductions of its rules are capped at `max_deduct`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub id: String,
    pub name: String,
    pub max_deduct: f64,
}

/// What violations are about: an id (metric label, event field) and the
/// name people read (consoles, dashboards).
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
}

/// A validated lexicon (not yet compiled into an automaton).
#[derive(Debug, Clone, PartialEq)]
pub struct Lexicon {
    pub name: String,
    pub language: Option<String>,
    pub description: Option<String>,
    /// `<declared version>+<content digest>`: the digest changes whenever any
    /// file changes, so a forgotten version bump cannot hide an edit. A
    /// tenant's lexicon is `<base version>/<tenant>+<overlay digest>`.
    pub version: String,
    /// The tenant this lexicon is for; `None` for the base.
    pub tenant: Option<String>,
    pub sections: Vec<Section>,
    pub categories: Vec<Category>,
    /// Enabled rules, in file order.
    pub rules: Vec<Rule>,
}

impl Lexicon {
    /// Rules and phrases (of every phrase list) of one kind.
    pub fn count(&self, kind: &str) -> (usize, usize) {
        let rules = self.rules.iter().filter(|r| r.kind() == kind);
        let n_rules = rules.clone().count();
        let n_phrases = rules.map(|r| r.spec.phrase_count()).sum();
        (n_rules, n_phrases)
    }

    pub fn category(&self, rule: &Rule) -> &Category {
        &self.categories[rule.category]
    }

    pub fn category_by_id(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }
}

/// The base lexicon and one lexicon per tenant overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct LexiconSet {
    pub base: Lexicon,
    /// Tenant → its lexicon (the base with the overlay applied), by name.
    pub tenants: BTreeMap<String, Lexicon>,
}

/// A lexicon that cannot be used. `Display` gives one line per problem.
#[derive(Debug, Clone, PartialEq)]
pub struct LexiconError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for LexiconError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LexiconError {}

impl LexiconError {
    fn whole(file: &Path, message: String) -> LexiconError {
        LexiconError {
            problems: vec![Problem {
                file: file.to_path_buf(),
                line: 0,
                entry: None,
                message,
            }],
        }
    }
}

/// Categories become metric label values: a lexicon may define at most this
/// many, so the series of a metric by category stay bounded.
pub(crate) const MAX_CATEGORIES: usize = 64;
/// Rules per lexicon at most (rule ids are metric labels too).
pub(crate) const MAX_RULES: usize = 4096;

/// Loads and validates every `*.toml` file in `dir` (the base lexicon; a
/// `tenants/` subdirectory is not read: see [`load_set`]).
pub fn load_dir(dir: &Path) -> Result<Lexicon, LexiconError> {
    load_sources(read_toml_files(dir)?)
}

/// Loads the base lexicon of `dir` and every tenant overlay under
/// `dir/tenants/<tenant>/`. A problem in any of them rejects the whole set.
pub fn load_set(dir: &Path) -> Result<LexiconSet, LexiconError> {
    let (base, overlays) = read_set_files(dir)?;
    load_set_sources(base, overlays)
}

/// The base files and tenant overlays of `dir` for [`load_set_sources`],
/// as `(path, contents)`: what [`load_set`] reads.
pub(crate) type SetFiles = (
    Vec<(PathBuf, String)>,
    Vec<(String, Vec<(PathBuf, String)>)>,
);

/// Reads what [`load_set`] loads, without loading it.
pub fn read_set_files(dir: &Path) -> Result<SetFiles, LexiconError> {
    let base_files = read_toml_files(dir)?;
    let tenants_dir = dir.join("tenants");
    let mut overlays = Vec::new();
    if tenants_dir.is_dir() {
        let entries = std::fs::read_dir(&tenants_dir).map_err(|e| {
            LexiconError::whole(&tenants_dir, format!("cannot read tenants directory: {e}"))
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let tenant = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            overlays.push((tenant, read_toml_files(&d)?));
        }
    }
    Ok((base_files, overlays))
}

/// [`load_set`] from `(path, contents)` pairs: the base files, and per
/// tenant its overlay files.
pub fn load_set_sources(
    base: Vec<(PathBuf, String)>,
    overlays: Vec<(String, Vec<(PathBuf, String)>)>,
) -> Result<LexiconSet, LexiconError> {
    let base_files = to_sources(base);
    let raw = parse_files(&base_files)?;
    let base_lex = build(&base_files, &raw, None, base_files.len())?;
    let mut tenants = BTreeMap::new();
    let mut problems = Vec::new();
    for (tenant, files) in overlays {
        let files = to_sources(files);
        if !valid_tenant(&tenant) {
            problems.push(Problem {
                file: files
                    .first()
                    .and_then(|f| f.path.parent().map(Path::to_path_buf))
                    .unwrap_or_default(),
                line: 0,
                entry: None,
                message: format!(
                    "{tenant:?} is not a tenant name (1-64 characters, no whitespace, '.', '*' or '>')"
                ),
            });
            continue;
        }
        match parse_files(&files).and_then(|overlay| {
            let mut all = base_files.clone();
            let offset = all.len();
            all.extend(files.iter().cloned());
            let merged = apply_overlay(&all, &raw, overlay, offset)?;
            build(&all, &merged, Some(&tenant), offset)
        }) {
            Ok(lex) => {
                tenants.insert(tenant, lex);
            }
            Err(e) => problems.extend(e.problems),
        }
    }
    if !problems.is_empty() {
        return Err(LexiconError { problems });
    }
    Ok(LexiconSet {
        base: base_lex,
        tenants,
    })
}

/// Validates lexicon files given as `(path, contents)` (the path is only
/// used in messages). Used by [`load_dir`] and by tests.
pub fn load_sources(files: Vec<(PathBuf, String)>) -> Result<Lexicon, LexiconError> {
    let files = to_sources(files);
    let raw = parse_files(&files)?;
    build(&files, &raw, None, files.len())
}

mod build;
mod overlay;
mod parse;

use build::*;
use overlay::*;
use parse::*;

#[cfg(test)]
mod tests;
