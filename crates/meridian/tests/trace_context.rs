//! A push carries the shipper's W3C trace context; the region's push and apply spans join that
//! trace, so one trace runs from shipping to the apply on every node.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn a_push_joins_the_shippers_trace() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        // The central worker's batch span travels inside the change batch...
        let batch = tracing::info_span!("batch");
        let change_batch = meridian_proto::v1::ChangeBatch {
            seq: 1,
            trace_context: view_actor::ship::trace_context(&batch),
            ..Default::default()
        };
        // ...and the push continues it.
        let ship = view_actor::ship::ship_span("http://node", &[change_batch]);
        assert_eq!(
            ship.context().span().span_context().trace_id(),
            batch.context().span().span_context().trace_id()
        );
        let carrier = view_actor::ship::trace_context(&ship);
        let traceparent = carrier
            .get("traceparent")
            .expect("the carrier has a traceparent");
        let ship_trace = ship.context().span().span_context().trace_id();
        assert!(
            traceparent.contains(&ship_trace.to_string()),
            "{traceparent}"
        );

        let push = tracing::info_span!("push");
        regional_node::join_trace(&push, &carrier);
        assert_eq!(push.context().span().span_context().trace_id(), ship_trace);

        let unrelated = tracing::info_span!("apply");
        regional_node::join_trace(&unrelated, &Default::default());
        assert_ne!(
            unrelated.context().span().span_context().trace_id(),
            ship_trace,
            "no context, no join"
        );
    });
}
