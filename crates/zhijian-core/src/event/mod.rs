//! The event contract, v1: decoding and validating input events, and the
//! output events (violations and summaries).
//!
//! Error policy: bad input is data, not a failure. [`decode`] never panics;
//! it returns an [`InputError`] whose [`InputError::code`] is a stable
//! snake_case string used as a metric label and in logs, and whose message
//! says what is wrong in words a person can act on.

use crate::token::{is_blank_or_control, is_subject_special};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Longest accepted segment text, in bytes. A transcript segment is a
/// sentence or two; anything this large is a producer bug, and rejecting it
/// bounds the work one message can cause.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest conversation id, in characters.
pub const MAX_CONVERSATION_ID_CHARS: usize = 128;
/// Longest tenant, in characters (it becomes a NATS subject token).
pub const MAX_TENANT_CHARS: usize = 64;
/// Longest agent id, in characters.
pub const MAX_AGENT_ID_CHARS: usize = 128;

/// Who spoke a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Agent,
    Customer,
    /// IVR prompts, system notices: accepted, counted, never judged.
    System,
}

impl Speaker {
    pub const ALL: [Speaker; 3] = [Speaker::Agent, Speaker::Customer, Speaker::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Agent => "agent",
            Speaker::Customer => "customer",
            Speaker::System => "system",
        }
    }
}

/// The medium of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Phone call, text from ASR.
    Call,
    /// Typed online chat.
    Chat,
    /// Written, asynchronous service in public or semi-public threads: a
    /// brand's replies on social media (Weibo, WeChat official accounts,
    /// review replies). Openers and closers are those of letters, and a
    /// thread often continues in private messages.
    Social,
    /// Written, asynchronous service by e-mail or ticket.
    Email,
}

impl Channel {
    /// Every channel, in the order of their names in error messages.
    pub const ALL: [Channel; 4] = [
        Channel::Call,
        Channel::Chat,
        Channel::Social,
        Channel::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Call => "call",
            Channel::Chat => "chat",
            Channel::Social => "social",
            Channel::Email => "email",
        }
    }

    /// Written and asynchronous (`social`, `email`): the agent could edit
    /// the reply before sending it, and nobody waits on the line.
    pub fn is_written(self) -> bool {
        matches!(self, Channel::Social | Channel::Email)
    }

    /// The channel named `name`, if any.
    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// The categories of event contract v1. Categories are defined by the
/// lexicon (any id); these four are the default lexicon's, and summaries
/// always count them (v1 consumers read `counts.forbidden` and so on).
pub const V1_CATEGORIES: [&str; 4] = ["forbidden", "filler", "missing_greeting", "missing_closing"];

/// How serious a rule's violation is (set per rule in the lexicon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One decoded, validated input event. Strings borrow from the input buffer
/// where JSON escapes allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Input<'a> {
    pub conversation_id: Cow<'a, str>,
    pub tenant: Cow<'a, str>,
    pub channel: Option<Channel>,
    pub agent_id: Option<Cow<'a, str>>,
    pub ts_ms: Option<u64>,
    /// The platform marks the conversation as the continuation of an
    /// earlier one (a transfer, a resumed chat): no verdict about its start
    /// (contract v1.2, field `continued`).
    pub continued: bool,
    pub kind: InputKind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputKind<'a> {
    Segment(Segment<'a>),
    /// The conversation is over: run the closing check, emit the summary.
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    pub seq: u64,
    pub speaker: Speaker,
    pub text: Cow<'a, str>,
    /// `false`: a provisional ASR hypothesis, which never changes state.
    pub is_final: bool,
}

/// Why an input event was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("not valid UTF-8: {0}")]
    Utf8(String),
    #[error("invalid JSON or field type: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("text is {len} bytes, over the limit of {limit}")]
    TextTooLong { len: usize, limit: usize },
}

impl InputError {
    /// Stable code for metrics labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Utf8(_) => "invalid_utf8",
            InputError::Json(_) => "invalid_json",
            InputError::MissingField(_) => "missing_field",
            InputError::InvalidField { .. } => "invalid_field",
            InputError::TextTooLong { .. } => "text_too_long",
        }
    }

    /// Every code [`InputError::code`] can return (to pre-register metrics).
    pub const CODES: [&'static str; 5] = [
        "invalid_utf8",
        "invalid_json",
        "missing_field",
        "invalid_field",
        "text_too_long",
    ];
}

/// The wire form. Field types are loose on purpose (`serde_json::Value` for
/// the enums and numbers would be slower): what serde cannot type-check
/// becomes an `invalid_json` error naming the field and column; everything
/// else is checked in [`decode_str`] with a specific message.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Wire<'a> {
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    speaker: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_ms: Option<u64>,
    #[serde(default, rename = "final")]
    is_final: Option<bool>,
    #[serde(default)]
    continued: Option<bool>,
}

/// Decodes one input event from raw bytes (a NATS payload).
pub fn decode(bytes: &[u8]) -> Result<Input<'_>, InputError> {
    decode_limited(bytes, MAX_TEXT_BYTES)
}

/// [`decode`] with another limit on `text` (`[limits] max_text_bytes`).
pub fn decode_limited(bytes: &[u8], max_text_bytes: usize) -> Result<Input<'_>, InputError> {
    if let Some(w) = plain::wire(bytes) {
        return from_wire(w, max_text_bytes);
    }
    let s = std::str::from_utf8(bytes).map_err(|e| InputError::Utf8(e.to_string()))?;
    decode_str_limited(s, max_text_bytes)
}

/// Decodes the common shape of event quickly, or says it cannot: `None`
/// when `bytes` is anything but a flat JSON object of plain values (a
/// string with an escape or a control character, a negative or fractional
/// number, a nested value, a repeated field, invalid UTF-8, bad JSON). When
/// it is `Some`, it is exactly what [`decode_limited`] (and [`decode_str`]
/// on the text with its surrounding whitespace trimmed) returns for the
/// same bytes; when it is `None`, those decoders say what the event is.
pub fn decode_plain(bytes: &[u8], max_text_bytes: usize) -> Option<Result<Input<'_>, InputError>> {
    plain::wire(bytes).map(|w| from_wire(w, max_text_bytes))
}

/// Decodes one input event from a JSON string (a JSONL line).
pub fn decode_str(s: &str) -> Result<Input<'_>, InputError> {
    decode_str_limited(s, MAX_TEXT_BYTES)
}

/// [`decode_str`] with another limit on `text`.
pub fn decode_str_limited(s: &str, max_text_bytes: usize) -> Result<Input<'_>, InputError> {
    if let Some(w) = plain::wire_str(s) {
        return from_wire(w, max_text_bytes);
    }
    // serde would decode a JSON array positionally into `Wire` (its fields
    // in declaration order), so `["c1",null,0,"agent","…"]` would be judged
    // as a segment: an event is a JSON object and nothing else.
    let value_start = s.trim_start_matches([' ', '\t', '\n', '\r']);
    if !value_start.starts_with('{') {
        // Not JSON at all: serde's own message says where; valid JSON of
        // another type: say which.
        serde_json::from_str::<serde::de::IgnoredAny>(s)
            .map_err(|e| InputError::Json(e.to_string()))?;
        let found = match value_start.as_bytes().first() {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        };
        return Err(InputError::Json(format!(
            "an event must be a JSON object, found {found}"
        )));
    }
    let w: Wire<'_> = serde_json::from_str(s).map_err(|e| InputError::Json(e.to_string()))?;
    from_wire(w, max_text_bytes)
}

/// The checks after decoding: required fields, known values, limits.
fn from_wire(w: Wire<'_>, max_text_bytes: usize) -> Result<Input<'_>, InputError> {
    let conversation_id = w
        .conversation_id
        .ok_or(InputError::MissingField("conversation_id"))?;
    check_token(
        "conversation_id",
        &conversation_id,
        MAX_CONVERSATION_ID_CHARS,
        false,
    )?;

    let tenant = w.tenant.unwrap_or(Cow::Borrowed("default"));
    check_token("tenant", &tenant, MAX_TENANT_CHARS, true)?;

    let agent_id = match w.agent_id {
        Some(a) => {
            check_token("agent_id", &a, MAX_AGENT_ID_CHARS, false)?;
            Some(a)
        }
        None => None,
    };

    let channel = match w.channel.as_deref() {
        None => None,
        Some(name) => match Channel::from_name(name) {
            Some(c) => Some(c),
            None => {
                return Err(InputError::InvalidField {
                    field: "channel",
                    reason: format!("{name:?} is not \"call\", \"chat\", \"social\" or \"email\""),
                });
            }
        },
    };

    let kind = match w.kind.as_deref() {
        None | Some("segment") => {
            let seq = w.seq.ok_or(InputError::MissingField("seq"))?;
            let speaker = match w.speaker.as_deref() {
                None => return Err(InputError::MissingField("speaker")),
                Some("agent") => Speaker::Agent,
                Some("customer") => Speaker::Customer,
                Some("system") => Speaker::System,
                Some(other) => {
                    return Err(InputError::InvalidField {
                        field: "speaker",
                        reason: format!("{other:?} is not \"agent\", \"customer\" or \"system\""),
                    });
                }
            };
            let text = w.text.ok_or(InputError::MissingField("text"))?;
            if text.len() > max_text_bytes {
                return Err(InputError::TextTooLong {
                    len: text.len(),
                    limit: max_text_bytes,
                });
            }
            InputKind::Segment(Segment {
                seq,
                speaker,
                text,
                is_final: w.is_final.unwrap_or(true),
            })
        }
        Some("end") => InputKind::End,
        Some(other) => {
            return Err(InputError::InvalidField {
                field: "type",
                reason: format!("{other:?} is not \"segment\" or \"end\""),
            });
        }
    };

    Ok(Input {
        conversation_id,
        tenant,
        channel,
        agent_id,
        ts_ms: w.ts_ms,
        continued: w.continued.unwrap_or(false),
        kind,
    })
}

/// A decoder for the shape nearly every event has: one flat JSON object
/// whose values are strings without escapes, unsigned integers, booleans
/// or null. It accepts only input that serde (the [`Wire`] derive) accepts,
/// and gives the same [`Wire`] for it; anything else is `None`, and serde
/// decides (with its own messages).
mod plain {
    use super::Wire;
    use std::borrow::Cow;

    struct Bytes<'a> {
        s: &'a str,
        b: &'a [u8],
        i: usize,
    }

    /// The names of [`Wire`]'s fields, as serde knows them.
    pub(super) const FIELDS: [&str; 11] = [
        "conversation_id",
        "type",
        "seq",
        "speaker",
        "text",
        "tenant",
        "channel",
        "agent_id",
        "ts_ms",
        "final",
        "continued",
    ];

    /// What a field holds, as the decoder sees it.
    enum Value<'a> {
        Str(&'a str),
        Uint(u64),
        Bool(bool),
        Null,
    }

    /// The index of the first `"`, `\\` or control character (below
    /// 0x20) in `b`, eight bytes at a time.
    pub(super) fn string_end(b: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let mut at = 0;
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            let v = u64::from_le_bytes(word);
            // A byte is flagged when it is zero after the XOR (a quote or a
            // backslash) or below 0x20; a borrow can only flag bytes after
            // the first true one, so the lowest flag is exact.
            let quote = v ^ (ONES * u64::from(b'"'));
            let slash = v ^ (ONES * u64::from(b'\\'));
            let found = (quote.wrapping_sub(ONES) & !quote
                | slash.wrapping_sub(ONES) & !slash
                | v.wrapping_sub(ONES * 0x20) & !v)
                & HIGH;
            if found != 0 {
                return Some(at + (found.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        words
            .remainder()
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .map(|i| at + i)
    }

    impl<'a> Bytes<'a> {
        /// JSON's whitespace, as serde_json skips it.
        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
                self.i += 1;
            }
        }

        fn next(&mut self) -> Option<u8> {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            Some(c)
        }

        /// A string with no escape and no control character, after its
        /// opening quote.
        fn str_body(&mut self) -> Option<&'a str> {
            let start = self.i;
            let end = start + string_end(self.b.get(start..)?)?;
            if self.b[end] != b'"' {
                return None;
            }
            self.i = end + 1;
            // Both ends are ASCII, so both are character boundaries.
            self.s.get(start..end)
        }

        /// A field name, after its opening quote: the index of a [`FIELDS`]
        /// name, compared in place, or `None` for another name (read as a
        /// string, and ignored).
        fn key(&mut self) -> Option<Option<usize>> {
            let rest = self.b.get(self.i..)?;
            for (i, name) in FIELDS.iter().enumerate() {
                let n = name.len();
                if rest.get(n) == Some(&b'"') && rest.starts_with(name.as_bytes()) {
                    self.i += n + 1;
                    return Some(Some(i));
                }
            }
            self.str_body().map(|_| None)
        }

        /// An unsigned integer as serde_json reads one into a `u64`: no
        /// sign, no leading zero, no fraction or exponent, no overflow.
        fn uint(&mut self, first: u8) -> Option<u64> {
            let mut n = u64::from(first - b'0');
            if first == b'0' {
                if let Some(b'0'..=b'9') = self.b.get(self.i) {
                    return None;
                }
            } else {
                while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
                    n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                    self.i += 1;
                }
            }
            match self.b.get(self.i) {
                Some(b'.' | b'e' | b'E') => None,
                _ => Some(n),
            }
        }

        fn word(&mut self, rest: &[u8]) -> Option<()> {
            let got = self.b.get(self.i..self.i + rest.len())?;
            (got == rest).then(|| self.i += rest.len())
        }

        fn value(&mut self) -> Option<Value<'a>> {
            match self.next()? {
                b'"' => self.str_body().map(Value::Str),
                c @ b'0'..=b'9' => self.uint(c).map(Value::Uint),
                b't' => self.word(b"rue").map(|()| Value::Bool(true)),
                b'f' => self.word(b"alse").map(|()| Value::Bool(false)),
                b'n' => self.word(b"ull").map(|()| Value::Null),
                _ => None,
            }
        }
    }

    fn text(v: Value<'_>) -> Option<Option<Cow<'_, str>>> {
        match v {
            Value::Str(s) => Some(Some(Cow::Borrowed(s))),
            Value::Null => Some(None),
            _ => None,
        }
    }

    fn uint(v: Value<'_>) -> Option<Option<u64>> {
        match v {
            Value::Uint(n) => Some(Some(n)),
            Value::Null => Some(None),
            _ => None,
        }
    }

    fn boolean(v: Value<'_>) -> Option<Option<bool>> {
        match v {
            Value::Bool(b) => Some(Some(b)),
            Value::Null => Some(None),
            _ => None,
        }
    }

    /// [`wire_str`] of bytes: `None` when they are not UTF-8.
    pub(super) fn wire(b: &[u8]) -> Option<Wire<'_>> {
        wire_str(std::str::from_utf8(b).ok()?)
    }

    pub(super) fn wire_str(s: &str) -> Option<Wire<'_>> {
        let b = s.as_bytes();
        let mut p = Bytes { s, b, i: 0 };
        let mut w = Wire::default();
        // One bit per known field: serde rejects a field given twice.
        let mut seen = 0u16;
        p.ws();
        if p.next()? != b'{' {
            return None;
        }
        p.ws();
        if b.get(p.i) == Some(&b'}') {
            p.i += 1;
        } else {
            loop {
                if p.next()? != b'"' {
                    return None;
                }
                let field = p.key()?;
                p.ws();
                if p.next()? != b':' {
                    return None;
                }
                p.ws();
                let v = p.value()?;
                let bit = match field {
                    Some(0) => {
                        w.conversation_id = text(v)?;
                        Some(0)
                    }
                    Some(1) => {
                        w.kind = text(v)?;
                        Some(1)
                    }
                    Some(2) => {
                        w.seq = uint(v)?;
                        Some(2)
                    }
                    Some(3) => {
                        w.speaker = text(v)?;
                        Some(3)
                    }
                    Some(4) => {
                        w.text = text(v)?;
                        Some(4)
                    }
                    Some(5) => {
                        w.tenant = text(v)?;
                        Some(5)
                    }
                    Some(6) => {
                        w.channel = text(v)?;
                        Some(6)
                    }
                    Some(7) => {
                        w.agent_id = text(v)?;
                        Some(7)
                    }
                    Some(8) => {
                        w.ts_ms = uint(v)?;
                        Some(8)
                    }
                    Some(9) => {
                        w.is_final = boolean(v)?;
                        Some(9)
                    }
                    Some(10) => {
                        w.continued = boolean(v)?;
                        Some(10)
                    }
                    // Ignored, as serde ignores unknown fields.
                    _ => None,
                };
                if let Some(bit) = bit {
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                }
                p.ws();
                match p.next()? {
                    b',' => p.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        p.ws();
        (p.i == b.len()).then_some(w)
    }
}

/// Ids and tenants: non-empty, bounded, no whitespace or control characters.
/// A tenant also becomes a NATS subject token, so it may not hold `.`, `*`
/// or `>`.
fn check_token(
    field: &'static str,
    value: &str,
    max_chars: usize,
    subject_token: bool,
) -> Result<(), InputError> {
    // Nearly every id is printable ASCII: one pass over the bytes decides.
    if value.len() <= max_chars
        && value.bytes().all(|b| {
            (0x21..0x7F).contains(&b) && !(subject_token && matches!(b, b'.' | b'*' | b'>'))
        })
        && !value.is_empty()
    {
        return Ok(());
    }
    let invalid = |reason: String| InputError::InvalidField { field, reason };
    if value.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(invalid(format!(
            "{chars} characters, over the limit of {max_chars}"
        )));
    }
    if let Some(c) = value.chars().find(|&c| is_blank_or_control(c)) {
        return Err(invalid(format!(
            "contains whitespace or control character {c:?}"
        )));
    }
    if subject_token && let Some(c) = value.chars().find(|&c| is_subject_special(c)) {
        return Err(invalid(format!(
            "contains {c:?}, which is not allowed in a NATS subject token"
        )));
    }
    Ok(())
}

/// An output event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Events are built, serialized and dropped: boxing the larger variant would
// cost an allocation per violation for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Violation(Violation),
    Summary(Summary),
}

impl Event {
    pub fn id(&self) -> &str {
        match self {
            Event::Violation(v) => &v.id,
            Event::Summary(s) => &s.id,
        }
    }
}

/// One rule broken once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Deterministic: a hash of tenant, conversation, seq, rule and span (see
    /// [`event_id`]), so a replayed input yields the same id.
    pub id: String,
    pub conversation_id: String,
    pub tenant: String,
    pub channel: Option<Channel>,
    pub agent_id: Option<String>,
    pub seq: u64,
    pub rule_id: String,
    /// The rule's category id (defined by the lexicon).
    pub category: String,
    /// The category's display name (v1.2).
    #[serde(default)]
    pub category_name: String,
    /// The rule's kind: phrase, required, response, pattern, timing,
    /// repetition (v1.2).
    #[serde(default)]
    pub kind: String,
    pub severity: Severity,
    pub deduct: f64,
    /// The slice of the original text that matched first (null for
    /// missing_*).
    pub matched: Option<String>,
    /// Unicode-scalar offsets of the first match in the segment (null for
    /// missing_*).
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// How often the rule hit this segment (contract v1.1; 1 for older
    /// events). Repeated hits of one rule in one segment are one violation:
    /// a hostile segment cannot multiply the output.
    #[serde(default = "one")]
    pub count: u32,
    /// The segment offsets of the first [`MAX_SPANS`] hits, in order
    /// (v1.1; empty for missing_*).
    #[serde(default)]
    pub spans: Vec<[usize; 2]>,
    /// The original text of segment `seq`, or, when it is longer than the
    /// excerpt limit, an excerpt of it around the first match.
    pub text: String,
    /// Where `text` starts in the segment, in Unicode scalars (v1.1; 0
    /// when `text` is the whole segment).
    #[serde(default)]
    pub text_start: usize,
    /// The segment's full length in Unicode scalars (v1.1).
    #[serde(default)]
    pub text_chars: usize,
    /// Other rules that matched the same span of the segment; this
    /// violation (the most severe) stands for them (v1.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Also>,
    /// Why, for verdicts that are not a match (a required phrase missing, a
    /// response not given, a reply too late) (v1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub lexicon_version: String,
    /// The segment's `ts_ms`, or the engine clock when it had none.
    pub ts_ms: u64,
}

/// A rule whose match was folded into a more severe violation of the same
/// span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Also {
    pub rule_id: String,
    pub category: String,
}

/// How many hit spans a violation lists at most.
pub const MAX_SPANS: usize = 16;

fn one() -> u32 {
    1
}

/// Per-category violation counts of one conversation, by category id.
/// Serialized as an object that always holds the four v1 categories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sorted by id; a conversation has a handful at most.
    entries: Vec<(Box<str>, u32)>,
}

impl Counts {
    pub fn add(&mut self, category: &str) {
        self.add_n(category, 1);
    }

    pub fn add_n(&mut self, category: &str, n: u32) {
        match self
            .entries
            .binary_search_by(|(id, _)| (**id).cmp(category))
        {
            Ok(i) => self.entries[i].1 = self.entries[i].1.saturating_add(n),
            Err(i) => self.entries.insert(i, (category.into(), n)),
        }
    }

    pub fn get(&self, category: &str) -> u32 {
        self.entries
            .binary_search_by(|(id, _)| (**id).cmp(category))
            .map_or(0, |i| self.entries[i].1)
    }

    /// `(category id, count)`, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries.iter().map(|(id, n)| (&**id, *n))
    }

    pub fn total(&self) -> u32 {
        self.entries.iter().map(|e| e.1).sum()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut all: Vec<(&str, u32)> = self.iter().collect();
        for v1 in V1_CATEGORIES {
            if self.get(v1) == 0 {
                all.push((v1, 0));
            }
        }
        all.sort_unstable();
        let mut map = serializer.serialize_map(Some(all.len()))?;
        for (id, n) in all {
            map.serialize_entry(id, &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, u32>::deserialize(deserializer)?;
        let mut c = Counts::default();
        for (id, n) in map {
            if n > 0 {
                c.add_n(&id, n);
            }
        }
        Ok(c)
    }
}

/// Why a conversation was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// An `end` event arrived.
    End,
    /// No event for the idle timeout.
    Idle,
    /// End of the offline input.
    Eof,
    /// A limit acted: the open-conversation limit (the least recently
    /// active conversations are closed first) or the segments-per-
    /// conversation limit.
    Limit,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::End,
        CloseReason::Idle,
        CloseReason::Eof,
        CloseReason::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::End => "end",
            CloseReason::Idle => "idle",
            CloseReason::Eof => "eof",
            CloseReason::Limit => "limit",
        }
    }
}

/// Once per conversation, when it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Deterministic: a hash of tenant and conversation.
    pub id: String,
    pub conversation_id: String,
    pub tenant: String,
    pub channel: Option<Channel>,
    /// The last agent id seen in the conversation.
    pub agent_id: Option<String>,
    pub reason: CloseReason,
    /// Distinct segments seen (all speakers, final or not).
    pub segments: u32,
    /// Agent segments judged (final only).
    pub agent_segments: u32,
    pub counts: Counts,
    /// Whether the agent greeted; null when not judged (the agent never
    /// spoke, the conversation was first seen mid-way, or the lexicon has no
    /// greeting rule).
    pub greeted: Option<bool>,
    /// Whether the agent closed politely; null when not judged.
    pub closed: Option<bool>,
    /// 100 minus the deductions, each scorecard section capped.
    pub score: f64,
    /// The lexicon version that judged the conversation.
    pub lexicon_version: String,
    /// Versions that judged earlier segments, when a restore could not have
    /// the version that opened it (a rolling upgrade that could not fetch
    /// it): then the score mixes versions, and this says which. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_lexicon_versions: Vec<String>,
    /// The engine clock when the conversation closed.
    pub ts_ms: u64,
}

/// At most `limit` characters of `text`, starting a quarter of the limit
/// before character `at` (so the match shows with some context before it):
/// the slice and the character offset where it starts. The whole text when
/// it fits.
pub fn excerpt(text: &str, at: usize, limit: usize) -> (&str, usize) {
    // Bytes bound characters: most segments take this branch uncounted.
    if text.len() <= limit || text.chars().count() <= limit {
        return (text, 0);
    }
    let first = at.saturating_sub(limit / 4);
    let mut bounds = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .skip(first);
    let from = bounds.next().unwrap_or(text.len());
    let to = bounds.nth(limit.saturating_sub(1)).unwrap_or(text.len());
    (&text[from..to], first)
}

/// A deterministic event id: FNV-1a (128-bit) over the parts, each followed
/// by a 0xFF separator byte (which never occurs in UTF-8), as 32 hex digits.
/// Not cryptographic: it only has to be stable and collision-free in
/// practice within a de-duplication window.
pub fn event_id(parts: &[&[u8]]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xFF)) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for i in (0..32).rev() {
        out.push(char::from(HEX[((h >> (i * 4)) & 0xF) as usize]));
    }
    out
}

#[cfg(test)]
mod tests;
