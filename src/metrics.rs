//! Process-local Prometheus metrics. Database-wide figures (jobs by status, oldest queued
//! job, reclaimed leases) are read at scrape time by `web::metrics`.
use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// The metrics of this process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// SSE responses open in this process.
    pub sse_streams: IntGauge,
    /// Events written to SSE clients by this process.
    pub events_delivered: IntCounter,
    /// From an event's write in the database to its write to a client.
    pub event_delivery_seconds: Histogram,
    /// Times this process re-established its LISTEN connection.
    pub listener_reconnects: IntCounter,
    /// Reads of the events table by this process's hub (job topics and the firehose).
    pub hub_table_reads: IntCounter,
    /// Events the hub broadcast from a notification's payload, without reading the table.
    pub hub_carried_events: IntCounter,
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let sse_streams =
            IntGauge::new("jobcast_sse_streams", "SSE responses open in this process")
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let events_delivered = IntCounter::new(
            "jobcast_events_delivered_total",
            "Events written to SSE clients by this process",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let event_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "jobcast_event_delivery_seconds",
                "From the event's commit to its write to a client",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let listener_reconnects = IntCounter::new(
            "jobcast_listener_reconnects_total",
            "Times this process re-established its LISTEN connection",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let hub_table_reads = IntCounter::new(
            "jobcast_hub_table_reads_total",
            "Reads of the events table by this process's hub (job streams and the firehose)",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let hub_carried_events = IntCounter::new(
            "jobcast_hub_carried_events_total",
            "Events this process's hub took from a notification, without reading the table",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        for collector in [
            Box::new(sse_streams.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_delivered.clone()),
            Box::new(event_delivery_seconds.clone()),
            Box::new(listener_reconnects.clone()),
            Box::new(hub_table_reads.clone()),
            Box::new(hub_carried_events.clone()),
        ] {
            // Names are distinct constants, so registration cannot collide.
            let _ = registry.register(collector);
        }
        Metrics {
            registry,
            sse_streams,
            events_delivered,
            event_delivery_seconds,
            listener_reconnects,
            hub_table_reads,
            hub_carried_events,
        }
    }
}

/// Counts an open SSE stream for as long as it lives.
pub struct StreamGauge(());

impl StreamGauge {
    /// Counts one more open stream.
    pub fn open() -> StreamGauge {
        METRICS.sse_streams.inc();
        StreamGauge(())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        METRICS.sse_streams.dec();
    }
}
