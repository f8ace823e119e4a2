//! `/metrics`: the node's figures in the OpenMetrics text format, written by `prometheus-client`.
//!
//! The figures themselves live where they are counted (atomics in the registry, the WHEP
//! driver, the relay taps, the Kafka sink, the stream core, the audio transcoders); one
//! [`Collector`] reads them at each scrape, so counting stays one relaxed atomic add on the
//! media path and nothing is copied between scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::kafka::KafkaSink;
use pipelines::Registry;
use pipelines::registry::StreamCounters;
use relay_tiers::relay::tap::TapStore;
use relay_tiers::whep::Whep;

/// The content type of [`NodeMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything `/metrics` reports, read at scrape time.
#[derive(Clone)]
pub struct NodeMetrics {
    pub registry: Arc<Registry>,
    pub whep: Arc<Whep>,
    pub taps: Option<Arc<TapStore>>,
    pub kafka: Option<Arc<KafkaSink>>,
    pub calls: Option<Arc<calls::ws::Calls>>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

impl NodeMetrics {
    /// The exposition, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type PerStream = fn(&StreamCounters) -> &AtomicU64;

/// Counters kept per stream, as (name without `_total`, help, field).
const STREAM_COUNTERS: [(&str, &str, PerStream); 4] = [
    (
        "tiercast_ingest_bytes",
        "Bytes received from publishers.",
        |c| &c.bytes_in,
    ),
    (
        "tiercast_ingest_frames",
        "Frames received from publishers.",
        |c| &c.frames_in,
    ),
    (
        "tiercast_dropped_frames",
        "Frames dropped before the media graph.",
        |c| &c.frames_dropped,
    ),
    (
        "tiercast_publish_refused",
        "Publish attempts refused (stream already live).",
        |c| &c.publishes_refused,
    ),
];

/// One unlabelled figure.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &(impl EncodeMetric + TypedMetric),
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter with a figure per label set.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge with a figure per label set.
fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(value: usize) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let r = &self.registry;
        single(
            e,
            "tiercast_active_streams",
            "Streams with a live publisher.",
            &gauge(r.live_count()),
        )?;
        for (name, help, field) in STREAM_COUNTERS {
            let samples = r.streams().map(|s| {
                let value = field(&s.counters).load(Ordering::Relaxed);
                (vec![("stream", s.config.name.clone())], value)
            });
            counter_family(e, name, help, samples)?;
        }
        let renditions = r.streams().filter_map(|s| Some((s, s.session()?)));
        let samples = renditions.flat_map(|(s, session)| {
            session.renditions().into_iter().map(move |rend| {
                let mode = if rend.passthrough {
                    "passthrough"
                } else {
                    "encode"
                };
                let labels = vec![
                    ("stream", s.config.name.clone()),
                    ("rendition", rend.name.clone()),
                    ("mode", mode.to_owned()),
                ];
                (labels, rend.frames_out.load(Ordering::Relaxed))
            })
        });
        counter_family(
            e,
            "tiercast_rendition_frames",
            "Frames produced per rendition in the current session (encoded or passed through).",
            samples,
        )?;
        if let Some(taps) = &self.taps {
            single(
                e,
                "tiercast_relay_subscribers",
                "Connections of the tier below reading renditions from this node.",
                &gauge(taps.subscribers()),
            )?;
            single(
                e,
                "tiercast_relay_bytes_sent",
                "Bytes sent to the tier below.",
                &ConstCounter::new(taps.bytes_sent.load(Ordering::Relaxed)),
            )?;
        }
        self.encode_webrtc(e)?;
        self.encode_media_core(e)?;
        self.encode_calls(e)?;
        self.encode_kafka(e)
    }
}

impl NodeMetrics {
    fn encode_webrtc(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let w = &self.whep;
        single(
            e,
            "tiercast_webrtc_viewers",
            "WHEP viewers on this node.",
            &gauge(w.viewers()),
        )?;
        single(
            e,
            "tiercast_webrtc_packets_sent",
            "Datagrams sent to WHEP viewers.",
            &ConstCounter::new(w.packets_sent()),
        )?;
        single(
            e,
            "tiercast_webrtc_send_calls",
            "System calls those datagrams took (sendmmsg with UDP GSO).",
            &ConstCounter::new(w.send_calls()),
        )?;
        single(
            e,
            "tiercast_webrtc_session_faults",
            "Faults (panics) caught in WebRTC sessions; each cost only its own session, or one frame.",
            &ConstCounter::new(rtc::driver::faults()),
        )?;
        let (nacked, resent, resent_bytes) = w.retransmissions();
        single(
            e,
            "tiercast_webrtc_nacked_packets",
            "Packets WHEP viewers asked for again (NACK), each time they asked.",
            &ConstCounter::new(nacked),
        )?;
        single(
            e,
            "tiercast_webrtc_resent_packets",
            "Packets sent again on NACK (at most once per 100 ms each, within each viewer's budget).",
            &ConstCounter::new(resent),
        )?;
        single(
            e,
            "tiercast_webrtc_resent_bytes",
            "Bytes of those packets, sealed.",
            &ConstCounter::new(resent_bytes),
        )?;
        single(
            e,
            "tiercast_webrtc_fanned_out_viewers",
            "WHEP viewers whose media went out through the shared fan-out (SRTP sealed per viewer, no session per packet).",
            &ConstCounter::new(w.fanned_out()),
        )?;
        let (down, up) = w.moves();
        counter_family(
            e,
            "tiercast_webrtc_viewer_moves",
            "WHEP viewers moved along their ladder by their bandwidth estimate (transport-cc, REMB), down or up.",
            [
                (vec![("direction", "down".to_owned())], down),
                (vec![("direction", "up".to_owned())], up),
            ],
        )?;
        let (passed, spared) = w.keyframe_asks();
        counter_family(
            e,
            "tiercast_webrtc_keyframe_asks",
            "Viewers' asks for a picture (PLI, FIR, a move): passed on to the stream's writer, or spared (within a second of the last one passed on).",
            [
                (vec![("outcome", "passed".to_owned())], passed),
                (vec![("outcome", "spared".to_owned())], spared),
            ],
        )?;
        let refused = w.refusals();
        let refusals = [
            ("capacity", &refused.capacity),
            ("node_limit", &refused.node_limit),
            ("stream_limit", &refused.stream_limit),
        ];
        counter_family(
            e,
            "tiercast_webrtc_refused_viewers",
            "WHEP viewers turned away (503) by why: capacity (no worker could take one more without making its viewers late), node_limit and stream_limit (max_viewers, max_viewers_per_stream).",
            refusals.map(|(why, n)| (vec![("reason", why.to_owned())], n.load(Ordering::Relaxed))),
        )?;
        let workers = w.workers();
        let by_worker = |f: &dyn Fn(&rtc::workers::Load) -> f64| {
            workers
                .iter()
                .enumerate()
                .map(|(n, l)| (vec![("worker", n.to_string())], f(l)))
                .collect::<Vec<_>>()
        };
        gauge_family(
            e,
            "tiercast_webrtc_worker_viewers",
            "WHEP viewers on each worker.",
            by_worker(&|l| l.peers() as f64),
        )?;
        gauge_family(
            e,
            "tiercast_webrtc_worker_busy",
            "Share of its time each WHEP worker spends working rather than waiting (0 to 1).",
            by_worker(&|l| l.busy()),
        )?;
        gauge_family(
            e,
            "tiercast_webrtc_worker_lag_seconds",
            "How long frames waited for each WHEP worker at worst lately (from being ready to the worker taking them up): how far behind real time it is.",
            by_worker(&|l| l.lag().as_secs_f64()),
        )?;
        single(
            e,
            "tiercast_webrtc_headroom",
            "Room the WHEP workers have for more viewers, in shares of a core (what routing weighs edges by).",
            &ConstGauge::new(w.headroom()),
        )
    }

    fn encode_media_core(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let dropped = pipelines::stream::dropped_frames()
            .into_iter()
            .map(|(reader, n)| (vec![("reader", reader.as_str().to_owned())], n));
        counter_family(
            e,
            "tiercast_stream_dropped_frames",
            "Frames a reader of a stream lost because it fell behind (its queue was full); the publisher and other readers are not held up.",
            dropped,
        )?;
        let started = [
            ("opus", transcode::audio::opus_encoders_started()),
            ("aac", transcode::audio::aac_encoders_started()),
        ];
        counter_family(
            e,
            "tiercast_audio_transcoders_started",
            "Audio transcoders started (one per session and target codec, however many viewers).",
            started.map(|(to, n)| (vec![("to", to.to_owned())], n)),
        )?;
        let running = transcode::audio::opus_encoders_running();
        let mut family = e.encode_descriptor(
            "tiercast_audio_transcoders_running",
            "AAC → Opus encoders running now (gone when their session's audio ends).",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("to", "opus")];
        gauge(usize::try_from(running).unwrap_or(usize::MAX)).encode(family.encode_family(&labels)?)
    }

    fn encode_calls(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(calls) = &self.calls else {
            return Ok(());
        };
        let (online, rooms, participants) = calls.figures();
        for (name, help, value) in [
            (
                "tiercast_calls_users_online",
                "Users with a signaling socket open.",
                online,
            ),
            ("tiercast_calls_rooms", "Rooms with someone in them.", rooms),
            (
                "tiercast_calls_participants",
                "Participants in rooms (1-to-1 calls included).",
                participants,
            ),
        ] {
            single(e, name, help, &gauge(value))?;
        }
        let f = calls.sfu_figures();
        for (name, help, value) in [
            (
                "tiercast_calls_forwarded_tracks",
                "Tracks the call server sends to subscribers now.",
                &f.forwarded_tracks,
            ),
            (
                "tiercast_calls_downscales",
                "Downscales the call server runs now (one per publisher track and size, shared).",
                &f.downscales,
            ),
        ] {
            let now = value.load(Ordering::Relaxed);
            single(
                e,
                name,
                help,
                &ConstGauge::new(i64::try_from(now).unwrap_or(i64::MAX)),
            )?;
        }
        for (name, help, value) in [
            (
                "tiercast_calls_frames_forwarded",
                "Frames the call server forwarded to subscribers.",
                &f.frames_forwarded,
            ),
            (
                "tiercast_calls_layer_switches",
                "Simulcast layer switches of subscribers.",
                &f.layer_switches,
            ),
            (
                "tiercast_calls_keyframe_requests",
                "Keyframe requests (PLI) the call server sent to publishers.",
                &f.keyframe_requests,
            ),
            (
                "tiercast_calls_nacks",
                "Packets subscribers asked the call server for again (NACK).",
                &f.nacks,
            ),
            (
                "tiercast_calls_retransmissions",
                "Packets the call server sent again on NACK (on RTX where negotiated).",
                &f.retransmissions,
            ),
        ] {
            single(
                e,
                name,
                help,
                &ConstCounter::new(value.load(Ordering::Relaxed)),
            )?;
        }
        Ok(())
    }

    fn encode_kafka(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(kafka) = &self.kafka else {
            return Ok(());
        };
        single(
            e,
            "tiercast_kafka_events_queued",
            "Events waiting for the Kafka brokers.",
            &ConstGauge::new(i64::from(kafka.queued())),
        )?;
        let c = kafka.counters();
        for (name, help, value) in [
            (
                "tiercast_kafka_events_delivered",
                "Events the brokers acknowledged.",
                &c.delivered,
            ),
            (
                "tiercast_kafka_events_failed",
                "Events the brokers refused.",
                &c.failed,
            ),
            (
                "tiercast_kafka_events_dropped",
                "Events dropped because the queue was full.",
                &c.dropped,
            ),
        ] {
            single(
                e,
                name,
                help,
                &ConstCounter::new(value.load(Ordering::Relaxed)),
            )?;
        }
        Ok(())
    }
}
