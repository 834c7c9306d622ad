//! Normalisation: the one text fold applied both to lexicon phrases at load
//! and to every utterance before matching.
//!
//! A character is either *kept* (possibly rewritten), dropped as a
//! *separator* (whitespace, punctuation, symbols, emoji: these also start a
//! new clause), or dropped as *invisible* (zero-width, control and format
//! characters: they never start a clause). Kept characters are rewritten by:
//!
//! - full-width → half-width for U+FF01–FF5E and U+3000 (what NFKC does for
//!   the characters contact-centre text contains, at a fraction of the cost —
//!   `unicode-normalization` NFKC measured 5× slower here),
//! - ASCII lower-casing,
//! - traditional → simplified, one character at a time, from OpenCC's
//!   `TSCharacters` table (shipped by `hanconv`, Apache-2.0 data). Character
//!   level, not phrase level, so every output character maps to exactly one
//!   input character and offsets survive the fold.
//!
//! So `你問我，我 問誰？` normalises to `你问我我问谁`, and every byte of the
//! output remembers the byte offset of the input character it came from.
//!
//! The fold is one table lookup per BMP character: the table (256 KiB) is
//! built once on first use.

use std::collections::HashMap;
use std::sync::LazyLock;

/// A normalised utterance. Buffers are reused across utterances by
/// [`Normalized::fill`] so the hot path does not allocate.
#[derive(Debug, Default, Clone)]
pub struct Normalized {
    /// The folded text that the automaton searches.
    pub text: String,
    /// Byte offsets into `text` where a clause starts because a separator was
    /// dropped right before it (offset 0 is always a clause start and is not
    /// stored). Sorted; usually a handful of entries.
    breaks: Vec<u32>,
}

/// How one input character is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Kept, as this (possibly folded) character.
    Keep(char),
    /// Dropped; starts a new clause (whitespace, punctuation, symbols).
    Separator,
    /// Dropped; invisible (zero-width, control, format characters).
    Invisible,
}

/// Table codes: the character is kept unchanged, dropped as a separator,
/// dropped as invisible, or replaced by `replacements[code - REPLACED]`.
const IDENTITY: u16 = 0;
const SEPARATOR: u16 = 1;
const INVISIBLE: u16 = 2;
const REPLACED: u16 = 3;

struct FoldTable {
    /// One bit per BMP code point: kept unchanged. 8 KiB, so it stays in L1
    /// cache: most characters of simplified-Chinese text are answered here
    /// (the full table is 128 KiB and was a quarter of normalising, perf).
    identity: Box<[u64]>,
    /// Indexed by BMP code point.
    bmp: Box<[u16]>,
    replacements: Vec<char>,
    /// Traditional → simplified for characters outside the BMP.
    astral: HashMap<char, char>,
}

static TABLE: LazyLock<FoldTable> = LazyLock::new(FoldTable::build);

impl FoldTable {
    fn build() -> FoldTable {
        let mut replacements: Vec<char> = Vec::new();
        let mut code = |c: char, class: Class| -> u16 {
            match class {
                Class::Keep(k) if k == c => IDENTITY,
                Class::Keep(k) => {
                    replacements.push(k);
                    // At most a few thousand replacements (OpenCC's table
                    // plus the width fold): far below u16::MAX.
                    REPLACED + (replacements.len() - 1) as u16
                }
                Class::Separator => SEPARATOR,
                Class::Invisible => INVISIBLE,
            }
        };
        let mut classes: Vec<Class> = (0..=0xFFFFu32)
            .map(|cp| match char::from_u32(cp) {
                Some(c) => base_class(c),
                // Surrogates never occur in a `str`.
                None => Class::Invisible,
            })
            .collect();
        let mut astral = HashMap::new();
        for (trad, simp) in hanconv::RawDictionary::TSCharacters.iter() {
            let (Some(t), Some(s)) = (single_char(trad), single_char(simp)) else {
                continue;
            };
            if t == s {
                continue;
            }
            let t_cp = t as usize;
            if t_cp <= 0xFFFF {
                if classes[t_cp] == Class::Keep(t) {
                    classes[t_cp] = Class::Keep(s);
                }
            } else {
                astral.insert(t, s);
            }
        }
        let bmp: Vec<u16> = classes
            .iter()
            .enumerate()
            .map(|(cp, class)| code(char::from_u32(cp as u32).unwrap_or('\0'), *class))
            .collect();
        let mut identity = vec![0u64; 0x10000 / 64].into_boxed_slice();
        for (cp, code) in bmp.iter().enumerate() {
            if *code == IDENTITY {
                identity[cp / 64] |= 1 << (cp % 64);
            }
        }
        FoldTable {
            identity,
            bmp: bmp.into_boxed_slice(),
            replacements,
            astral,
        }
    }

    #[inline(always)]
    fn class(&self, c: char) -> Class {
        let cp = c as usize;
        if self
            .identity
            .get(cp / 64)
            .is_some_and(|w| w & (1 << (cp % 64)) != 0)
        {
            return Class::Keep(c);
        }
        match self.bmp.get(cp) {
            Some(&IDENTITY) => Class::Keep(c),
            Some(&SEPARATOR) => Class::Separator,
            Some(&INVISIBLE) => Class::Invisible,
            Some(&r) => Class::Keep(self.replacements[usize::from(r - REPLACED)]),
            None => self.astral_class(c),
        }
    }

    #[cold]
    fn astral_class(&self, c: char) -> Class {
        match base_class(c) {
            Class::Keep(k) => Class::Keep(self.astral.get(&k).copied().unwrap_or(k)),
            other => other,
        }
    }
}

fn single_char(s: &str) -> Option<char> {
    let mut it = s.chars();
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

/// The width/case/punctuation class of a character, before
/// traditional → simplified (which only applies to kept Han characters).
fn base_class(c: char) -> Class {
    let cp = c as u32;
    // Full-width ASCII variants fold to ASCII, then follow the ASCII rules.
    let c = if (0xFF01..=0xFF5E).contains(&cp) {
        char::from_u32(cp - 0xFEE0).unwrap_or(c)
    } else {
        c
    };
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Keep(c.to_ascii_lowercase())
        } else if c.is_ascii_control() && !c.is_ascii_whitespace() {
            Class::Invisible
        } else {
            // ASCII punctuation, symbols and whitespace; `_` is the pause
            // marker some ASR engines insert.
            Class::Separator
        };
    }
    if c.is_whitespace() {
        return Class::Separator;
    }
    if c.is_control() {
        return Class::Invisible;
    }
    match cp {
        // ① … ⑨ → 1 … 9, as NFKC does (⑩ and up expand to two digits:
        // left as they are so the offset map stays one-to-one).
        0x2460..=0x2468 => Class::Keep(char::from_u32(cp - 0x2460 + u32::from(b'1')).unwrap_or(c)),
        // Zero-width space/joiners, direction marks, word joiner, invisible
        // operators, variation selectors, BOM.
        0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFE00..=0xFE0F | 0xFEFF => {
            Class::Invisible
        }
        // Latin-1 punctuation and symbols (¡ § « · » ¿ …).
        0x00A1..=0x00BF => Class::Separator,
        // General punctuation: dashes, quotes “”‘’, ellipsis …, bullets.
        0x2010..=0x205E => Class::Separator,
        // Arrows, maths, technical, box drawing, shapes, dingbats, misc
        // symbols (☆ ★ ✓ …) and supplemental punctuation.
        0x2190..=0x245F | 0x2469..=0x2BFF | 0x2E00..=0x2E7F => Class::Separator,
        // CJK symbols and punctuation, except the letter-like 々 〆 〇,
        // the Hangzhou numerals and the kana repeat marks.
        0x3000..=0x3004 | 0x3008..=0x3020 | 0x3030 | 0x303D..=0x303F => Class::Separator,
        0x302A..=0x302F => Class::Invisible,
        // Vertical forms, CJK compatibility forms, small form variants,
        // half-width CJK punctuation and full-width currency signs.
        0xFE10..=0xFE1F | 0xFE30..=0xFE6F | 0xFF5F..=0xFF65 | 0xFFE0..=0xFFEE => Class::Separator,
        // Emoji and pictographs (chat agents use them as punctuation).
        0x1F000..=0x1FAFF => Class::Separator,
        // Tag characters and supplementary variation selectors.
        0xE0000..=0xE007F | 0xE0100..=0xE01EF => Class::Invisible,
        _ => Class::Keep(c),
    }
}

/// The class of `c` under the full fold (including traditional →
/// simplified).
#[inline]
pub fn classify(c: char) -> Class {
    TABLE.class(c)
}

/// Normalises `text` into a new string (used for lexicon phrases at load and
/// by tools; the hot path uses [`Normalized::fill`]).
pub fn normalize(text: &str) -> String {
    let mut n = Normalized::default();
    n.fill(text);
    n.text
}

impl Normalized {
    /// Replaces the contents with the normalisation of `src`.
    pub fn fill(&mut self, src: &str) {
        self.fill_with(src, |_, _| {});
    }

    /// Like [`Normalized::fill`], calling `on_char(c, end)` for every kept
    /// (folded) character `c` as it is appended, `end` being the byte length
    /// of the text so far: the matcher runs its automaton in the same pass.
    #[inline]
    pub fn fill_with(&mut self, src: &str, mut on_char: impl FnMut(char, usize)) {
        self.text.clear();
        self.breaks.clear();
        self.text.reserve(src.len());
        let table = &*TABLE;
        let mut pending_break = false;
        for c in src.chars() {
            match table.class(c) {
                Class::Separator => pending_break = true,
                Class::Invisible => {}
                Class::Keep(k) => {
                    if pending_break && !self.text.is_empty() {
                        self.breaks.push(self.text.len() as u32);
                    }
                    pending_break = false;
                    self.text.push(k);
                    on_char(k, self.text.len());
                }
            }
        }
    }

    /// The byte range in the original text covered by the normalised byte
    /// range `start..end` (both on character boundaries of `self.text`,
    /// `start < end`).
    pub fn original_range(&self, src: &str, start: usize, end: usize) -> (usize, usize) {
        let first = self.text[..start].chars().count();
        let last = first + self.text[start..end].chars().count() - 1;
        // The kept characters of `src`, in order, are the characters of
        // `text`: walk them again rather than store an offset per character
        // on the hot path (only hits pay, and hits are rare).
        let table = &*TABLE;
        let mut kept = 0;
        let mut o_start = 0;
        for (i, c) in src.char_indices() {
            if let Class::Keep(_) = table.class(c) {
                if kept == first {
                    o_start = i;
                }
                if kept == last {
                    return (o_start, i + c.len_utf8());
                }
                kept += 1;
            }
        }
        (o_start, src.len())
    }

    /// Whether the normalised byte offset `at` starts a clause: the start of
    /// the utterance, or right after dropped whitespace or punctuation.
    pub fn is_clause_start(&self, at: usize) -> bool {
        at == 0 || self.breaks.binary_search(&(at as u32)).is_ok()
    }

    /// Whether a clause break lies strictly inside the normalised byte range
    /// `start..end`.
    pub fn spans_break(&self, start: usize, end: usize) -> bool {
        let i = self.breaks.partition_point(|&b| (b as usize) <= start);
        self.breaks.get(i).is_some_and(|&b| (b as usize) < end)
    }

    /// Byte ranges of the clauses of `self.text` (split where separators were
    /// dropped).
    pub fn clauses(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ends = self
            .breaks
            .iter()
            .map(|&b| b as usize)
            .chain(std::iter::once(self.text.len()));
        let mut start = 0;
        ends.filter_map(move |end| {
            let clause = (start, end);
            start = end;
            (clause.0 < clause.1).then_some(clause)
        })
    }
}

/// The number of Unicode scalar values in `s[..byte]`.
pub fn char_offset(s: &str, byte: usize) -> usize {
    s[..byte].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str, &str)] = &[
            ("traditional", "你問我，我 問誰？", "你问我我问谁"),
            ("full_width_letters_digits", "ＡＢＣ１２３", "abc123"),
            ("ascii_lowercase", "VIP会员", "vip会员"),
            ("ideographic_space", "不\u{3000}知道", "不知道"),
            ("zero_width", "不\u{200B}知\u{FEFF}道", "不知道"),
            (
                "asr_pause_marker",
                "您好_很高兴为您服务",
                "您好很高兴为您服务",
            ),
            (
                "cjk_punctuation",
                "「急什么」、《别催我》。",
                "急什么别催我",
            ),
            ("quotes_and_ellipsis", "“你听我说”……", "你听我说"),
            ("emoji", "好的😊再见", "好的再见"),
            ("circled_digit", "①号", "1号"),
            ("ling_kept", "二〇二六", "二〇二六"),
            ("control", "你好\u{0007}", "你好"),
            (
                "mixed_traditional_sentence",
                "這個問題我處理不了",
                "这个问题我处理不了",
            ),
            ("empty", "", ""),
            ("only_punctuation", "，。？！…", ""),
        ];
        for (name, input, want) in cases {
            assert_eq!(normalize(input), *want, "case {name}: {input:?}");
        }
    }

    #[test]
    fn offsets_map_back_to_original() {
        let src = "你問我，我 問誰？";
        let mut n = Normalized::default();
        n.fill(src);
        assert_eq!(n.text, "你问我我问谁");
        let (s, e) = n.original_range(src, 0, n.text.len());
        assert_eq!(&src[s..e], "你問我，我 問誰");
        // "我问谁" starts at the second 我 (normalised bytes 9..18).
        let (s, e) = n.original_range(src, 9, 18);
        assert_eq!(&src[s..e], "我 問誰");
        assert_eq!(char_offset(src, s), 4);
        assert_eq!(char_offset(src, e), 8);
    }

    #[test]
    fn clause_starts_follow_separators_not_invisibles() {
        let mut n = Normalized::default();
        n.fill("喂？喂 好的啊\u{200B}嗯");
        assert_eq!(n.text, "喂喂好的啊嗯");
        let starts: Vec<usize> = n
            .text
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| n.is_clause_start(i))
            .collect();
        // 喂(0) after nothing, 喂(3) after ？, 好(6) after a space; 嗯 follows
        // only a zero-width space.
        assert_eq!(starts, vec![0, 3, 6]);
        let clauses: Vec<&str> = n.clauses().map(|(s, e)| &n.text[s..e]).collect();
        assert_eq!(clauses, vec!["喂", "喂", "好的啊嗯"]);
        assert!(n.spans_break(0, 6));
        assert!(!n.spans_break(6, n.text.len()));
        assert!(!n.spans_break(3, 6), "a break at the start is not inside");
    }

    #[test]
    fn leading_separator_is_not_a_break() {
        let mut n = Normalized::default();
        n.fill("，，啊");
        assert!(n.is_clause_start(0));
        assert_eq!(n.clauses().count(), 1);
    }
}
