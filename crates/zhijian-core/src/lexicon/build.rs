//! From the raw files to a validated [`Lexicon`]: every entry checked and
//! located, rules parsed by their kind (the registry in `rules`).

use super::*;

/// Validates parsed entries into a [`Lexicon`].
/// The first `base_count` files are the base's; the rest a tenant's overlay.
pub(super) fn build(
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

pub(super) fn fields_error(
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

pub(super) const ID_RULE: &str = "ids are 1-64 characters of a-z, 0-9, '.', '_' or '-'";

/// Rule, section and category ids become metric labels and parts of event
/// ids: keep them short and plain.
pub(super) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Tenant directory names: what a tenant may be in an input event.
pub(super) fn valid_tenant(t: &str) -> bool {
    t.chars().count() <= crate::event::MAX_TENANT_CHARS && crate::token::is_token(t)
}

/// First 8 hex digits of the FNV-1a hash of every file's name and contents.
pub(super) fn digest<'a>(files: impl Iterator<Item = &'a SourceFile>) -> String {
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
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn at(
        &mut self,
        f: &SourceFile,
        span: Range<usize>,
        entry: Option<String>,
        message: String,
    ) {
        self.problems.push(Problem {
            file: f.path.clone(),
            line: f.line(span),
            entry,
            message,
        });
    }
}
