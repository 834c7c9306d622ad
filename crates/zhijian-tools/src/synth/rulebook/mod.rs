//! A large generated rulebook for benchmarks: 200 rules of every kind and
//! five tenant overlays, shaped like what a contact centre builds on top of
//! the default lexicon (themes of forbidden wording, regular expressions for
//! order numbers, money and contact details, response and required rules
//! keyed to the generated speech). Written from scratch: every phrase is
//! made up from the small vocabularies below, none comes from a real
//! transcript.
//!
//! The phrases of the themed rules occur in no generated fragment (a test
//! checks), so their hits stay rare, as in real traffic; the rules built
//! around the generated speech (the injected forbidden phrases and fillers,
//! greetings, customer questions answered by the agent, Chinese numerals)
//! make every kind fire.

use super::Rng;
use std::fmt::Write as _;
use std::path::PathBuf;

/// `(path, contents)` lexicon files, as `lexicon::load_set_sources` takes
/// them (the path is only used in messages).
pub type Files = Vec<(PathBuf, String)>;

/// The tenants with an overlay in [`large_rulebook`].
pub const TENANTS: [&str; 5] = [
    "telecom-a",
    "ecommerce-b",
    "bank-c",
    "logistics-d",
    "insurance-e",
];

/// Tenants of the rulebook's benchmark traffic, one per conversation in
/// turn: the five with an overlay, and three without (judged by the base).
pub const TRAFFIC_TENANTS: [&str; 8] = [
    TENANTS[0],
    TENANTS[1],
    TENANTS[2],
    TENANTS[3],
    TENANTS[4],
    "retail-x",
    "travel-y",
    "utility-z",
];

/// Rules of each kind in the base of [`large_rulebook`] (200 in all). One
/// of the pattern rules also runs the three number detectors.
pub const KIND_COUNTS: [(&str, usize); 6] = [
    ("phrase", 146),
    ("pattern", 20),
    ("response", 20),
    ("required", 10),
    ("timing", 2),
    ("repetition", 2),
];

/// Per overlay: rules overridden, disabled and added.
pub const OVERLAY_OVERRIDES: usize = 3;
pub const OVERLAY_DISABLED: usize = 2;
pub const OVERLAY_ADDED: usize = 3;

/// A theme of forbidden wording: every prefix × suffix is one phrase; the
/// phrases are spread over the theme's rules.
struct Theme {
    stem: &'static str,
    category: &'static str,
    section: &'static str,
    /// Customer words: alert only, read on customer segments.
    customer: bool,
    prefixes: &'static [&'static str],
    suffixes: &'static [&'static str],
}

#[rustfmt::skip]
const THEMES: &[Theme] = &[
    Theme {
        stem: "shirk",
        category: "shirking",
        section: "attitude",
        customer: false,
        prefixes: &["这个", "这事", "你这种情况", "这个单子", "这类问题"],
        suffixes: &["不归我们管", "我们管不了", "你找别的部门", "跟我们没关系", "你自己去问", "我也没辙", "我们处理不了", "你去找快递",
            "找商家去", "我们不负责", "别来找我"],
    },
    Theme {
        stem: "promise",
        category: "overpromise",
        section: "professional",
        customer: false,
        prefixes: &["保证", "肯定", "绝对", "百分之百", "一定"],
        suffixes: &["今天到账", "明天送到", "给您全额退款", "不会再出问题", "给您赔偿", "能帮您搞定", "给您免单", "下次不收费", "能退回来",
            "给您补偿到位", "让您满意"],
    },
    Theme {
        stem: "private",
        category: "private_contact",
        section: "compliance",
        customer: false,
        prefixes: &["加我", "你加我", "加一下我的", "我给你个", "私下联系我的", "直接找我的"],
        suffixes: &["微信", "QQ", "私人号码", "个人手机", "小号", "私人邮箱"],
    },
    Theme {
        stem: "upsell",
        category: "marketing",
        section: "compliance",
        customer: false,
        prefixes: &["现在办理", "今天下单", "马上开通", "趁现在升级", "立即续费", "赶紧充值"],
        suffixes: &["送话费", "打五折", "免月租", "返现金", "送流量包", "有大礼包", "再送一个月"],
    },
    Theme {
        stem: "rude",
        category: "rude",
        section: "attitude",
        customer: false,
        prefixes: &["你是不是", "你怎么", "你到底", "我说你", "你这人"],
        suffixes: &["听不懂人话", "这么笨", "有毛病", "脑子不好使", "烦不烦", "没完没了"],
    },
    Theme {
        stem: "leak",
        category: "disclosure",
        section: "compliance",
        customer: false,
        prefixes: &["偷偷告诉你", "跟你说实话", "内部消息", "其实我们", "私下说"],
        suffixes: &["系统有漏洞", "经常这样", "都是这么糊弄的", "领导不让说", "可以绕过审核", "根本不查"],
    },
    Theme {
        stem: "stall",
        category: "stalling",
        section: "attitude",
        customer: false,
        prefixes: &["你明天", "过两天", "下礼拜", "改天", "等月底"],
        suffixes: &["再打过来", "再说吧", "再来问", "自己等通知", "再看看吧", "再联系"],
    },
    Theme {
        stem: "rival",
        category: "competitor",
        section: "professional",
        customer: false,
        prefixes: &["别家", "其他公司", "友商", "隔壁那家", "他们家"],
        suffixes: &["都是骗人的", "质量很差", "服务更烂", "肯定不行", "都是坑", "套路更深"],
    },
    Theme {
        stem: "rating",
        category: "rating",
        section: "compliance",
        customer: false,
        prefixes: &["给个好评", "麻烦打五星", "记得给满分", "评价给个十分", "打个非常满意", "帮忙点个赞"],
        suffixes: &["吧", "哦", "就行", "谢谢啦", "别给差评"],
    },
    Theme {
        stem: "gripe",
        category: "complaining",
        section: "attitude",
        customer: false,
        prefixes: &["我们公司", "我们领导", "这个系统", "我们的流程", "上面的人"],
        suffixes: &["太垃圾了", "就是这样", "老是出问题", "乱七八糟的", "没人管", "我也很无奈"],
    },
    Theme {
        stem: "refuse",
        category: "refusal",
        section: "attitude",
        customer: false,
        prefixes: &["不能退", "退不了", "没法换", "不给补", "不能改"],
        suffixes: &["就是不能", "你别想了", "说什么都没用", "规定就是规定", "找谁都一样"],
    },
    Theme {
        stem: "blame",
        category: "blame",
        section: "attitude",
        customer: false,
        prefixes: &["是你自己", "还不是你", "都怪你", "谁让你", "你自己"],
        suffixes: &["没看清楚", "操作错了", "填错了", "不早说", "不看说明", "乱点的"],
    },
    Theme {
        stem: "hurry",
        category: "impatience",
        section: "attitude",
        customer: false,
        prefixes: &["快点", "赶紧", "你快说", "别磨蹭", "抓紧"],
        suffixes: &["我很忙", "后面还有人", "别浪费时间", "我没空", "说重点"],
    },
    Theme {
        stem: "threat",
        category: "escalation",
        section: "",
        customer: true,
        prefixes: &["我要", "我马上", "信不信我", "我现在就", "再这样我就"],
        suffixes: &["投诉你们", "打12315", "找媒体曝光", "去消协", "发微博", "报警", "找律师"],
    },
];

/// Phrase rules around the generated speech: the injected forbidden phrases
/// and fillers (`super::FORBIDDEN`, `super::FILLERS`) hit these.
const CORE_RULES: &str = r#"
[[rule]]
id = "core.ignorance"
category = "forbidden"
severity = "medium"
deduct = 1
section = "service_language"
description = "推说不知道"
phrases = ["不知道", "不清楚", "我怎么知道", "你问我我问谁"]
exceptions = ["不知道您", "您不知道", "看不清楚", "听不清楚"]

[[rule]]
id = "core.impatience"
category = "forbidden"
severity = "high"
deduct = 1
section = "service_language"
phrases = ["急什么", "别催我", "我挂了", "再不说话我就挂了"]

[[rule]]
id = "core.shirking"
category = "forbidden"
severity = "high"
deduct = 1
section = "service_language"
phrases = ["不关我的事", "没办法", "不归我管"]

[[rule]]
id = "core.filler"
category = "filler"
severity = "low"
deduct = 1
section = "service_language"
boundary = "word"
position = "clause_start"
phrases = ["啊", "呃", "哎", "额"]
"#;

/// Pattern rules: regular expressions over the normalised text (no
/// punctuation or spaces, lower case, simplified). `(id, category,
/// severity, deduct, patterns, not_patterns)`; the first also runs the
/// detectors.
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const PATTERN_RULES: &[(&str, &str, &str, f64, &[&str], &[&str])] = &[
    (
        "pii.asks_secret", "pii", "high", 0.0,
        &[r"(告诉|提供|报|发|说)(一下)?(给)?(我|我们)?(您|你)的?(银行卡|支付|登录|账户)?(密码|验证码)"],
        &[r"(不要|切勿|别|不能).{0,8}(密码|验证码)"],
    ),
    ("order.number", "order_number", "low", 0.0, &[r"(订单号|订单编号)(是|为)?\d{6,}"], &[]),
    ("money.amount", "money", "low", 0.0, &[r"(\d+|[一二三四五六七八九十百千万两]+)(块|元)(钱)?"], &[]),
    (
        "private.wechat", "private_contact", "critical", 2.0,
        &[r"(加|添加)(一下)?(我的?)?(微信|qq|vx|v信)", r"(我的|个人)(微信|qq)(号)?(是|为)"], &[r"(官方|公众号)"],
    ),
    (
        "payment.private", "external_payment", "critical", 2.0,
        &[r"(转账|打款|汇款)(到|给)(我的?|个人)(账户|卡|支付宝|微信)"], &[],
    ),
    (
        "promise.cash", "overpromise", "high", 1.0,
        &[r"(赔|补偿|返)(您|你)?(\d+|[一二三四五六七八九十百千两]+)(块|元)"], &[],
    ),
    ("verify.code_read", "pii", "high", 0.0, &[r"验证码(是|为)?\d{4,6}"], &[]),
    (
        "promise.deadline", "overpromise", "medium", 1.0,
        &[r"(\d+|[一二三四五六七八九十两]+)(个)?(小时|工作日|天)(内|之内)?(一定|保证|肯定)"], &[],
    ),
    (
        "link.external", "url", "medium", 0.5, &[r"(https?|www)[a-z0-9]{4,}"],
        &[r"(https?|www)[a-z0-9]*(example|official)"],
    ),
    ("rival.cheaper", "competitor", "medium", 0.5, &[r"(京东|淘宝|拼多多|天猫|苏宁)(更|比较|比我们)(便宜|好|快)"], &[]),
    (
        "rude.insult", "rude", "critical", 2.0, &[r"(你|您)(是|真)?(不是)?(傻|笨|蠢)(子|蛋)?"],
        &[r"(不是|没)(说|觉得)(你|您)"],
    ),
    ("threat.report", "escalation", "critical", 0.0, &[r"(投诉|举报)(你|你们)(到|去)?(12315|消协|工商)"], &[]),
    ("refund.offline", "external_payment", "critical", 2.0, &[r"(私下|线下)(退款|退钱|转账|交易)"], &[]),
    ("verify.id_digits", "verification", "low", 0.0, &[r"身份证(号|号码)?(后|前)(四|六|4|6)位"], &[]),
    ("pii.card_digits", "pii", "high", 0.0, &[r"(银行卡|卡号)(是|为)?\d{4,}"], &[]),
    ("pii.address", "pii", "low", 0.0, &[r"(详细|具体)(地址|住址)(是|在)"], &[]),
    ("promise.special", "overpromise", "medium", 0.5, &[r"(特殊|单独|额外)(处理|照顾|申请)一下"], &[]),
    ("promise.hours", "overpromise", "low", 0.0, &[r"(二十四|24|四十八|48|七十二|72)(个)?小时(内|之内)"], &[]),
    (
        "phone.dial", "private_contact", "medium", 0.5, &[r"(拨打|打)(\d{3,}|[零一二三四五六七八九]{3,})"],
        &[r"(拨打|打)(10086|10010|10000|95\d{3})"],
    ),
    (
        "money.balance", "money", "low", 0.0,
        &[r"(余额|话费|欠费)(是|为|还有|还剩)?(\d+|[一二三四五六七八九十百千两]+)(块|元)"], &[],
    ),
];

/// Required rules: `(id, category, scope fields, phrases, channels)`.
#[rustfmt::skip]
const REQUIRED_RULES: &[(&str, &str, &str, &[&str], &str)] = &[
    (
        "greeting.standard", "missing_greeting", "scope = \"start\"\nsegments = 2",
        &["您好", "你好", "很高兴为您服务", "有什么可以帮您", "欢迎致电"], "",
    ),
    (
        "closing.standard", "missing_closing", "scope = \"end\"\nsegments = 3",
        &["再见", "感谢您的来电", "还有什么可以帮您", "祝您生活愉快"], "",
    ),
    (
        "notice.recording", "missing_notice", "scope = \"start\"\nsegments = 3",
        &["本次通话将被录音", "通话可能会被录音", "为了保证服务质量"], "call",
    ),
    (
        "verify.identity", "missing_verification", "scope = \"conversation\"",
        &["身份证后四位", "核实一下您的身份", "验证一下您的信息"], "",
    ),
    ("notice.sms", "missing_notice", "scope = \"conversation\"", &["短信通知", "短信提醒", "发送短信"], ""),
    (
        "greeting.in_time", "missing_greeting", "scope = \"start\"\nseconds = 30", &["为您服务", "工号"],
        "",
    ),
    (
        "apology.inconvenience", "missing_apology", "scope = \"conversation\"",
        &["非常抱歉", "给您带来的不便", "请您谅解"], "",
    ),
    (
        "closing.survey", "missing_closing", "scope = \"end\"\nsegments = 2",
        &["满意度评价", "评价一下", "对我的服务进行评价"], "chat",
    ),
    (
        "notice.reachable", "missing_notice", "scope = \"conversation\"", &["请保持电话畅通", "保持手机畅通"],
        "call",
    ),
    ("thanks.patience", "missing_thanks", "scope = \"conversation\"", &["感谢您的耐心等待", "谢谢您的耐心"], ""),
];

/// Response rules: `(id, category, trigger speaker, trigger phrases,
/// expected phrases (agent), within_segments, within_seconds)`.
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const RESPONSE_RULES: &[(&str, &str, &str, &[&str], &[&str], u32, u32)] = &[
    (
        "hold.thanks", "hold_without_thanks", "agent", &["请您稍等", "请稍等", "稍等一下"],
        &["感谢您的耐心等待", "久等了", "让您久等"], 3, 0,
    ),
    ("order.checked", "no_follow_up", "agent", &["提供一下订单号"], &["查询", "核实", "查到"], 2, 0),
    (
        "complaint.apology", "complaint_no_apology", "customer", &["投诉", "曝光", "消协"],
        &["抱歉", "对不起", "不好意思"], 3, 0,
    ),
    (
        "delivery.late", "no_follow_up", "customer", &["怎么还没到", "还没收到"],
        &["派送中", "预计", "帮您查询", "抱歉"], 3, 0,
    ),
    (
        "refund.when", "no_follow_up", "customer", &["退款什么时候", "什么时候到账"],
        &["工作日到账", "原路返回", "退款已经"], 3, 0,
    ),
    (
        "broadband.down", "no_follow_up", "customer", &["宽带又断了", "断网了", "上不了网"],
        &["派单", "维修师傅", "重启一下光猫"], 4, 0,
    ),
    ("invoice.wrong", "no_follow_up", "customer", &["发票开错了"], &["发票", "重新开具"], 3, 0),
    (
        "hurry.answer", "no_empathy", "customer", &["快一点", "能不能快点"], &["加急处理", "马上为您处理", "理解您的心情"],
        3, 0,
    ),
    (
        "repeat.call", "no_empathy", "customer", &["打过电话了", "又打来了"], &["非常抱歉", "给您带来的不便", "升级处理"],
        3, 0,
    ),
    ("address.change", "no_follow_up", "customer", &["改一下收货地址", "修改地址"], &["地址修改好了", "帮您修改"], 4, 0),
    ("data.usage", "no_follow_up", "customer", &["流量怎么用得这么快", "流量用完了"], &["还剩", "套餐", "流量包"], 3, 0),
    ("return.ask", "no_follow_up", "customer", &["这个能退吗", "能退货吗"], &["无理由退货", "退货地址", "可以退"], 3, 0),
    ("escalate.deadline", "no_follow_up", "agent", &["升级处理"], &["二十四小时内", "会有专人", "联系您"], 4, 300),
    ("callback.reachable", "no_follow_up", "agent", &["回电", "回复您"], &["保持电话畅通"], 3, 0),
    ("transfer.notice", "no_follow_up", "agent", &["转接", "转到"], &["稍等", "请不要挂机"], 2, 0),
    ("presence.reply", "slow_reply", "customer", &["在吗", "有人吗"], &["在的", "您好"], 1, 30),
    ("thanks.reply", "no_courtesy", "customer", &["谢谢", "感谢"], &["不客气", "应该的", "很高兴"], 2, 0),
    ("fault.report", "no_follow_up", "customer", &["坏了", "用不了", "打不开"], &["报修", "派单", "重启"], 4, 0),
    ("price.question", "no_follow_up", "customer", &["多少钱", "怎么收费"], &["元", "资费", "套餐"], 3, 0),
    ("closing.goodbye", "missing_closing", "agent", &["还有什么可以帮您"], &["感谢您的来电", "再见"], 2, 0),
];

const OTHER_RULES: &str = r#"
[[rule]]
id = "timing.silence"
kind = "timing"
category = "silence"
severity = "low"
measure = "silence"
seconds = 60

[[rule]]
id = "timing.unanswered"
kind = "timing"
category = "slow_reply"
severity = "medium"
deduct = 1
section = "attitude"
channels = ["chat"]
measure = "unanswered"
seconds = 45

[[rule]]
id = "repetition.canned"
kind = "repetition"
category = "repetition"
severity = "low"
times = 3
min_chars = 10

[[rule]]
id = "repetition.short"
kind = "repetition"
category = "repetition"
severity = "low"
times = 4
min_chars = 6
"#;

/// Tenant-specific content: `(forbidden phrases, a pattern, greeting
/// phrases)`.
#[rustfmt::skip]
const TENANT_CONTENT: [(&[&str], &str, &[&str]); 5] = [
    (&["携号转网", "换个运营商", "销户去营业厅"], r"工单号\d{8,}", &["欢迎致电通信客服", "很高兴为您服务"]),
    (&["去拼单", "刷单", "好评返现"], r"(优惠券|券码)[a-z0-9]{6,}", &["欢迎光临", "亲"]),
    (&["理财保本", "稳赚不赔", "收益保证"], r"(年化|收益率)(\d+|[一二三四五六七八九十]+)(点\d+)?", &["欢迎致电银行", "您好"]),
    (&["丢件不赔", "快递员不送", "自己来拿"], r"运单号[a-z]{0,2}\d{10,}", &["您好", "快递客服"]),
    (&["保证理赔", "不用体检", "什么都赔"], r"(保额|保费)(\d+|[一二三四五六七八九十百千万]+)(元|万)", &["欢迎致电保险", "您好"]),
];

const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

fn q(s: &str) -> String {
    assert!(
        !s.chars().any(|c| c.is_control() || c == '\\' || c == '"'),
        "generated string needs no escaping: {s:?}"
    );
    format!("\"{s}\"")
}

/// A TOML literal string (regular expressions keep their backslashes).
fn lit(s: &str) -> String {
    assert!(!s.contains('\'') && !s.contains('\n'), "{s:?}");
    format!("'{s}'")
}

fn list(items: &[&str], quote: fn(&str) -> String) -> String {
    let v: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", v.join(", "))
}

/// Every phrase of a theme, in a seeded order.
fn theme_phrases(t: &Theme, rng: &mut Rng) -> Vec<String> {
    let mut v: Vec<String> = t
        .prefixes
        .iter()
        .flat_map(|p| t.suffixes.iter().map(move |s| format!("{p}{s}")))
        .collect();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Every phrase the themed rules can use (for the test that none occurs in
/// generated speech).
pub fn themed_phrases() -> Vec<String> {
    THEMES
        .iter()
        .flat_map(|t| {
            t.prefixes
                .iter()
                .flat_map(move |p| t.suffixes.iter().map(move |s| format!("{p}{s}")))
        })
        .collect()
}

/// The ids of the base's themed phrase rules: `{stem}.{nn}`.
fn themed_rule_id(stem: &str, i: usize) -> String {
    format!("{stem}.{i:02}")
}

fn header() -> String {
    let mut s = String::from(
        "# Generated by zhijian::synth::rulebook (benchmarks): not a real rulebook.\n\n\
         [lexicon]\nname = \"synthetic 200-rule rulebook\"\nversion = \"bench-1\"\nlanguage = \"zh-CN\"\n\n",
    );
    for (id, name, max) in [
        ("professional", "专业水平", 30),
        ("attitude", "服务态度", 40),
        ("service_language", "服务用语", 30),
        ("compliance", "合规", 50),
    ] {
        let _ = writeln!(
            s,
            "[[section]]\nid = \"{id}\"\nname = \"{name}\"\nmax_deduct = {max}\n"
        );
    }
    let categories = [
        ("forbidden", "服务忌语"),
        ("filler", "语气词"),
        ("shirking", "推诿"),
        ("overpromise", "过度承诺"),
        ("private_contact", "私下联系"),
        ("marketing", "违规营销"),
        ("rude", "辱骂客户"),
        ("disclosure", "泄露内部信息"),
        ("stalling", "拖延"),
        ("competitor", "评论竞品"),
        ("rating", "诱导好评"),
        ("complaining", "抱怨公司"),
        ("refusal", "生硬拒绝"),
        ("blame", "指责客户"),
        ("impatience", "不耐烦"),
        ("escalation", "客户投诉升级"),
        ("pii", "敏感信息"),
        ("order_number", "订单号"),
        ("money", "金额"),
        ("external_payment", "私下交易"),
        ("url", "外部链接"),
        ("verification", "身份核实"),
        ("missing_greeting", "缺少开头语"),
        ("missing_closing", "缺少结束语"),
        ("missing_notice", "缺少告知"),
        ("missing_verification", "未核实身份"),
        ("missing_apology", "未致歉"),
        ("missing_thanks", "未致谢"),
        ("hold_without_thanks", "等待未致谢"),
        ("complaint_no_apology", "投诉未致歉"),
        ("no_follow_up", "未回应客户问题"),
        ("no_empathy", "未安抚"),
        ("no_courtesy", "未回应感谢"),
        ("slow_reply", "响应超时"),
        ("silence", "静默"),
        ("repetition", "重复话术"),
    ];
    for (id, name) in categories {
        let _ = writeln!(s, "[[category]]\nid = \"{id}\"\nname = \"{name}\"\n");
    }
    s
}

fn phrase_rules(rng: &mut Rng) -> String {
    let (_, total) = KIND_COUNTS[0];
    let core = CORE_RULES.matches("[[rule]]").count();
    let themed = total - core;
    let mut s = String::from(CORE_RULES);
    for (ti, t) in THEMES.iter().enumerate() {
        // Rules per theme: the themed total spread evenly, the first
        // themes taking the remainder.
        let n = themed / THEMES.len() + usize::from(ti < themed % THEMES.len());
        let pool = theme_phrases(t, rng);
        assert!(pool.len() >= 2 * n, "theme {} too small", t.stem);
        for i in 0..n {
            let phrases: Vec<&str> = pool[i * pool.len() / n..(i + 1) * pool.len() / n]
                .iter()
                .map(String::as_str)
                .collect();
            let _ = write!(
                s,
                "\n[[rule]]\nid = \"{}\"\ncategory = \"{}\"\n",
                themed_rule_id(t.stem, i),
                t.category
            );
            if t.customer {
                let _ = writeln!(
                    s,
                    "severity = \"critical\"\nspeakers = [\"customer\"]\ndescription = \"客户威胁投诉 {i}\""
                );
            } else {
                let severity = SEVERITIES[rng.below(SEVERITIES.len())];
                let deduct = [0.5, 1.0, 1.0, 2.0][rng.below(4)];
                let _ = writeln!(
                    s,
                    "severity = \"{severity}\"\ndeduct = {deduct}\nsection = \"{}\"\ndescription = \"{} {i}\"",
                    t.section, t.category
                );
                match rng.below(20) {
                    0..=2 => s.push_str("channels = [\"call\"]\n"),
                    3 | 4 => s.push_str("channels = [\"chat\"]\n"),
                    _ => {}
                }
                if rng.below(10) == 0 {
                    s.push_str("boundary = \"word\"\n");
                }
            }
            s.push_str("source = \"synthetic\"\n");
            let _ = writeln!(s, "phrases = {}", list(&phrases, q));
            // Promises that are denied are no promises: 不能保证今天到账.
            let denied: Vec<String> = phrases
                .iter()
                .filter(|p| p.starts_with("保证"))
                .flat_map(|p| [format!("不能{p}"), format!("无法{p}")])
                .collect();
            if !denied.is_empty() {
                let d: Vec<&str> = denied.iter().map(String::as_str).collect();
                let _ = writeln!(s, "exceptions = {}", list(&d, q));
            }
        }
    }
    s
}

fn pattern_rules() -> String {
    let mut s = String::new();
    for (i, (id, category, severity, deduct, patterns, not)) in PATTERN_RULES.iter().enumerate() {
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"{id}\"\nkind = \"pattern\"\ncategory = \"{category}\"\nseverity = \"{severity}\"\n"
        );
        if *deduct > 0.0 {
            let _ = writeln!(s, "deduct = {deduct}\nsection = \"compliance\"");
        }
        if i == 0 {
            s.push_str("detectors = [\"mobile\", \"id_card\", \"bank_card\"]\n");
        }
        let _ = writeln!(s, "patterns = {}", list(patterns, lit));
        if !not.is_empty() {
            let _ = writeln!(s, "not_patterns = {}", list(not, lit));
        }
    }
    s
}

fn required_rules(rng: &mut Rng) -> String {
    let mut s = String::new();
    for (id, category, scope, phrases, channel) in REQUIRED_RULES {
        let deduct = [0.5, 1.0][rng.below(2)];
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"{id}\"\nkind = \"required\"\ncategory = \"{category}\"\nseverity = \"low\"\ndeduct = {deduct}\nsection = \"service_language\"\n{scope}\nphrases = {}\n",
            list(phrases, q)
        );
        if !channel.is_empty() {
            let _ = writeln!(s, "channels = [\"{channel}\"]");
        }
    }
    s
}

fn response_rules(rng: &mut Rng) -> String {
    let mut s = String::new();
    for (id, category, who, trigger, expect, segments, seconds) in RESPONSE_RULES {
        let severity = SEVERITIES[rng.below(3)];
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"{id}\"\nkind = \"response\"\ncategory = \"{category}\"\nseverity = \"{severity}\"\ndeduct = 0.5\nsection = \"attitude\"\nwithin_segments = {segments}\n"
        );
        if *seconds > 0 {
            let _ = writeln!(s, "within_seconds = {seconds}");
        }
        let _ = writeln!(
            s,
            "trigger = {{ speakers = [\"{who}\"], phrases = {} }}\nexpect = {{ speakers = [\"agent\"], phrases = {} }}",
            list(trigger, q),
            list(expect, q)
        );
    }
    s
}

/// Tenant `k`'s overlay: overrides a phrase rule's severity and deduction,
/// another's phrases and a response rule's window; disables two rules; adds
/// a phrase, a pattern and a required (even k) or response (odd k) rule.
fn overlay(k: usize, tenant: &str) -> String {
    let (forbidden, pattern, greeting) = TENANT_CONTENT[k];
    let mut s = format!(
        "# Overlay of tenant {tenant} (generated).\n\ndisable = [{}, {}]\n",
        q(&themed_rule_id("upsell", k)),
        q(&themed_rule_id("stall", k))
    );
    if k == 0 {
        s.push_str("\n[[category]]\nid = \"tenant_policy\"\nname = \"租户规范\"\n");
    }
    let category = if k == 0 { "tenant_policy" } else { "forbidden" };
    let _ = write!(
        s,
        "\n[[override]]\nid = {}\nseverity = \"critical\"\ndeduct = 2\nsection = \"compliance\"\n",
        q(&themed_rule_id("promise", k))
    );
    let rude: Vec<String> = THEMES
        .iter()
        .find(|t| t.stem == "rude")
        .map(|t| {
            t.suffixes
                .iter()
                .map(|suffix| format!("{}{suffix}", t.prefixes[k % t.prefixes.len()]))
                .collect()
        })
        .unwrap_or_default();
    let rude: Vec<&str> = rude.iter().map(String::as_str).collect();
    let _ = write!(
        s,
        "\n[[override]]\nid = {}\nphrases = {}\n",
        q(&themed_rule_id("rude", k)),
        list(&rude, q)
    );
    let _ = write!(
        s,
        "\n[[override]]\nid = {}\nwithin_segments = {}\n",
        q(RESPONSE_RULES[k].0),
        RESPONSE_RULES[k].5 + 2
    );
    let _ = write!(
        s,
        "\n[[rule]]\nid = \"tenant.forbidden\"\ncategory = \"{category}\"\nseverity = \"high\"\ndeduct = 1\nsection = \"compliance\"\nphrases = {}\n",
        list(forbidden, q)
    );
    let _ = write!(
        s,
        "\n[[rule]]\nid = \"tenant.pattern\"\nkind = \"pattern\"\ncategory = \"{category}\"\nseverity = \"medium\"\npatterns = [{}]\n",
        lit(pattern)
    );
    if k.is_multiple_of(2) {
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"tenant.greeting\"\nkind = \"required\"\ncategory = \"missing_greeting\"\nseverity = \"low\"\ndeduct = 0.5\nsection = \"service_language\"\nscope = \"start\"\nsegments = 2\nphrases = {}\n",
            list(greeting, q)
        );
    } else {
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"tenant.follow_up\"\nkind = \"response\"\ncategory = \"no_follow_up\"\nseverity = \"low\"\nwithin_segments = 3\ntrigger = {{ speakers = [\"customer\"], phrases = [\"我想\", \"能不能\"] }}\nexpect = {{ speakers = [\"agent\"], phrases = {} }}\n",
            list(greeting, q)
        );
    }
    s
}

/// A 200-rule lexicon with five tenant overlays (see the module doc and
/// [`KIND_COUNTS`]): the base files, and per tenant its overlay files, as
/// `lexicon::load_set_sources` takes them. Deterministic for a seed (the
/// seed shuffles which phrases go to which rule, severities, deductions,
/// channels).
pub fn large_rulebook(seed: u64) -> (Files, Vec<(String, Files)>) {
    let mut rng = Rng::new(seed);
    let dir = PathBuf::from("synthetic-rulebook");
    let base = vec![
        (dir.join("lexicon.toml"), header()),
        (dir.join("phrase.toml"), phrase_rules(&mut rng)),
        (dir.join("pattern.toml"), pattern_rules()),
        (dir.join("required.toml"), required_rules(&mut rng)),
        (dir.join("response.toml"), response_rules(&mut rng)),
        (dir.join("timing-repetition.toml"), OTHER_RULES.to_string()),
    ];
    let overlays = TENANTS
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let path = dir.join("tenants").join(t).join("overlay.toml");
            (t.to_string(), vec![(path, overlay(k, t))])
        })
        .collect();
    (base, overlays)
}

#[cfg(test)]
mod tests;
