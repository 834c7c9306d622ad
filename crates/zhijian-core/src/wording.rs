//! Phrase syntax: one lexicon phrase that stands for the ways agents really
//! say it.
//!
//! | syntax | means | example | matches |
//! |---|---|---|---|
//! | `[x]` | `x` or nothing | `没[有]办法` | 没办法, 没有办法 |
//! | `(a\|b)` | one of the alternatives (one may be empty) | `查(询\|)不到` | 查询不到, 查不到 |
//! | `[a\|b]` | one of them, or nothing | `还有[其他\|别的]问题` | 还有问题, 还有其他问题, 还有别的问题 |
//! | `{m,n}` | `m` to `n` characters of anything (`{n}`: up to `n`) | `还有{0,4}可以帮您` | 还有什么可以帮您 |
//!
//! | `^` first | only at the start of the segment | `^那` | 那什么时候到, not 好的那就这样 |
//!
//! Full-width brackets work too: `（没|木）【有】办法`.
//!
//! Alternatives and optional parts expand into plain phrases (at most
//! [`MAX_VARIANTS`] per phrase), so they cost nothing at run time: the one
//! automaton finds them. A gap splits a phrase into pieces: the automaton
//! finds the longest piece ([`anchor`]), and only then are the others
//! looked for around it, within the gaps' lengths and the same clause (a gap
//! never spans punctuation or a pause). Everything else in a phrase is literal text and
//! is normalised like any phrase (punctuation and spaces drop out).
//!
//! A phrase that could match nothing (an empty variant, a gap at either
//! end, unbalanced brackets) is refused when the lexicon loads.

use crate::normalize::normalize;

/// Plain phrases one written phrase may expand to.
pub(crate) const MAX_VARIANTS: usize = 64;
/// The longest gap, in characters.
pub(crate) const MAX_GAP: u32 = 20;

/// One piece of a variant: normalised text, after a gap of `gap.0..=gap.1`
/// characters (`(0, 0)` for the first piece).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Piece {
    pub text: String,
    pub gap: (u32, u32),
}

/// One plain form of a phrase: its pieces, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    pub pieces: Vec<Piece>,
    /// Written with a leading `^`: the match must begin the segment.
    pub at_start: bool,
}

impl Variant {
    /// A one-piece variant: a plain phrase.
    pub fn literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [only] => Some(&only.text),
            _ => None,
        }
    }

    /// The pieces joined, for checks (an exception contains a phrase).
    pub fn joined(&self) -> String {
        self.pieces.iter().map(|p| p.text.as_str()).collect()
    }
}

/// An item of a phrase between gaps: its alternatives (raw text).
enum Item {
    Choice(Vec<String>),
    Gap(u32, u32),
}

/// The syntax characters, full-width forms folded (a QA lead typing
/// Chinese writes （…） and 【…】).
fn ascii_syntax(c: char) -> char {
    match c {
        '（' => '(',
        '）' => ')',
        '［' | '【' => '[',
        '］' | '】' => ']',
        '｛' => '{',
        '｝' => '}',
        '｜' => '|',
        '＾' => '^',
        c => c,
    }
}

/// Whether a phrase uses the syntax at all (plain phrases skip parsing).
pub(crate) fn has_syntax(src: &str) -> bool {
    src.chars()
        .map(ascii_syntax)
        .any(|c| matches!(c, '[' | ']' | '(' | ')' | '{' | '}' | '|' | '^'))
}

/// Expands a written phrase into its normalised variants.
pub fn compile(src: &str) -> Result<Vec<Variant>, String> {
    let trimmed = src.trim_start();
    let Some(body) = trimmed.strip_prefix(['^', '＾']) else {
        return expand(src);
    };
    let mut variants = expand(body)?;
    for v in &mut variants {
        v.at_start = true;
    }
    Ok(variants)
}

fn expand(src: &str) -> Result<Vec<Variant>, String> {
    if !has_syntax(src) {
        let n = normalize(src);
        if n.is_empty() {
            return Err("is empty after normalisation (only spaces or punctuation)".into());
        }
        return Ok(vec![Variant {
            pieces: vec![Piece {
                text: n,
                gap: (0, 0),
            }],
            at_start: false,
        }]);
    }
    let items = parse(src)?;
    // Segments between gaps, each a product of its choices.
    let mut segments: Vec<((u32, u32), Vec<String>)> = vec![((0, 0), vec![String::new()])];
    for item in items {
        match item {
            Item::Gap(lo, hi) => segments.push(((lo, hi), vec![String::new()])),
            Item::Choice(alts) => {
                let Some((_, texts)) = segments.last_mut() else {
                    continue;
                };
                let mut next = Vec::with_capacity(texts.len() * alts.len());
                for t in texts.iter() {
                    for a in &alts {
                        next.push(format!("{t}{a}"));
                    }
                }
                if next.len() > MAX_VARIANTS {
                    return Err(format!(
                        "expands to more than {MAX_VARIANTS} phrases: split it"
                    ));
                }
                *texts = next;
            }
        }
    }
    let mut variants: Vec<Variant> = vec![Variant {
        pieces: Vec::new(),
        at_start: false,
    }];
    for (i, (gap, texts)) in segments.iter().enumerate() {
        let mut next = Vec::new();
        for v in &variants {
            for t in texts {
                let n = normalize(t);
                if n.is_empty() {
                    return Err(
                        if segments.len() > 1 && (i == 0 || i == segments.len() - 1) {
                            "a gap {m,n} must sit between two pieces of text".to_string()
                        } else if segments.len() > 1 {
                            "a part between two gaps can be empty: it could match anything"
                                .to_string()
                        } else {
                            "can match the empty string: every part of it is optional".to_string()
                        },
                    );
                }
                let mut pieces = v.pieces.clone();
                pieces.push(Piece { text: n, gap: *gap });
                next.push(Variant {
                    pieces,
                    at_start: false,
                });
            }
        }
        if next.len() > MAX_VARIANTS {
            return Err(format!(
                "expands to more than {MAX_VARIANTS} phrases: split it"
            ));
        }
        variants = next;
    }
    let mut seen = std::collections::HashSet::new();
    variants.retain(|v| seen.insert(v.clone()));
    Ok(variants)
}

fn parse(src: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut chars = src.chars().map(ascii_syntax);
    let mut literal = String::new();
    let flush = |literal: &mut String, items: &mut Vec<Item>| {
        if !literal.is_empty() {
            items.push(Item::Choice(vec![std::mem::take(literal)]));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '[' | '(' => {
                flush(&mut literal, &mut items);
                let close = if c == '[' { ']' } else { ')' };
                let mut body = String::new();
                loop {
                    match chars.next() {
                        Some(x) if x == close => break,
                        Some('[' | '(' | '{' | '}' | ']' | ')') => {
                            return Err(format!("brackets inside {c}…{close} are not allowed"));
                        }
                        Some(x) => body.push(x),
                        None => return Err(format!("{c} without its {close}")),
                    }
                }
                let mut alts: Vec<String> = body.split('|').map(str::to_string).collect();
                if c == '[' {
                    alts.push(String::new());
                } else if alts.len() < 2 {
                    return Err(format!(
                        "({body}) has one alternative: write it plainly, or [{body}] if it is optional"
                    ));
                }
                if alts.iter().all(|a| normalize(a).is_empty()) {
                    return Err(format!("{c}{body}{close} holds no text"));
                }
                items.push(Item::Choice(alts));
            }
            '{' => {
                flush(&mut literal, &mut items);
                let mut body = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(x) => body.push(x),
                        None => return Err("{ without its }".into()),
                    }
                }
                let parse_n = |s: &str| {
                    s.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("{{{body}}} is not a gap: write {{m,n}} or {{n}}"))
                };
                let (lo, hi) = match body.split_once(',') {
                    Some((a, b)) => (parse_n(a)?, parse_n(b)?),
                    None => (0, parse_n(&body)?),
                };
                if lo > hi || hi == 0 || hi > MAX_GAP {
                    return Err(format!(
                        "gap {{{body}}}: want 0 <= m <= n, 1 <= n <= {MAX_GAP}"
                    ));
                }
                items.push(Item::Gap(lo, hi));
            }
            ']' | ')' | '}' => return Err(format!("{c} without its opening bracket")),
            '|' => return Err("| outside (…) or […]".into()),
            '^' => return Err("^ belongs at the start of a phrase only".into()),
            _ => literal.push(c),
        }
    }
    flush(&mut literal, &mut items);
    Ok(items)
}

/// Where the pieces `rest` sit after a piece that ends at byte `end` of
/// `text`: the end of the last of them, or `None` when one is not within
/// its gap. `clause_end` is where the clause ends (pieces never cross it).
/// The earliest position of each piece is taken.
pub(crate) fn match_rest(
    text: &str,
    end: usize,
    clause_end: usize,
    rest: &[Piece],
) -> Option<usize> {
    let mut pos = end;
    for piece in rest {
        let (lo, hi) = piece.gap;
        let mut at = pos;
        let mut skipped = 0u32;
        let mut found = None;
        loop {
            if skipped >= lo
                && at + piece.text.len() <= clause_end
                && text[at..].starts_with(piece.text.as_str())
            {
                found = Some(at + piece.text.len());
                break;
            }
            if skipped >= hi || at >= clause_end {
                break;
            }
            let step = text[at..].chars().next().map_or(1, char::len_utf8);
            at += step;
            skipped += 1;
        }
        pos = found?;
    }
    Some(pos)
}

/// The piece of a variant the automaton looks for: the longest (as a rule
/// the rarest: 查询不到 rather than 我), the last of equals. The others are
/// checked only around its hits.
pub(crate) fn anchor(v: &Variant) -> usize {
    let mut best = 0;
    for (i, p) in v.pieces.iter().enumerate() {
        if p.text.chars().count() >= v.pieces[best].text.chars().count() {
            best = i;
        }
    }
    best
}

/// The whole span of a gapped variant whose anchor piece was found at
/// `start..end` of `text`, or `None` when another piece is not within its
/// gap inside the clause `clause.0..clause.1`. Pieces after the anchor take
/// their earliest position, pieces before it their nearest.
pub(crate) fn match_around(
    text: &str,
    (start, end): (usize, usize),
    clause: (usize, usize),
    pieces: &[Piece],
    anchor: usize,
) -> Option<(usize, usize)> {
    let end = match_rest(text, end, clause.1, pieces.get(anchor + 1..).unwrap_or(&[]))?;
    let mut from = start;
    for i in (0..anchor).rev() {
        let piece = &pieces[i].text;
        // The gap between piece i and the one after it.
        let (lo, hi) = pieces[i + 1].gap;
        let mut at = from;
        let mut skipped = 0u32;
        let mut found = None;
        loop {
            if skipped >= lo && at >= clause.0 + piece.len() && text[..at].ends_with(piece.as_str())
            {
                found = Some(at - piece.len());
                break;
            }
            if skipped >= hi || at <= clause.0 {
                break;
            }
            let step = text[..at].chars().next_back().map_or(1, char::len_utf8);
            at -= step;
            skipped += 1;
        }
        from = found?;
    }
    Some((from, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(src: &str) -> Vec<String> {
        let mut v: Vec<String> = compile(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .iter()
            .map(|v| {
                v.pieces
                    .iter()
                    .map(|p| {
                        if p.gap == (0, 0) {
                            p.text.clone()
                        } else {
                            format!("{{{},{}}}{}", p.gap.0, p.gap.1, p.text)
                        }
                    })
                    .collect()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_leading_caret_anchors_every_form_and_is_refused_elsewhere() {
        let v = compile("^另[一个|外]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|v| v.at_start));
        assert!(compile("＾那").is_ok_and(|v| v[0].at_start && v[0].joined() == "那"));
        assert!(compile("那").is_ok_and(|v| !v[0].at_start));
        assert!(compile("那^个").is_err());
        assert!(compile("^").is_err());
        assert!(compile("^{0,3}那").is_err());
    }

    #[test]
    fn optional_parts_alternatives_and_gaps_expand() {
        assert_eq!(forms("没[有]办法"), ["没办法", "没有办法"]);
        assert_eq!(forms("查(询|)不到"), ["查不到", "查询不到"]);
        assert_eq!(
            forms("还有[其他|别的]问题"),
            ["还有其他问题", "还有别的问题", "还有问题"]
        );
        // Variants fold first: 其它 is 其他.
        assert_eq!(forms("还有[其他|其它]问题"), ["还有其他问题", "还有问题"]);
        assert_eq!(forms("还有{0,4}可以帮您"), ["还有{0,4}可以帮您"]);
        assert_eq!(forms("还有{3}帮您"), ["还有{0,3}帮您"]);
        // Punctuation and width fold as in any phrase; plain phrases pass.
        assert_eq!(forms("你问我/我问谁"), ["你问我我问谁"]);
        assert_eq!(
            forms("（没|木）[有]办法"),
            ["木办法", "木有办法", "没办法", "没有办法"]
        );
    }

    #[test]
    fn phrases_that_match_nothing_or_anything_are_refused() {
        for (src, want) in [
            ("[有]", "can match the empty string"),
            ("(|)", "holds no text"),
            ("{0,3}办法", "must sit between two pieces"),
            ("办法{0,3}", "must sit between two pieces"),
            ("没{1,2}[有]{1,2}办法", "can be empty"),
            ("没[有办法", "[ without its ]"),
            ("没有)办法", ") without its opening bracket"),
            ("没(有)办法", "has one alternative"),
            ("没{3,1}办法", "want 0 <= m <= n"),
            ("没{0,99}办法", "want 0 <= m <= n"),
            ("没{x}办法", "is not a gap"),
            ("没|有", "| outside"),
            ("(a|b)(c|d)(e|f)(g|h)(i|j)(k|l)(m|n)", "more than 64"),
            ("，。", "empty after normalisation"),
        ] {
            let e = compile(src).expect_err(src);
            assert!(e.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn the_rest_of_a_gapped_phrase_is_found_within_its_gap_and_clause() {
        let v = &compile("还有{0,4}可以帮您").expect("valid")[0];
        let rest = &v.pieces[1..];
        let t = "还有什么可以帮您";
        assert_eq!(match_rest(t, "还有".len(), t.len(), rest), Some(t.len()));
        let t = "还有其他什么问题可以帮您";
        assert_eq!(match_rest(t, "还有".len(), t.len(), rest), None, "6 chars");
        let t = "还有可以帮您";
        assert_eq!(match_rest(t, "还有".len(), t.len(), rest), Some(t.len()));
        // The clause ends before the piece.
        let t = "还有什么可以帮您";
        assert_eq!(match_rest(t, "还有".len(), "还有什么".len(), rest), None);
        // Anchored on a later, longer piece: the earlier ones are found
        // backwards, within their gaps and the clause.
        let v = &compile("(我|小妹){0,3}查询不到").expect("valid");
        let t = "小妹这边查询不到";
        for variant in v {
            let a = anchor(variant);
            assert_eq!(variant.pieces[a].text, "查询不到");
        }
        let anchored = |v: &Variant, text: &str, clause: (usize, usize)| {
            let a = anchor(v);
            let at = text.find(v.pieces[a].text.as_str())?;
            match_around(
                text,
                (at, at + v.pieces[a].text.len()),
                clause,
                &v.pieces,
                a,
            )
        };
        let mei = v.iter().find(|x| x.pieces[0].text == "小妹").expect("小妹");
        assert_eq!(anchored(mei, t, (0, t.len())), Some((0, t.len())));
        assert_eq!(anchored(mei, t, ("小妹".len(), t.len())), None, "clause");
        let far = "小妹这边系统查询不到";
        assert_eq!(anchored(mei, far, (0, far.len())), None, "5 chars");
        // A minimum gap.
        let v = &compile("请{2,3}稍等").expect("valid")[0];
        assert_eq!(match_rest("请您稍等", 3, 12, &v.pieces[1..]), None);
        assert_eq!(match_rest("请您再稍等", 3, 15, &v.pieces[1..]), Some(15));
    }
}
