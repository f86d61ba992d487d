//! The W3C trace context that travels with a call (envelope field `traceparent`, PROTOCOL.md
//! §1): written by the producer from the current `tracing` span, continued by the worker's
//! `task` span. Needs the `opentelemetry` feature and a `tracing-opentelemetry` layer in the
//! subscriber; without them nothing is written and a received `traceparent` is ignored.

/// The current span's trace context as a `traceparent`, when it is part of a trace.
#[cfg(feature = "opentelemetry")]
pub(crate) fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current_traceparent() -> Option<String> {
    None
}

/// Makes `span` continue the trace of `traceparent` (a malformed one is ignored).
#[cfg(feature = "opentelemetry")]
pub(crate) fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(parts) = traceparent.and_then(parse) else {
        return;
    };
    let (trace_id, span_id, flags) = parts;
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id))
    else {
        return;
    };
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn continue_trace(_: &tracing::Span, _: Option<&str>) {}

/// `00-<32 hex>-<16 hex>-<2 hex>` → (trace id, span id, flags); versions other than `00` are
/// read the same way, as the W3C spec asks, when their first four fields have this shape.
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
fn parse(tp: &str) -> Option<(&str, &str, u8)> {
    let mut parts = tp.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    ok.then(|| Some((trace_id, span_id, u8::from_str_radix(flags, 16).ok()?)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn traceparents() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse(tp),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // A later version may add fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }
}
