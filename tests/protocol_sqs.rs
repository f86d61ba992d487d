//! PROTOCOL.md §1 "SQS", checked the way a client in another language meets it: Ivy publishes
//! and settles through `SqsBroker`, and the queues and messages are read with the plain SQS API
//! (`ReceiveMessage`, `GetQueueAttributes`) against the moto server of scripts/services.
#![cfg(feature = "sqs")]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use ivy::backends::sqs::SqsBroker;
use ivy::{Broker, Consumer, Delivery, OutgoingMessage};

fn sqs_url() -> String {
    std::env::var("IVY_TEST_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:4566?region=us-east-1".into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A broker whose queues nobody else uses: a fresh `?prefix=`, plus `extra` options.
async fn broker(extra: &str) -> (SqsBroker, String) {
    let prefix = format!(
        "ivyproto{}x{}-",
        std::process::id(),
        now_ms() % 1_000_000_000
    );
    let url = format!("{}&prefix={prefix}{extra}", sqs_url());
    let broker = SqsBroker::from_url(&url).await.expect("the SQS URL");
    (broker, prefix)
}

async fn url_of(broker: &SqsBroker, name: &str) -> String {
    let out = broker
        .client()
        .get_queue_url()
        .queue_name(name)
        .send()
        .await;
    let out = out.unwrap_or_else(|e| panic!("queue `{name}` exists: {e:?}"));
    out.queue_url().unwrap().to_owned()
}

async fn attributes(broker: &SqsBroker, name: &str) -> HashMap<QueueAttributeName, String> {
    let out = broker
        .client()
        .get_queue_attributes()
        .queue_url(url_of(broker, name).await)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    out.attributes().cloned().unwrap_or_default()
}

/// Receives one message from the SQS queue `name`, polling until one arrives.
async fn receive(broker: &SqsBroker, name: &str) -> Message {
    let url = url_of(broker, name).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = broker
            .client()
            .receive_message()
            .queue_url(&url)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages().first() {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "nothing arrived in `{name}`");
    }
}

/// Ivy's message attributes of `m`: name -> (data type, value).
fn ivy_attributes(m: &Message) -> HashMap<String, (String, String)> {
    m.message_attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let value = v.string_value().unwrap_or_default().to_owned();
            (k.clone(), (v.data_type().to_owned(), value))
        })
        .collect()
}

fn system(m: &Message, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes()?.get(&name).cloned()
}

fn attr(data_type: &str, value: &str) -> (String, String) {
    (data_type.to_owned(), value.to_owned())
}

/// `<prefix>q` and `<prefix>q-dead` (`-dead.fifo` for FIFO queues) are created with the
/// documented attributes, and no redrive policy.
#[tokio::test]
async fn queues_are_created_as_documented() {
    let (b, prefix) = broker("").await;
    for q in ["work", "jobs.fifo"] {
        b.publish(OutgoingMessage::new("q1", q, b"{}".to_vec()))
            .await
            .unwrap();
    }
    let dead_retention = Some("1209600".to_owned());
    let cases = [
        ("work".to_owned(), false, false),
        ("work-dead".to_owned(), false, true),
        ("jobs.fifo".to_owned(), true, false),
        ("jobs-dead.fifo".to_owned(), true, true),
    ];
    for (name, fifo, dead) in cases {
        let a = attributes(&b, &format!("{prefix}{name}")).await;
        let get = |n: QueueAttributeName| a.get(&n).cloned();
        assert_eq!(
            get(QueueAttributeName::VisibilityTimeout).as_deref(),
            Some("30"),
            "{name}"
        );
        assert_eq!(
            get(QueueAttributeName::FifoQueue).as_deref() == Some("true"),
            fifo,
            "{name}"
        );
        if dead {
            assert_eq!(
                get(QueueAttributeName::MessageRetentionPeriod),
                dead_retention
            );
        }
        assert_eq!(get(QueueAttributeName::RedrivePolicy), None, "{name}");
    }
}

/// JSON travels as text with no attribute, other bytes as padded standard base64 with
/// `ivy-encoding` = `base64`, an empty body as one space with `ivy-encoding` = `empty`.
#[tokio::test]
async fn bodies_travel_as_documented() {
    let (b, prefix) = broker("").await;
    let cases: [(&[u8], &str, Option<&str>); 3] = [
        (br#"{"v":1}"#, r#"{"v":1}"#, None),
        (
            b"ivy1:\x02k1\x00\xff\xfe",
            "aXZ5MToCazEA//4=",
            Some("base64"),
        ),
        (b"", " ", Some("empty")),
    ];
    for (body, wire, encoding) in cases {
        b.publish(OutgoingMessage::new("b1", "bodies", body.to_vec()))
            .await
            .unwrap();
        let m = receive(&b, &format!("{prefix}bodies")).await;
        assert_eq!(m.body(), Some(wire));
        let expected: HashMap<_, _> = encoding
            .map(|e| ("ivy-encoding".to_owned(), attr("String", e)))
            .into_iter()
            .collect();
        assert_eq!(ivy_attributes(&m), expected);
        let receipt = m.receipt_handle().unwrap();
        let url = url_of(&b, &format!("{prefix}bodies")).await;
        b.client()
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .unwrap();
    }
}

/// On a FIFO queue: group = the Ivy queue name, deduplication id = the task id. A delay longer
/// than `?max_delay=` (and any delay on a FIFO queue) travels as `ivy-not-before`, a `Number`;
/// a delayed FIFO message has a group of its own, its deduplication id.
#[tokio::test]
async fn fifo_ids_and_long_delays_are_as_documented() {
    let (b, prefix) = broker("&max_delay=1").await;
    b.publish(OutgoingMessage::new("task-1", "jobs.fifo", b"{}".to_vec()))
        .await
        .unwrap();
    let m = receive(&b, &format!("{prefix}jobs.fifo")).await;
    let group = MessageSystemAttributeName::MessageGroupId;
    let dedup = MessageSystemAttributeName::MessageDeduplicationId;
    assert_eq!(system(&m, group.clone()).as_deref(), Some("jobs.fifo"));
    assert_eq!(system(&m, dedup.clone()).as_deref(), Some("task-1"));

    let before = now_ms();
    let delayed = OutgoingMessage::new("task-2", "later.fifo", b"{}".to_vec())
        .with_delay(Duration::from_secs(60));
    b.publish(delayed).await.unwrap();
    let m = receive(&b, &format!("{prefix}later.fifo")).await;
    assert_eq!(system(&m, dedup.clone()).as_deref(), Some("task-2"));
    assert_eq!(system(&m, group.clone()).as_deref(), Some("task-2"));
    let (data_type, at) = ivy_attributes(&m)["ivy-not-before"].clone();
    assert_eq!(data_type, "Number");
    let at: u64 = at.parse().unwrap();
    assert!((before + 60_000..=now_ms() + 60_000).contains(&at), "{at}");

    // A standard queue: one hop of at most `max_delay` (1 s here), then `ivy-not-before`.
    let before = now_ms();
    let delayed =
        OutgoingMessage::new("task-3", "later", b"{}".to_vec()).with_delay(Duration::from_secs(60));
    b.publish(delayed).await.unwrap();
    let m = receive(&b, &format!("{prefix}later")).await;
    let (data_type, at) = ivy_attributes(&m)["ivy-not-before"].clone();
    assert_eq!(data_type, "Number");
    let at: u64 = at.parse().unwrap();
    assert!((before + 60_000..=now_ms() + 60_000).contains(&at), "{at}");
}

/// A dead letter: the received body in `<prefix>q-dead[.fifo]` with the reason in
/// `ivy-reason` (non-XML characters replaced by U+FFFD) and, on FIFO, a fresh deduplication
/// id; a retry on FIFO gets a fresh deduplication id too.
#[tokio::test]
async fn dead_letters_and_retries_are_as_documented() {
    let (b, prefix) = broker("").await;
    let q = "settle.fifo".to_owned();
    b.publish(OutgoingMessage::new("task-9", q.clone(), b"first".to_vec()))
        .await
        .unwrap();
    let mut consumer = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let next = async |c: &mut ivy::backends::sqs::SqsConsumer| {
        tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("a delivery")
            .expect("the stream goes on")
            .expect("no error")
    };
    let d = next(&mut consumer).await;
    d.retry(b"second".to_vec(), Duration::ZERO).await.unwrap();
    // Had the retry kept the task id as deduplication id, SQS would have dropped it.
    let d = next(&mut consumer).await;
    assert_eq!(d.body(), b"second");
    d.dead_letter("bad\0input ".into()).await.unwrap();
    drop(consumer);

    let m = receive(&b, &format!("{prefix}settle-dead.fifo")).await;
    assert_eq!(m.body(), Some("second"));
    let reason = attr("String", "bad\u{FFFD}input");
    assert_eq!(ivy_attributes(&m).get("ivy-reason"), Some(&reason));
    let dedup = system(&m, MessageSystemAttributeName::MessageDeduplicationId);
    assert!(
        dedup.is_some_and(|id| id != "task-9"),
        "a fresh deduplication id"
    );
    let group = system(&m, MessageSystemAttributeName::MessageGroupId);
    assert_eq!(group.as_deref(), Some("settle.fifo"));
}

/// PROTOCOL.md §2 "Size limits": what Ivy publishes to SQS.
#[tokio::test]
async fn the_documented_size_limit_is_the_brokers() {
    let doc = include_str!("../PROTOCOL.md");
    let row = "| what Ivy publishes to SQS |";
    let line = doc.lines().find(|l| l.starts_with(row)).expect(row);
    let cell = line.split('|').nth(2).unwrap().split_whitespace().next();
    let documented: usize = cell.unwrap().replace(',', "").parse().unwrap();
    let (b, _) = broker("").await;
    assert_eq!(b.capabilities().max_message_size, documented);
}
