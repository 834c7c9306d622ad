//! `zhijian label`: a QA lead labels a sample of conversations in the
//! terminal, in the format `lexicon eval` reads (docs/labelling.md).
//!
//! One conversation at a time, every digit masked (order, phone and card
//! numbers never reach the screen: the reviewer judges wording, not
//! numbers), the agent's segments asked for one by one, then the greeting
//! and closing verdicts. Each finished conversation is appended to the
//! labels file at once, so stopping loses nothing and a later run resumes
//! where this one stopped (labelled conversations are skipped). The
//! prompts read lines, so the same loop runs under a test with scripted
//! answers.

use crate::event::{InputKind, Speaker, decode_str};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};

/// Why labelling stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LabelError {
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
    #[error("the labels file: {0}")]
    Labels(String),
}

/// What a session did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub labelled: usize,
    pub skipped: usize,
    pub already: usize,
}

/// Every ASCII and full-width digit as `•`.
pub(crate) fn mask_digits(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() || ('０'..='９').contains(&c) {
                '•'
            } else {
                c
            }
        })
        .collect()
}

/// The keys a reviewer types for the categories, one letter each.
const KEYS: [(char, &str); 5] = [
    ('f', "forbidden"),
    ('l', "filler"),
    ('p', "pii"),
    ('m', "policy_limit"),
    ('r', "referral"),
];

/// The order samples are drawn in: FNV-1a of `"labels" + id`.
fn sample_order(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "labels".bytes().chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct Seg {
    seq: u64,
    speaker: Speaker,
    text: String,
}

enum Answer {
    Line(String),
    Skip,
    Quit,
}

fn ask(
    answers: &mut impl BufRead,
    screen: &mut impl Write,
    prompt: &str,
) -> Result<Answer, LabelError> {
    write!(screen, "{prompt}")?;
    screen.flush()?;
    let mut line = String::new();
    if answers.read_line(&mut line)? == 0 {
        return Ok(Answer::Quit);
    }
    Ok(match line.trim() {
        "q" => Answer::Quit,
        "s" => Answer::Skip,
        other => Answer::Line(other.to_string()),
    })
}

/// Labels the conversations of `input` (JSONL events) not yet in
/// `existing` (a labels file's text), at most `sample` of them, in sample
/// order when `sample` is given (input order otherwise); appends each to
/// `out`.
pub(crate) fn run(
    input: &str,
    existing: &str,
    sample: Option<usize>,
    answers: &mut impl BufRead,
    screen: &mut impl Write,
    out: &mut impl Write,
) -> Result<Summary, LabelError> {
    let done: BTreeSet<String> = crate::eval::Labels::parse(existing)
        .map_err(LabelError::Labels)?
        .conversation_keys()
        .into_iter()
        .map(|(_, c)| c.to_string())
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut convs: HashMap<String, Vec<Seg>> = HashMap::new();
    for line in input.lines() {
        let Ok(i) = decode_str(line) else { continue };
        let InputKind::Segment(s) = &i.kind else {
            continue;
        };
        if !s.is_final {
            continue;
        }
        let id = i.conversation_id.to_string();
        let list = convs.entry(id.clone()).or_insert_with(|| {
            order.push(id);
            Vec::new()
        });
        list.push(Seg {
            seq: s.seq,
            speaker: s.speaker,
            text: s.text.to_string(),
        });
    }
    let mut summary = Summary {
        already: order.iter().filter(|c| done.contains(*c)).count(),
        ..Summary::default()
    };
    if let Some(n) = sample {
        order.sort_by_key(|c| sample_order(c));
        order.truncate(n);
    }
    let keys: String = KEYS
        .iter()
        .map(|(k, c)| format!("{k} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    'conversations: for id in order.iter().filter(|c| !done.contains(*c)) {
        let segs = &convs[id];
        writeln!(screen, "\n=== {id} ({} segments)", segs.len())?;
        for s in segs {
            writeln!(
                screen,
                "  [{}] {:<8} {}",
                s.seq,
                s.speaker.as_str(),
                mask_digits(&s.text)
            )?;
        }
        writeln!(
            screen,
            "categories: {keys}; Enter = clean; s skips the conversation, q stops"
        )?;
        let mut lines = Vec::new();
        for s in segs.iter().filter(|s| s.speaker == Speaker::Agent) {
            let categories = loop {
                match ask(answers, screen, &format!("  [{}] categories: ", s.seq))? {
                    Answer::Quit => break 'conversations,
                    Answer::Skip => {
                        summary.skipped += 1;
                        continue 'conversations;
                    }
                    Answer::Line(l) => {
                        let picked: Option<Vec<&str>> = l
                            .chars()
                            .filter(|c| !c.is_whitespace())
                            .map(|c| KEYS.iter().find(|(k, _)| *k == c).map(|(_, n)| *n))
                            .collect();
                        match picked {
                            Some(mut p) => {
                                p.sort_unstable();
                                p.dedup();
                                break p;
                            }
                            None => writeln!(screen, "  ? one or more of: {keys}")?,
                        }
                    }
                }
            };
            lines.push(serde_json::json!({
                "conversation_id": id, "seq": s.seq, "categories": categories,
            }));
        }
        let mut verdict = |what: &str| -> Result<Option<Option<bool>>, LabelError> {
            loop {
                match ask(
                    answers,
                    screen,
                    &format!("  {what} (y / n / - not judgeable): "),
                )? {
                    Answer::Quit => return Ok(None),
                    Answer::Skip => return Ok(Some(None)),
                    Answer::Line(l) => match l.as_str() {
                        "y" => return Ok(Some(Some(true))),
                        "n" => return Ok(Some(Some(false))),
                        "-" | "" => return Ok(Some(None)),
                        _ => writeln!(screen, "  ? y, n or -")?,
                    },
                }
            }
        };
        let Some(greeting) = verdict("greeting")? else {
            break;
        };
        let Some(closing) = verdict("closing")? else {
            break;
        };
        let head = serde_json::json!({
            "conversation_id": id, "greeting": greeting, "closing": closing,
        });
        for l in std::iter::once(&head).chain(&lines) {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        summary.labelled += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "\
{\"conversation_id\":\"c1\",\"seq\":0,\"speaker\":\"customer\",\"text\":\"订单12345\"}
{\"conversation_id\":\"c1\",\"seq\":1,\"speaker\":\"agent\",\"text\":\"您好，手机１３８号码已收到\"}
{\"conversation_id\":\"c1\",\"seq\":2,\"speaker\":\"agent\",\"text\":\"没办法\"}
{\"conversation_id\":\"c2\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"在的\"}
{\"conversation_id\":\"c3\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"好的\"}
";

    #[test]
    fn a_session_labels_masks_skips_and_resumes() {
        // c1: clean, then forbidden (after a typo), greeting yes, closing
        // not judgeable; c2 skipped; c3 stopped.
        let mut answers = "\nxf\nf\ny\n-\ns\nq\n".as_bytes();
        let (mut screen, mut out) = (Vec::new(), Vec::new());
        let s = run(INPUT, "", None, &mut answers, &mut screen, &mut out).expect("run");
        assert_eq!(
            s,
            Summary {
                labelled: 1,
                skipped: 1,
                already: 0
            }
        );
        let screen = String::from_utf8(screen).expect("utf-8");
        assert!(
            screen.contains("订单•••••") && screen.contains("手机•••号码"),
            "{screen}"
        );
        assert!(
            !screen.contains("12345") && !screen.contains("１３８"),
            "{screen}"
        );
        let out = String::from_utf8(out).expect("utf-8");
        let labels = crate::eval::Labels::parse(&out).expect("the format eval reads");
        assert_eq!(
            (labels.conversation_count(), labels.segment_count()),
            (1, 2)
        );
        assert!(
            out.contains("\"seq\":2") && out.contains("[\"forbidden\"]"),
            "{out}"
        );
        // A second session resumes after c1.
        let mut answers = "\nn\nn\n".as_bytes();
        let s = run(
            INPUT,
            &out,
            None,
            &mut answers,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .expect("resume");
        assert_eq!((s.labelled, s.already), (1, 1));
    }

    #[test]
    fn a_sample_is_drawn_in_a_fixed_order() {
        let mut answers = "q\n".as_bytes();
        let mut screen = Vec::new();
        run(
            INPUT,
            "",
            Some(1),
            &mut answers,
            &mut screen,
            &mut Vec::new(),
        )
        .expect("run");
        let first = String::from_utf8(screen).expect("utf-8");
        let want = ["c1", "c2", "c3"]
            .into_iter()
            .min_by_key(|c| sample_order(c))
            .unwrap_or_default();
        assert!(first.contains(&format!("=== {want} ")), "{first}");
    }
}
