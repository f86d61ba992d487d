//! The envelope's and notifications' wire form, checked field by field.

use super::*;
use serde_json::json;

#[test]
fn envelope_rejects_other_versions_and_garbage() {
    let mut env = json!({"v": 2, "id": "a", "task": "t", "args": {}, "queue": "q",
                         "attempt": 0, "max_retries": 0, "created_at": 0});
    let err = Envelope::from_slice(env.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    env["v"] = json!(1);
    assert!(Envelope::from_slice(env.to_string().as_bytes()).is_ok());
    assert!(Envelope::from_slice(b"{not json").is_err());
    assert!(Envelope::from_slice(b"[]").is_err());
}

#[test]
fn a_call_is_an_object_never_an_array_of_its_fields() {
    // The fields of a valid call, in order: serde's derived impl would read it.
    let array = json!([1, "a", "t", {"n": 1}, "q", 0, 3, 0]).to_string();
    let err = Envelope::from_slice(array.as_bytes()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("malformed message: not an Ivy envelope: invalid type: sequence")
            && text.contains("a JSON object"),
        "{text}"
    );
    for body in ["\"call\"", "1", "null", "true", "[]"] {
        let err = Envelope::from_slice(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("a JSON object"), "{body}: {err}");
    }
    let object = br#" {"v":1,"id":"a","task":"t","args":{"n":1},"created_at":0}"#;
    assert_eq!(Envelope::from_slice(object).unwrap().task, "t");
}

/// PROTOCOL.md: "absent and `null` are both accepted on read", for every optional field.
fn reads_null_as_absent(field: &str) {
    let absent = json!({"v": 1, "id": "a", "task": "t", "args": {}, "created_at": 0});
    let mut null = absent.clone();
    null[field] = Value::Null;
    let read = Envelope::from_slice(null.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("`\"{field}\": null` refused: {e}"));
    assert_eq!(
        read,
        Envelope::from_slice(absent.to_string().as_bytes()).unwrap()
    );
}

#[test]
fn a_null_queue_is_absent() {
    reads_null_as_absent("queue");
}

#[test]
fn a_null_attempt_is_absent() {
    reads_null_as_absent("attempt");
}

#[test]
fn a_null_max_retries_is_absent() {
    reads_null_as_absent("max_retries");
}

#[test]
fn a_null_eta_is_absent() {
    reads_null_as_absent("eta");
}

#[test]
fn a_null_expires_is_absent() {
    reads_null_as_absent("expires");
}

#[test]
fn a_null_reply_to_is_absent() {
    reads_null_as_absent("reply_to");
}

#[test]
fn a_null_priority_is_absent() {
    reads_null_as_absent("priority");
}

#[test]
fn a_null_traceparent_is_absent() {
    reads_null_as_absent("traceparent");
}

#[test]
fn a_null_error_of_a_status_is_absent() {
    let note = br#"{"kind":"status","v":1,"id":"a","status":"running","attempt":0,"error":null}"#;
    assert_eq!(
        Notification::from_slice(note).unwrap(),
        Notification::status("a", Status::Running, 0)
    );
}

#[test]
fn a_null_chain_of_a_failure_is_absent() {
    let note = br#"{"kind":"result","v":1,"id":"a","attempt":0,
                    "outcome":{"err":{"kind":"k","message":"m","chain":null}}}"#;
    let expected = Notification::result("a", 0, Outcome::Err(TaskFailure::new("k", "m")));
    assert_eq!(Notification::from_slice(note).unwrap(), expected);
}

#[test]
fn a_notification_is_an_object_never_an_array() {
    let array = br#"["result", 1, "a", 0, null, null, null, {"ok": 1}]"#;
    let err = Notification::from_slice(array).unwrap_err();
    assert!(err.to_string().contains("a JSON object"), "{err}");
}

#[test]
fn notifications_read_back_what_they_write() {
    let notes = [
        Notification::status("a", Status::Errored, 2).with_error(TaskFailure::new("k", "m")),
        Notification::status("a", Status::Running, 0),
        Notification::progress("a", 0, Value::Null),
        Notification::result("a", 0, Outcome::Ok(serde_json::json!([1, 2]))),
    ];
    for n in notes {
        assert_eq!(Notification::from_slice(&n.to_bytes()).unwrap(), n);
    }
    let missing = br#"{"kind":"result","v":1,"id":"a","attempt":0}"#;
    assert!(Notification::from_slice(missing).is_err());
    let unknown = br#"{"kind":"gossip","v":1,"id":"a","attempt":0}"#;
    assert!(Notification::from_slice(unknown).is_err());
}

#[test]
fn constructed_envelopes_write_their_fields() {
    let mut args = Map::new();
    args.insert("n".into(), json!(1));
    let env = Envelope::new("a", "t", args.clone(), 5);
    assert_eq!(
        env.to_bytes(),
        br#"{"v":1,"id":"a","task":"t","args":{"n":1},"created_at":5}"#
    );
    let full = env
        .with_queue("q")
        .with_attempt(2)
        .with_max_retries(4)
        .with_eta(6)
        .with_expires(7)
        .with_reply_to("r")
        .with_priority(9);
    let expected = br#"{"v":1,"id":"a","task":"t","args":{"n":1},"queue":"q","attempt":2,"max_retries":4,"created_at":5,"eta":6,"expires":7,"reply_to":"r","priority":9}"#;
    assert_eq!(full.to_bytes(), expected);
    assert_eq!(Envelope::from_slice(expected).unwrap(), full);
    let ran = full.with_outcome(Outcome::Ok(json!([1, 2])));
    let expected = br#"{"v":1,"id":"a","task":"t","args":{"n":1},"queue":"q","attempt":2,"max_retries":4,"created_at":5,"eta":6,"expires":7,"reply_to":"r","priority":9,"outcome":{"ok":[1,2]}}"#;
    assert_eq!(ran.to_bytes(), expected);
    assert_eq!(Envelope::from_slice(expected).unwrap(), ran);
}

#[test]
fn eta_delay() {
    let mut env = Envelope::from_slice(
        br#"{"v":1,"id":"a","task":"t","args":{},"queue":"q","attempt":0,"max_retries":0,"created_at":0,"eta":1500}"#,
    )
    .unwrap();
    assert_eq!(env.delay_until_eta(1000), Some(Duration::from_millis(500)));
    assert_eq!(env.delay_until_eta(2000), None);
    env.eta = None;
    assert_eq!(env.delay_until_eta(0), None);
}

#[test]
fn task_ids_are_distinct_uuid_v7_in_time_order() {
    let before = now_ms();
    let ids: Vec<TaskId> = (0..1000).map(|_| new_task_id()).collect();
    let after = now_ms();
    let unique: std::collections::HashSet<&TaskId> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    for id in &ids {
        let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7, "{id}");
        assert_eq!(
            parsed.hyphenated().to_string(),
            *id,
            "lower-case hyphenated"
        );
        let (secs, nanos) = parsed.get_timestamp().expect("v7 has one").to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(
            (before..=after).contains(&ms),
            "{id}: {ms} not in {before}..={after}"
        );
    }
}

#[test]
fn the_borrowed_envelope_writes_what_the_owned_one_does() {
    let args: Map<String, Value> =
        serde_json::from_value(json!({"n": 10, "s": "x\"y\\z\u{1}é", "l": [1, null]})).unwrap();
    for (id, task, queue, reply_to, opt) in [
        ("a", "t", "q", None, None),
        (
            "id-\"quoted\"",
            "mod.task\n",
            "q\\ueue",
            Some("ivy.reply.x"),
            Some(7u64),
        ),
        ("ünïcode", "t\u{7f}", "", Some(""), Some(0)),
    ] {
        let flow: crate::envelope::Flow = serde_json::from_value(serde_json::json!({
            "chain": [{"id": "s2", "task": "t.next", "args": {"k": 1}, "slot": "x", "queue": "q"}],
            "on_failure": {"id": "h", "task": "t.hook", "args": {}, "queue": "q"}
        }))
        .unwrap();
        let env = EnvelopeRef {
            once: false,
            v: PROTOCOL_VERSION,
            id,
            task,
            args: &args,
            queue: opt.map(|_| queue),
            attempt: opt.map_or(0, |_| 3),
            max_retries: opt.map(|_| u32::MAX),
            created_at: u64::MAX,
            eta: opt,
            expires: opt.map(|x| x + 1),
            reply_to,
            priority: opt.map(|_| 9),
            traceparent: opt.map(|_| "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            flow: opt.map(|_| &flow),
        };
        let bytes = env.to_bytes();
        let owned = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(owned.to_bytes(), bytes);
        assert_eq!((owned.id.as_str(), owned.task.as_str()), (id, task));
        assert_eq!(owned.reply_to.as_deref(), reply_to);
    }
}

#[test]
fn arguments_given_as_an_array_are_refused_as_not_by_name() {
    for args in [json!([2, 3]), json!(["x", 2]), json!(7)] {
        let body = json!({"v": 1, "id": "a", "task": "t", "args": args, "created_at": 0});
        let err = Envelope::from_slice(body.to_string().as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("expected `args` as a JSON object of the arguments by parameter name"),
            "{args}: {text}"
        );
    }
}
