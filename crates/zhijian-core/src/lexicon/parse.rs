//! Reading a lexicon's TOML files: their raw shape, located entries, and
//! the files of a directory.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) lexicon: Option<Spanned<RawMeta>>,
    #[serde(default)]
    pub(super) section: Vec<Spanned<RawSection>>,
    #[serde(default)]
    pub(super) category: Vec<Spanned<RawCategory>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<Table>>,
    /// Overlays only: fields replacing those of a base rule.
    #[serde(rename = "override", default)]
    pub(super) overrides: Vec<Spanned<Table>>,
    /// Overlays only: base rules this tenant does not use.
    #[serde(default)]
    pub(super) disable: Option<Spanned<Vec<Spanned<String>>>>,
    /// Overlays only: base rules that are off by default (`enabled =
    /// false`) and this tenant uses: the strict reading of a rule that
    /// reviewers disagree on is one line, `enable = ["…"]`.
    #[serde(default)]
    pub(super) enable: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeta {
    pub(super) name: String,
    pub(super) version: Spanned<String>,
    #[serde(default)]
    pub(super) language: Option<String>,
    #[serde(default)]
    pub(super) description: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSection {
    pub(super) id: Spanned<String>,
    pub(super) name: String,
    pub(super) max_deduct: Spanned<f64>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCategory {
    pub(super) id: Spanned<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
}

/// Reads every `*.toml` file of `dir` (not its subdirectories), in name
/// order.
pub(super) fn read_toml_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, LexiconError> {
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

pub(super) fn to_sources(files: Vec<(PathBuf, String)>) -> Vec<SourceFile> {
    files
        .into_iter()
        .map(|(path, text)| SourceFile { path, text })
        .collect()
}

/// An entry of a file: which file (index) and where in it.
#[derive(Clone)]
pub(super) struct At<T> {
    pub(super) file: usize,
    pub(super) span: Range<usize>,
    pub(super) value: T,
}

impl<T> At<T> {
    /// An entry of file `file`, spanning what the parser saw (or `span`).
    pub(super) fn of(file: usize, v: Spanned<T>) -> At<T> {
        At {
            file,
            span: v.span(),
            value: v.into_inner(),
        }
    }

    /// The same entry in a list of files where its file comes `offset`
    /// later (an overlay's files after the base's).
    pub(super) fn shifted(self, offset: usize) -> At<T> {
        At {
            file: self.file + offset,
            ..self
        }
    }
}

/// The parsed files before validation.
pub(super) struct RawLexicon {
    pub(super) meta: Vec<At<RawMeta>>,
    pub(super) sections: Vec<At<RawSection>>,
    pub(super) categories: Vec<At<RawCategory>>,
    pub(super) rules: Vec<At<Table>>,
    pub(super) overrides: Vec<At<Table>>,
    pub(super) disable: Vec<At<String>>,
    pub(super) enable: Vec<At<String>>,
}

pub(super) fn parse_files(files: &[SourceFile]) -> Result<RawLexicon, LexiconError> {
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
pub(super) fn table_extent(text: &str, span: Range<usize>) -> Range<usize> {
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
