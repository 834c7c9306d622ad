//! Masking of sensitive numbers (phone, ID card, bank card) in transcripts
//! shown on the console.
//!
//! A number is a run of at least [`MIN_DIGITS`] digits — ASCII, full-width,
//! or the Chinese numerals ASR writes for spoken digits (幺三八…) — that may
//! contain single spaces or hyphens between groups of three or more digits, and may end in the `X`
//! of an ID number. Every digit but the last four becomes `*`, one character
//! for one character, so the offsets of highlighted words stay valid.

/// Shorter runs (amounts, order lines, "2 个") are left alone.
pub const MIN_DIGITS: usize = 7;

/// Digits kept visible at the end of a masked number.
const KEEP: usize = 4;

fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
        || ('０'..='９').contains(&c)
        || matches!(
            c,
            '零' | '〇'
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
    matches!(c, ' ' | '-' | '－' | '\u{3000}')
}

/// `text` with every sensitive number masked; borrowed when nothing is.
pub fn mask(text: &str) -> std::borrow::Cow<'_, str> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Option<Vec<char>> = None;
    let mut i = 0;
    while i < chars.len() {
        if !is_digit(chars[i]) {
            i += 1;
            continue;
        }
        // A run: digits, with single separators between groups of at least
        // three digits (138-1234-5678, 6222 0210 …; not 2024-11-23).
        let start = i;
        let mut digits = vec![i];
        let mut group = 1;
        let mut j = i + 1;
        while j < chars.len() {
            if is_digit(chars[j]) {
                digits.push(j);
                group += 1;
                j += 1;
            } else if is_separator(chars[j])
                && group >= 3
                && chars[j + 1..].iter().take_while(|c| is_digit(**c)).count() >= 3
            {
                group = 0;
                j += 1;
            } else {
                break;
            }
        }
        if j < chars.len() && matches!(chars[j], 'X' | 'x' | 'Ｘ') && digits.len() == 17 {
            digits.push(j);
            j += 1;
        }
        if digits.len() >= MIN_DIGITS {
            let o = out.get_or_insert_with(|| chars.clone());
            for &d in &digits[..digits.len() - KEEP] {
                o[d] = '*';
            }
        }
        debug_assert!(j > start);
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
        ] {
            assert_eq!(mask(text), want, "{text}");
            assert_eq!(mask(text).chars().count(), text.chars().count());
        }
    }

    #[test]
    fn leaves_short_numbers_and_plain_text_alone() {
        for text in [
            "订单 123456 已发货",
            "一二三",
            "您好，请问有什么可以帮您",
            "2024-11-23 10:00",
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
