//! Tests of `detect`.

use super::*;
use crate::normalize::normalize;

const ALL: u8 = ALL_BITS;

fn found(text: &str, enabled: u8) -> Vec<Found> {
    let mut out = Vec::new();
    find(text, enabled, &mut out);
    out
}

/// The numbers found in `text`, as (detector, the slice of `text`).
fn numbers(text: &str) -> Vec<(Detector, &str)> {
    found(text, ALL)
        .into_iter()
        .map(|f| (f.detector, &text[f.start..f.end]))
        .collect()
}

/// A synthetic identity card number: `body` (17 digits) and its check
/// character.
fn id(body: &str) -> String {
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    assert_eq!(digits.len(), 17, "{body}");
    let check = (0..=10u8)
        .find(|&c| id_card(&digits, c))
        .unwrap_or_else(|| panic!("{body}: region or birth date invalid"));
    let check = if check == 10 {
        'x'
    } else {
        char::from(b'0' + check)
    };
    format!("{body}{check}")
}

/// The identity card number `body` with a wrong check character.
fn bad_id(body: &str) -> String {
    let good = id(body);
    let wrong = if good.ends_with('1') { '2' } else { '1' };
    format!("{body}{wrong}")
}

/// `prefix` with its Luhn check digit appended.
fn luhn(prefix: &str) -> String {
    (0..=9)
        .map(|c| format!("{prefix}{c}"))
        .find(|s| luhn_ok(s))
        .unwrap_or_default()
}

fn luhn_ok(s: &str) -> bool {
    let sum: u32 = s
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let x = u32::from(b - b'0') * if i % 2 == 1 { 2 } else { 1 };
            x / 10 + x % 10
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `prefix` with a wrong Luhn check digit appended.
fn bad_luhn(prefix: &str) -> String {
    let good = luhn(prefix);
    let wrong = if good.ends_with('1') { '2' } else { '1' };
    format!("{prefix}{wrong}")
}

/// Arabic digits spoken as Chinese digits (1 as 幺, as on the phone).
fn spoken(digits: &str) -> String {
    digits
        .chars()
        .map(|c| match c {
            '0' => '零',
            '1' => '幺',
            '2' => '二',
            '3' => '三',
            '4' => '四',
            '5' => '五',
            '6' => '六',
            '7' => '七',
            '8' => '八',
            '9' => '九',
            other => other,
        })
        .collect()
}

/// Synthetic numbers: region 123456 / 512345 is no real place, serial
/// numbers are made up, 6200… cards are test-range prefixes.
const ID_BODY_X: &str = "12345619900101002";
const ID_BODY: &str = "51234520000229001";
const MOBILE: &str = "13812345678";

#[test]
fn synthetic_numbers_are_what_the_tests_think() {
    assert!(id(ID_BODY_X).ends_with('x'), "{}", id(ID_BODY_X));
    assert!(!id(ID_BODY).ends_with('x'), "{}", id(ID_BODY));
    assert_eq!(luhn("620000000000000").len(), 16);
    assert!(luhn_ok(&luhn("620000000000000")));
    assert!(!luhn_ok(&bad_luhn("620000000000000")));
}

#[test]
fn positives() {
    let id_x = id(ID_BODY_X);
    let id_digit = id(ID_BODY);
    let card16 = luhn("622212345678901");
    let card19 = luhn("621234567890123456");
    let card_amex_length = luhn("370012345678901");
    let cases: Vec<(&str, String, Detector, String)> = vec![
        (
            "mobile",
            format!("我的手机号是{MOBILE}"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_alone",
            MOBILE.into(),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_199",
            "19912345678".into(),
            Detector::Mobile,
            "19912345678".into(),
        ),
        (
            "mobile_spaced",
            normalize("您记一下 138 1234 5678 对吧"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_dashed",
            normalize("138-1234-5678"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_full_width",
            normalize("号码：１３８１２３４５６７８。"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_spoken",
            format!("号码是{}对吗", spoken(MOBILE)),
            Detector::Mobile,
            spoken(MOBILE),
        ),
        (
            "mobile_spoken_yi_liang",
            "一三八一两三四五六七八".into(),
            Detector::Mobile,
            "一三八一两三四五六七八".into(),
        ),
        (
            "mobile_mixed",
            "138幺二三四5678".into(),
            Detector::Mobile,
            "138幺二三四5678".into(),
        ),
        (
            "mobile_mixed_spaced",
            normalize("幺三八，1234，五六七八"),
            Detector::Mobile,
            "幺三八1234五六七八".into(),
        ),
        (
            "mobile_financial",
            normalize("壹叁捌壹貳叁肆伍陸柒捌"),
            Detector::Mobile,
            "壹叁捌壹贰叁肆伍陆柒捌".into(),
        ),
        (
            "mobile_ling",
            "一三九〇〇〇〇一一一一".into(),
            Detector::Mobile,
            "一三九〇〇〇〇一一一一".into(),
        ),
        (
            "mobile_86",
            normalize("+86 138 1234 5678"),
            Detector::Mobile,
            format!("86{MOBILE}"),
        ),
        (
            "mobile_traditional_text",
            normalize("您的電話號碼是13812345678嗎"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_then_letters",
            format!("{MOBILE}ok"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "mobile_before_yuandan",
            format!("{MOBILE}元旦后联系您"),
            Detector::Mobile,
            MOBILE.into(),
        ),
        (
            "id_x",
            format!("身份证{id_x}"),
            Detector::IdCard,
            id_x.clone(),
        ),
        (
            "id_x_end_of_sentence",
            format!("身份证号{id_x}对吗"),
            Detector::IdCard,
            id_x.clone(),
        ),
        (
            "id_upper_x_normalised",
            normalize(&format!("{}X", ID_BODY_X)),
            Detector::IdCard,
            id_x.clone(),
        ),
        (
            "id_spaced",
            normalize(&format!(
                "{} {} {}",
                &id_digit[..6],
                &id_digit[6..14],
                &id_digit[14..]
            )),
            Detector::IdCard,
            id_digit.clone(),
        ),
        (
            "id_digit",
            id_digit.clone(),
            Detector::IdCard,
            id_digit.clone(),
        ),
        (
            "id_spoken",
            format!("是{}吧", spoken(&id_digit)),
            Detector::IdCard,
            spoken(&id_digit),
        ),
        (
            "id_spoken_x",
            format!("{}x", spoken(ID_BODY_X)),
            Detector::IdCard,
            format!("{}x", spoken(ID_BODY_X)),
        ),
        (
            "card16",
            format!("卡号{card16}"),
            Detector::BankCard,
            card16.clone(),
        ),
        ("card19", card19.clone(), Detector::BankCard, card19.clone()),
        (
            "card15_plus_one",
            card_amex_length.clone(),
            Detector::BankCard,
            card_amex_length.clone(),
        ),
        (
            "card_grouped",
            normalize(&format!(
                "{} {} {} {}",
                &card16[..4],
                &card16[4..8],
                &card16[8..12],
                &card16[12..]
            )),
            Detector::BankCard,
            card16.clone(),
        ),
        (
            "card_full_width_spoken_mix",
            normalize(&format!("６２２２{}", spoken(&card16[4..]))),
            Detector::BankCard,
            format!("6222{}", spoken(&card16[4..])),
        ),
    ];
    for (name, text, detector, number) in &cases {
        assert_eq!(
            numbers(text),
            vec![(*detector, number.as_str())],
            "case {name}: {text:?}"
        );
        assert!(may_contain(text), "case {name}: may_contain {text:?}");
    }
}

#[test]
fn negatives() {
    let id_x = id(ID_BODY_X);
    let id_digit = id(ID_BODY);
    let card16 = luhn("622212345678901");
    let card19 = luhn("621234567890123456");
    let cases: Vec<(&str, String)> = vec![
        // Checks.
        ("id_bad_checksum", bad_id(ID_BODY)),
        ("id_x_bad_checksum", bad_id(ID_BODY_X)),
        ("id_month_13", id_like("12345619901301001")),
        ("id_month_00", id_like("12345619900001001")),
        ("id_day_32", id_like("12345619900132001")),
        ("id_day_00", id_like("12345619900100001")),
        ("id_year_1899", id_like("12345618990101001")),
        ("id_year_2100", id_like("12345621000101001")),
        ("id_region_9", id_like("92345619900101001")),
        ("id_region_0", id_like("02345619900101001")),
        ("card_bad_luhn", bad_luhn("622212345678901")),
        ("card_starts_2", luhn("222212345678901")),
        ("card_starts_7", luhn("722212345678901")),
        ("card_starts_9", luhn("922212345678901234")),
        ("mobile_12", "12812345678".into()),
        ("mobile_10", "10012345678".into()),
        ("mobile_not_86", "8513812345678".into()),
        ("mobile_86_bad", "8612812345678".into()),
        ("mobile_0086", "008613812345678".into()),
        // Masks.
        ("mask_stars", normalize("138****5678")),
        ("mask_x", normalize("138xxxx5678")),
        ("mask_upper_x", normalize("138XXXX5678")),
        ("mask_placeholder_phone", normalize("您的号码是[电话x]对吗")),
        ("mask_placeholder_number", normalize("卡号[数字x]")),
        ("mask_id_middle", normalize("123456********0012")),
        ("mask_id_x_middle", normalize("123456xxxxxxxx001x")),
        ("mask_card_middle", normalize("6222 **** **** 1234")),
        ("mask_after_id_x", format!("{id_x}x")),
        ("mask_after_id_x_upper", format!("{id_x}X")),
        ("same_0_11", "00000000000".into()),
        ("same_1_11", "11111111111".into()),
        ("same_1_13", "1111111111111".into()),
        ("same_0_16", "0000000000000000".into()),
        ("same_6_16", "6666666666666666".into()),
        // Luhn-valid and starting 4: only the repeated-digit rule
        // keeps it out.
        ("same_4_17", "4".repeat(17)),
        ("same_0_18", "000000000000000000".into()),
        ("same_ling_11", "零零零零零零零零零零零".into()),
        ("same_yi_11", "一一一一一一一一一一一".into()),
        // Inside longer runs.
        ("mobile_in_12", format!("{MOBILE}9")),
        ("mobile_in_12_before", format!("9{MOBILE}")),
        ("mobile_in_order_number", format!("订单号2026{MOBILE}00001")),
        // The known price of whole runs (see the module doc): 一下
        // glued to a number makes a run of 12.
        ("mobile_glued_to_yixia", format!("{MOBILE}一下")),
        ("id_in_19", format!("{id_digit}1")),
        ("id_x_then_digit", format!("{id_x}5")),
        ("id_x_then_spoken_digit", format!("{id_x}五")),
        ("card19_in_20", format!("{card19}0")),
        ("card16_in_20", format!("0000{card16}")),
        ("ten_digits", "1381234567".into()),
        ("ten_spoken", spoken("1381234567")),
        ("fifteen_digits", luhn("62221234567890")),
        ("twenty_digits", "62221234567890123456".into()),
        ("long_run", "1".repeat(40) + "3812345678"),
        // Ordinary text.
        ("ordinals", "第一二三个选项".into()),
        ("counting", "三四五个工作日".into()),
        ("month", "十一月十二号".into()),
        ("idiom", "一五一十地告诉您".into()),
        ("one_to_nine", "一二三四五六七八九十".into()),
        ("one_one", "一一核对一下两三天".into()),
        ("yi_words", "您稍等一下我一会儿一并一起查一查".into()),
        (
            "long_service_sentence",
            "您好很高兴为您服务请问有什么可以帮您的吗我这边一二三个问题两三天之内给您回复".into(),
        ),
        // Dates, times and amounts.
        ("date", normalize("2026年11月30日")),
        ("date_spoken", "二〇二六年十一月三十日".into()),
        ("date_compact", normalize("2026-11-30")),
        ("timestamp", normalize("2026-11-30 13:45:12")),
        ("timestamp_ms", normalize("2026-11-30 13:45:12.123")),
        ("money", normalize("¥1,234,567.89")),
        ("money_yuan", normalize("共计158,000,000.00元")),
        ("money_kuai", normalize("15800000000块")),
        (
            "money_yuan_card_length",
            format!("{}元", luhn("622212345678901")),
        ),
        ("money_spoken", "一千二百三十四元五角".into()),
        ("percent", normalize("利率 3.85%")),
        ("empty", String::new()),
    ];
    for (name, text) in &cases {
        assert_eq!(numbers(text), vec![], "case {name}: {text:?}");
    }
    // A run that is a valid card number stays one when it is a valid
    // card (sanity for the cases above being negative for their reason).
    assert_eq!(
        numbers(&card16),
        vec![(Detector::BankCard, card16.as_str())]
    );
}

/// `body` (17 digits, some part invalid) with every check character:
/// none may make it an identity card number.
fn id_like(body: &str) -> String {
    let all: Vec<String> = "0123456789x"
        .chars()
        .map(|c| format!("{body}{c}"))
        .collect();
    for candidate in &all {
        assert!(
            !found(candidate, ALL)
                .iter()
                .any(|f| f.detector == Detector::IdCard),
            "{candidate}"
        );
    }
    // The case itself: the one with check digit 0.
    all[0].clone()
}

#[test]
fn valid_id_is_never_a_bank_card() {
    // An 18-digit run that is both a valid identity card and a valid
    // card number starting 3–6.
    let both = (0..1000)
        .map(|serial| id(&format!("51234519900101{serial:03}")))
        .find(|n| !n.ends_with('x') && luhn_ok(n))
        .unwrap_or_else(|| panic!("no such number"));
    assert_eq!(numbers(&both), vec![(Detector::IdCard, both.as_str())]);
    assert_eq!(found(&both, Detector::BankCard.bit()), vec![]);
    // Not a bank card when it ends in x either (x is not a digit, the
    // 17 digits are not a card even when Luhn-valid).
    let id_x = id(ID_BODY_X);
    assert_eq!(found(&id_x, Detector::BankCard.bit()), vec![]);
}

#[test]
fn several_numbers_in_order() {
    let id_x = id(ID_BODY_X);
    let card = luhn("622212345678901");
    let text = normalize(&format!(
        "手机 {MOBILE}，身份证 {id_x}，卡号 {card}，备用 一三九零零零零一二三四"
    ));
    let got = numbers(&text);
    assert_eq!(
        got,
        vec![
            (Detector::Mobile, MOBILE),
            (Detector::IdCard, id_x.as_str()),
            (Detector::BankCard, card.as_str()),
            (Detector::Mobile, "一三九零零零零一二三四"),
        ]
    );
    let starts: Vec<usize> = found(&text, ALL).iter().map(|f| f.start).collect();
    assert!(starts.is_sorted(), "{starts:?}");
    // Appends: what is already in `out` stays.
    let mut out = vec![Found {
        detector: Detector::Mobile,
        start: 0,
        end: 0,
    }];
    find(&text, ALL, &mut out);
    assert_eq!(out.len(), 5);
}

#[test]
fn enabled_selects_detectors() {
    let id_x = id(ID_BODY_X);
    let card = luhn("622212345678901");
    let text = format!("{MOBILE}和{id_x}和{card}");
    let kinds = |enabled: u8| -> Vec<Detector> {
        found(&text, enabled).iter().map(|f| f.detector).collect()
    };
    assert_eq!(kinds(0), vec![]);
    assert_eq!(kinds(Detector::Mobile.bit()), vec![Detector::Mobile]);
    assert_eq!(kinds(Detector::IdCard.bit()), vec![Detector::IdCard]);
    assert_eq!(kinds(Detector::BankCard.bit()), vec![Detector::BankCard]);
    assert_eq!(
        kinds(Detector::Mobile.bit() | Detector::BankCard.bit()),
        vec![Detector::Mobile, Detector::BankCard]
    );
    assert_eq!(kinds(ALL), Detector::ALL.to_vec());
    // Bits above the known detectors are ignored.
    assert_eq!(kinds(0xF8), vec![]);
    assert_eq!(kinds(0xFF), Detector::ALL.to_vec());
}

#[test]
fn offsets_are_bytes_of_the_normalised_text() {
    let id_x = id(ID_BODY_X);
    let text = normalize(&format!(
        "您好，您的号码是 138 1234 5678 对吗？证件 {id_x} 。"
    ));
    let got = found(&text, ALL);
    assert_eq!(got.len(), 2, "{got:?}");
    // 您好您的号码是: 7 characters of 3 bytes.
    assert_eq!((got[0].start, got[0].end), (21, 32));
    assert_eq!(&text[got[0].start..got[0].end], MOBILE);
    // 对吗证件: 4 more characters; the x is inside the range.
    assert_eq!((got[1].start, got[1].end), (44, 62));
    assert_eq!(&text[got[1].start..got[1].end], id_x);
    // Chinese digits are 3 bytes each.
    let spoken_text = format!("是{}吧", spoken(MOBILE));
    let got = found(&spoken_text, ALL);
    assert_eq!((got[0].start, got[0].end), (3, 36));
    // A number at the very end of the text.
    let at_end = format!("尾{MOBILE}");
    let got = found(&at_end, ALL);
    assert_eq!((got[0].start, got[0].end), (3, at_end.len()));
}

#[test]
fn may_contain_counts_digit_characters() {
    assert!(!may_contain(""));
    assert!(!may_contain("您好很高兴为您服务请问有什么可以帮您"));
    assert!(!may_contain("1381234567"));
    assert!(!may_contain("一三八一二三四五六七"));
    // Eleven digits in total, even apart: a cheap over-approximation.
    assert!(may_contain("13812345678"));
    assert!(may_contain("第1个2个345678901"));
    assert!(may_contain("第一二三个四五六七八九零一"));
    // x and masks are not digits.
    assert!(!may_contain("138xxxx5678"));
    assert!(!may_contain("1385678"));
}

#[test]
fn names_round_trip() {
    for d in Detector::ALL {
        assert_eq!(Detector::from_name(d.name()), Some(d));
        assert!(!d.describe().is_empty());
        assert_eq!(d.bit(), 1 << d as u8);
    }
    let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names, vec!["mobile", "id_card", "bank_card"]);
    assert_eq!(Detector::from_name("Mobile"), None);
    assert_eq!(Detector::from_name(""), None);
    assert_eq!(ALL_BITS, 0b111);
}

#[test]
fn digit_characters() {
    let cases = [
        ("0123456789", "0123456789"),
        ("零〇一幺二两三四五六七八九", "0011223456789"),
        ("壹贰叁肆伍陆柒捌玖", "123456789"),
    ];
    for (chars, values) in cases {
        let got: String = chars
            .chars()
            .map(|c| digit(c).map_or('?', |d| char::from(b'0' + d)))
            .collect();
        assert_eq!(got, values, "{chars}");
    }
    // Traditional financial forms arrive folded (參 folds to 参, the
    // everyday character, which is not a digit).
    assert_eq!(normalize("貳陸兩"), "贰陆两");
    for c in "十百千万亿参x*a第个 ０".chars() {
        assert_eq!(digit(c), None, "{c}");
    }
}

/// A strategy for text made mostly of the characters that matter here.
fn text_strategy() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        4 => proptest::sample::select(vec![
            "0", "1", "3", "6", "8", "9", "x", "X", "一", "幺", "两", "〇", "零", "玖",
            "元", "旦", "块", "您", "的", "*", "a", "é", "\u{1F600}",
        ])
        .prop_map(str::to_string),
        2 => Just(MOBILE.to_string()),
        1 => Just(id(ID_BODY_X)),
        1 => Just(id(ID_BODY)),
        1 => Just(luhn("622212345678901")),
        1 => any::<String>(),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

#[test]
fn find_is_total_and_ranges_are_sound() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    runner
        .run(&(text_strategy(), any::<u8>()), |(text, enabled)| {
            let mut out = Vec::new();
            find(&text, enabled, &mut out);
            let mut prev_end = 0;
            for f in &out {
                prop_assert!(f.start < f.end && f.end <= text.len(), "{:?}", f);
                prop_assert!(text.is_char_boundary(f.start), "{:?}", f);
                prop_assert!(text.is_char_boundary(f.end), "{:?}", f);
                prop_assert!(f.start >= prev_end, "sorted, disjoint: {:?}", out);
                prop_assert!(enabled & f.detector.bit() != 0, "{:?}", f);
                prev_end = f.end;
                // The number alone is found again, whole.
                let number = &text[f.start..f.end];
                prop_assert_eq!(
                    found(number, ALL),
                    vec![Found {
                        detector: f.detector,
                        start: 0,
                        end: number.len(),
                    }]
                );
            }
            if !out.is_empty() {
                prop_assert!(may_contain(&text));
            }
            // The normalised text too (what the hot path passes): no
            // panic, ranges inside it.
            let normalised = normalize(&text);
            out.clear();
            find(&normalised, enabled, &mut out);
            for f in &out {
                prop_assert!(normalised.get(f.start..f.end).is_some(), "{:?}", f);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The bitset that rejects most characters early agrees with the digit
/// table on every code point of its span.
#[test]
fn the_quick_rejection_keeps_every_chinese_digit() {
    let mut n = 0;
    for u in CHINESE_LO..=CHINESE_HI {
        let Some(c) = char::from_u32(u) else { continue };
        let listed = CHINESE_DIGITS.contains(&c);
        assert_eq!(digit(c).is_some(), listed, "{c}");
        n += usize::from(listed);
    }
    assert_eq!(n, CHINESE_DIGITS.len());
}
