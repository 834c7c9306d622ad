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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    lexicon: Option<Spanned<RawMeta>>,
    #[serde(default)]
    section: Vec<Spanned<RawSection>>,
    #[serde(default)]
    category: Vec<Spanned<RawCategory>>,
    #[serde(default)]
    rule: Vec<Spanned<Table>>,
    /// Overlays only: fields replacing those of a base rule.
    #[serde(rename = "override", default)]
    overrides: Vec<Spanned<Table>>,
    /// Overlays only: base rules this tenant does not use.
    #[serde(default)]
    disable: Option<Spanned<Vec<Spanned<String>>>>,
    /// Overlays only: base rules that are off by default (`enabled =
    /// false`) and this tenant uses: the strict reading of a rule that
    /// reviewers disagree on is one line, `enable = ["…"]`.
    #[serde(default)]
    enable: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    version: Spanned<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    id: Spanned<String>,
    name: String,
    max_deduct: Spanned<f64>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    id: Spanned<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// Categories become metric label values: a lexicon may define at most this
/// many, so the series of a metric by category stay bounded.
pub const MAX_CATEGORIES: usize = 64;
/// Rules per lexicon at most (rule ids are metric labels too).
pub const MAX_RULES: usize = 4096;

/// Reads every `*.toml` file of `dir` (not its subdirectories), in name
/// order.
fn read_toml_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, LexiconError> {
    let whole = |m: String| LexiconError::whole(dir, m);
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole(format!("cannot read lexicon directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read lexicon directory: {e}")))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(whole("no *.toml lexicon files in this directory".into()));
    }
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LexiconError::whole(&path, format!("cannot read: {e}")))?;
        files.push((path, text));
    }
    Ok(files)
}

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
pub type SetFiles = (
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

fn to_sources(files: Vec<(PathBuf, String)>) -> Vec<SourceFile> {
    files
        .into_iter()
        .map(|(path, text)| SourceFile { path, text })
        .collect()
}

/// An entry of a file: which file (index) and where in it.
#[derive(Clone)]
struct At<T> {
    file: usize,
    span: Range<usize>,
    value: T,
}

impl<T> At<T> {
    /// An entry of file `file`, spanning what the parser saw (or `span`).
    fn of(file: usize, v: Spanned<T>) -> At<T> {
        At {
            file,
            span: v.span(),
            value: v.into_inner(),
        }
    }

    /// The same entry in a list of files where its file comes `offset`
    /// later (an overlay's files after the base's).
    fn shifted(self, offset: usize) -> At<T> {
        At {
            file: self.file + offset,
            ..self
        }
    }
}

/// The parsed files before validation.
struct RawLexicon {
    meta: Vec<At<RawMeta>>,
    sections: Vec<At<RawSection>>,
    categories: Vec<At<RawCategory>>,
    rules: Vec<At<Table>>,
    overrides: Vec<At<Table>>,
    disable: Vec<At<String>>,
    enable: Vec<At<String>>,
}

fn parse_files(files: &[SourceFile]) -> Result<RawLexicon, LexiconError> {
    let mut problems = Vec::new();
    let mut raw = RawLexicon {
        meta: Vec::new(),
        sections: Vec::new(),
        categories: Vec::new(),
        rules: Vec::new(),
        overrides: Vec::new(),
        disable: Vec::new(),
        enable: Vec::new(),
    };
    for (i, f) in files.iter().enumerate() {
        match toml::from_str::<RawFile>(&f.text) {
            Ok(r) => {
                raw.meta.extend(r.lexicon.map(|m| At::of(i, m)));
                raw.sections
                    .extend(r.section.into_iter().map(|v| At::of(i, v)));
                raw.categories
                    .extend(r.category.into_iter().map(|v| At::of(i, v)));
                // A table's whole text, so problems find their key's line.
                let table = |v: Spanned<Table>| {
                    let mut a = At::of(i, v);
                    a.span = table_extent(&f.text, a.span);
                    a
                };
                raw.rules.extend(r.rule.into_iter().map(table));
                raw.overrides.extend(r.overrides.into_iter().map(table));
                if let Some(d) = r.disable {
                    raw.disable
                        .extend(d.into_inner().into_iter().map(|v| At::of(i, v)));
                }
                if let Some(e) = r.enable {
                    raw.enable
                        .extend(e.into_inner().into_iter().map(|v| At::of(i, v)));
                }
            }
            Err(e) => {
                let line = e.span().map_or(0, |s| f.line(s));
                problems.push(Problem {
                    file: f.path.clone(),
                    line,
                    entry: None,
                    message: e.message().trim().to_string(),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(LexiconError { problems })
    }
}

/// The whole text of an array-of-tables entry starting at `span`: up to the
/// next table header that is not one of its own sub-tables
/// (`[rule.trigger]`), so problems can be located at their key's line.
fn table_extent(text: &str, span: Range<usize>) -> Range<usize> {
    let start = span.start.min(text.len());
    let mut end = span.end.clamp(start, text.len());
    let header_end = text[start..]
        .find('\n')
        .map_or(text.len(), |i| start + i + 1);
    let mut offset = header_end;
    for line in text[header_end..].split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[rule.") && !t.starts_with("[override.") {
            break;
        }
        offset += line.len();
        end = end.max(offset);
    }
    start..end
}

/// The base's raw entries with a tenant's overlay applied: new sections,
/// categories and rules are added; `[[override]]` replaces fields of a base
/// rule; `disable` removes base rules. `offset` is the index of the
/// overlay's first file in the combined file list.
fn apply_overlay(
    files: &[SourceFile],
    base: &RawLexicon,
    overlay: RawLexicon,
    offset: usize,
) -> Result<RawLexicon, LexiconError> {
    let mut v = Validator::default();
    for m in &overlay.meta {
        v.at(
            &files[m.file + offset],
            m.span.clone(),
            None,
            "a tenant overlay has no [lexicon] table (it takes the base's name and version)".into(),
        );
    }
    let mut rules: Vec<At<Table>> = base.rules.clone();
    let rule_id = |t: &Table| t.get("id").and_then(Value::as_str).map(str::to_string);
    for d in &overlay.disable {
        let before = rules.len();
        rules.retain(|r| rule_id(&r.value).as_deref() != Some(d.value.as_str()));
        if rules.len() == before {
            v.at(
                &files[d.file + offset],
                d.span.clone(),
                Some(format!("disable {:?}", d.value)),
                "no base rule has this id".into(),
            );
        }
    }
    for e in &overlay.enable {
        match rules
            .iter_mut()
            .find(|r| rule_id(&r.value).as_deref() == Some(e.value.as_str()))
        {
            Some(target) => {
                target.value.insert("enabled".into(), Value::Boolean(true));
            }
            None => v.at(
                &files[e.file + offset],
                e.span.clone(),
                Some(format!("enable {:?}", e.value)),
                "no base rule has this id (or it is disabled)".into(),
            ),
        }
    }
    for o in overlay.overrides {
        let file = &files[o.file + offset];
        let Some(id) = rule_id(&o.value) else {
            v.at(
                file,
                o.span.clone(),
                Some("[[override]]".into()),
                "an override needs the id of the base rule it changes".into(),
            );
            continue;
        };
        let entry = Some(format!("override {id:?}"));
        let Some(target) = rules
            .iter_mut()
            .find(|r| rule_id(&r.value).as_deref() == Some(id.as_str()))
        else {
            v.at(
                file,
                o.span.clone(),
                entry,
                "no base rule has this id (or it is disabled)".into(),
            );
            continue;
        };
        if let Some(kind) = o.value.get("kind")
            && target.value.get("kind").unwrap_or(&Value::from("phrase")) != kind
        {
            v.at(
                file,
                o.span.clone(),
                entry,
                "an override cannot change a rule's kind: disable it and add a new rule".into(),
            );
            continue;
        }
        for (k, val) in o.value {
            target.value.insert(k, val);
        }
        // Problems in the result point at the override.
        target.file = o.file + offset;
        target.span = o.span;
    }
    rules.extend(overlay.rules.into_iter().map(|r| r.shifted(offset)));
    if !v.problems.is_empty() {
        return Err(LexiconError {
            problems: v.problems,
        });
    }
    let mut sections = base.sections.clone();
    sections.extend(overlay.sections.into_iter().map(|s| s.shifted(offset)));
    let mut categories = base.categories.clone();
    categories.extend(overlay.categories.into_iter().map(|c| c.shifted(offset)));
    Ok(RawLexicon {
        meta: base.meta.clone(),
        sections,
        categories,
        rules,
        overrides: Vec::new(),
        disable: Vec::new(),
        enable: Vec::new(),
    })
}

/// Validates parsed entries into a [`Lexicon`].
/// The first `base_count` files are the base's; the rest a tenant's overlay.
fn build(
    files: &[SourceFile],
    raw: &RawLexicon,
    tenant: Option<&str>,
    base_count: usize,
) -> Result<Lexicon, LexiconError> {
    let mut v = Validator::default();
    if tenant.is_none() {
        for o in &raw.overrides {
            v.at(
                &files[o.file],
                o.span.clone(),
                Some("[[override]]".into()),
                "overrides belong in a tenant overlay (tenants/<tenant>/*.toml)".into(),
            );
        }
        for d in &raw.disable {
            v.at(
                &files[d.file],
                d.span.clone(),
                None,
                "disable belongs in a tenant overlay; in the base, set enabled = false".into(),
            );
        }
        for e in &raw.enable {
            v.at(
                &files[e.file],
                e.span.clone(),
                None,
                "enable belongs in a tenant overlay; in the base, set enabled = true".into(),
            );
        }
    }

    // Metadata: exactly one [lexicon] table.
    let Some(meta) = raw.meta.first() else {
        let file = files.first().map(|f| f.path.clone()).unwrap_or_default();
        v.problems.push(Problem {
            file,
            line: 0,
            entry: None,
            message: "no [lexicon] table (name and version) in any file".into(),
        });
        return Err(LexiconError {
            problems: v.problems,
        });
    };
    for m in &raw.meta[1..] {
        let first_at = format!(
            "{}:{}",
            files[meta.file].path.display(),
            files[meta.file].line(meta.span.clone())
        );
        v.at(
            &files[m.file],
            m.span.clone(),
            None,
            format!("a second [lexicon] table (the first is at {first_at})"),
        );
    }
    let declared_version = meta.value.version.get_ref().trim().to_string();
    if declared_version.is_empty() || declared_version.chars().any(char::is_whitespace) {
        v.at(
            &files[meta.file],
            meta.value.version.span(),
            Some("[lexicon]".into()),
            "version must be non-empty without whitespace".into(),
        );
    }

    // Sections.
    let mut sections = Vec::new();
    let mut section_index: HashMap<String, (usize, String)> = HashMap::new();
    for s in &raw.sections {
        let f = &files[s.file];
        let s_val = &s.value;
        let id = s_val.id.get_ref().clone();
        let entry = Some(format!("section {id:?}"));
        let here = format!("{}:{}", f.path.display(), f.line(s.span.clone()));
        if !valid_id(&id) {
            v.at(f, s_val.id.span(), entry.clone(), ID_RULE.into());
        }
        if let Some((_, first)) = section_index.get(&id) {
            v.at(
                f,
                s_val.id.span(),
                entry.clone(),
                format!("duplicate section id (first defined at {first})"),
            );
            continue;
        }
        let max = *s_val.max_deduct.get_ref();
        if !(max.is_finite() && max > 0.0) {
            v.at(
                f,
                s_val.max_deduct.span(),
                entry,
                format!("max_deduct must be a positive number, got {max}"),
            );
        }
        section_index.insert(id.clone(), (sections.len(), here));
        sections.push(Section {
            id,
            name: s_val.name.clone(),
            max_deduct: max,
        });
    }

    // Categories.
    let mut categories = Vec::new();
    let mut category_index: HashMap<String, (usize, String)> = HashMap::new();
    for c in &raw.categories {
        let f = &files[c.file];
        let id = c.value.id.get_ref().clone();
        let entry = Some(format!("category {id:?}"));
        let here = format!("{}:{}", f.path.display(), f.line(c.span.clone()));
        if !valid_id(&id) {
            v.at(f, c.value.id.span(), entry.clone(), ID_RULE.into());
        } else if id.contains('.') {
            v.at(
                f,
                c.value.id.span(),
                entry.clone(),
                "category ids may not contain '.': they are NATS subject tokens (violations.<tenant>.<category>)".into(),
            );
        }
        if let Some((_, first)) = category_index.get(&id) {
            v.at(
                f,
                c.value.id.span(),
                entry,
                format!("duplicate category id (first defined at {first})"),
            );
            continue;
        }
        if c.value.name.trim().is_empty() {
            v.at(f, c.span.clone(), entry, "name must not be empty".into());
        }
        category_index.insert(id.clone(), (categories.len(), here));
        categories.push(Category {
            id,
            name: c.value.name.clone(),
            description: c.value.description.clone(),
        });
    }
    if categories.len() > MAX_CATEGORIES {
        v.problems.push(Problem {
            file: files[meta.file].path.clone(),
            line: 0,
            entry: None,
            message: format!(
                "{} categories, over the limit of {MAX_CATEGORIES} (each is a metric label value)",
                categories.len()
            ),
        });
    }

    // Rules.
    let mut rules = Vec::new();
    let mut rule_ids: HashMap<String, String> = HashMap::new();
    let problems = RefCell::new(std::mem::take(&mut v.problems));
    for r in &raw.rules {
        let f = &files[r.file];
        let here = format!("{}:{}", f.path.display(), f.line(r.span.clone()));
        let mut fields = Fields::new(r.value.clone(), f, r.span.clone(), String::new(), &problems);
        let id = fields.string("id").unwrap_or_default();
        fields.entry = format!("rule {id:?}");
        if id.is_empty() {
            fields.error("id", "every rule needs an id".into());
        } else if !valid_id(&id) {
            fields.error("id", ID_RULE.into());
        }
        if let Some(first) = rule_ids.get(&id) {
            fields.error(
                "id",
                format!("duplicate rule id (first defined at {first})"),
            );
            continue;
        }
        rule_ids.insert(id.clone(), here.clone());
        let kind = fields.string("kind").unwrap_or_else(|| "phrase".into());
        let category = match fields.string("category") {
            Some(c) => match category_index.get(&c) {
                Some((i, _)) => Some(*i),
                None => {
                    let known: Vec<&str> = categories.iter().map(|c| c.id.as_str()).collect();
                    let hint = match c.as_str() {
                        "greeting" | "closing" => {
                            " (greeting and closing are now kind = \"required\" rules: see lexicons/README.md)"
                        }
                        _ => "",
                    };
                    fields.error(
                        "category",
                        format!("unknown category {c:?} (defined: {known:?}){hint}"),
                    );
                    None
                }
            },
            None => {
                fields.error("category", "missing field `category`".into());
                None
            }
        };
        let severity = match fields.string("severity") {
            Some(s) => match Severity::ALL.into_iter().find(|x| x.as_str() == s) {
                Some(x) => x,
                None => {
                    fields.error(
                        "severity",
                        format!("unknown severity {s:?} (low, medium, high, critical)"),
                    );
                    Severity::Low
                }
            },
            None => {
                fields.error("severity", "missing field `severity`".into());
                Severity::Low
            }
        };
        let deduct = fields.number("deduct").unwrap_or(0.0);
        if !(deduct.is_finite() && deduct >= 0.0) {
            fields.error(
                "deduct",
                format!("deduct must be a number >= 0, got {deduct}"),
            );
        }
        let section = match fields.string("section") {
            Some(s) => match section_index.get(&s) {
                Some((i, _)) => Some(*i),
                None => {
                    let known: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
                    fields.error(
                        "section",
                        format!("unknown section {s:?} (defined: {known:?})"),
                    );
                    None
                }
            },
            None => None,
        };
        if deduct > 0.0 && section.is_none() && !fields.has_error("section") {
            fields.error(
                "deduct",
                "a rule that deducts points names its scorecard `section` (or set deduct = 0 to only alert)"
                    .into(),
            );
        }
        let speakers = fields.speakers("speakers");
        let channels = fields.channels("channels");
        let description = fields.string("description");
        let source = fields.string("source");
        let enabled = fields.boolean("enabled").unwrap_or(true);
        let spec = rules::parse(&kind, &mut fields);
        if rules::KINDS.contains(&kind.as_str()) {
            fields.finish(&kind);
        }
        let Some(spec) = spec else {
            continue;
        };
        let speakers = match speakers {
            Some(s) => {
                if !spec.takes_speakers() {
                    fields_error(
                        &problems,
                        f,
                        r.span.clone(),
                        &id,
                        format!("a {kind} rule sets speakers in its own fields, not `speakers`"),
                    );
                }
                s
            }
            None => spec.default_speakers(),
        };
        if deduct > 0.0 && !spec.judges_agent(&speakers) {
            fields_error(
                &problems,
                f,
                r.span.clone(),
                &id,
                "a customer's words never cost the agent points: a rule that deducts reads the agent's segments only (split it into an agent rule and an alert-only rule with deduct = 0)".into(),
            );
        }
        if !enabled {
            continue;
        }
        let Some(category) = category else {
            continue;
        };
        rules.push(Rule {
            id,
            category,
            severity,
            deduct,
            section,
            speakers,
            channels: channels.unwrap_or_default(),
            description,
            source,
            location: here,
            spec,
        });
    }
    v.problems = problems.into_inner();
    if rules.len() > MAX_RULES {
        v.problems.push(Problem {
            file: files[meta.file].path.clone(),
            line: 0,
            entry: None,
            message: format!("{} rules, over the limit of {MAX_RULES}", rules.len()),
        });
    }
    if !v.problems.is_empty() {
        return Err(LexiconError {
            problems: v.problems,
        });
    }
    let base_digest = digest(files[..base_count.min(files.len())].iter());
    let version = match tenant {
        None => format!("{declared_version}+{base_digest}"),
        Some(t) => format!(
            "{declared_version}+{base_digest}/{t}+{}",
            digest(files[base_count.min(files.len())..].iter())
        ),
    };
    Ok(Lexicon {
        name: meta.value.name.clone(),
        language: meta.value.language.clone(),
        description: meta.value.description.clone(),
        version,
        tenant: tenant.map(str::to_string),
        sections,
        categories,
        rules,
    })
}

fn fields_error(
    problems: &RefCell<Vec<Problem>>,
    f: &SourceFile,
    span: Range<usize>,
    id: &str,
    message: String,
) {
    problems.borrow_mut().push(Problem {
        file: f.path.clone(),
        line: f.line(span),
        entry: Some(format!("rule {id:?}")),
        message,
    });
}

const ID_RULE: &str = "ids are 1-64 characters of a-z, 0-9, '.', '_' or '-'";

/// Rule, section and category ids become metric labels and parts of event
/// ids: keep them short and plain.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Tenant directory names: what a tenant may be in an input event.
fn valid_tenant(t: &str) -> bool {
    t.chars().count() <= crate::event::MAX_TENANT_CHARS && crate::token::is_token(t)
}

/// First 8 hex digits of the FNV-1a hash of every file's name and contents.
fn digest<'a>(files: impl Iterator<Item = &'a SourceFile>) -> String {
    let files: Vec<&SourceFile> = files.collect();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut parts: Vec<&[u8]> = Vec::new();
    for (f, name) in files.iter().zip(&names) {
        parts.push(name.as_bytes());
        parts.push(f.text.as_bytes());
    }
    crate::event::event_id(&parts)[..8].to_string()
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn at(&mut self, f: &SourceFile, span: Range<usize>, entry: Option<String>, message: String) {
        self.problems.push(Problem {
            file: f.path.clone(),
            line: f.line(span),
            entry,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"
[lexicon]
name = "test"
version = "1"

[[section]]
id = "lang"
name = "服务用语"
max_deduct = 30

[[category]]
id = "forbidden"
name = "服务忌语"
"#;

    fn load(body: &str) -> Result<Lexicon, LexiconError> {
        load_sources(vec![(PathBuf::from("t.toml"), format!("{HEAD}{body}"))])
    }

    fn first_problem(body: &str) -> String {
        match load(body) {
            Ok(_) => panic!("accepted:\n{body}"),
            Err(e) => e.problems[0].to_string(),
        }
    }

    /// The problem whose message holds `want` (or all of them, to show).
    fn problem_with(body: &str, want: &str) -> String {
        match load(body) {
            Ok(_) => panic!("accepted:\n{body}"),
            Err(e) => e
                .problems
                .iter()
                .map(ToString::to_string)
                .find(|p| p.contains(want))
                .unwrap_or_else(|| e.to_string()),
        }
    }

    /// Each case `(name, body, text on the line the problem must name,
    /// message)` is refused with that message at that line.
    fn expect_problems(cases: &[(&str, String, &str, &str)]) {
        for (name, body, at, want) in cases {
            let got = problem_with(body, want);
            let line = line_of(body, at);
            assert!(
                got.contains(want) && got.starts_with(&format!("t.toml:{line}: ")),
                "case {name}:\n want t.toml:{line}: …{want:?}\n got {got:?}"
            );
        }
    }

    /// The 1-based line of the first occurrence of `needle` in HEAD + body.
    fn line_of(body: &str, needle: &str) -> usize {
        let all = format!("{HEAD}{body}");
        let at = all
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in text"));
        all[..at].matches('\n').count() + 1
    }

    const GOOD: &str = r#"
[[rule]]
id = "forbidden.a"
category = "forbidden"
severity = "high"
deduct = 1
section = "lang"
phrases = ["不知道", "你问我/我问谁"]
exceptions = ["暂时不知道您的问题"]
"#;

    #[test]
    fn loads_a_good_lexicon_with_defaults() {
        let lex = load(GOOD).expect("valid");
        let r = &lex.rules[0];
        assert_eq!(r.id, "forbidden.a");
        assert_eq!(r.kind(), "phrase");
        assert_eq!(r.speakers, vec![Speaker::Agent]);
        assert!(r.channels.is_empty());
        assert_eq!(r.section, Some(0));
        assert_eq!(lex.categories[r.category].name, "服务忌语");
        let Spec::Phrase(p) = &r.spec else {
            panic!("{:?}", r.spec)
        };
        assert_eq!(
            (p.list.boundary, p.list.position),
            (rules::Boundary::None, rules::Position::Any)
        );
        assert!(lex.version.starts_with("1+"), "{}", lex.version);
    }

    #[test]
    fn version_digest_changes_with_content() {
        let a = load(GOOD).expect("valid").version;
        let b = load(&GOOD.replace("不知道", "不清楚"))
            .expect("valid")
            .version;
        assert_ne!(a, b);
    }

    #[test]
    fn validation_errors_name_file_line_and_entry() {
        // (case, body, the text on the line the problem must name, message)
        let cases: &[(&str, String, &str, &str)] = &[
            (
                "unknown_key",
                GOOD.replace("severity", "severty"),
                "severty",
                "rule \"forbidden.a\": unknown field `severty` for a phrase rule",
            ),
            (
                "unknown_kind",
                GOOD.replace("deduct = 1", "deduct = 1\nkind = \"forbiden\""),
                "kind = ",
                "kind: unknown kind \"forbiden\"",
            ),
            (
                "old_greeting_kind",
                GOOD.replace("deduct = 1", "deduct = 1\nkind = \"greeting\""),
                "kind = ",
                "greeting and closing rules are kind = \"required\"",
            ),
            (
                "unknown_category",
                GOOD.replace("category = \"forbidden\"", "category = \"rude\""),
                "category = \"rude\"",
                "unknown category \"rude\" (defined: [\"forbidden\"])",
            ),
            (
                "bad_severity",
                GOOD.replace("\"high\"", "\"urgent\""),
                "severity",
                "unknown severity \"urgent\"",
            ),
            (
                "negative_deduct",
                GOOD.replace("deduct = 1", "deduct = -1"),
                "deduct = -1",
                "deduct must be a number >= 0",
            ),
            (
                "deduct_without_section",
                GOOD.replace("section = \"lang\"\n", ""),
                "deduct = 1",
                "names its scorecard `section` (or set deduct = 0 to only alert)",
            ),
            (
                "unknown_section",
                GOOD.replace("section = \"lang\"", "section = \"x\""),
                "section = \"x\"",
                "unknown section \"x\"",
            ),
            (
                "punctuation_phrase",
                GOOD.replace("\"不知道\"", "\"，。！\""),
                "\"，。！\"",
                "phrase \"，。！\" is empty after normalisation",
            ),
            (
                "duplicate_phrase",
                GOOD.replace("\"你问我/我问谁\"", "\"不 知道\""),
                "\"不 知道\"",
                "phrase \"不 知道\" duplicates \"不知道\"",
            ),
            (
                "no_phrases",
                GOOD.replace("phrases = [\"不知道\", \"你问我/我问谁\"]", "phrases = []"),
                "phrases = []",
                "phrases must not be empty",
            ),
            (
                "useless_exception",
                GOOD.replace("暂时不知道您的问题", "您好"),
                "\"您好\"",
                "exception \"您好\" contains none of the phrases",
            ),
            (
                "bad_id",
                GOOD.replace("forbidden.a", "Forbidden A"),
                "id = \"Forbidden A\"",
                "rule \"Forbidden A\": id: ids are",
            ),
            (
                "window_is_gone",
                GOOD.replace("deduct = 1", "deduct = 1\nwindow = 2"),
                "window",
                "unknown field `window` for a phrase rule",
            ),
            (
                "customer_words_cost_no_points",
                GOOD.replace("deduct = 1", "deduct = 1\nspeakers = [\"customer\"]"),
                "[[rule]]",
                "a customer's words never cost the agent points",
            ),
            (
                "agent_and_customer_words_cost_no_points",
                GOOD.replace(
                    "deduct = 1",
                    "deduct = 1\nspeakers = [\"agent\", \"customer\"]",
                ),
                "[[rule]]",
                "a rule that deducts reads the agent's segments only",
            ),
            (
                "dotted_category",
                format!("[[category]]\nid = \"a.b\"\nname = \"x\"\n{GOOD}"),
                "id = \"a.b\"",
                "category ids may not contain '.'",
            ),
            (
                "unknown_channel",
                GOOD.replace("deduct = 1", "deduct = 1\nchannels = [\"sms\"]"),
                "channels",
                "unknown channel \"sms\" (call, chat, social, email)",
            ),
            (
                "missing_field",
                GOOD.replace("severity = \"high\"\n", ""),
                "[[rule]]",
                "missing field `severity`",
            ),
        ];
        expect_problems(cases);
        let syntax = first_problem("[[rule]\n");
        let line = line_of("[[rule]\n", "[[rule]");
        assert!(
            syntax.contains(&format!("t.toml:{line}: unclosed array table")),
            "{syntax}"
        );
    }

    const PATTERN: &str = r#"
[[rule]]
id = "pii.x"
kind = "pattern"
category = "forbidden"
severity = "high"
patterns = ["订单号\\d{6,}"]
detectors = ["mobile"]
"#;

    const RESPONSE: &str = r#"
[[rule]]
id = "hold.x"
kind = "response"
category = "forbidden"
severity = "low"
deduct = 0.5
section = "lang"
within_segments = 3
trigger = { speakers = ["agent"], phrases = ["请稍等"] }
expect = { speakers = ["agent"], phrases = ["感谢您的耐心等待"] }
"#;

    const REQUIRED: &str = r#"
[[rule]]
id = "greeting.x"
kind = "required"
category = "forbidden"
severity = "low"
scope = "start"
segments = 2
phrases = ["您好"]
"#;

    #[test]
    fn every_kind_loads_and_validates_its_own_fields() {
        let lex = load(&format!(
            "{PATTERN}{RESPONSE}{REQUIRED}{}{}",
            "\n[[rule]]\nid = \"t.x\"\nkind = \"timing\"\ncategory = \"forbidden\"\nseverity = \"low\"\nchannels = [\"chat\"]\nmeasure = \"first_reply\"\nseconds = 30\n",
            "\n[[rule]]\nid = \"r.x\"\nkind = \"repetition\"\ncategory = \"forbidden\"\nseverity = \"low\"\ntimes = 3\n"
        ))
        .expect("valid");
        let kinds: Vec<&str> = lex.rules.iter().map(Rule::kind).collect();
        assert_eq!(
            kinds,
            ["pattern", "response", "required", "timing", "repetition"]
        );
        // Alert-only rules need no section.
        assert_eq!((lex.rules[0].deduct, lex.rules[0].section), (0.0, None));
        // A response rule reads both sides' speakers.
        assert_eq!(lex.rules[1].speakers, vec![Speaker::Agent]);

        let cases: &[(&str, String, &str, &str)] = &[
            (
                "invalid_regex",
                PATTERN.replace("订单号\\\\d{6,}", "订单号(\\\\d{6,}"),
                "patterns",
                "invalid pattern \"订单号(\\\\d{6,}\": unclosed group",
            ),
            (
                "empty_match",
                PATTERN.replace("订单号\\\\d{6,}", "(订单号)?"),
                "patterns",
                "pattern \"(订单号)?\" matches the empty string",
            ),
            (
                "unknown_detector",
                PATTERN.replace("\"mobile\"", "\"passport\""),
                "detectors",
                "unknown detector \"passport\" (one of [\"mobile\", \"id_card\", \"bank_card\"])",
            ),
            (
                "pattern_without_patterns",
                PATTERN
                    .replace("patterns = [\"订单号\\\\d{6,}\"]\n", "")
                    .replace("detectors = [\"mobile\"]\n", ""),
                "[[rule]]",
                "a pattern rule needs `patterns` or `detectors`",
            ),
            (
                "response_without_trigger",
                RESPONSE.replace(
                    "trigger = { speakers = [\"agent\"], phrases = [\"请稍等\"] }\n",
                    "",
                ),
                "[[rule]]",
                "a response rule needs a `trigger` table",
            ),
            (
                "response_without_window",
                RESPONSE.replace("within_segments = 3\n", ""),
                "[[rule]]",
                "a response rule needs `within_segments = N` or `within_seconds = N`",
            ),
            (
                "response_side_unknown_field",
                RESPONSE.replace(
                    "phrases = [\"请稍等\"]",
                    "phrases = [\"请稍等\"], window = 2",
                ),
                "trigger",
                "unknown field `trigger.window`",
            ),
            (
                "scope_out_of_range",
                REQUIRED.replace("segments = 2", "segments = 0"),
                "segments = 0",
                "segments: must be 1..=64, got 0",
            ),
            (
                "scope_unknown",
                REQUIRED.replace("scope = \"start\"", "scope = \"begin\""),
                "scope",
                "unknown value \"begin\"",
            ),
            (
                "start_scope_needs_a_size",
                REQUIRED.replace("segments = 2\n", ""),
                "scope",
                "a \"start\" scope needs `segments = N` or `seconds = N`",
            ),
            (
                "required_without_scope",
                REQUIRED.replace("scope = \"start\"\n", ""),
                "[[rule]]",
                "missing field `scope`",
            ),
        ];
        expect_problems(cases);
    }

    #[test]
    fn duplicate_rule_ids_name_the_first() {
        let twice = format!("{GOOD}{GOOD}");
        let got = first_problem(&twice);
        let first = line_of(&twice, "[[rule]]");
        // The second definition's id line.
        let second = format!("{HEAD}{GOOD}").matches('\n').count() + 3;
        assert!(
            got.contains(&format!(
                "t.toml:{second}: rule \"forbidden.a\": id: duplicate rule id (first defined at t.toml:{first})"
            )),
            "{got}"
        );
    }

    #[test]
    fn missing_or_duplicate_metadata() {
        let no_meta =
            load_sources(vec![(PathBuf::from("a.toml"), GOOD.into())]).expect_err("no meta");
        assert!(no_meta.to_string().contains("no [lexicon] table"));
        let two = load_sources(vec![
            (PathBuf::from("a.toml"), HEAD.into()),
            (
                PathBuf::from("b.toml"),
                "[lexicon]\nname = \"x\"\nversion = \"2\"\n".into(),
            ),
        ])
        .expect_err("two metas");
        assert!(
            two.to_string()
                .contains("b.toml:1: a second [lexicon] table (the first is at a.toml:2)"),
            "{two}"
        );
    }

    fn set(overlays: &[(&str, &str)]) -> Result<LexiconSet, LexiconError> {
        load_set_sources(
            vec![(PathBuf::from("base.toml"), format!("{HEAD}{GOOD}{PATTERN}"))],
            overlays
                .iter()
                .map(|(t, body)| {
                    (
                        t.to_string(),
                        vec![(
                            PathBuf::from(format!("tenants/{t}/o.toml")),
                            body.to_string(),
                        )],
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn tenant_overlays_add_override_and_disable() {
        let s = set(&[
            (
                "acme",
                "disable = [\"pii.x\"]\n\n[[override]]\nid = \"forbidden.a\"\nseverity = \"critical\"\nphrases = [\"没办法\"]\nexceptions = []\n\n[[category]]\nid = \"vip\"\nname = \"贵宾\"\n\n[[rule]]\nid = \"vip.a\"\ncategory = \"vip\"\nseverity = \"low\"\nphrases = [\"等着吧\"]\n",
            ),
            ("globex", "[[override]]\nid = \"pii.x\"\nseverity = \"low\"\n"),
        ])
        .expect("valid");
        let acme = &s.tenants["acme"];
        let ids: Vec<&str> = acme.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["forbidden.a", "vip.a"]);
        assert_eq!(acme.rules[0].severity, Severity::Critical);
        assert_eq!(acme.rules[0].phrases().collect::<Vec<_>>(), ["没办法"]);
        assert_eq!(
            acme.categories.last().map(|c| c.name.as_str()),
            Some("贵宾")
        );
        assert_eq!(s.tenants["globex"].rules[1].severity, Severity::Low);
        // The base is untouched; versions name the tenant and differ.
        assert_eq!(s.base.rules.len(), 2);
        assert_eq!(s.base.rules[0].severity, Severity::High);
        let (b, a, g) = (&s.base.version, &acme.version, &s.tenants["globex"].version);
        assert!(a.starts_with(&format!("{b}/acme+")), "{a} vs {b}");
        assert!(g.starts_with(&format!("{b}/globex+")), "{g} vs {b}");
    }

    #[test]
    fn overlay_errors_name_the_overlay_file() {
        let cases = [
            (
                "disable = [\"forbidden.zz\"]\n",
                "tenants/acme/o.toml:1: disable \"forbidden.zz\": no base rule has this id",
            ),
            (
                "[[override]]\nid = \"forbidden.zz\"\nseverity = \"low\"\n",
                "tenants/acme/o.toml:1: override \"forbidden.zz\": no base rule has this id",
            ),
            (
                "[[override]]\nid = \"forbidden.a\"\nkind = \"pattern\"\n",
                "cannot change a rule's kind",
            ),
            (
                "[[override]]\nid = \"forbidden.a\"\nseverity = \"urgent\"\n",
                "tenants/acme/o.toml:3: rule \"forbidden.a\": severity: unknown severity \"urgent\"",
            ),
            (
                "[lexicon]\nname = \"x\"\nversion = \"2\"\n",
                "tenants/acme/o.toml:1: a tenant overlay has no [lexicon] table",
            ),
        ];
        for (overlay, want) in cases {
            let got = set(&[("acme", overlay)]).expect_err(overlay).to_string();
            assert!(
                got.contains(want),
                "overlay {overlay:?}:\n want {want:?}\n got {got}"
            );
        }
        let got = set(&[("a.b", GOOD)]).expect_err("bad tenant").to_string();
        assert!(got.contains("\"a.b\" is not a tenant name"), "{got}");
        // Overrides and disables belong in overlays only.
        let got = load_sources(vec![
            (PathBuf::from("a.toml"), format!("{HEAD}{GOOD}")),
            (
                PathBuf::from("b.toml"),
                "disable = [\"forbidden.a\"]\n".into(),
            ),
        ])
        .expect_err("disable in the base")
        .to_string();
        assert!(
            got.contains("b.toml:1: disable belongs in a tenant overlay"),
            "{got}"
        );
    }
}
