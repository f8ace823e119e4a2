//! GStreamer set-up shared by every crate: init, a builder that names the element in its
//! error, and [`PipelineHandle`], which owns a running pipeline and turns its bus into an
//! outcome.

use std::sync::{Arc, Once};
use std::time::Duration;

use gst::prelude::*;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GstError {
    #[error("GStreamer could not start: {0}")]
    Init(String),
    #[error("element {factory} ({name}) is missing; is its GStreamer plugin installed?")]
    MissingElement { factory: String, name: String },
    #[error("cannot link {from} to {to}")]
    Link { from: String, to: String },
    #[error("pipeline {0} refused to start")]
    State(String),
    #[error("pipeline {pipeline}: {message}")]
    Other { pipeline: String, message: String },
}

/// Initialises GStreamer once per process and routes its log into `tracing` (warnings and
/// errors by default; `GST_DEBUG` still raises it).
pub fn init() -> Result<(), GstError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = gst::init().map_err(|e| GstError::Init(e.to_string()));
        if result.is_ok() {
            route_log_to_tracing();
        }
    });
    result
}

fn route_log_to_tracing() {
    gst::log::remove_default_log_function();
    if std::env::var_os("GST_DEBUG").is_none() {
        gst::log::set_default_threshold(gst::DebugLevel::Warning);
    }
    gst::log::add_log_function(|category, level, file, _function, line, object, message| {
        let Some(text) = message.get() else { return };
        let object = object.map(|o| o.to_string()).unwrap_or_default();
        let category = category.name();
        match level {
            gst::DebugLevel::Error => {
                tracing::error!(target: "gstreamer", %category, %object, "{text} ({file}:{line})")
            }
            gst::DebugLevel::Warning | gst::DebugLevel::Fixme => {
                tracing::warn!(target: "gstreamer", %category, %object, "{text}")
            }
            gst::DebugLevel::Info => {
                tracing::info!(target: "gstreamer", %category, %object, "{text}")
            }
            _ => tracing::debug!(target: "gstreamer", %category, %object, "{text}"),
        }
    });
}

/// Makes element `factory` named `name`.
pub fn make(factory: &str, name: &str) -> Result<gst::Element, GstError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| GstError::MissingElement {
            factory: factory.to_owned(),
            name: name.to_owned(),
        })
}

/// Links a chain of elements in order.
pub fn link_chain(elements: &[&gst::Element]) -> Result<(), GstError> {
    for pair in elements.windows(2) {
        pair[0].link(pair[1]).map_err(|_| GstError::Link {
            from: pair[0].name().into(),
            to: pair[1].name().into(),
        })?;
    }
    Ok(())
}

/// Links a pad to an element's sink pad.
pub fn link_pad(src: &gst::Pad, sink: &gst::Element) -> Result<(), GstError> {
    let err = || GstError::Link {
        from: src.name().into(),
        to: sink.name().into(),
    };
    let sinkpad = sink.static_pad("sink").ok_or_else(err)?;
    src.link(&sinkpad).map(|_| ()).map_err(|_| err())
}

/// How a pipeline ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Running,
    Eos,
    Error(String),
}

/// Owns a running pipeline; sets it to `Null` when dropped.
#[derive(Debug)]
pub struct PipelineHandle {
    pipeline: gst::Pipeline,
    outcome: watch::Receiver<Outcome>,
}

/// Called for every element message (e.g. `hls-segment-added`) from the streaming thread.
pub type ElementHook = Arc<dyn Fn(&gst::StructureRef, &gst::Object) + Send + Sync>;

impl PipelineHandle {
    /// Sets `pipeline` playing and watches its bus. `label` names it in logs (the stream and
    /// session).
    pub fn start(
        pipeline: gst::Pipeline,
        label: String,
        hook: Option<ElementHook>,
    ) -> Result<PipelineHandle, GstError> {
        let (tx, rx) = watch::channel(Outcome::Running);
        let bus = pipeline
            .bus()
            .ok_or_else(|| GstError::State(label.clone()))?;
        bus.set_sync_handler(move |_, msg| {
            use gst::MessageView;
            match msg.view() {
                MessageView::Eos(_) => {
                    tx.send_replace(Outcome::Eos);
                }
                MessageView::Error(e) => {
                    let src = msg
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    let text = format!("{src}: {} ({})", e.error(), e.debug().unwrap_or_default());
                    tracing::error!(pipeline = %label, "{text}");
                    tx.send_if_modified(|o| {
                        let first = *o == Outcome::Running;
                        if first {
                            *o = Outcome::Error(text);
                        }
                        first
                    });
                }
                MessageView::Warning(w) => {
                    tracing::warn!(pipeline = %label, "{}", w.error());
                }
                MessageView::Element(e) => {
                    if let (Some(hook), Some(s), Some(src)) = (&hook, e.structure(), msg.src()) {
                        hook(s, src);
                    }
                }
                _ => {}
            }
            gst::BusSyncReply::Drop
        });
        let name = pipeline.name().to_string();
        if pipeline.set_state(gst::State::Playing).is_err() {
            let _ = pipeline.set_state(gst::State::Null);
            let reason = match rx.borrow().clone() {
                Outcome::Error(e) => e,
                _ => String::new(),
            };
            return Err(GstError::Other {
                pipeline: name,
                message: format!("refused to start {reason}"),
            });
        }
        Ok(PipelineHandle {
            pipeline,
            outcome: rx,
        })
    }

    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// A receiver that changes when the pipeline reaches EOS or fails.
    pub fn outcome(&self) -> watch::Receiver<Outcome> {
        self.outcome.clone()
    }

    /// Waits until the pipeline has drained (EOS) or failed, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Outcome {
        let mut rx = self.outcome.clone();
        let ended = tokio::time::timeout(timeout, rx.wait_for(|o| *o != Outcome::Running)).await;
        match ended {
            Ok(Ok(o)) => o.clone(),
            _ => Outcome::Running,
        }
    }
}

impl Drop for PipelineHandle {
    fn drop(&mut self) {
        if let Some(bus) = self.pipeline.bus() {
            bus.unset_sync_handler();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// H.264 as the internal stream model carries it out of an encoder: AVC, one access unit per
/// buffer, High profile, the parameter sets in the caps' `codec_data`.
pub fn avc_caps() -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("profile", "high")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .build()
}

/// Hands every buffer `sink` receives to `out` as an audio [`crate::media::Frame`], without
/// copying it (the encoders' way out of GStreamer).
pub fn deliver_audio_frames(
    sink: &gst_app::AppSink,
    out: impl Fn(crate::media::Frame) + Send + Sync + 'static,
) {
    sink.set_sync(false);
    sink.set_property("enable-last-sample", false);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Some(pts) = buffer.pts() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(map) = buffer.into_mapped_buffer_readable() else {
                    return Err(gst::FlowError::Error);
                };
                let t = Duration::from_nanos(pts.nseconds());
                out(crate::media::Frame {
                    kind: crate::media::TrackKind::Audio,
                    pts: t,
                    dts: t,
                    keyframe: true,
                    data: crate::media::Bytes::from_owner(map),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}
