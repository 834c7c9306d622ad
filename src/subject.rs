//! The NATS subjects zhijian reads and writes, built and parsed here only,
//! and the checks of the tokens that go into them.
//!
//! | what | subject |
//! |---|---|
//! | input | `<input_prefix>.<tenant>.<conversation token>` |
//! | input as stored (partitioned) | `<input_prefix>.<partition>.<tenant>.<conversation token>` |
//! | violation | `<violations_prefix>.<tenant>.<category>` |
//! | summary | `<summaries_prefix>.<tenant>` |
//! | dead letter | `<deadletter_subject>` |
//! | shadow output | `<shadow prefix>.<one of the output subjects>` |
//!
//! A tenant is one subject token, and so is a conversation's token: its id
//! with every `.` written `%2E` ([`id_token`]), since the partition is
//! computed from exactly two tokens. The payload carries the real id. The
//! checks of tokens are in [`token`], which depends on nothing.

use crate::config::StreamsConfig;

pub use zhijian_core::token;

/// Dead-letter reason: the subject does not name the payload's
/// conversation.
pub(crate) const SUBJECT_MISMATCH: &str = "subject_mismatch";

/// Dead-letter reason: the subject is not UTF-8, so the client cannot even
/// receive the message (see `daemon::poison`).
pub(crate) const INVALID_SUBJECT: &str = "invalid_subject";

/// Dead-letter reason: a subject below the input prefix that is not
/// `<prefix>.<tenant>.<token>` of one token each (a conversation id with an
/// unescaped `.`, or no id), which the partitioned stream cannot take (see
/// [`input_unroutable`]).
pub(crate) const UNROUTABLE_SUBJECT: &str = "unroutable_subject";

/// Every subject below `prefix`: `<prefix>.>`.
pub fn all(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// `<prefix>.<rest>`: a subject moved below another prefix (the shadow's).
pub fn below(prefix: &str, rest: &str) -> String {
    format!("{prefix}.{rest}")
}

/// Every input subject.
pub fn inputs(s: &StreamsConfig) -> String {
    all(&s.input_prefix)
}

/// The input subject of a conversation.
pub fn input(s: &StreamsConfig, tenant: &str, conversation_id: &str) -> String {
    format!("{}.{tenant}.{}", s.input_prefix, id_token(conversation_id))
}

/// A conversation id as one subject token: `.` written `%2E` (an id holds
/// no whitespace, `*` or `>`: see [`token::is_literal_tail`]). Not meant to
/// be read back: the payload names the conversation, and two ids that give
/// one token only share a partition.
pub(crate) fn id_token(conversation_id: &str) -> std::borrow::Cow<'_, str> {
    if conversation_id.contains('.') {
        std::borrow::Cow::Owned(conversation_id.replace('.', "%2E"))
    } else {
        std::borrow::Cow::Borrowed(conversation_id)
    }
}

/// The stored subjects of a conversation's inputs, whatever its partition:
/// `<prefix>.*.<tenant>.<token>`.
pub(crate) fn input_partitioned(s: &StreamsConfig, tenant: &str, conversation_id: &str) -> String {
    format!(
        "{}.*.{tenant}.{}",
        s.input_prefix,
        id_token(conversation_id)
    )
}

/// Where `zhijian publish` puts line `line` (1-based) of a file when it is
/// not valid input, for the daemon to dead-letter.
pub(crate) fn input_invalid_line(s: &StreamsConfig, line: usize) -> String {
    format!("{}.invalid.line-{line}", s.input_prefix)
}

/// The input subjects a cluster's stream accepts: `<input_prefix>.*.*`.
pub(crate) fn input_unpartitioned(s: &StreamsConfig) -> String {
    format!("{}.*.*", s.input_prefix)
}

/// What a partitioned input stream cannot take, kept by a stream of its
/// own to be dead-lettered: `<input_prefix>.*` and `<input_prefix>.*.*.>`.
pub(crate) fn input_unroutable(s: &StreamsConfig) -> Vec<String> {
    vec![
        format!("{}.*", s.input_prefix),
        format!("{}.*.*.>", s.input_prefix),
    ]
}

/// The stream of [`input_unroutable`]: `<input_stream>_UNROUTABLE`.
pub(crate) fn unroutable_stream(s: &StreamsConfig) -> String {
    format!("{}_UNROUTABLE", s.input_stream)
}

/// Where the stream transform stores `<input_prefix>.<tenant>.<id>`: under
/// its partition, `<input_prefix>.<p>.<tenant>.<id>`, NATS computing `p`
/// from the two tokens.
pub(crate) fn partition_destination(s: &StreamsConfig, partitions: u32) -> String {
    format!(
        "{}.{{{{partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        s.input_prefix
    )
}

/// The partition count of a transform destination made by
/// [`partition_destination`].
pub(crate) fn parse_partition_count(destination: &str) -> Option<u32> {
    let inner = destination.split("{{partition(").nth(1)?;
    inner.split(',').next()?.trim().parse().ok()
}

/// Every input of partition `p`: `<input_prefix>.<p>.>`.
pub fn partition_all(s: &StreamsConfig, p: u32) -> String {
    format!("{}.{p}.>", s.input_prefix)
}

/// `(partition, tenant, conversation token)` of a stored input subject,
/// `<input_prefix>.<p>.<tenant>.<token>`; None for any other subject.
pub(crate) fn parse_partitioned_input<'a>(
    s: &StreamsConfig,
    subject: &'a str,
) -> Option<(u32, &'a str, &'a str)> {
    let (p, rest) = subject
        .strip_prefix(s.input_prefix.as_str())?
        .strip_prefix('.')?
        .split_once('.')?;
    let (tenant, id) = rest.split_once('.')?;
    Some((p.parse().ok()?, tenant, id))
}

/// The subject of a violation.
pub fn violation(s: &StreamsConfig, tenant: &str, category: &str) -> String {
    format!("{}.{tenant}.{category}", s.violations_prefix)
}

/// The subject of a summary.
pub fn summary(s: &StreamsConfig, tenant: &str) -> String {
    format!("{}.{tenant}", s.summaries_prefix)
}

/// What the output stream holds: every violation and summary subject.
pub fn outputs(s: &StreamsConfig) -> Vec<String> {
    vec![all(&s.violations_prefix), all(&s.summaries_prefix)]
}

/// The dead-letter subject.
pub fn deadletter(s: &StreamsConfig) -> &str {
    &s.deadletter_subject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_and_parsed_back() {
        let s = StreamsConfig::default();
        assert_eq!(input(&s, "acme", "c1"), "transcripts.acme.c1");
        // An id with '.' is one token in the subject.
        assert_eq!(input(&s, "acme", "c.1.x"), "transcripts.acme.c%2E1%2Ex");
        assert_eq!(
            input_partitioned(&s, "acme", "c.1"),
            "transcripts.*.acme.c%2E1"
        );
        assert_eq!(id_token("a%2Eb"), "a%2Eb");
        assert_eq!(
            violation(&s, "acme", "forbidden"),
            "violations.acme.forbidden"
        );
        assert_eq!(summary(&s, "acme"), "summaries.acme");
        assert_eq!(
            parse_partitioned_input(&s, "transcripts.3.acme.c1"),
            Some((3, "acme", "c1"))
        );
        assert_eq!(parse_partitioned_input(&s, "transcripts.x.acme.c1"), None);
        assert_eq!(parse_partitioned_input(&s, "transcripts.3.acme"), None);
        assert_eq!(partition_all(&s, 3), "transcripts.3.>");
        assert_eq!(
            partition_destination(&s, 8),
            "transcripts.{{partition(8,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
        );
        assert_eq!(
            parse_partition_count(&partition_destination(&s, 8)),
            Some(8)
        );
    }
}
