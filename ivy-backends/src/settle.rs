//! What AMQP and SQS deliveries share about settling: a replacement (a retry or a dead
//! letter) is published before the original is removed, an unsettled delivery that is
//! dropped goes back to its queue at once, and a dead letter's reason is cut to what a header
//! or attribute can carry. Also how a delivery shows in `Debug` (never its body). Knows no
//! broker client: each backend says how it removes and gives back a message.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;

use ivy_core::{Delivery, Result};

/// A delivery that can be removed from its queue for good.
pub(crate) trait Remove {
    /// Removes the message (AMQP ack, SQS delete) and marks the delivery settled, so that
    /// dropping it afterwards leaves the message alone.
    fn remove(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Publishes a replacement of `delivery` with `publish`, then removes the original. In this
/// order so that nothing is lost: when the publish fails, the error drops `delivery`
/// unsettled, which gives the original back to its queue.
// SQS settles in the same order but backs off on a failure instead of dropping the delivery.
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub(crate) async fn replace<D: Remove>(
    mut delivery: D,
    publish: impl AsyncFnOnce(&D) -> Result<()>,
) -> Result<()> {
    publish(&delivery).await?;
    delivery.remove().await
}

/// A dead letter's `reason`, at most `max` bytes, for a header or attribute: brokers bound
/// those far below a body, and one that overflows makes the dead letter fail, so the call is
/// redelivered and runs again instead. A longer reason is cut on a char boundary and says so,
/// with its whole length; the whole text stays in the call's stored result. Where `max` has
/// no room for that note the reason is only cut.
pub(crate) fn cut_reason(reason: &str, max: usize) -> Cow<'_, str> {
    if reason.len() <= max {
        return Cow::Borrowed(reason);
    }
    let note = format!(" … (cut, {} bytes in all)", reason.len());
    let room = max.checked_sub(note.len());
    let mut end = room.unwrap_or(max);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let head = reason[..end].trim_end();
    match room {
        Some(_) => Cow::Owned(format!("{head}{note}")),
        None => Cow::Borrowed(head),
    }
}

/// The `Debug` of a delivery named `name`: its queue, size and whether it is a redelivery.
pub(crate) fn debug(d: &impl Delivery, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct(name)
        .field("queue", &d.queue())
        .field("len", &d.body().len())
        .field("redelivered", &d.redelivered())
        .finish_non_exhaustive()
}

/// Runs `give_back` in the background, from a `Drop`, to return unsettled messages to their
/// queue now. Outside a runtime there is nothing to run it on; the broker then returns them by
/// itself later (AMQP when the connection closes, SQS when the visibility timeout runs out).
pub(crate) fn give_back_on_drop(give_back: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(give_back);
    }
}

#[cfg(test)]
mod tests {
    use super::cut_reason;

    #[test]
    fn reasons_are_cut_on_a_char_boundary_and_say_so() {
        assert_eq!(cut_reason("short", 5), "short");
        let long = format!("failed: {}", "é".repeat(100));
        let cut = cut_reason(&long, 64);
        assert!(cut.len() <= 64, "{cut}");
        assert!(cut.starts_with("failed: éé"), "{cut}");
        assert!(cut.ends_with("é … (cut, 208 bytes in all)"), "{cut}");
        // No room for the note: only cut.
        assert_eq!(cut_reason("ééé", 3), "é");
        assert_eq!(cut_reason("ééé", 1), "");
    }
}
