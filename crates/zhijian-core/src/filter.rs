//! Which output events a supervisor wants to see: the filters of `zhijian
//! tail` and of the console's event feed (`?tenant=…&category=…`).
//!
//! Each filter is a comma-separated list (any of); filters combine with
//! "and"; an empty filter lets everything through. Category and severity
//! belong to violations, so setting either hides summaries.

use crate::event::{Event, Severity};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub tenants: Vec<String>,
    pub agents: Vec<String>,
    /// Category ids (the lexicon defines them).
    pub categories: Vec<String>,
    pub severities: Vec<Severity>,
}

fn list(s: Option<&str>) -> impl Iterator<Item = &str> {
    s.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
}

/// A filter value that is not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "unknown category {0:?}: category ids are a-z, 0-9, '.', '_' or '-' (e.g. forbidden, escalation)"
    )]
    Category(String),
    #[error("unknown severity {0:?} (low, medium, high, critical)")]
    Severity(String),
}

impl Filter {
    /// Parses the comma-separated lists; unknown categories and severities
    /// are errors naming the accepted values.
    pub fn parse(
        tenants: Option<&str>,
        agents: Option<&str>,
        categories: Option<&str>,
        severities: Option<&str>,
    ) -> Result<Filter, FilterError> {
        let categories = list(categories)
            .map(|c| {
                let plain = c.len() <= 64
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    });
                if plain {
                    Ok(c.to_string())
                } else {
                    Err(FilterError::Category(c.to_string()))
                }
            })
            .collect::<Result<_, _>>()?;
        let severities = list(severities)
            .map(|s| {
                Severity::ALL
                    .into_iter()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| FilterError::Severity(s.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            tenants: list(tenants).map(str::to_string).collect(),
            agents: list(agents).map(str::to_string).collect(),
            categories,
            severities,
        })
    }

    pub fn matches(&self, event: &Event) -> bool {
        let (tenant, agent) = match event {
            Event::Violation(v) => (&v.tenant, &v.agent_id),
            Event::Summary(s) => (&s.tenant, &s.agent_id),
        };
        let any = |set: &[String], v: &str| set.is_empty() || set.iter().any(|x| x == v);
        if !any(&self.tenants, tenant) || !any(&self.agents, agent.as_deref().unwrap_or("")) {
            return false;
        }
        match event {
            Event::Violation(v) => {
                (self.categories.is_empty() || self.categories.contains(&v.category))
                    && (self.severities.is_empty() || self.severities.contains(&v.severity))
            }
            Event::Summary(_) => self.categories.is_empty() && self.severities.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(tenant: &str, agent: &str, category: &str, severity: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "type": "violation", "id": "x", "conversation_id": "c", "tenant": tenant,
            "channel": "call", "agent_id": agent, "seq": 1, "rule_id": "r",
            "category": category, "severity": severity, "deduct": 1.0, "matched": null,
            "start": null, "end": null, "text": "", "lexicon_version": "v", "ts_ms": 0
        }))
        .expect("a violation")
    }

    #[test]
    fn lists_are_any_of_and_filters_all_of() {
        let f = Filter::parse(
            Some("acme, globex"),
            None,
            Some("forbidden"),
            Some("high,critical"),
        )
        .expect("parses");
        assert!(f.matches(&violation("acme", "a1", "forbidden", "high")));
        assert!(f.matches(&violation("globex", "a2", "forbidden", "critical")));
        assert!(!f.matches(&violation("initech", "a1", "forbidden", "high")));
        assert!(!f.matches(&violation("acme", "a1", "filler", "high")));
        assert!(!f.matches(&violation("acme", "a1", "forbidden", "low")));
        let by_agent = Filter::parse(None, Some("a2"), None, None).expect("parses");
        assert!(!by_agent.matches(&violation("acme", "a1", "filler", "low")));
        assert!(by_agent.matches(&violation("acme", "a2", "filler", "low")));
        assert_eq!(
            Filter::parse(None, None, None, None).expect("parses"),
            Filter::default()
        );
    }

    #[test]
    fn unknown_values_are_errors() {
        let err = Filter::parse(None, None, Some("Rude!"), None).expect_err("unknown");
        assert_eq!(err, FilterError::Category("Rude!".into()));
        assert!(
            err.to_string().contains("unknown category \"Rude!\""),
            "{err}"
        );
        let err = Filter::parse(None, None, None, Some("severe")).expect_err("unknown");
        assert_eq!(err, FilterError::Severity("severe".into()));
        assert!(
            err.to_string().contains("unknown severity \"severe\""),
            "{err}"
        );
    }
}
