//! Tests of `rulebook`.

use super::*;
use zhijian::lexicon::{self, Lexicon};
use zhijian::matcher::{Scanners, default_segmenter};
use zhijian::normalize::normalize;
use zhijian::rules::Spec;

fn rule<'a>(lex: &'a Lexicon, id: &str) -> Option<&'a zhijian::lexicon::Rule> {
    lex.rules.iter().find(|r| r.id == id)
}

#[test]
fn the_rulebook_has_its_counts_and_loads() {
    let (base, overlays) = large_rulebook(7);
    let set = lexicon::load_set_sources(base, overlays).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.base.rules.len(), 200);
    for (kind, n) in KIND_COUNTS {
        assert_eq!(set.base.count(kind).0, n, "{kind} rules");
    }
    let detecting: Vec<_> = set
        .base
        .rules
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Pattern(p) if !p.detectors.is_empty() => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(detecting.len(), 1, "one pattern rule runs the detectors");
    assert_eq!(detecting[0].detectors.len(), 3);
    assert!(!detecting[0].patterns.is_empty());

    let mut tenants = TENANTS.to_vec();
    tenants.sort_unstable();
    assert_eq!(
        set.tenants.keys().map(String::as_str).collect::<Vec<_>>(),
        tenants
    );
    for (k, t) in TENANTS.iter().enumerate() {
        let lex = &set.tenants[*t];
        assert_eq!(
            lex.rules.len(),
            200 - OVERLAY_DISABLED + OVERLAY_ADDED,
            "{t}"
        );
        for id in [themed_rule_id("upsell", k), themed_rule_id("stall", k)] {
            assert!(
                rule(&set.base, &id).is_some() && rule(lex, &id).is_none(),
                "{t}: {id} disabled"
            );
        }
        let added = ["tenant.forbidden", "tenant.pattern"];
        for id in added {
            assert!(
                rule(&set.base, id).is_none() && rule(lex, id).is_some(),
                "{t}: {id}"
            );
        }
        let third = if k % 2 == 0 {
            "tenant.greeting"
        } else {
            "tenant.follow_up"
        };
        assert!(rule(lex, third).is_some(), "{t}: {third}");
        // Overrides: OVERLAY_OVERRIDES of them.
        let promise = themed_rule_id("promise", k);
        let (b, o) = (
            rule(&set.base, &promise).unwrap(),
            rule(lex, &promise).unwrap(),
        );
        assert_eq!((o.severity.as_str(), o.deduct), ("critical", 2.0), "{t}");
        assert!(b.severity.as_str() != "critical" || b.deduct != 2.0 || b.section != o.section);
        let rude = themed_rule_id("rude", k);
        let (b, o) = (rule(&set.base, &rude).unwrap(), rule(lex, &rude).unwrap());
        assert_ne!(b.spec, o.spec, "{t}: {rude} phrases");
        let resp = RESPONSE_RULES[k].0;
        match (
            &rule(&set.base, resp).unwrap().spec,
            &rule(lex, resp).unwrap().spec,
        ) {
            (Spec::Response(b), Spec::Response(o)) => {
                assert_eq!(o.within_segments, b.within_segments.map(|n| n + 2))
            }
            _ => panic!("{resp} is a response rule"),
        }
        assert_eq!(OVERLAY_OVERRIDES, 3);
    }
    let scanners = Scanners::new(set, default_segmenter()).expect("compiles");
    assert_eq!(scanners.tenants().count(), TENANTS.len());
    assert!(!scanners.has_tenant("someone-else"));
}

#[test]
fn the_rulebook_is_deterministic_per_seed() {
    assert_eq!(large_rulebook(3), large_rulebook(3));
    assert_ne!(large_rulebook(3).0, large_rulebook(4).0);
}

/// Themed phrases stay rare: none occurs in generated speech (fragments
/// joined as the generator joins them, normalised).
#[test]
fn themed_phrases_never_occur_in_generated_speech() {
    let phrases: Vec<String> = themed_phrases().iter().map(|p| normalize(p)).collect();
    let ac = aho_corasick::AhoCorasick::new(&phrases).expect("automaton");
    let convs = super::super::conversations(42, 2_000, "t-", &super::super::Mix::default());
    for c in &convs {
        for t in &c.turns {
            let n = normalize(&t.text);
            if let Some(m) = ac.find(&n) {
                panic!(
                    "{:?} occurs in {:?}",
                    phrases[m.pattern().as_usize()],
                    t.text
                );
            }
        }
    }
}
