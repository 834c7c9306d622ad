//! Input events: decoding and validating them (the fast path for the
//! common flat shape in `plain`, serde for the rest).

use super::*;

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
pub(super) struct Wire<'a> {
    #[serde(borrow, default)]
    pub(super) conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(borrow, default)]
    pub(super) speaker: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) tenant: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) agent_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) ts_ms: Option<u64>,
    #[serde(default, rename = "final")]
    pub(super) is_final: Option<bool>,
    #[serde(default)]
    pub(super) continued: Option<bool>,
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
pub(crate) fn decode_plain(
    bytes: &[u8],
    max_text_bytes: usize,
) -> Option<Result<Input<'_>, InputError>> {
    plain::wire(bytes).map(|w| from_wire(w, max_text_bytes))
}

/// Decodes one input event from a JSON string (a JSONL line).
pub fn decode_str(s: &str) -> Result<Input<'_>, InputError> {
    decode_str_limited(s, MAX_TEXT_BYTES)
}

/// [`decode_str`] with another limit on `text`.
pub(crate) fn decode_str_limited(s: &str, max_text_bytes: usize) -> Result<Input<'_>, InputError> {
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
pub(super) fn from_wire(w: Wire<'_>, max_text_bytes: usize) -> Result<Input<'_>, InputError> {
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

/// Ids and tenants: non-empty, bounded, no whitespace or control characters.
/// A tenant also becomes a NATS subject token, so it may not hold `.`, `*`
/// or `>`.
pub(super) fn check_token(
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
