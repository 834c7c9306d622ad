//! A tenant overlay applied to the base lexicon: rules added, fields
//! overridden, rules disabled or enabled.

use super::*;

/// The base's raw entries with a tenant's overlay applied: new sections,
/// categories and rules are added; `[[override]]` replaces fields of a base
/// rule; `disable` removes base rules. `offset` is the index of the
/// overlay's first file in the combined file list.
pub(super) fn apply_overlay(
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
