//! Lexicons: the human-editable TOML files a QA lead maintains, and their
//! strict validation into [`Lexicon`].
//!
//! A lexicon is a directory of `*.toml` files read in name order. Exactly one
//! file holds the `[lexicon]` table (name, version); any file may hold
//! `[[section]]` (scorecard sections) and `[[rule]]` entries. See
//! `lexicons/README.md` for the format.
//!
//! Error policy: a lexicon is configuration, so every problem is an error
//! that names the file, the line and the entry, and the program refuses to
//! start with it (the daemon keeps the previous lexicon on reload). Nothing
//! is guessed or skipped silently.

use crate::event::{Category as ViolationCategory, Severity, Speaker};
use crate::normalize::normalize;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// What a rule's phrases mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Each hit is a violation (服务忌语).
    Forbidden,
    /// Each hit used as an interjection is a violation (语气词).
    Filler,
    /// At least one phrase must occur in the agent's first `window` segments.
    Greeting,
    /// At least one phrase must occur in the agent's last `window` segments.
    Closing,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Forbidden => "forbidden",
            RuleKind::Filler => "filler",
            RuleKind::Greeting => "greeting",
            RuleKind::Closing => "closing",
        }
    }

    /// The category of the violations this rule produces.
    pub fn violation_category(self) -> ViolationCategory {
        match self {
            RuleKind::Forbidden => ViolationCategory::Forbidden,
            RuleKind::Filler => ViolationCategory::Filler,
            RuleKind::Greeting => ViolationCategory::MissingGreeting,
            RuleKind::Closing => ViolationCategory::MissingClosing,
        }
    }
}

/// Whether a hit must sit on word boundaries (jieba segmentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    /// Any occurrence counts.
    None,
    /// Both ends of the hit must be word boundaries, so 喂 does not hit
    /// inside 喂养.
    Word,
}

/// Where in the utterance a hit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Any,
    /// At the start of the utterance or of a clause (after punctuation or a
    /// pause): interjections, not sentence-final particles (好的啊).
    ClauseStart,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable id: a metric label and part of event ids.
    pub id: String,
    pub kind: RuleKind,
    pub severity: Severity,
    /// Points deducted per violation.
    pub deduct: f64,
    /// Index into [`Lexicon::sections`].
    pub section: usize,
    pub speakers: Vec<Speaker>,
    pub boundary: Boundary,
    pub position: Position,
    /// Greeting/closing window in agent segments (0 for other kinds).
    pub window: usize,
    /// As written in the file.
    pub phrases: Vec<String>,
    /// As written in the file.
    pub exceptions: Vec<String>,
    pub description: Option<String>,
    /// Where the rule came from, e.g. the service standard it implements.
    pub source: Option<String>,
    /// Where the rule is defined (`file:line`), for tools.
    pub location: String,
}

/// A scorecard section: deductions of its rules are capped at `max_deduct`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub id: String,
    pub name: String,
    pub max_deduct: f64,
}

/// A validated lexicon (not yet compiled into an automaton).
#[derive(Debug, Clone, PartialEq)]
pub struct Lexicon {
    pub name: String,
    pub language: Option<String>,
    pub description: Option<String>,
    /// `<declared version>+<content digest>`: the digest changes whenever any
    /// file changes, so a forgotten version bump cannot hide an edit.
    pub version: String,
    pub sections: Vec<Section>,
    /// Enabled rules, in file order.
    pub rules: Vec<Rule>,
}

impl Lexicon {
    pub fn count(&self, kind: RuleKind) -> (usize, usize) {
        let rules = self.rules.iter().filter(|r| r.kind == kind);
        let n_rules = rules.clone().count();
        let n_phrases = rules.map(|r| r.phrases.len()).sum();
        (n_rules, n_phrases)
    }
}

/// A lexicon that cannot be used. `Display` gives one line per problem.
#[derive(Debug, Clone, PartialEq)]
pub struct LexiconError {
    pub problems: Vec<Problem>,
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file or directory as a whole.
    pub line: usize,
    /// The entry (e.g. `rule "forbidden.shirking"`), when there is one.
    pub entry: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(entry) = &self.entry {
            write!(f, ": {entry}")?;
        }
        write!(f, ": {}", self.message)
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    lexicon: Option<Spanned<RawMeta>>,
    #[serde(default)]
    section: Vec<Spanned<RawSection>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    version: Spanned<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    id: Spanned<String>,
    name: String,
    max_deduct: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    category: RuleKind,
    severity: Severity,
    deduct: Spanned<f64>,
    section: Spanned<String>,
    #[serde(default)]
    speakers: Option<Spanned<Vec<Speaker>>>,
    #[serde(default)]
    boundary: Option<Boundary>,
    #[serde(default)]
    position: Option<Position>,
    #[serde(default)]
    window: Option<Spanned<i64>>,
    phrases: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    exceptions: Vec<Spanned<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// Default windows, from the service standard's wording: greet in the first
/// two agent turns; close in the last three (a closing is often followed by a
/// rating request and a goodbye).
pub const DEFAULT_GREETING_WINDOW: usize = 2;
pub const DEFAULT_CLOSING_WINDOW: usize = 3;
/// Windows are tracked as bits of a u32.
pub const MAX_WINDOW: usize = 32;

struct SourceFile {
    path: PathBuf,
    text: String,
}

impl SourceFile {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

/// Loads and validates every `*.toml` file in `dir`.
pub fn load_dir(dir: &Path) -> Result<Lexicon, LexiconError> {
    let whole = |message: String| LexiconError {
        problems: vec![Problem {
            file: dir.to_path_buf(),
            line: 0,
            entry: None,
            message,
        }],
    };
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
        let text = std::fs::read_to_string(&path).map_err(|e| LexiconError {
            problems: vec![Problem {
                file: path.clone(),
                line: 0,
                entry: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        files.push((path, text));
    }
    load_sources(files)
}

/// Validates lexicon files given as `(path, contents)` (the path is only
/// used in messages). Used by [`load_dir`] and by tests.
pub fn load_sources(files: Vec<(PathBuf, String)>) -> Result<Lexicon, LexiconError> {
    let files: Vec<SourceFile> = files
        .into_iter()
        .map(|(path, text)| SourceFile { path, text })
        .collect();
    let mut v = Validator::default();
    let mut parsed = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match toml::from_str::<RawFile>(&f.text) {
            Ok(raw) => parsed.push((i, raw)),
            Err(e) => {
                let line = e.span().map_or(0, |s| f.line(s));
                v.problems.push(Problem {
                    file: f.path.clone(),
                    line,
                    entry: None,
                    message: e.message().trim().to_string(),
                });
            }
        }
    }
    if !v.problems.is_empty() {
        return Err(LexiconError {
            problems: v.problems,
        });
    }

    // Metadata: exactly one [lexicon] table.
    let mut meta: Option<(usize, Spanned<RawMeta>)> = None;
    let mut sections_raw = Vec::new();
    let mut rules_raw = Vec::new();
    for (i, raw) in parsed {
        if let Some(m) = raw.lexicon {
            if let Some((first, first_meta)) = &meta {
                let first_at = format!(
                    "{}:{}",
                    files[*first].path.display(),
                    files[*first].line(first_meta.span())
                );
                v.at(
                    &files[i],
                    m.span(),
                    None,
                    format!("a second [lexicon] table (the first is at {first_at})"),
                );
            } else {
                meta = Some((i, m));
            }
        }
        sections_raw.extend(raw.section.into_iter().map(|s| (i, s)));
        rules_raw.extend(raw.rule.into_iter().map(|r| (i, r)));
    }
    let Some((meta_file, meta)) = meta else {
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
    let meta = meta.into_inner();
    let declared_version = meta.version.get_ref().trim().to_string();
    if declared_version.is_empty() || declared_version.chars().any(char::is_whitespace) {
        v.at(
            &files[meta_file],
            meta.version.span(),
            Some("[lexicon]".into()),
            "version must be non-empty without whitespace".into(),
        );
    }

    // Sections.
    let mut sections = Vec::new();
    let mut section_index: HashMap<String, (usize, String)> = HashMap::new();
    for (fi, s) in sections_raw {
        let f = &files[fi];
        let span = s.span();
        let s = s.into_inner();
        let id = s.id.get_ref().clone();
        let entry = Some(format!("section {id:?}"));
        let here = format!("{}:{}", f.path.display(), f.line(span.clone()));
        if !valid_id(&id) {
            v.at(f, s.id.span(), entry.clone(), ID_RULE.into());
        }
        if let Some((_, first)) = section_index.get(&id) {
            v.at(
                f,
                s.id.span(),
                entry.clone(),
                format!("duplicate section id (first defined at {first})"),
            );
            continue;
        }
        let max = *s.max_deduct.get_ref();
        if !(max.is_finite() && max > 0.0) {
            v.at(
                f,
                s.max_deduct.span(),
                entry,
                format!("max_deduct must be a positive number, got {max}"),
            );
        }
        section_index.insert(id.clone(), (sections.len(), here));
        sections.push(Section {
            id,
            name: s.name,
            max_deduct: max,
        });
    }

    // Rules.
    let mut rules = Vec::new();
    let mut rule_ids: HashMap<String, String> = HashMap::new();
    let mut windowed: HashMap<RuleKind, String> = HashMap::new();
    for (fi, r) in rules_raw {
        let f = &files[fi];
        let span = r.span();
        let here = format!("{}:{}", f.path.display(), f.line(span.clone()));
        let r = r.into_inner();
        let id = r.id.get_ref().clone();
        let entry = Some(format!("rule {id:?}"));
        if !valid_id(&id) {
            v.at(f, r.id.span(), entry.clone(), ID_RULE.into());
        }
        if let Some(first) = rule_ids.get(&id) {
            v.at(
                f,
                r.id.span(),
                entry.clone(),
                format!("duplicate rule id (first defined at {first})"),
            );
            continue;
        }
        rule_ids.insert(id.clone(), here.clone());

        let deduct = *r.deduct.get_ref();
        if !(deduct.is_finite() && deduct >= 0.0) {
            v.at(
                f,
                r.deduct.span(),
                entry.clone(),
                format!("deduct must be a number >= 0, got {deduct}"),
            );
        }
        let section = match section_index.get(r.section.get_ref()) {
            Some((i, _)) => *i,
            None => {
                let known: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
                v.at(
                    f,
                    r.section.span(),
                    entry.clone(),
                    format!(
                        "unknown section {:?} (defined: {known:?})",
                        r.section.get_ref()
                    ),
                );
                0
            }
        };
        let speakers = match r.speakers {
            Some(s) => {
                let span = s.span();
                let mut list = s.into_inner();
                list.sort_by_key(|s| *s as u8);
                list.dedup();
                if list.is_empty() {
                    v.at(f, span, entry.clone(), "speakers must not be empty".into());
                }
                list
            }
            None => vec![Speaker::Agent],
        };
        let (default_boundary, default_position) = match r.category {
            RuleKind::Filler => (Boundary::Word, Position::ClauseStart),
            _ => (Boundary::None, Position::Any),
        };
        let window = match (r.category, &r.window) {
            (RuleKind::Greeting, None) => DEFAULT_GREETING_WINDOW,
            (RuleKind::Closing, None) => DEFAULT_CLOSING_WINDOW,
            (RuleKind::Greeting | RuleKind::Closing, Some(w)) => {
                let n = *w.get_ref();
                if n < 1 || n > MAX_WINDOW as i64 {
                    v.at(
                        f,
                        w.span(),
                        entry.clone(),
                        format!("window must be 1..={MAX_WINDOW}, got {n}"),
                    );
                }
                n.clamp(1, MAX_WINDOW as i64) as usize
            }
            (_, Some(w)) => {
                v.at(
                    f,
                    w.span(),
                    entry.clone(),
                    "window only applies to greeting and closing rules".into(),
                );
                0
            }
            (_, None) => 0,
        };

        let phrases_span = r.phrases.span();
        let phrases = r.phrases.into_inner();
        if phrases.is_empty() {
            v.at(
                f,
                phrases_span,
                entry.clone(),
                "phrases must not be empty".into(),
            );
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut norm_phrases = Vec::new();
        for p in &phrases {
            let n = normalize(p.get_ref());
            if n.is_empty() {
                v.at(
                    f,
                    p.span(),
                    entry.clone(),
                    format!(
                        "phrase {:?} is empty after normalisation (only spaces or punctuation)",
                        p.get_ref()
                    ),
                );
                continue;
            }
            if let Some(first) = seen.get(&n) {
                v.at(
                    f,
                    p.span(),
                    entry.clone(),
                    format!(
                        "phrase {:?} duplicates {first:?} after normalisation",
                        p.get_ref()
                    ),
                );
                continue;
            }
            seen.insert(n.clone(), p.get_ref().clone());
            norm_phrases.push(n);
        }
        for x in &r.exceptions {
            let n = normalize(x.get_ref());
            if n.is_empty() {
                v.at(
                    f,
                    x.span(),
                    entry.clone(),
                    format!("exception {:?} is empty after normalisation", x.get_ref()),
                );
            } else if !norm_phrases.iter().any(|p| n.contains(p.as_str())) {
                v.at(
                    f,
                    x.span(),
                    entry.clone(),
                    format!(
                        "exception {:?} contains none of the rule's phrases, so it can never apply",
                        x.get_ref()
                    ),
                );
            }
        }

        if !r.enabled {
            continue;
        }
        if matches!(r.category, RuleKind::Greeting | RuleKind::Closing) {
            if let Some(first) = windowed.get(&r.category) {
                v.at(f, r.id.span(), entry.clone(), format!(
                    "only one enabled {} rule per lexicon (the first is at {first}); put all its phrases in one rule",
                    r.category.as_str()
                ));
            }
            windowed.insert(r.category, here.clone());
        }
        rules.push(Rule {
            id,
            kind: r.category,
            severity: r.severity,
            deduct,
            section,
            speakers,
            boundary: r.boundary.unwrap_or(default_boundary),
            position: r.position.unwrap_or(default_position),
            window,
            phrases: phrases.into_iter().map(Spanned::into_inner).collect(),
            exceptions: r.exceptions.into_iter().map(Spanned::into_inner).collect(),
            description: r.description,
            source: r.source,
            location: here,
        });
    }
    if rules.len() > u16::MAX as usize {
        v.problems.push(Problem {
            file: files[meta_file].path.clone(),
            line: 0,
            entry: None,
            message: format!("{} rules, over the limit of {}", rules.len(), u16::MAX),
        });
    }
    if !v.problems.is_empty() {
        return Err(LexiconError {
            problems: v.problems,
        });
    }

    Ok(Lexicon {
        name: meta.name,
        language: meta.language,
        description: meta.description,
        version: format!("{declared_version}+{}", digest(&files)),
        sections,
        rules,
    })
}

const ID_RULE: &str = "ids are 1-64 characters of a-z, 0-9, '.', '_' or '-'";

/// Rule and section ids become metric labels and parts of event ids: keep
/// them short and plain.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// First 8 hex digits of the FNV-1a hash of every file's name and contents.
fn digest(files: &[SourceFile]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
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
        assert_eq!(r.speakers, vec![Speaker::Agent]);
        assert_eq!((r.boundary, r.position), (Boundary::None, Position::Any));
        assert_eq!(r.section, 0);
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
        let cases: &[(&str, &str, &str)] = &[
            (
                "unknown_key",
                &GOOD.replace("severity", "severty"),
                "t.toml:14: unknown field `severty`",
            ),
            (
                "bad_category",
                &GOOD.replace("\"forbidden\"", "\"forbiden\""),
                "t.toml:13: unknown variant `forbiden`",
            ),
            (
                "bad_severity",
                &GOOD.replace("\"high\"", "\"urgent\""),
                "t.toml:14: unknown variant `urgent`",
            ),
            (
                "negative_deduct",
                &GOOD.replace("deduct = 1", "deduct = -1"),
                "t.toml:15: rule \"forbidden.a\": deduct must be a number >= 0",
            ),
            (
                "unknown_section",
                &GOOD.replace("section = \"lang\"", "section = \"x\""),
                "t.toml:16: rule \"forbidden.a\": unknown section \"x\"",
            ),
            (
                "punctuation_phrase",
                &GOOD.replace("\"不知道\"", "\"，。！\""),
                "t.toml:17: rule \"forbidden.a\": phrase \"，。！\" is empty after normalisation",
            ),
            (
                "empty_phrase",
                &GOOD.replace("\"不知道\"", "\"\""),
                "t.toml:17: rule \"forbidden.a\": phrase \"\" is empty",
            ),
            (
                "duplicate_phrase",
                &GOOD.replace("\"你问我/我问谁\"", "\"不 知道\""),
                "t.toml:17: rule \"forbidden.a\": phrase \"不 知道\" duplicates \"不知道\"",
            ),
            (
                "no_phrases",
                &GOOD.replace("phrases = [\"不知道\", \"你问我/我问谁\"]", "phrases = []"),
                "t.toml:17: rule \"forbidden.a\": phrases must not be empty",
            ),
            (
                "useless_exception",
                &GOOD.replace("暂时不知道您的问题", "您好"),
                "t.toml:18: rule \"forbidden.a\": exception \"您好\" contains none",
            ),
            (
                "bad_id",
                &GOOD.replace("forbidden.a", "Forbidden A"),
                "t.toml:12: rule \"Forbidden A\": ids are",
            ),
            (
                "window_on_forbidden",
                &GOOD.replace("deduct = 1", "deduct = 1\nwindow = 2"),
                "t.toml:16: rule \"forbidden.a\": window only applies",
            ),
            (
                "missing_field",
                &GOOD.replace("severity = \"high\"\n", ""),
                "missing field `severity`",
            ),
            (
                "toml_syntax",
                "[[rule]\n",
                "t.toml:10: unclosed array table",
            ),
        ];
        for (name, body, want) in cases {
            let got = first_problem(body);
            assert!(
                got.contains(want),
                "case {name}:\n want substring {want:?}\n got {got:?}"
            );
        }
    }

    #[test]
    fn duplicate_rule_ids_name_the_first() {
        let got = first_problem(&format!("{GOOD}{GOOD}"));
        assert!(
            got.contains(
                "t.toml:21: rule \"forbidden.a\": duplicate rule id (first defined at t.toml:11)"
            ),
            "{got}"
        );
    }

    #[test]
    fn one_greeting_rule_only_and_window_bounds() {
        let greeting = r#"
[[rule]]
id = "greeting.std"
category = "greeting"
severity = "low"
deduct = 0.5
section = "lang"
phrases = ["您好"]
"#;
        let lex = load(greeting).expect("valid");
        // The service standard's "first two agent turns", as a number: a
        // comparison with DEFAULT_GREETING_WINDOW would pass whatever it is.
        assert_eq!(lex.rules[0].window, 2);
        let closing = greeting
            .replace("greeting.std", "closing.std")
            .replace("\"greeting\"", "\"closing\"");
        // "The last three" agent turns.
        assert_eq!(load(&closing).expect("valid").rules[0].window, 3);
        let twice = format!(
            "{greeting}{}",
            greeting.replace("greeting.std", "greeting.b")
        );
        assert!(first_problem(&twice).contains("only one enabled greeting rule"));
        let wide = greeting.replace("deduct = 0.5", "deduct = 0.5\nwindow = 40");
        assert!(first_problem(&wide).contains("window must be 1..=32"));
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
}
