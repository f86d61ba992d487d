//! The futures of the type-erased backends stay small. Every worker job and every producer
//! call carries (and tokio copies) them, so one backend's large future (the AWS SDK's are
//! several KB) must not size every other backend's: `AnyBroker` and `AnyDelivery` box the
//! large ones. Sizes, not timings: these hold or fail the same on any machine.

use std::time::Duration;

use ivy_backends::{AnyBroker, AnyConsumer, AnyDelivery, AnyNotifier};
use ivy_core::{Broker, Consumer, Delivery, OutgoingMessage, Results};

/// The size of what `f` returns, without calling it.
fn returned<A, R, F: Fn(A) -> R>(_: &F) -> usize {
    std::mem::size_of::<R>()
}

const KIB: usize = 1024;

#[test]
fn settling_a_delivery_is_a_small_future() {
    let ack = returned(&|d: AnyDelivery| d.ack());
    let retry = returned(&|d: AnyDelivery| d.retry(Vec::new(), Duration::ZERO));
    let dead = returned(&|d: AnyDelivery| d.dead_letter(String::new()));
    let requeue = returned(&|d: AnyDelivery| d.requeue());
    for (what, size) in [
        ("ack", ack),
        ("retry", retry),
        ("dead_letter", dead),
        ("requeue", requeue),
    ] {
        assert!(size <= KIB, "AnyDelivery::{what} future is {size} bytes");
    }
}

#[test]
fn consuming_and_notifying_are_small_futures() {
    let next = returned(&|c: &'static mut AnyConsumer| c.next());
    assert!(next <= KIB, "AnyConsumer::next future is {next} bytes");
    let publish = returned(&|n: &'static AnyNotifier| n.publish("c", Vec::new()));
    let publish_final =
        returned(&|n: &'static AnyNotifier| n.publish_final("c", "id", Vec::new(), Duration::ZERO));
    assert!(
        publish <= KIB,
        "AnyNotifier::publish future is {publish} bytes"
    );
    assert!(
        publish_final <= KIB,
        "AnyNotifier::publish_final future is {publish_final} bytes"
    );
}

#[test]
fn publishing_is_no_larger_than_the_largest_unboxed_backend() {
    let publish = returned(&|b: &'static AnyBroker| {
        b.publish(OutgoingMessage::new(
            String::new(),
            String::new(),
            Vec::new(),
        ))
    });
    assert!(
        publish <= 4 * KIB,
        "AnyBroker::publish future is {publish} bytes"
    );
}
