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
    pub(crate) fn is_written(self) -> bool {
        matches!(self, Channel::Social | Channel::Email)
    }

    /// The channel named `name`, if any.
    pub(crate) fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// The categories of event contract v1. Categories are defined by the
/// lexicon (any id); these four are the default lexicon's, and summaries
/// always count them (v1 consumers read `counts.forbidden` and so on).
pub(crate) const V1_CATEGORIES: [&str; 4] =
    ["forbidden", "filler", "missing_greeting", "missing_closing"];

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

mod input;
mod output;
mod plain;

pub use input::*;
pub use output::*;

/// The event contract's version (docs/events.md), on the wire as the
/// `Zhijian-Contract` header.
pub const CONTRACT_VERSION: &str = "1.2";

#[cfg(test)]
mod tests;
