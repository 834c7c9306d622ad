//! Built-in detectors of full personal numbers an agent speaks or types:
//! mainland mobile numbers, resident identity card numbers and bank card
//! numbers.
//!
//! A lexicon cannot list these (there are billions of them), and a pattern
//! language would be slow and loose, so each detector is a small hand-written
//! check: length, prefix, and the number's own check digit where it has one
//! (GB 11643-1999 for identity cards, Luhn for bank cards). A random digit
//! string of the right length passes a check digit one time in ten or
//! eleven, which is what keeps order numbers and timestamps out.
//!
//! The input is the *normalised* utterance ([`crate::normalize`]): separators
//! are already dropped, so `138 1234-5678` arrives as `13812345678`, and
//! full-width digits are ASCII. A *digit character* is an ASCII digit or a
//! Chinese digit as an agent says or an ASR engine writes it: 零 〇 一 幺 二
//! 两 三 四 五 六 七 八 九 and the financial forms 壹 贰 叁 肆 伍 陆 柒 捌 玖
//! (their traditional forms 貳 陸 … arrive folded). A number is always a
//! whole maximal run of digit characters, Arabic and Chinese mixed:
//!
//! - a number is never found inside a longer run, so a 20-digit order number
//!   holds no phone number, and ordinary text (第一二三个, 三四五个) never
//!   has a run long enough to count;
//! - masks are not digits: `138****5678` (normalised `1385678`),
//!   `138xxxx5678`, `[电话x]` all break the run, and a run of one repeated
//!   digit (`00000000000`) is a placeholder, never a number;
//! - the one exception to "digits only" is the identity card's check
//!   character `x`, right after a run of 17 digits.
//!
//! A run directly followed by 元, 块 or 圆 is an amount of money
//! (`158,000,000.00元` normalises to `15800000000元`), not a number; 元旦
//! (New Year's Day) is not money.
//!
//! The price of whole runs: a digit character glued to a number hides it
//! (`13812345678一下` is a run of 12). The everyday 参 is not a digit, so
//! the traditional financial 參 (which normalises to 参) is not either, and
//! neither are 十 百 千: a number said as a quantity is not a number read out
//! digit by digit.
//!
//! Cost: [`may_contain`] and [`find`] run on every agent segment and do not
//! allocate ([`find`] only pushes to its output). [`may_contain`] counts
//! digit characters (≈20 ns for a 20-character sentence, release build);
//! [`find`] runs it first and walks runs only when it passes, since the walk
//! costs about four times as much.

/// A built-in detector. The discriminant is its bit in the `enabled` set of
/// [`find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    /// Mainland mobile number: 11 digits `1[3-9]…`, optionally after `86`.
    Mobile = 0,
    /// Resident identity card number (GB 11643-1999): 17 digits and a check
    /// digit or `x`.
    IdCard = 1,
    /// Bank card number: 16–19 digits, Luhn check.
    BankCard = 2,
}

impl Detector {
    /// Every detector, in bit order.
    pub const ALL: [Detector; 3] = [Detector::Mobile, Detector::IdCard, Detector::BankCard];

    /// The stable name used in configuration and output.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Mobile => "mobile",
            Detector::IdCard => "id_card",
            Detector::BankCard => "bank_card",
        }
    }

    /// The detector called `name` (as returned by [`Detector::name`]).
    pub(crate) fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    /// One line for people: what the detector finds.
    pub fn describe(self) -> &'static str {
        match self {
            Detector::Mobile => "mainland mobile number (11 digits, 1[3-9]…, optionally after 86)",
            Detector::IdCard => {
                "resident identity card number (18 characters, GB 11643-1999 check digit or x)"
            }
            Detector::BankCard => "bank card number (16–19 digits starting 3–6, Luhn check)",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A detected number: byte range in the normalised text, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Which detector found it.
    pub detector: Detector,
    /// Byte offset of its first character in the normalised text.
    pub start: usize,
    /// Byte offset just past its last character (the `x` of an identity
    /// card included).
    pub end: usize,
}

/// Fewer digit characters than this cannot make any number.
const MIN_DIGITS: usize = 11;
/// The longest number (a 19-digit bank card); longer runs are not numbers.
const MAX_DIGITS: usize = 19;

/// The Chinese digit characters (see the module's documentation).
const CHINESE_DIGITS: [char; 22] = [
    '零', '〇', '一', '幺', '壹', '二', '两', '贰', '三', '叁', '四', '肆', '五', '伍', '六', '陆',
    '七', '柒', '八', '捌', '九', '玖',
];
/// The span of code points holding them (〇 U+3007 … 零 U+96F6).
const CHINESE_LO: u32 = 0x3007;
const CHINESE_HI: u32 = 0x96F6;
/// One bit per code point of the span: set for a Chinese digit character.
/// Nearly every character of a Chinese sentence is in the span and none of
/// them is a digit: one load and a shift say so, where the `match` below
/// would compare it with each digit in turn.
static CHINESE_BITS: [u64; ((CHINESE_HI - CHINESE_LO) / 64 + 1) as usize] = chinese_bits();

const fn chinese_bits() -> [u64; ((CHINESE_HI - CHINESE_LO) / 64 + 1) as usize] {
    let mut bits = [0u64; ((CHINESE_HI - CHINESE_LO) / 64 + 1) as usize];
    let mut i = 0;
    while i < CHINESE_DIGITS.len() {
        let at = CHINESE_DIGITS[i] as u32 - CHINESE_LO;
        bits[(at / 64) as usize] |= 1 << (at % 64);
        i += 1;
    }
    bits
}

/// The value of a digit character, or `None`.
#[inline(always)]
fn digit(c: char) -> Option<u8> {
    if c.is_ascii() {
        return (c as u8).checked_sub(b'0').filter(|&d| d <= 9);
    }
    let u = c as u32;
    if !(CHINESE_LO..=CHINESE_HI).contains(&u) {
        return None;
    }
    let at = u - CHINESE_LO;
    if CHINESE_BITS[(at / 64) as usize] & (1 << (at % 64)) == 0 {
        return None;
    }
    let d = match c {
        '零' | '〇' => 0,
        '一' | '幺' | '壹' => 1,
        '二' | '两' | '贰' => 2,
        '三' | '叁' => 3,
        '四' | '肆' => 4,
        '五' | '伍' => 5,
        '六' | '陆' => 6,
        '七' | '柒' => 7,
        '八' | '捌' => 8,
        '九' | '玖' => 9,
        _ => return None,
    };
    Some(d)
}

/// Whether `c` (folded) is a digit character of a number.
pub(crate) fn is_digit_char(c: char) -> bool {
    digit(c).is_some()
}

/// Every number any detector finds in the normalised `text`, in order.
pub(crate) fn find_all(text: &str, out: &mut Vec<Found>) {
    find(text, ALL_BITS, out);
}

/// Cheap pre-check: false when `text` cannot hold any number (fewer than 11
/// digit characters in total) — the hot path calls this on every agent
/// segment.
pub(crate) fn may_contain(text: &str) -> bool {
    if text.len() < MIN_DIGITS {
        return false;
    }
    let mut n = 0;
    for c in text.chars() {
        if digit(c).is_some() {
            n += 1;
            if n >= MIN_DIGITS {
                return true;
            }
        }
    }
    false
}

/// Appends every number in `text` found by any detector in `enabled` (a bit
/// set: bit `d as u8`) to `out`, in order of start.
///
/// Runs never overlap and each yields at most one number, so the order of
/// runs is the order of starts.
pub fn find(text: &str, enabled: u8, out: &mut Vec<Found>) {
    // The pre-check is four times cheaper than the loop below: most
    // segments stop here.
    if enabled & ALL_BITS == 0 || !may_contain(text) {
        return;
    }
    let mut run = Run::default();
    for (i, c) in text.char_indices() {
        if let Some(d) = digit(c) {
            run.push(i, d);
            continue;
        }
        if run.len == 0 {
            continue;
        }
        let id_card_with_x = run.len == 17 && id_card_x(&run, text, i, c, enabled, out);
        if !id_card_with_x && !is_money(&text[i..]) {
            run.judge(i, enabled, out);
        }
        run.len = 0;
    }
    if run.len > 0 {
        run.judge(text.len(), enabled, out);
    }
}

/// Whether the character `c` at byte `i`, right after `run` (17 digits), is
/// the check character `x` of a valid identity card; if so, pushes the card
/// when its detector is enabled. Not when the `x` is part of a mask (`xx`),
/// the run goes on after it, or it is an amount of money.
fn id_card_x(run: &Run, text: &str, i: usize, c: char, enabled: u8, out: &mut Vec<Found>) -> bool {
    if !matches!(c, 'x' | 'X') {
        return false;
    }
    // `x` is one byte: `i + 1` is a character boundary.
    let rest = text.get(i + 1..).unwrap_or_default();
    let masked = rest
        .chars()
        .next()
        .is_some_and(|n| matches!(n, 'x' | 'X') || digit(n).is_some());
    if masked || is_money(rest) || !id_card(run.digits(), 10) {
        return false;
    }
    if enabled & Detector::IdCard.bit() != 0 {
        out.push(Found {
            detector: Detector::IdCard,
            start: run.start,
            end: i + 1,
        });
    }
    true
}

/// Every detector's bit.
const ALL_BITS: u8 = (1 << Detector::ALL.len()) - 1;

/// The current run of digit characters.
#[derive(Default)]
struct Run {
    /// Byte offset of its first character.
    start: usize,
    /// Its length in digit characters, counted past [`MAX_DIGITS`] only as
    /// far as `MAX_DIGITS + 1` (too long is too long).
    len: usize,
    /// The values of its first [`MAX_DIGITS`] digits.
    buf: [u8; MAX_DIGITS],
}

impl Run {
    #[inline(always)]
    fn push(&mut self, at: usize, d: u8) {
        if self.len == 0 {
            self.start = at;
        }
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = d;
            self.len += 1;
        } else {
            self.len = MAX_DIGITS + 1;
        }
    }

    /// Its digits (empty when it is too long to be a number).
    fn digits(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Pushes the number this run (ending at byte `end`) is, if any.
    fn judge(&self, end: usize, enabled: u8, out: &mut Vec<Found>) {
        let d = self.digits();
        if d.len() < MIN_DIGITS || d.iter().all(|&x| x == d[0]) {
            return;
        }
        let detector = match d.len() {
            11 | 13 if mobile(d) => Detector::Mobile,
            18 if id_card(&d[..17], d[17]) => Detector::IdCard,
            16..=MAX_DIGITS if bank_card(d) => Detector::BankCard,
            _ => return,
        };
        if enabled & detector.bit() != 0 {
            out.push(Found {
                detector,
                start: self.start,
                end,
            });
        }
    }
}

/// Whether the text right after a run makes it an amount of money:
/// 元 (but not 元旦, New Year's Day), 块 or 圆.
fn is_money(after: &str) -> bool {
    let mut it = after.chars();
    match it.next() {
        Some('块' | '圆') => true,
        Some('元') => it.next() != Some('旦'),
        _ => false,
    }
}

/// `1[3-9]` and nine more digits, optionally after `86`.
fn mobile(d: &[u8]) -> bool {
    let d = match d {
        [8, 6, rest @ ..] if rest.len() == 11 => rest,
        _ if d.len() == 11 => d,
        _ => return false,
    };
    d[0] == 1 && d[1] >= 3
}

/// GB 11643-1999: the first 17 digits (`body`) and the check digit (`check`,
/// 10 for `x`). Region starts 1–8; the birth date (digits 7–14) is
/// YYYYMMDD with year 1900–2099, month 01–12, day 01–31.
fn id_card(body: &[u8], check: u8) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    /// The check digit for each remainder: "10x98765432".
    const CHECK: [u8; 11] = [1, 0, 10, 9, 8, 7, 6, 5, 4, 3, 2];
    let Ok(body) = <&[u8; 17]>::try_from(body) else {
        return false;
    };
    let number =
        |r: std::ops::Range<usize>| body[r].iter().fold(0u32, |n, &d| n * 10 + u32::from(d));
    let (year, month, day) = (number(6..10), number(10..12), number(12..14));
    if !(1..=8).contains(&body[0])
        || !(1900..=2099).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
    {
        return false;
    }
    let sum: u32 = body
        .iter()
        .zip(WEIGHTS)
        .map(|(&d, w)| u32::from(d) * w)
        .sum();
    CHECK[(sum % 11) as usize] == check
}

/// 16–19 digits starting 3–6, Luhn valid, and not an identity card (an
/// 18-digit run that is a valid identity card is reported as one only).
fn bank_card(d: &[u8]) -> bool {
    if !(16..=MAX_DIGITS).contains(&d.len()) || !(3..=6).contains(&d[0]) {
        return false;
    }
    if d.len() == 18 && id_card(&d[..17], d[17]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests;
