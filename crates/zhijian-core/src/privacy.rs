//! Personal numbers masked at the source: the mobile, identity card and
//! bank card numbers the built-in detectors ([`crate::detect`]) find in a
//! segment are masked in every event made of it, so the events that leave
//! the daemon or `zhijian scan` do not carry them. The same detectors judge
//! (`pii.*` rules), so what is flagged is what is masked, and digits that
//! are not such numbers (order numbers, amounts, dates) stay.
//!
//! Masking is character for character: every digit of a found number but
//! the last four becomes `*`, separators and every other character stay, so
//! character offsets (`start`, `end`, `spans`, `text_start`) are those of
//! the text as said. A tenant may opt in to the raw text ([`Privacy`]).

use crate::detect;
use crate::normalize::{Class, Normalized, classify};
use std::borrow::Cow;
use std::collections::BTreeSet;

/// Digits kept visible at the end of a masked number.
const KEEP: usize = 4;

/// Whose events carry the text as said. The default masks every tenant's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privacy {
    /// Every tenant's events carry the raw text (an explicit opt-in).
    pub raw_events: bool,
    /// Tenants whose events carry the raw text.
    pub raw_tenants: BTreeSet<String>,
}

impl Privacy {
    /// Whether events of `tenant` are masked.
    pub fn masks(&self, tenant: &str) -> bool {
        !self.raw_events && !self.raw_tenants.contains(tenant)
    }
}

/// A character that counts as a digit of a found number in the original
/// text: what the fold turns into a digit the detectors read (full-width,
/// circled, Arabic-Indic … digits; Chinese numerals and their financial
/// forms), and the `x` that ends an identity card number.
fn is_digit(c: char) -> bool {
    match classify(c) {
        Class::Keep(k) => k.is_ascii_digit() || detect::is_digit_char(k) || k == 'x',
        _ => false,
    }
}

/// `text` with every number the detectors find in its normalisation `norm`
/// masked; borrowed when there is none. `found` is scratch space.
pub fn mask<'t>(text: &'t str, norm: &Normalized, found: &mut Vec<detect::Found>) -> Cow<'t, str> {
    found.clear();
    find_numbers(&norm.text, found);
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for f in found.iter() {
        let (start, end) = norm.original_range(text, f.start, f.end);
        if start < done {
            continue;
        }
        out.push_str(&text[done..start]);
        let number = &text[start..end];
        let digits = number.chars().filter(|&c| is_digit(c)).count();
        let mut seen = 0;
        for c in number.chars() {
            if is_digit(c) {
                seen += 1;
                if seen + KEEP <= digits {
                    out.push('*');
                    continue;
                }
            }
            out.push(c);
        }
        done = end;
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// The numbers in the normalised `text`, in order: what the detectors find
/// in it, and also in its runs split where Arabic digits meet Chinese
/// numerals. A digit character glued to a number hides it from the
/// detectors (`13812345678一直` is one run of 12, no number), which judging
/// accepts as the price of whole runs; masking does not.
fn find_numbers(text: &str, found: &mut Vec<detect::Found>) {
    // Most segments hold too few digits for any number: stop before any
    // work (this runs on every segment).
    if !detect::may_contain(text) {
        return;
    }
    detect::find_all(text, found);
    let script = |c: char| {
        if c.is_ascii_digit() {
            Some(true)
        } else if detect::is_digit_char(c) && c != 'x' {
            Some(false)
        } else {
            None
        }
    };
    let mut split = String::new();
    // Byte offsets in `split` of the markers put between the two scripts.
    let mut marks: Vec<usize> = Vec::new();
    let mut prev = None;
    for c in text.chars() {
        let now = script(c);
        if let (Some(a), Some(b)) = (prev, now)
            && a != b
        {
            marks.push(split.len());
            split.push('|');
        }
        prev = now;
        split.push(c);
    }
    if marks.is_empty() {
        return;
    }
    let mut more = Vec::new();
    detect::find_all(&split, &mut more);
    let back = |i: usize| i - marks.iter().filter(|&&m| m < i).count();
    for f in more {
        let (start, end) = (back(f.start), back(f.end));
        if !found.iter().any(|g| g.start < end && start < g.end) {
            found.push(detect::Found { start, end, ..f });
        }
    }
    found.sort_by_key(|f| f.start);
}

/// [`mask`] of a text on its own (it normalises it first).
pub fn mask_text(text: &str) -> Cow<'_, str> {
    let mut norm = Normalized::default();
    norm.fill(text);
    mask(text, &norm, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_what_the_detectors_find_keeping_the_last_four_digits() {
        for (text, want) in [
            (
                "您好，您的身份证号110101199003074514，手机13812345678对吗",
                "您好，您的身份证号**************4514，手机*******5678对吗",
            ),
            ("电话 138-1234-5678 好的", "电话 ***-****-5678 好的"),
            ("身份证11010519491231002X", "身份证**************002X"),
            ("卡号 4111 1111 1111 1111", "卡号 **** **** **** 1111"),
            ("幺三八幺二三四五六七八", "*******五六七八"),
            ("１３８１２３４５６７８", "*******５６７８"),
            ("138\u{a0}1234\u{a0}5678", "***\u{a0}****\u{a0}5678"),
            ("138~1234~5678", "***~****~5678"),
            ("138•1234•5678", "***•****•5678"),
            ("壹叁捌壹贰叁肆伍陆柒捌", "*******伍陆柒捌"),
            // A Chinese numeral glued to the number (一直, 一下).
            ("手机13812345678一直关机", "手机*******5678一直关机"),
            ("幺三八幺二三四五六七八1下", "*******五六七八1下"),
        ] {
            let got = mask_text(text);
            assert_eq!(got, want, "{text}");
            assert_eq!(got.chars().count(), text.chars().count(), "{text}");
        }
    }

    #[test]
    fn leaves_numbers_that_are_not_personal_alone() {
        for text in [
            "订单号 20241123100012345678 已发货",
            "订单 123456 已发货",
            "金额 15800000000元",
            "2024-11-23 10:00",
            "138****5678",
            "您好，请问有什么可以帮您",
            "",
        ] {
            assert!(matches!(mask_text(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn a_tenant_opts_in_to_the_raw_text() {
        let mut p = Privacy::default();
        assert!(p.masks("acme"));
        p.raw_tenants.insert("lab".into());
        assert!(p.masks("acme") && !p.masks("lab"));
        p.raw_events = true;
        assert!(!p.masks("acme"));
    }
}
