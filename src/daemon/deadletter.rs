//! Dead letters: bad input republished to the dead-letter subject with the
//! reason, its subject and its original sequence in headers, where a person
//! finds it (`zhijian tail --deadletter`, the `ZHIJIAN_DEADLETTER` stream).

use super::Shared;
use super::window::{Item, What};
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream;

/// What a dead letter carries.
pub(super) struct DeadLetter<'a> {
    /// The stream the bad input was in, and its sequence there (the dead
    /// letter's id: a redelivery is stored once).
    pub stream: &'a str,
    pub seq: u64,
    pub subject: &'a str,
    pub code: &'static str,
    pub detail: &'a str,
    pub payload: bytes::Bytes,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of input message `msg`, sequence `seq` of `stream`.
    pub(super) fn of(
        msg: &'a jetstream::Message,
        stream: &'a str,
        seq: u64,
        code: &'static str,
        detail: &'a str,
    ) -> DeadLetter<'a> {
        DeadLetter {
            stream,
            seq,
            subject: msg.message.subject.as_str(),
            code,
            detail,
            payload: msg.message.payload.clone(),
        }
    }

    /// The message to store: the payload (cut to fit the server's largest
    /// message, with `Zhijian-Truncated` giving the original length) and
    /// the reason, subject and original sequence in headers.
    pub(super) fn item(self, shared: &Shared, headers: HeaderMap, input_seq: u64) -> Item {
        let mut headers = headers;
        headers.insert(
            "Nats-Msg-Id",
            format!("deadletter.{}.{}", self.stream, self.seq).as_str(),
        );
        headers.insert("Zhijian-Error", self.code);
        let detail: String = self
            .detail
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        headers.insert("Zhijian-Error-Detail", detail.as_str());
        // A header value cannot hold every byte a subject may: keep it
        // printable and bounded.
        let original: String = self
            .subject
            .chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .take(1024)
            .collect();
        headers.insert("Zhijian-Original-Subject", original.as_str());
        headers.insert("Zhijian-Original-Sequence", self.seq.to_string().as_str());
        let mut payload = if shared.config.deadletter_raw {
            self.payload
        } else {
            minimised(self.payload, &mut headers)
        };
        // The input was at most the server's limit, but its dead letter
        // adds headers: cut the payload so the letter fits (with room for
        // the protocol line), and say so.
        let room = shared
            .max_payload
            .saturating_sub(header_bytes(&headers) + 256);
        if payload.len() > room {
            headers.insert("Zhijian-Truncated", payload.len().to_string().as_str());
            payload.truncate(room);
            shared
                .metrics
                .limits
                .with_label_values(&["deadletter_truncated"])
                .inc();
        }
        Item {
            subject: subject::deadletter(&shared.config.streams).to_string(),
            headers,
            payload,
            input_seq,
            arrived_ms: None,
            what: What::DeadLetter(self.code),
        }
    }
}

/// A dead letter's payload without personal numbers: text with what the
/// detectors find masked (`Zhijian-Masked: true` when something was);
/// bytes that are not UTF-8 (nothing to mask them by) replaced by nothing,
/// with their length and FNV-1a 128 digest in headers to find the input by
/// (`[privacy] deadletter_raw = true` keeps every payload as it came).
fn minimised(payload: bytes::Bytes, headers: &mut HeaderMap) -> bytes::Bytes {
    match std::str::from_utf8(&payload) {
        Ok(text) => match crate::privacy::mask_text(text) {
            std::borrow::Cow::Borrowed(_) => payload,
            std::borrow::Cow::Owned(masked) => {
                headers.insert("Zhijian-Masked", "true");
                bytes::Bytes::from(masked)
            }
        },
        Err(_) => {
            headers.insert("Zhijian-Payload-Bytes", payload.len().to_string().as_str());
            headers.insert(
                "Zhijian-Payload-Fnv128",
                crate::event::event_id(&[&payload]).as_str(),
            );
            bytes::Bytes::new()
        }
    }
}

/// The size of headers on the wire (`NATS/1.0` line, `name: value` lines,
/// blank line).
fn header_bytes(headers: &HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for v in values {
            n += name.to_string().len() + 2 + v.as_str().len() + 2;
        }
    }
    n
}

/// Stores a dead letter and waits for its ack (the sweeps of undecodable
/// input, which must store it before deleting the input).
pub(super) async fn store(
    shared: &Shared,
    item: Item,
) -> Result<(), jetstream::context::PublishError> {
    let code = match item.what {
        What::DeadLetter(code) => code,
        What::Event(_) => "",
    };
    let stored = shared
        .js
        .publish_with_headers(item.subject, item.headers, item.payload)
        .await?
        .await;
    match stored {
        Ok(_) => {
            shared.metrics.bad_messages.with_label_values(&[code]).inc();
            shared.metrics.deadlettered.with_label_values(&[code]).inc();
            Ok(())
        }
        Err(e) => {
            shared
                .metrics
                .publish_failures
                .with_label_values(&["deadletter"])
                .inc();
            Err(e)
        }
    }
}
