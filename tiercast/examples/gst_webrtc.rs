//! GStreamer's own WHIP and WHEP clients (`whipclientsink`, `whepclientsrc` from gst-plugins-rs),
//! as a GStreamer user runs them against a node. The tests run this to prove that encoders and
//! players built on GStreamer's `webrtcbin` connect, not only browsers.
//!
//! ```text
//! gst_webrtc publish <whip url> <stream key> <seconds>
//!     a live 640x360 test picture and a tone, H.264 + Opus, for <seconds>
//! gst_webrtc play <whep url> <seconds> [<token>]
//!     plays for <seconds> from its first picture (which it waits 30 s for), with <token> as
//!     its Bearer token when given, then prints what it decoded as one JSON line:
//!     {"video_frames":N,"width":W,"height":H,"audio_buffers":M}
//! gst_webrtc serve <flv file> <port> <seconds>
//!     the bench's baseline: GStreamer's own WHEP server (`whepserversink`, one `webrtcbin`
//!     per viewer) at http://127.0.0.1:<port>/whep/endpoint, sending the file's H.264 as it is
//!     and its audio made into Opus once, paced as live
//! ```
//! Exits with 1 and the reason on standard error when the pipeline fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gst_webrtc publish <whip url> <key> <seconds> | play <whep url> <seconds> [token] \
                 | serve <flv file> <port> <seconds>";
    gst::init().expect("GStreamer initialises");
    gstrswebrtc::plugin_register_static().expect("the webrtc plugin registers");
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["publish", url, key, seconds] => publish(url, key, parse_seconds(seconds)),
        ["play", url, seconds] => play(url, parse_seconds(seconds), None),
        ["play", url, seconds, token] => play(url, parse_seconds(seconds), Some(token)),
        ["serve", file, port, seconds] => serve(file, port, parse_seconds(seconds)),
        _ => Err(usage.to_owned()),
    };
    if let Err(e) = outcome {
        eprintln!("gst_webrtc: {e}");
        std::process::exit(1);
    }
    // The clients' own threads may still be ending their sessions; they are not waited for.
    std::process::exit(0);
}

fn parse_seconds(s: &str) -> Duration {
    Duration::from_secs_f64(s.parse().expect("seconds is a number"))
}

fn publish(url: &str, key: &str, seconds: Duration) -> Result<(), String> {
    let pipeline = launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 \
           ! queue ! ws. \
         audiotestsrc is-live=true wave=ticks ! audio/x-raw,rate=48000,channels=2 ! queue ! ws. \
         whipclientsink name=ws congestion-control=disabled video-caps=video/x-h264 \
           signaller::whip-endpoint={url} signaller::auth-token={key}"
    ))?;
    run(&pipeline, seconds)?;
    println!("published");
    Ok(())
}

fn serve(file: &str, port: &str, seconds: Duration) -> Result<(), String> {
    let pipeline = launch(&format!(
        "filesrc location={file} ! flvdemux name=d \
         d.video ! queue ! h264parse config-interval=-1 ! clocksync ! queue ! ws. \
         d.audio ! queue ! aacparse ! avdec_aac ! audioconvert ! audioresample ! opusenc \
           ! clocksync ! queue ! ws. \
         whepserversink name=ws congestion-control=disabled \
           signaller::host-addr=http://127.0.0.1:{port}"
    ))?;
    // No STUN server: everything is on this machine, and its name would not resolve here.
    let sink = pipeline.by_name("ws").expect("whepserversink");
    sink.set_property("stun-server", None::<String>);
    sink.property::<gst::glib::Object>("signaller")
        .set_property("stun-server", None::<String>);
    run(&pipeline, seconds)
}

fn play(url: &str, seconds: Duration, token: Option<&str>) -> Result<(), String> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("whepclientsrc")
        .build()
        .map_err(|e| format!("whepclientsrc: {e}"))?;
    let signaller = src.property::<gst::glib::Object>("signaller");
    signaller.set_property("whep-endpoint", url);
    if let Some(token) = token {
        signaller.set_property("auth-token", token);
    }
    pipeline.add(&src).map_err(|e| e.to_string())?;

    let frames = Arc::new(AtomicU64::new(0));
    let audio = Arc::new(AtomicU64::new(0));
    let size = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
    let (f, a, s) = (frames.clone(), audio.clone(), size.clone());
    let bin = pipeline.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = bin.upgrade() else {
            return;
        };
        let video = pad.name().starts_with("video");
        // Raw only, so whepclientsrc decodes (it stops where downstream takes what it has).
        let convert = if video {
            "videoconvert"
        } else {
            "audioconvert"
        };
        let sink = gst::parse::bin_from_description(
            &format!("{convert} ! fakesink sync=false name=sink"),
            true,
        )
        .expect("a sink bin");
        pipeline.add(&sink).expect("added");
        sink.sync_state_with_parent().expect("the sink starts");
        let counted = sink
            .by_name("sink")
            .and_then(|s| s.static_pad("sink"))
            .expect("a sink pad");
        let sink_pad = sink.static_pad("sink").expect("a ghost sink pad");
        let (f, a, s) = (f.clone(), a.clone(), s.clone());
        counted.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            if video {
                f.fetch_add(1, Ordering::Relaxed);
                if let Some(caps) = pad.current_caps()
                    && let Some(st) = caps.structure(0)
                {
                    s.0.store(
                        st.get::<i32>("width").unwrap_or(0) as u32,
                        Ordering::Relaxed,
                    );
                    s.1.store(
                        st.get::<i32>("height").unwrap_or(0) as u32,
                        Ordering::Relaxed,
                    );
                }
            } else {
                a.fetch_add(1, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
        if let Err(e) = pad.link(&sink_pad) {
            eprintln!("gst_webrtc: linking {}: {e:?}", pad.name());
        }
    });
    // The player's clock starts with its first picture: connecting (ICE, DTLS, the first
    // keyframe) takes what a loaded machine needs, up to CONNECT.
    let first = frames.clone();
    run_from(&pipeline, seconds, move || {
        first.load(Ordering::Relaxed) > 0
    })?;
    println!(
        "{{\"video_frames\":{},\"width\":{},\"height\":{},\"audio_buffers\":{}}}",
        frames.load(Ordering::Relaxed),
        size.0.load(Ordering::Relaxed),
        size.1.load(Ordering::Relaxed),
        audio.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The pipeline `description` says.
fn launch(description: &str) -> Result<gst::Pipeline, String> {
    gst::parse::launch(description)
        .map_err(|e| format!("pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())
}

/// How long a player waits for its first picture.
const CONNECT: Duration = Duration::from_secs(30);

/// Plays `pipeline` for `seconds`, or until it fails.
fn run(pipeline: &gst::Pipeline, seconds: Duration) -> Result<(), String> {
    run_from(pipeline, seconds, || true)
}

/// Plays `pipeline` for `seconds` counted from when `started` first says so (within
/// [`CONNECT`]), or until it fails.
fn run_from(
    pipeline: &gst::Pipeline,
    seconds: Duration,
    started: impl Fn() -> bool,
) -> Result<(), String> {
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play: {e}"))?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut until = None;
    let connect_by = Instant::now() + CONNECT;
    let result = loop {
        if until.is_none() && started() {
            until = Some(Instant::now() + seconds);
        }
        let deadline = until.unwrap_or(connect_by);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Ok(());
        }
        // Short waits until it starts, so the start is seen when it happens.
        let wait = if until.is_some() {
            left
        } else {
            left.min(Duration::from_millis(100))
        };
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                break Err(format!(
                    "{}: {} ({:?})",
                    e.src().map(|s| s.path_string()).unwrap_or_default(),
                    e.error(),
                    e.debug()
                ));
            }
            gst::MessageView::Eos(_) => break Err("the stream ended early".into()),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}
