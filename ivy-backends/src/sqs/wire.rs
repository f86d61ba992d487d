//! What travels: bodies as SQS takes them (XML text, else base64), Ivy's message
//! attributes, dead-letter reasons, FIFO deduplication ids, and the time arithmetic of delays.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ivy_core::Result;

use super::{FAILURE, NOT_BEFORE_ATTRIBUTE, REASON_ATTRIBUTE};
use crate::settle::cut_reason;

/// The message attribute that marks a base64-encoded (or empty) body.
const ENCODING_ATTRIBUTE: &str = "ivy-encoding";

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000).min(u64::MAX as u128) as u64
}

pub(super) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Whether SQS takes `s` as a body or attribute value: XML 1.0 characters only.
pub(super) fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    })
}

/// How a body travels: SQS takes non-empty XML text only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    Text,
    Base64,
    /// SQS refuses empty bodies; an empty one travels as one space.
    Empty,
}

impl Encoding {
    pub(super) fn attribute(self) -> Option<&'static str> {
        match self {
            Encoding::Text => None,
            Encoding::Base64 => Some("base64"),
            Encoding::Empty => Some("empty"),
        }
    }
}

pub(super) fn encode_body(body: &[u8]) -> (String, Encoding) {
    if body.is_empty() {
        return (" ".to_owned(), Encoding::Empty);
    }
    match std::str::from_utf8(body) {
        Ok(s) if sqs_text(s) => (s.to_owned(), Encoding::Text),
        _ => (BASE64.encode(body), Encoding::Base64),
    }
}

/// The body bytes of a received message. A body that cannot be decoded is handed on as it
/// came, so the worker dead-letters it as malformed instead of it circling forever; so is a
/// body marked `empty` that is not the one space an empty body travels as.
pub(super) fn decode_body(body: String, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("empty") if body == " " => Vec::new(),
        Some("base64") => match BASE64.decode(&body) {
            Ok(bytes) => bytes,
            Err(_) => body.into_bytes(),
        },
        _ => body.into_bytes(),
    }
}

/// Ivy's message attributes of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Attrs {
    pub(super) encoding: Option<&'static str>,
    pub(super) not_before: Option<u64>,
    pub(super) reason: Option<String>,
}

impl Attrs {
    pub(super) fn from_message(m: &Message) -> Attrs {
        let mut attrs = Attrs::default();
        if let Some(map) = m.message_attributes() {
            let get = |name: &str| map.get(name).and_then(|v| v.string_value());
            attrs.encoding = match get(ENCODING_ATTRIBUTE) {
                Some("base64") => Some("base64"),
                Some("empty") => Some("empty"),
                _ => None,
            };
            attrs.not_before = get(NOT_BEFORE_ATTRIBUTE).and_then(|v| v.parse().ok());
            attrs.reason = get(REASON_ATTRIBUTE).map(str::to_owned);
        }
        attrs
    }

    pub(super) fn list(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut list = Vec::new();
        if let Some(e) = self.encoding {
            list.push((ENCODING_ATTRIBUTE, "String", e.to_owned()));
        }
        if let Some(t) = self.not_before {
            list.push((NOT_BEFORE_ATTRIBUTE, "Number", t.to_string()));
        }
        if let Some(r) = &self.reason {
            list.push((REASON_ATTRIBUTE, "String", r.clone()));
        }
        list
    }

    /// What SQS counts against its size limit: the body plus each attribute's name, type and
    /// value.
    pub(super) fn wire_size(&self, body: &str) -> usize {
        body.len()
            + self
                .list()
                .iter()
                .map(|(n, t, v)| n.len() + t.len() + v.len())
                .sum::<usize>()
    }

    pub(super) fn to_sdk(&self) -> Result<Option<HashMap<String, MessageAttributeValue>>> {
        let list = self.list();
        if list.is_empty() {
            return Ok(None);
        }
        let mut map = HashMap::new();
        for (name, data_type, value) in list {
            let v = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
                .map_err(|e| FAILURE.caused("could not build a message attribute", e))?;
            map.insert(name.to_owned(), v);
        }
        Ok(Some(map))
    }
}

/// A dead letter's reason as SQS takes it: XML text, not empty, and small enough to leave the
/// body room under the size limit (a dead letter that cannot be sent would circle forever).
pub(super) fn reason_attribute(reason: &str, room: usize) -> Option<String> {
    let cleaned: String = reason
        .chars()
        .map(|c| {
            if sqs_text(c.encode_utf8(&mut [0; 4])) {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect();
    let cut = cut_reason(&cleaned, room);
    let cut = cut.trim_end();
    (!cut.is_empty()).then(|| cut.to_owned())
}

/// One batch entry per receipt handle, with its index as its id (which a failed entry names).
/// An entry the SDK refuses to build is left out: that message is simply not in the batch.
pub(super) fn batch_entries<T, E>(
    receipts: &[String],
    entry: impl Fn(String, &str) -> Result<T, E>,
) -> Vec<T> {
    receipts
        .iter()
        .enumerate()
        .filter_map(|(i, receipt)| entry(i.to_string(), receipt).ok())
        .collect()
}

/// A deduplication id SQS accepts: the task id where it fits (1 to 128 printable ASCII
/// characters), else a fresh one.
pub(super) fn dedup_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) {
        id.to_owned()
    } else {
        ivy_core::envelope::new_task_id()
    }
}

/// One SendMessage, fully planned.
#[derive(Clone, Debug)]
pub(super) struct Outgoing {
    pub(super) body: String,
    pub(super) attrs: Attrs,
    pub(super) delay_secs: u32,
    /// FIFO queues only: (MessageGroupId, MessageDeduplicationId).
    pub(super) fifo: Option<(String, String)>,
}

/// A received message, before it becomes a delivery.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) wire_body: String,
    pub(super) attrs: Attrs,
    pub(super) receipt: String,
    pub(super) receive_count: u32,
}

impl Received {
    pub(super) fn new(m: Message) -> Option<Self> {
        let attrs = Attrs::from_message(&m);
        let receive_count = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        Some(Received {
            receipt: m.receipt_handle?,
            wire_body: m.body.unwrap_or_default(),
            attrs,
            receive_count,
        })
    }

    pub(super) fn body(&self) -> Vec<u8> {
        decode_body(self.wire_body.clone(), self.attrs.encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        for body in [
            &b""[..],
            b"plain json {}",
            b"hello \x00\xff bytes",
            "\u{FFFE}".as_bytes(),
        ] {
            let (wire, encoding) = encode_body(body);
            assert!(!wire.is_empty());
            assert!(sqs_text(&wire));
            assert_eq!(decode_body(wire, encoding.attribute()), body);
        }
        assert_eq!(encode_body(b"{\"a\":1}").1, Encoding::Text);
        assert_eq!(encode_body(b"\x00").1, Encoding::Base64);
        // The wire form: standard alphabet, padded.
        assert_eq!(encode_body(b"\x00\xff\xfe").0, "AP/+");
        assert_eq!(encode_body(b"\x00").0, "AA==");
        assert_eq!(decode_body("AA==".into(), Some("base64")), b"\x00");
    }

    #[test]
    fn only_the_empty_body_is_read_as_empty() {
        assert_eq!(decode_body(" ".into(), Some("empty")), b"");
        // A sender that marks a real body `empty` still has it delivered byte for byte.
        let envelope = r#"{"v":1,"id":"x","task":"t","args":{}}"#;
        assert_eq!(
            decode_body(envelope.into(), Some("empty")),
            envelope.as_bytes()
        );
    }

    #[test]
    fn reasons_are_cleaned_and_bounded() {
        assert_eq!(
            reason_attribute("bad\0input", 100).as_deref(),
            Some("bad\u{FFFD}input")
        );
        assert_eq!(reason_attribute("", 100), None);
        assert_eq!(reason_attribute("ééé", 3).as_deref(), Some("é"));
        let cut = reason_attribute(&"x".repeat(1000), 100).unwrap();
        assert!(
            cut.len() <= 100 && cut.ends_with("(cut, 1000 bytes in all)"),
            "{cut}"
        );
    }

    #[test]
    fn dedup_ids_fit() {
        assert_eq!(dedup_id("0190-abc"), "0190-abc");
        assert_ne!(dedup_id("has space"), "has space");
        assert_ne!(dedup_id(&"x".repeat(129)), "x".repeat(129));
    }
}
