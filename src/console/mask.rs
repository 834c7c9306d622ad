//! Masking of sensitive numbers (phone, ID card, bank card) in transcripts
//! shown on the console.
//!
//! A number is a run of digits — any character with a digit value in any
//! script or form (ASCII, full-width, Arabic-Indic, mathematical, circled
//! ①, parenthesised ⑴, ⒈ …: a generated table, see `tools/unicode_tables.py`),
//! or the Chinese numerals ASR writes for spoken digits (幺三八…) and their
//! 大写 forms (壹贰叁…) — possibly broken up by up to two separator
//! characters at a time (spaces, hyphens, dots, commas, 、, /, 杠, the `_`
//! pause marker of ASR), and possibly ending in the `X` of an ID number.
//! Characters the text fold drops as invisible (zero-width and other
//! default-ignorable characters, combining marks, controls) neither end a
//! run nor count as separators. A run is masked when
//! it holds at least [`LONG_DIGITS`] digits (a mobile number, however it was
//! written down), or at least [`MIN_DIGITS`] digits in groups of three or
//! more (a landline, a card in blocks); shorter runs and runs of short
//! groups (dates, times, amounts) are left alone. Every digit but the last
//! four becomes `*`, one character for one character, so the offsets of
//! highlighted words stay valid.

use crate::normalize::{Class, classify, is_unicode_digit};

/// Fewest digits of a masked run made of groups of 3+ (138-1234, 6222 0210).
pub(crate) const MIN_DIGITS: usize = 7;

/// Fewest digits of a masked run whatever its grouping (1 3 8 1 2 …).
pub(crate) const LONG_DIGITS: usize = 11;

/// Digits kept visible at the end of a masked number.
const KEEP: usize = 4;

/// Separators allowed in a row between two digits.
const MAX_SEPARATORS: usize = 2;

fn is_digit(c: char) -> bool {
    is_unicode_digit(c)
        || matches!(
            c,
            '零' | '〇'
                | '壹'
                | '贰'
                | '貳'
                | '叁'
                | '叄'
                | '參'
                | '肆'
                | '伍'
                | '陆'
                | '陸'
                | '柒'
                | '捌'
                | '玖'
                | '兩'
                | '一'
                | '二'
                | '三'
                | '四'
                | '五'
                | '六'
                | '七'
                | '八'
                | '九'
                | '幺'
                | '两'
        )
}

fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{3000}'
            | '-'
            | '－'
            | '—'
            | '.'
            | '．'
            | ','
            | '，'
            | '、'
            | '/'
            | '／'
            | '杠'
            | '_'
            | '＿'
    )
}

/// Zero-width and other default-ignorable characters, combining marks and
/// controls: what the matcher's fold drops without a clause break.
fn is_invisible(c: char) -> bool {
    !c.is_ascii_graphic() && classify(c) == Class::Invisible
}

/// `text` with every sensitive number masked; borrowed when nothing is.
pub(crate) fn mask(text: &str) -> std::borrow::Cow<'_, str> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Option<Vec<char>> = None;
    let mut i = 0;
    while i < chars.len() {
        if !is_digit(chars[i]) {
            i += 1;
            continue;
        }
        // A run: digits, broken by at most MAX_SEPARATORS separators.
        let mut digits = vec![i];
        let mut groups = vec![1usize];
        let mut j = i + 1;
        while j < chars.len() {
            if is_digit(chars[j]) {
                digits.push(j);
                if let Some(g) = groups.last_mut() {
                    *g += 1;
                }
                j += 1;
                continue;
            }
            // Separators and invisible characters up to the next digit.
            let mut k = j;
            let mut seps = 0;
            while let Some(&c) = chars.get(k) {
                if is_separator(c) {
                    seps += 1;
                    if seps > MAX_SEPARATORS {
                        break;
                    }
                } else if !is_invisible(c) {
                    break;
                }
                k += 1;
            }
            if seps > MAX_SEPARATORS || !chars.get(k).is_some_and(|c| is_digit(*c)) {
                break;
            }
            if seps > 0 {
                groups.push(0);
            }
            j = k;
        }
        if j < chars.len() && matches!(chars[j], 'X' | 'x' | 'Ｘ') && digits.len() == 17 {
            digits.push(j);
            j += 1;
        }
        let grouped = groups.iter().all(|g| *g >= 3);
        if digits.len() >= LONG_DIGITS || (digits.len() >= MIN_DIGITS && grouped) {
            let o = out.get_or_insert_with(|| chars.clone());
            for &d in &digits[..digits.len() - KEEP] {
                o[d] = '*';
            }
        }
        i = j;
    }
    match out {
        Some(o) => o.into_iter().collect::<String>().into(),
        None => text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_id_and_card_numbers_keeping_the_last_four() {
        for (text, want) in [
            ("我的手机号是13812345678谢谢", "我的手机号是*******5678谢谢"),
            ("电话 138-1234-5678 好的", "电话 ***-****-5678 好的"),
            ("身份证11010519491231002X", "身份证**************002X"),
            (
                "卡号 6222 0210 0112 3456 789",
                "卡号 **** **** **** ***6 789",
            ),
            ("幺三八幺二三四五六七八", "*******五六七八"),
            ("１３８１２３４５６７８", "*******５６７８"),
            ("1 3 8 1 2 3 4 5 6 7 8", "* * * * * * * 5 6 7 8"),
            ("138 12 34 56 78", "*** ** ** 56 78"),
            ("138，1234，5678", "***，****，5678"),
            ("138.1234.5678", "***.****.5678"),
            ("138  1234  5678", "***  ****  5678"),
            ("幺三八杠幺二三四杠五六七八", "***杠****杠五六七八"),
            ("卡 6222.0210.0112.3456", "卡 ****.****.****.3456"),
        ] {
            assert_eq!(mask(text), want, "{text}");
            assert_eq!(mask(text).chars().count(), text.chars().count());
        }
    }

    /// Digit forms that were shown in clear (each case failed before).
    #[test]
    fn masks_every_digit_form() {
        for (form, text, want) in [
            ("asr_pause_marker", "138_1234_5678", "***_****_5678"),
            ("full_width_low_line", "138＿1234＿5678", "***＿****＿5678"),
            (
                "zero_width_space",
                "1\u{200B}3\u{200B}8\u{200B}1\u{200B}2\u{200B}3\u{200B}4\u{200B}5\u{200B}6\u{200B}7\u{200B}8",
                "*\u{200B}*\u{200B}*\u{200B}*\u{200B}*\u{200B}*\u{200B}*\u{200B}5\u{200B}6\u{200B}7\u{200B}8",
            ),
            (
                "word_joiner_and_bom_in_groups",
                "138\u{2060}\u{2060}\u{2060}1234\u{FEFF}5678",
                "***\u{2060}\u{2060}\u{2060}****\u{FEFF}5678",
            ),
            (
                "combining_marks",
                "1\u{301}38123\u{20DD}45678",
                "*\u{301}*****\u{20DD}*5678",
            ),
            ("circled", "①③⑧①②③④⑤⑥⑦⑧", "*******⑤⑥⑦⑧"),
            ("circled_zero", "⓪①③⑧①②③④⑤⑥⑦", "*******④⑤⑥⑦"),
            ("parenthesised", "⑴⑶⑻⑴⑵⑶⑷⑸⑹⑺⑻", "*******⑸⑹⑺⑻"),
            ("with_full_stop", "⒈⒊⒏⒈⒉⒊⒋⒌⒍⒎⒏", "*******⒌⒍⒎⒏"),
            ("negative_circled", "❶❸❽❶❷❸❹❺❻❼❽", "*******❺❻❼❽"),
            ("arabic_indic", "١٣٨١٢٣٤٥٦٧٨", "*******٥٦٧٨"),
            ("extended_arabic_indic", "۱۳۸۱۲۳۴۵۶۷۸", "*******۵۶۷۸"),
            ("mathematical_bold", "𝟏𝟑𝟖𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖", "*******𝟓𝟔𝟕𝟖"),
            ("mathematical_monospace", "𝟷𝟹𝟾-𝟷𝟸𝟹𝟺-𝟻𝟼𝟽𝟾", "***-****-𝟻𝟼𝟽𝟾"),
            ("daxie", "壹叁捌壹贰叁肆伍陆柒捌", "*******伍陆柒捌"),
            (
                "daxie_traditional",
                "壹參捌壹貳參肆伍陸柒捌",
                "*******伍陸柒捌",
            ),
            (
                "daxie_with_zero",
                "壹叁捌零贰叁肆伍陆柒〇",
                "*******伍陆柒〇",
            ),
            ("mixed_forms", "1③８壹２3④5٦𝟕8", "*******5٦𝟕8"),
        ] {
            assert_eq!(mask(text), want, "{form}: {text}");
            assert_eq!(
                mask(text).chars().count(),
                text.chars().count(),
                "{form}: masking must keep character offsets"
            );
        }
    }

    #[test]
    fn leaves_short_numbers_and_plain_text_alone() {
        for text in [
            "订单 123456 已发货",
            "一二三",
            "您好，请问有什么可以帮您",
            "2024-11-23 10:00",
            "2024年11月23日 10:30",
            "金额 1,280.50 元",
            "第①②③条",
            "壹佰贰拾元",
            "2024_11_23",
            "\u{200B}12\u{200B}",
            // Invisible characters do not hide separators from the limit.
            "138 \u{200B}-\u{200C} 1234",
            "<script>alert(1)</script>",
            "",
        ] {
            assert!(
                matches!(mask(text), std::borrow::Cow::Borrowed(_)),
                "{text}"
            );
        }
    }
}
