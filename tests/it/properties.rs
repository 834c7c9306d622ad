//! Property tests: the offset map round-trips, and the automaton finds
//! exactly what a naive search of the normalised text finds.

use proptest::prelude::*;
use std::path::PathBuf;
use zhijian::event::Speaker;
use zhijian::lexicon::load_sources;
use zhijian::matcher::{Scanner, Scratch, default_segmenter};
use zhijian::normalize::{Normalized, normalize};

/// Characters that exercise every class of the fold: simplified and
/// traditional Han, full-width and ASCII letters/digits, CJK and ASCII
/// punctuation, spaces, zero-width characters, emoji (and [`EVASIVE`]).
const ALPHABET: &[char] = &[
    '你', '问', '問', '我', '谁', '誰', '不', '知', '道', '急', '什', '么', '麼', '啊', '喂', '好',
    'Ａ', 'a', 'B', '１', '2', '，', '。', '？', '!', ' ', '\u{3000}', '\u{200B}', '\u{FEFF}',
    '😊', '_', '“', '”', '…', '\t',
];

/// Characters an evasion hides a phrase with: default-ignorables (BMP and
/// astral), combining marks, a compatibility ideograph (BMP and astral) and
/// a Kangxi radical.
const EVASIVE: &[char] = &[
    '\u{34F}',
    '\u{3164}',
    '\u{AD}',
    '\u{E0041}',
    '\u{301}',
    '\u{20DD}',
    '\u{F967}',
    '\u{2F804}',
    '\u{2F00}',
];

fn text() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = ALPHABET.iter().chain(EVASIVE).copied().collect();
    prop::collection::vec(prop::sample::select(alphabet), 0..40)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every character of the normalised text maps back to an original
    /// slice that normalises to exactly that character, and slices of
    /// consecutive characters tile the original in order.
    #[test]
    fn offset_map_round_trips(src in text()) {
        let mut n = Normalized::default();
        n.fill(&src);
        prop_assert_eq!(&n.text, &normalize(&src));
        let mut last_end = 0;
        for (i, c) in n.text.char_indices() {
            let (s, e) = n.original_range(&src, i, i + c.len_utf8());
            prop_assert!(s >= last_end && s < e && e <= src.len());
            prop_assert_eq!(normalize(&src[s..e]), c.to_string());
            last_end = e;
        }
        if !n.text.is_empty() {
            let (s, e) = n.original_range(&src, 0, n.text.len());
            prop_assert_eq!(normalize(&src[s..e]), n.text.clone());
        }
    }

    /// With one phrase per rule and no boundary/position/exception filters,
    /// the hits of each rule are the leftmost non-overlapping occurrences of
    /// its phrase in the normalised text (what `str::match_indices` finds).
    #[test]
    fn automaton_hits_equal_naive_search(src in text()) {
        let scanner = naive_scanner();
        let mut scratch = Scratch::default();
        scanner.scan(&src, Speaker::Agent, &mut scratch);
        let norm = normalize(&src);
        let mut want: Vec<(u16, usize, usize)> = Vec::new();
        for (ri, rule) in scanner.rules().iter().enumerate() {
            let p = normalize(rule.phrases().next().expect("a phrase"));
            for (at, m) in norm.match_indices(p.as_str()) {
                want.push((ri as u16, at, at + m.len()));
            }
        }
        let mut got: Vec<(u16, usize, usize)> = scratch.hits.iter().map(|h| (scanner.group_rule(h.group), h.norm.0, h.norm.1)).collect();
        want.sort_unstable();
        got.sort_unstable();
        prop_assert_eq!(got, want);
    }

    /// The character automaton (run while normalising) and the byte
    /// automaton (large lexicons) give the same hits with the default
    /// lexicon: exceptions, word boundaries and clause rules included.
    #[test]
    fn character_and_byte_automata_agree(src in lexicon_text()) {
        let (chars, bytes) = default_scanners();
        let (mut a, mut b) = (Scratch::default(), Scratch::default());
        for speaker in [Speaker::Agent, Speaker::Customer] {
            // Hits, and every dropped candidate with its reason: a phrase
            // or exception one automaton missed shows up either way.
            let dropped_a = chars.scan_explained(&src, speaker, &mut a);
            let dropped_b = bytes.scan_explained(&src, speaker, &mut b);
            prop_assert_eq!(&a.hits, &b.hits);
            prop_assert_eq!(dropped_a, dropped_b);
        }
    }
}

/// Text made of the default lexicon's phrases and exceptions, pieces of
/// them, their characters and punctuation, so hits, overlaps and
/// exceptions are common.
fn lexicon_text() -> impl Strategy<Value = String> {
    static PIECES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let pieces = PIECES.get_or_init(|| {
        let (scanner, _) = default_scanners();
        let mut ps: Vec<String> = Vec::new();
        for p in scanner
            .rules()
            .iter()
            .flat_map(|r| r.phrases().chain(r.exceptions()))
        {
            let cs: Vec<char> = p.chars().collect();
            ps.push(p.clone());
            ps.push(cs[cs.len() / 2..].iter().collect());
            ps.extend(cs.iter().map(|c| c.to_string()));
        }
        ps.extend(
            [
                "，", "。", " ", "問", "誰", "Ａ", "您", "\u{301}", "\u{3164}", "\u{F967}",
            ]
            .map(String::from),
        );
        ps.sort_unstable();
        ps.dedup();
        ps
    });
    prop::collection::vec(prop::sample::select(pieces.clone()), 0..8).prop_map(|v| v.concat())
}

fn default_scanners() -> &'static (Scanner, Scanner) {
    static S: std::sync::OnceLock<(Scanner, Scanner)> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
        let load = || {
            let lex = zhijian::lexicon::load_dir(&dir).expect("default lexicon");
            Scanner::new(lex, default_segmenter()).expect("compiles")
        };
        (
            load(),
            load().without_char_automaton().expect("byte automaton"),
        )
    })
}

fn naive_scanner() -> &'static Scanner {
    static S: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let phrases = ["你问我我问谁", "不知道", "急什么", "什么", "啊", "啊啊", "问", "a2", "好好"];
        let mut toml = String::from(
            "[lexicon]\nname = \"naive\"\nversion = \"1\"\n[[section]]\nid = \"s\"\nname = \"s\"\nmax_deduct = 100\n[[category]]\nid = \"forbidden\"\nname = \"服务忌语\"\n",
        );
        for (i, p) in phrases.iter().enumerate() {
            toml.push_str(&format!(
                "[[rule]]\nid = \"r{i}\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"s\"\nphrases = [\"{p}\"]\n"
            ));
        }
        let lex = load_sources(vec![(PathBuf::from("naive.toml"), toml)]).expect("valid");
        Scanner::new(lex, default_segmenter()).expect("compiles")
    })
}
