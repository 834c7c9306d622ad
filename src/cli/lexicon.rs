//! `zhijian lexicon check | eval | audit | suggest` and `lexicon test --suite`.

use super::*;

pub(super) fn cmd_check(dir: &Path) -> Result<(), Failure> {
    let scanners = Scanners::load(dir)?;
    let scanner = scanners.base();
    let lex = scanner.lexicon();
    // Not println!: a closed pipe (`| head`) is an error, not a panic.
    let mut out = io::stdout().lock();
    writeln!(out, "lexicon {:?} version {}", lex.name, lex.version)?;
    for kind in crate::rules::KINDS {
        let (rules, phrases) = lex.count(kind);
        if rules > 0 {
            writeln!(
                out,
                "  {kind:<10} {rules:>3} rules {phrases:>5} phrases/patterns"
            )?;
        }
    }
    for c in &lex.categories {
        let rules: Vec<&str> = lex
            .rules
            .iter()
            .filter(|r| lex.categories[r.category].id == c.id)
            .map(|r| r.id.as_str())
            .collect();
        writeln!(
            out,
            "  category {} ({}): {}",
            c.id,
            c.name,
            rules.join(", ")
        )?;
    }
    for s in &lex.sections {
        writeln!(
            out,
            "  section {} ({}) max deduct {}",
            s.id, s.name, s.max_deduct
        )?;
    }
    for r in &lex.rules {
        let score = match r.section {
            Some(s) if r.deduct > 0.0 => format!("-{} in {}", r.deduct, lex.sections[s].id),
            _ => "alert only".into(),
        };
        writeln!(
            out,
            "  rule {:<28} {:<10} {:<8} {score}: {}",
            r.id,
            r.kind(),
            r.severity.as_str(),
            r.spec.describe()
        )?;
    }
    writeln!(
        out,
        "  {} distinct phrases; {}",
        scanner.pattern_count(),
        scanner.automaton_summary()
    )?;
    for (tenant, s) in scanners.tenants() {
        let t = s.lexicon();
        writeln!(
            out,
            "tenant {tenant}: version {}, {} rules ({:+} against the base)",
            t.version,
            t.rules.len(),
            t.rules.len() as i64 - lex.rules.len() as i64
        )?;
    }
    Ok(())
}

pub(super) fn cmd_eval(
    lexicons: &Path,
    labels: &Path,
    input: &Path,
    misses: bool,
) -> Result<(), Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let labels = crate::eval::Labels::parse(&read(labels)?).map_err(Failure::Config)?;
    let input = read(input)?;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), EngineConfig::default());
    let report = crate::eval::evaluate(&mut engine, &input, &labels)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(w) = report.warning(&labels) {
        eprintln!("zhijian: {w}");
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "lexicon {}; {} labelled segments, {} labelled conversations\n",
        scanners.base().version(),
        labels.segment_count(),
        labels.conversation_count()
    )?;
    write!(out, "{}", report.render(misses))?;
    Ok(())
}

pub(super) fn cmd_suite(lexicons: &Path, dir: &Path) -> Result<(), Failure> {
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let outcome = crate::suite::run(dir, &scanners).map_err(Failure::Config)?;
    let mut out = io::stdout().lock();
    write!(out, "{}", outcome.report)?;
    writeln!(
        out,
        "lexicon {}: {} cases, {} failed",
        scanners.base().version(),
        outcome.cases,
        outcome.failed
    )?;
    if outcome.failed > 0 {
        return Err(Failure::Runtime(format!(
            "{} of {} lexicon test cases failed",
            outcome.failed, outcome.cases
        )));
    }
    Ok(())
}

pub(super) fn cmd_audit(
    lexicons: &Path,
    labels: Option<&Path>,
    top: usize,
    input: &Path,
) -> Result<(), Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let labels = match labels {
        Some(p) => Some(crate::eval::Labels::parse(&read(p)?).map_err(Failure::Config)?),
        None => None,
    };
    let scanner = load_scanner(lexicons)?;
    let report = crate::audit::audit(&scanner, &read(input)?, labels.as_ref(), top);
    write!(io::stdout().lock(), "{report}")?;
    Ok(())
}

pub(super) fn cmd_suggest(
    lexicons: &Path,
    labels: Option<&Path>,
    false_alarms: Option<&Path>,
    learn: LearnArg,
    min_support: usize,
    out_path: Option<&Path>,
    input: &Path,
) -> Result<(), Failure> {
    use crate::suggest::{Half, Suggestion};
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let all = match labels {
        Some(p) => crate::eval::Labels::parse(&read(p)?).map_err(Failure::Config)?,
        None => crate::eval::Labels::default(),
    };
    let mut marks = match false_alarms {
        Some(p) => crate::suggest::parse_false_alarms_csv(&read(p)?)
            .map_err(|e| Failure::Config(e.to_string()))?,
        None => Vec::new(),
    };
    let half = match learn {
        LearnArg::A => Some(Half::A),
        LearnArg::B => Some(Half::B),
        LearnArg::All => None,
    };
    let mut train = all.clone();
    if let Some(h) = half {
        train.retain(|c| Half::of(c) == h);
        marks.retain(|m| Half::of(&m.conversation_id) == h);
    }
    let input = read(input)?;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let lexicon = scanners.base().lexicon();
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), EngineConfig::default());
    let (events, _, _) = crate::scan::judge_text(&mut engine, &input);
    let mut suggestions =
        crate::suggest::suggest(lexicon, &events, &input, &train, &marks, min_support);
    let note = match half {
        Some(Half::A) => "learnt from half a of the labelled conversations",
        Some(Half::B) => "learnt from half b of the labelled conversations",
        None => "learnt from every labelled conversation",
    };
    // The overlay must load: a suggestion the lexicon refuses (a piece
    // that repeats a phrase after normalisation…) is dropped, and said so.
    let work = std::env::temp_dir().join(format!("zhijian-suggest-{}", std::process::id()));
    let candidate = (|| -> Result<Option<Arc<Scanners>>, Failure> {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("tenants/default"))?;
        for e in std::fs::read_dir(lexicons)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "toml")
                && let Some(name) = p.file_name()
            {
                std::fs::copy(&p, work.join(name))?;
            }
        }
        for _ in 0..8 {
            let toml = crate::suggest::overlay_toml(lexicon, &suggestions, note);
            std::fs::write(work.join("tenants/default/suggested.toml"), &toml)?;
            match Scanners::load(&work) {
                Ok(s) => return Ok(Some(Arc::new(s))),
                Err(e) => {
                    let why = e.to_string();
                    let before = suggestions.len();
                    suggestions.retain(|x: &Suggestion| {
                        let refused = why.contains(&format!("{:?}", x.text));
                        if refused {
                            eprintln!(
                                "zhijian: dropped {:?} for {}: refused by the lexicon",
                                x.text, x.rule
                            );
                        }
                        !refused
                    });
                    if suggestions.len() == before {
                        eprintln!("zhijian: the candidate overlay does not load: {why}");
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    })();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "lexicon {}; {note}: {} labelled segments, {} false-alarm marks\n",
        scanners.base().version(),
        train.segment_count(),
        marks.len()
    )?;
    for x in &suggestions {
        let what = match x.change {
            crate::suggest::Change::Exception => {
                format!("exception  removes {} false alarm(s)", x.fixes)
            }
            crate::suggest::Change::Phrase => {
                format!("phrase     finds {} labelled miss(es)", x.fixes)
            }
        };
        writeln!(out, "  {:<26} {what:<36} {}", x.rule, x.text)?;
    }
    let toml = crate::suggest::overlay_toml(lexicon, &suggestions, note);
    match out_path {
        Some(p) => {
            std::fs::write(p, &toml)?;
            writeln!(out, "\noverlay written to {}", p.display())?;
        }
        None => writeln!(out, "\n{toml}")?,
    }
    if let (Some(h), Ok(Some(after))) = (half, &candidate) {
        let mut test = all.clone();
        test.retain(|c| Half::of(c) == h.other());
        let run = |s: &Arc<Scanners>| {
            let mut engine = Engine::with_scanners(Arc::clone(s), EngineConfig::default());
            crate::eval::evaluate(&mut engine, &input, &test)
        };
        let before = run(&scanners)?;
        let after = run(after)?;
        let other = if h == Half::A { "b" } else { "a" };
        writeln!(
            out,
            "\nOn half {other} (not learnt from: {} labelled segments, {} conversations):\n",
            test.segment_count(),
            test.conversation_count()
        )?;
        write!(out, "{}", crate::eval::before_after(&before, &after))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    candidate.map(|_| ())
}
