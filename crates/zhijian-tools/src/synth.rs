//! Synthetic contact-centre traffic for benchmarks, load generation and the
//! demo: deterministic (seeded), shaped like real agent speech (median
//! ≈ 20 characters, full-width punctuation nearly everywhere, a few percent
//! traditional script, forbidden phrases and fillers at a few percent), and
//! written from scratch for this project — no real transcripts.
//!
//! The generator knows what it injected ([`Conversation::injected`]), so a
//! benchmark can check its hit count exactly.

use zhijian::event::Speaker;

pub mod rulebook;
pub use rulebook::large_rulebook;

/// Agent fragments: ordinary service language that holds no phrase of the
/// default lexicon (a test checks this).
const AGENT: &[&str] = &[
    "好的，我这边帮您查询一下",
    "请您稍等，正在为您核实订单信息",
    "您的包裹已经在派送中了",
    "预计明天下午可以送达",
    "这个问题我已经帮您记录下来了",
    "麻烦您提供一下订单号",
    "系统显示退款已经原路返回",
    "一般三到五个工作日到账",
    "您可以在手机端的我的订单里查看",
    "给您带来的不便非常抱歉",
    "这边已经为您申请了加急处理",
    "售后人员会在二十四小时内联系您",
    "请保持电话畅通",
    "您反映的情况我们非常重视",
    "这款商品支持七天无理由退货",
    "发票会随货一起寄出",
    "优惠券需要在结算页面勾选使用",
    "您的套餐本月还剩五个G流量",
    "话费余额是三十二元",
    "宽带故障已经派单给维修师傅",
    "师傅会在两小时内上门",
    "麻烦您重启一下光猫试试",
    "请问您的身份证后四位是多少",
    "已经帮您把地址修改好了",
    "稍后会有短信通知您",
    "好的，明白您的意思",
    "这边帮您升级处理",
    "感谢您的耐心等待",
    "是的，没有问题",
    "收到，马上为您处理",
    "这个活动截止到月底",
    "您也可以拨打人工热线咨询",
    "页面刷新一下就可以看到了",
    "退货地址已经发到您的手机上",
    "运费由我们这边承担",
];

const CUSTOMER: &[&str] = &[
    "我的快递怎么还没到",
    "退款什么时候到账",
    "宽带又断了",
    "我想改一下收货地址",
    "这个能退吗",
    "流量怎么用得这么快",
    "好的谢谢",
    "你们能不能快一点",
    "我昨天就打过电话了",
    "行吧",
    "发票开错了",
    "在吗",
];

/// Phrases of the default lexicon's forbidden rules that the generator
/// injects (one forbidden hit each).
pub const FORBIDDEN: &[&str] = &[
    "不知道",
    "急什么",
    "不关我的事",
    "没办法",
    "你问我我问谁",
    "我挂了",
];
/// Fillers, injected at the start of a clause (one filler hit each).
pub const FILLERS: &[&str] = &["啊", "呃", "哎"];
const GREETINGS: &[&str] = &["您好，很高兴为您服务", "您好，请问有什么可以帮您"];
const CLOSINGS: &[&str] = &["请问还有什么可以帮您？", "感谢您的来电，再见"];
const PUNCT: &[&str] = &["，", "。", "？", "！", "、", " ", "…"];

/// A splitmix64 generator: deterministic, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Mix of the generated traffic.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Probability that an agent segment holds a forbidden phrase.
    pub forbidden: f64,
    /// Probability that an agent segment opens with a filler.
    pub filler: f64,
    /// Probability that a segment is written in traditional script.
    pub traditional: f64,
    /// Agent segments per conversation (customer turns interleave).
    pub agent_turns: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            forbidden: 0.03,
            filler: 0.03,
            traditional: 0.03,
            agent_turns: 6,
        }
    }
}

/// One generated segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub seq: u64,
    pub speaker: Speaker,
    pub text: String,
}

/// One generated conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub turns: Vec<Turn>,
    /// Forbidden phrases and fillers injected into agent turns.
    pub injected_forbidden: usize,
    pub injected_fillers: usize,
}

impl Conversation {
    /// Total injected phrase hits.
    pub fn injected(&self) -> usize {
        self.injected_forbidden + self.injected_fillers
    }
}

/// Generates one conversation: customer opens, agent greets (usually),
/// turns alternate, agent closes (usually).
pub fn conversation(rng: &mut Rng, id: String, mix: &Mix) -> Conversation {
    let mut turns = Vec::new();
    let mut forbidden = 0;
    let mut fillers = 0;
    let mut seq = 0u64;
    let mut push = |turns: &mut Vec<Turn>, speaker, text: String| {
        turns.push(Turn { seq, speaker, text });
        seq += 1;
    };
    push(
        &mut turns,
        Speaker::Customer,
        rng.pick(CUSTOMER).to_string(),
    );
    for turn in 0..mix.agent_turns {
        let mut text = String::new();
        if rng.chance(mix.filler) {
            text.push_str(rng.pick(FILLERS));
            text.push('，');
            fillers += 1;
        }
        if turn == 0 && rng.chance(0.9) {
            text.push_str(rng.pick(GREETINGS));
            text.push('，');
        }
        // One to three fragments: lengths like real agent turns.
        let n = 1 + rng.below(3).min(rng.below(3));
        for i in 0..n {
            if i > 0 {
                text.push_str(rng.pick(PUNCT));
            }
            text.push_str(rng.pick(AGENT));
        }
        if rng.chance(mix.forbidden) {
            text.push('，');
            text.push_str(rng.pick(FORBIDDEN));
            forbidden += 1;
        }
        if turn + 1 == mix.agent_turns && rng.chance(0.85) {
            text.push('，');
            text.push_str(rng.pick(CLOSINGS));
        } else {
            text.push_str(if rng.chance(0.5) { "。" } else { "" });
        }
        if rng.chance(mix.traditional) {
            text = hanconv::s2t(&text);
        }
        push(&mut turns, Speaker::Agent, text);
        if turn + 1 < mix.agent_turns {
            push(
                &mut turns,
                Speaker::Customer,
                rng.pick(CUSTOMER).to_string(),
            );
        }
    }
    Conversation {
        id,
        turns,
        injected_forbidden: forbidden,
        injected_fillers: fillers,
    }
}

/// `n` conversations with ids `{prefix}{i}`.
pub fn conversations(seed: u64, n: usize, prefix: &str, mix: &Mix) -> Vec<Conversation> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| conversation(&mut rng, format!("{prefix}{i}"), mix))
        .collect()
}

/// Input events (JSON lines) for conversations, in conversation order, each
/// followed by its `end` event.
pub fn jsonl(convs: &[Conversation], tenant: &str, channel: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in convs {
        for t in &c.turns {
            out.push(
                serde_json::json!({
                    "conversation_id": c.id, "tenant": tenant, "channel": channel,
                    "seq": t.seq, "speaker": t.speaker.as_str(), "text": t.text,
                })
                .to_string(),
            );
        }
        out.push(
            serde_json::json!({"conversation_id": c.id, "tenant": tenant, "type": "end"})
                .to_string(),
        );
    }
    out
}

/// A lexicon file with `n` extra forbidden phrases (random 3–6 character
/// strings over a common-character alphabet, none occurring in generated
/// speech by construction: they all contain 蠡 or 鬻, which no fragment
/// holds), for benchmarks with a large lexicon.
pub fn large_rule_toml(n: usize, seed: u64) -> String {
    const ALPHA: &[char] = &[
        '的', '一', '是', '不', '了', '人', '我', '在', '有', '他', '这', '中', '大', '来', '上',
        '国', '个', '到', '说', '们', '为', '子', '和', '你', '地', '出', '道', '也', '时', '年',
    ];
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut toml = String::from(
        "[[rule]]\nid = \"forbidden.synthetic\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"service_language\"\nphrases = [\n",
    );
    while seen.len() < n {
        let len = 3 + rng.below(4);
        let mut p: String = (0..len).map(|_| ALPHA[rng.below(ALPHA.len())]).collect();
        let at = rng.below(len);
        let rare = if rng.chance(0.5) { '蠡' } else { '鬻' };
        p.insert(p.char_indices().nth(at).map_or(p.len(), |(i, _)| i), rare);
        if seen.insert(p.clone()) {
            toml.push_str(&format!("  \"{p}\",\n"));
        }
    }
    toml.push_str("]\n");
    toml
}

/// Like [`jsonl`], but conversations interleaved round-robin (each keeps its
/// own order), as live traffic arrives.
pub fn interleaved_jsonl(convs: &[Conversation], tenant: &str, channel: &str) -> Vec<String> {
    let per: Vec<Vec<String>> = convs
        .iter()
        .map(|c| jsonl(std::slice::from_ref(c), tenant, channel))
        .collect();
    let longest = per.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(per.iter().map(Vec::len).sum());
    for i in 0..longest {
        for lines in &per {
            if let Some(l) = lines.get(i) {
                out.push(l.clone());
            }
        }
    }
    out
}

/// Live-like traffic: `open` conversations in progress at any time, served
/// round-robin; when one ends the next starts, so starts and ends are
/// spread over the run (not all at once, as with [`interleaved_jsonl`]).
pub fn staggered_jsonl(
    convs: &[Conversation],
    open: usize,
    tenant: &str,
    channel: &str,
) -> Vec<String> {
    let mut queue = convs
        .iter()
        .map(|c| jsonl(std::slice::from_ref(c), tenant, channel));
    let mut active: Vec<std::vec::IntoIter<String>> = queue
        .by_ref()
        .take(open.max(1))
        .map(Vec::into_iter)
        .collect();
    let mut out = Vec::new();
    while !active.is_empty() {
        let mut i = 0;
        while i < active.len() {
            match active[i].next() {
                Some(line) => {
                    out.push(line);
                    i += 1;
                }
                None => match queue.next() {
                    Some(next) => active[i] = next.into_iter(),
                    None => {
                        active.swap_remove(i);
                    }
                },
            }
        }
    }
    out
}

#[cfg(test)]
mod deadline_tests {
    use std::path::Path;
    use zhijian::rules::{Shown, Spec, required, response, timing};

    /// [`Spec::has_deadline`] (`zhijian-core`) is the kinds' `deadline` made static: every
    /// rule of the default lexicon and of the generated rulebook, in a state
    /// that waits for everything it can wait for, has a deadline exactly
    /// when `has_deadline` says so.
    #[test]
    fn has_deadline_agrees_with_the_kinds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lexicons");
        let (rulebook, _) = super::large_rulebook(1);
        let lexicons = [
            zhijian::lexicon::load_dir(&dir).expect("default lexicon"),
            zhijian::lexicon::load_sources(rulebook).expect("rulebook"),
        ];
        let mut cases = std::collections::BTreeSet::new();
        for rule in lexicons.iter().flat_map(|l| &l.rules) {
            let deadline = match &rule.spec {
                Spec::Required(s) => required::deadline(
                    s,
                    &required::State {
                        verdict: None,
                        seen: 1,
                        bits: 0,
                        start_ts: Some(5),
                        continued: false,
                    },
                ),
                Spec::Response(s) => response::deadline(
                    s,
                    &response::State {
                        waiting: Some(response::Waiting {
                            seq: 0,
                            ts_ms: 5,
                            after: 0,
                            shown: Shown::default(),
                        }),
                    },
                ),
                Spec::Timing(s) => timing::deadline(
                    s,
                    &timing::State {
                        waiting: Some((0, 5)),
                        done: false,
                        shown: None,
                        last_ts: Some(5),
                    },
                ),
                Spec::Phrase(_) | Spec::Pattern(_) | Spec::Repetition(_) => None,
            };
            assert_eq!(deadline.is_some(), rule.spec.has_deadline(), "{}", rule.id);
            cases.insert((rule.kind(), rule.spec.has_deadline()));
        }
        // Both answers for every kind that can have a deadline.
        for kind in ["required", "response", "timing"] {
            assert!(cases.contains(&(kind, true)), "{kind} with a deadline");
            assert!(cases.contains(&(kind, false)), "{kind} without");
        }
    }
}
