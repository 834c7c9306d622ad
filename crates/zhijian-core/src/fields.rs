//! What the lexicon's files are made of, below the lexicon and the rule
//! kinds: a source file, a located [`Problem`], and the [`Fields`] of one
//! `[[rule]]` entry that a kind takes and validates. The kinds read their
//! settings through [`Fields`] and know nothing else of the lexicon.

use crate::event::{Channel, Speaker};
use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use toml::{Table, Value};

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

#[derive(Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
}

impl SourceFile {
    pub(crate) fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

/// The fields of one `[[rule]]` entry (or of a table inside it, such as a
/// response rule's `trigger`), for the kind modules to take and validate.
/// Each field read is removed; [`Fields::finish`] reports the ones nobody
/// took. Problems are located at the line of their key in the rule.
pub(crate) struct Fields<'a> {
    table: Table,
    file: &'a SourceFile,
    /// The rule's byte range in the file.
    span: Range<usize>,
    pub(crate) entry: String,
    /// `trigger.` inside a sub-table.
    prefix: String,
    problems: &'a RefCell<Vec<Problem>>,
}

impl<'a> Fields<'a> {
    /// The fields of the entry `entry` at `span` of `file`, problems going
    /// to `problems`.
    pub(crate) fn new(
        table: Table,
        file: &'a SourceFile,
        span: Range<usize>,
        entry: String,
        problems: &'a RefCell<Vec<Problem>>,
    ) -> Fields<'a> {
        Fields {
            table,
            file,
            span,
            entry,
            prefix: String::new(),
            problems,
        }
    }

    /// Records a problem with field `key`.
    pub fn error(&self, key: &str, message: String) {
        self.problems.borrow_mut().push(Problem {
            file: self.file.path.clone(),
            line: self.line_of(key),
            entry: Some(self.entry.clone()),
            message: if key.is_empty() || message.contains('`') {
                message
            } else {
                format!("{}{key}: {message}", self.prefix)
            },
        });
    }

    pub(crate) fn has_error(&self, key: &str) -> bool {
        let needle = format!("{}{key}", self.prefix);
        self.problems
            .borrow()
            .iter()
            .any(|p| p.entry.as_deref() == Some(&self.entry) && p.message.contains(&needle))
    }

    /// The line of `key` inside the rule: the first line of the rule's text
    /// that assigns it (`key =`, `prefix.key =`, or a `[rule.key]` header);
    /// the rule's first line when not found.
    fn line_of(&self, key: &str) -> usize {
        let text = &self.file.text;
        let end = self.span.end.min(text.len());
        let start = self.span.start.min(end);
        let Some(body) = text.get(start..end) else {
            return self.file.line(self.span.clone());
        };
        // The table this is a sub-table of (`trigger`), if any.
        let table = self.prefix.trim_end_matches('.');
        let find = |matches: &dyn Fn(&str) -> bool| {
            let mut offset = start;
            for line in body.split_inclusive('\n') {
                if matches(line.trim_start()) {
                    return Some(self.file.line(offset..offset));
                }
                offset += line.len();
            }
            None
        };
        let assigns = |t: &str, k: &str| {
            !k.is_empty()
                && t.strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        let dotted = format!("{}{key}", self.prefix);
        find(&|t| assigns(t, key) || assigns(t, &dotted))
            .or_else(|| {
                // Inside an inline sub-table, or under its own header.
                (!table.is_empty())
                    .then(|| {
                        find(&|t| assigns(t, table) || t.starts_with(&format!("[rule.{table}]")))
                    })
                    .flatten()
            })
            .unwrap_or_else(|| self.file.line(self.span.clone()))
    }

    /// The line of `value` written as a string literal inside the rule (for
    /// problems with one phrase of a list).
    pub(crate) fn error_at_value(&self, key: &str, value: &str, message: String) {
        let text = &self.file.text;
        let end = self.span.end.min(text.len());
        let start = self.span.start.min(end);
        let literal = format!("{value:?}");
        let line = text
            .get(start..end)
            .and_then(|b| b.find(&literal))
            .map(|i| self.file.line(start + i..start + i))
            .unwrap_or_else(|| self.line_of(key));
        self.problems.borrow_mut().push(Problem {
            file: self.file.path.clone(),
            line,
            entry: Some(self.entry.clone()),
            message,
        });
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.table.remove(key)
    }

    /// Whether the field is present (not taken).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.take(key)? {
            Value::String(s) => Some(s),
            other => {
                self.error(key, format!("must be a string, got {}", other.type_str()));
                None
            }
        }
    }

    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.take(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        other => {
                            self.error(
                                key,
                                format!("must be a list of strings, found {}", other.type_str()),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("must be a list of strings, got {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn number(&mut self, key: &str) -> Option<f64> {
        match self.take(key)? {
            Value::Integer(i) => Some(i as f64),
            Value::Float(x) => Some(x),
            other => {
                self.error(key, format!("must be a number, got {}", other.type_str()));
                None
            }
        }
    }

    /// An integer in `range`; out of range is an error naming it.
    pub fn integer(&mut self, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        match self.take(key)? {
            Value::Integer(i) if range.contains(&i) => Some(i),
            Value::Integer(i) => {
                self.error(
                    key,
                    format!("must be {}..={}, got {i}", range.start(), range.end()),
                );
                None
            }
            other => {
                self.error(
                    key,
                    format!("must be a whole number, got {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.take(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                self.error(
                    key,
                    format!("must be true or false, got {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A value from a fixed set of names.
    pub(crate) fn choice<T: Copy>(&mut self, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let s = self.string(key)?;
        match choices.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.error(key, format!("unknown value {s:?} (one of {names:?})"));
                None
            }
        }
    }

    pub fn speakers(&mut self, key: &str) -> Option<Vec<Speaker>> {
        let names = self.strings(key)?;
        let mut out = Vec::new();
        for n in names {
            match Speaker::ALL.into_iter().find(|s| s.as_str() == n) {
                Some(s) => out.push(s),
                None => self.error(
                    key,
                    format!("unknown speaker {n:?} (agent, customer, system)"),
                ),
            }
        }
        out.sort_by_key(|s| *s as u8);
        out.dedup();
        if out.is_empty() {
            self.error(key, "must not be empty".into());
        }
        Some(out)
    }

    pub fn channels(&mut self, key: &str) -> Option<Vec<Channel>> {
        let names = self.strings(key)?;
        let mut out = Vec::new();
        for n in names {
            match Channel::from_name(&n) {
                Some(c) => out.push(c),
                None => self.error(
                    key,
                    format!("unknown channel {n:?} (call, chat, social, email)"),
                ),
            }
        }
        out.sort_by_key(|c| *c as u8);
        out.dedup();
        if out.is_empty() {
            self.error(
                key,
                "must not be empty (leave it out for every channel)".into(),
            );
        }
        Some(out)
    }

    /// A sub-table (`[rule.trigger]` or `trigger = { … }`), as fields of
    /// its own; `None` when absent (an error when not a table).
    pub fn table(&mut self, key: &str) -> Option<Fields<'a>> {
        match self.take(key)? {
            Value::Table(t) => Some(Fields {
                table: t,
                file: self.file,
                span: self.span.clone(),
                entry: self.entry.clone(),
                prefix: format!("{}{key}.", self.prefix),
                problems: self.problems,
            }),
            other => {
                self.error(key, format!("must be a table, got {}", other.type_str()));
                None
            }
        }
    }

    /// Reports every field no one took, naming what a rule of `kind` takes.
    pub fn finish(self, kind: &str) {
        for key in self.table.keys() {
            self.error(
                key,
                format!(
                    "unknown field `{}{key}` for a {kind} rule (see lexicons/README.md)",
                    self.prefix
                ),
            );
        }
    }
}
