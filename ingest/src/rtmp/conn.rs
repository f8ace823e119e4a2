//! One RTMP connection's protocol state, without sockets: [`Connection::handle_input`] takes
//! the bytes the peer sent and returns the bytes to send back and what happened. The server
//! decides (stream keys, limits); this only speaks RTMP. Fuzzed through
//! [`fuzz_one_connection`].

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

use super::flv::{self, AudioTag, VideoTag};

/// What the peer did, in the order it did it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `publish` on `rtmp://host/<app>/<key>`; answer with [`Connection::accept`] or
    /// [`Connection::reject`].
    Publish {
        request_id: u32,
        app: String,
        key: String,
    },
    /// `onMetaData`: the publisher's own account of its frame rate.
    Metadata {
        fps: Option<f64>,
    },
    Video {
        timestamp: u32,
        tag: VideoTag,
    },
    Audio {
        timestamp: u32,
        tag: AudioTag,
    },
    /// `deleteStream` / `FCUnpublish`: the publisher is done.
    Unpublish,
    /// `play`: this server does not serve RTMP playback.
    PlayRefused {
        key: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("connect to unknown application {0:?} refused")]
    UnknownApp(String),
}

enum State {
    Handshaking(Box<Handshake>),
    Session(Box<ServerSession>),
}

pub struct Connection {
    state: State,
    app: String,
}

/// Bytes to send to the peer and what the peer did.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<u8>,
    pub events: Vec<Event>,
}

impl Connection {
    /// A server-side connection for application `app` (the `live` in `rtmp://host/live/key`).
    pub fn new(app: &str) -> Connection {
        Connection {
            state: State::Handshaking(Box::new(Handshake::new(PeerType::Server))),
            app: app.to_owned(),
        }
    }

    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<Output, ConnError> {
        let mut out = Output::default();
        match &mut self.state {
            State::Handshaking(handshake) => {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handshake.process_bytes(bytes)
                }))
                .map_err(|_| ConnError::Handshake("malformed handshake".into()))?
                .map_err(|e| ConnError::Handshake(e.to_string()))?;
                match result {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        out.send = response_bytes
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        out.send = response_bytes;
                        let (session, results) = ServerSession::new(ServerSessionConfig::new())
                            .map_err(|e| ConnError::Protocol(e.to_string()))?;
                        self.state = State::Session(Box::new(session));
                        self.absorb(results, &mut out)?;
                        if !remaining_bytes.is_empty() {
                            let more = self.handle_input(&remaining_bytes)?;
                            out.send.extend(more.send);
                            out.events.extend(more.events);
                        }
                    }
                }
            }
            State::Session(session) => {
                let results = guarded(|| session.handle_input(bytes))?;
                self.absorb(results, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Accepts a publish request; returns the bytes to send.
    pub fn accept(&mut self, request_id: u32) -> Result<Vec<u8>, ConnError> {
        let mut out = Output::default();
        let session = self.session()?;
        let results = guarded(|| session.accept_request(request_id))?;
        self.absorb(results, &mut out)?;
        Ok(out.send)
    }

    /// Refuses a publish request with an `onStatus` error the client shows its user.
    pub fn reject(
        &mut self,
        request_id: u32,
        code: &str,
        description: &str,
    ) -> Result<Vec<u8>, ConnError> {
        let mut out = Output::default();
        let session = self.session()?;
        let results = guarded(|| session.reject_request(request_id, code, description))?;
        self.absorb(results, &mut out)?;
        Ok(out.send)
    }

    fn session(&mut self) -> Result<&mut ServerSession, ConnError> {
        match &mut self.state {
            State::Session(s) => Ok(s),
            State::Handshaking(_) => Err(ConnError::Protocol(
                "no session before the handshake".into(),
            )),
        }
    }

    fn absorb(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Output,
    ) -> Result<(), ConnError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    out.send.extend_from_slice(&packet.bytes)
                }
                ServerSessionResult::RaisedEvent(event) => self.on_event(event, out)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: ServerSessionEvent, out: &mut Output) -> Result<(), ConnError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') != self.app {
                    let session = self.session()?;
                    let results = guarded(|| {
                        session.reject_request(
                            request_id,
                            "NetConnection.Connect.Rejected",
                            "unknown application",
                        )
                    })?;
                    self.absorb(results, out)?;
                    return Err(ConnError::UnknownApp(app_name));
                }
                let session = self.session()?;
                let results = guarded(|| session.accept_request(request_id))?;
                self.absorb(results, out)?;
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                out.events.push(Event::Publish {
                    request_id,
                    app: app_name,
                    key: stream_key,
                });
            }
            ServerSessionEvent::PublishStreamFinished { .. } => out.events.push(Event::Unpublish),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                let fps = metadata
                    .video_frame_rate
                    .map(f64::from)
                    .filter(|f| f.is_finite() && *f > 0.0 && *f <= 240.0);
                out.events.push(Event::Metadata { fps });
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => match flv::parse_video(&data) {
                Ok(tag) => out.events.push(Event::Video {
                    timestamp: timestamp.value,
                    tag,
                }),
                Err(e) => tracing::debug!("dropping video message: {e}"),
            },
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => match flv::parse_audio(&data) {
                Ok(tag) => out.events.push(Event::Audio {
                    timestamp: timestamp.value,
                    tag,
                }),
                Err(e) => tracing::debug!("dropping audio message: {e}"),
            },
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                let session = self.session()?;
                let results = guarded(|| {
                    session.reject_request(
                        request_id,
                        "NetStream.Play.Failed",
                        "playback is served over HLS and WebRTC",
                    )
                })?;
                self.absorb(results, out)?;
                out.events.push(Event::PlayRefused { key: stream_key });
            }
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. }
                if command_name == "FCUnpublish" =>
            {
                out.events.push(Event::Unpublish);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs one call into the RTMP library. Its chunk parser can panic on hostile input (integer
/// overflow on absurd lengths); that must cost only this connection, as a protocol error.
fn guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T, ConnError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ConnError::Protocol(e.to_string())),
        Err(_) => Err(ConnError::Protocol("malformed chunk stream".into())),
    }
}

/// Runs `data` through a fresh connection as a peer would send it, accepting every publish:
/// the fuzz entry point. Must never panic or hang, whatever the bytes.
pub fn fuzz_one_connection(data: &[u8]) -> usize {
    let mut conn = Connection::new("live");
    let mut events = 0;
    // Feed in uneven pieces to exercise partial reads.
    for piece in data.chunks(16 + data.len() % 113) {
        match conn.handle_input(piece) {
            Ok(out) => {
                for event in out.events {
                    events += 1;
                    if let Event::Publish { request_id, .. } = event
                        && conn.accept(request_id).is_err()
                    {
                        return events;
                    }
                    if let Event::Video {
                        tag: VideoTag::Frame { data, .. },
                        ..
                    } = event
                    {
                        let _ = flv::avc_frame_is_sane(&data);
                    }
                }
            }
            Err(_) => return events,
        }
    }
    events
}
