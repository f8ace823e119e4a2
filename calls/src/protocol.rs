//! The signaling protocol, version 1: JSON text messages over the WebSocket `GET /ws`, each an
//! object with a `type`. `docs/signaling.md` describes every message with an example.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// A message larger than this is refused (an error, and the socket is closed).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Rings `to`.
    Call {
        to: String,
    },
    /// The callee takes the call.
    Accept {
        call: String,
    },
    /// The callee does not.
    Reject {
        call: String,
    },
    /// The callee is in another call (sent by a client that wants to say so itself).
    Busy {
        call: String,
    },
    /// The caller gives up before an answer.
    Cancel {
        call: String,
    },
    /// Either side ends an answered call.
    Hangup {
        call: String,
    },
    /// Joins a room (`pin` when the room has one).
    Join {
        room: String,
        #[serde(default)]
        pin: Option<String>,
    },
    Leave {
        room: String,
    },
    /// Says what this participant publishes and whether each is muted.
    Tracks {
        room: String,
        tracks: Vec<TrackInfo>,
    },
    /// The media connection for `room`: the participant's first offer, or a new one when it
    /// adds or removes a track. `sources` names what each of its sending `mid`s carries
    /// (`camera`, `microphone`, `screen`).
    Offer {
        room: String,
        sdp: String,
        #[serde(default)]
        sources: BTreeMap<String, String>,
    },
    /// The answer to the server's offer.
    Answer {
        room: String,
        sdp: String,
    },
    /// A trickled ICE candidate (`candidate:...`); the server's own are in its SDP.
    Candidate {
        room: String,
        candidate: String,
    },
    /// The size the participant renders a received video track at (its `mid`), so that it
    /// gets no more than that.
    Wanted {
        room: String,
        mid: String,
        width: u32,
        height: u32,
    },
    Ping,
}

/// A track the server sends a participant, in its offer: whose, and what it carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SentTrack {
    /// The subscriber's `mid` for it.
    pub mid: String,
    /// The user who publishes it.
    pub user: String,
    /// `camera`, `microphone` or `screen`.
    pub source: String,
}

/// A track a participant publishes, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct TrackInfo {
    /// `camera`, `microphone` or `screen`.
    pub source: String,
    #[serde(default)]
    pub muted: bool,
}

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Person {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Contact {
    pub id: String,
    pub name: String,
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Participant {
    pub id: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The first message on every socket.
    Welcome {
        v: u32,
        user: Person,
        contacts: Vec<Contact>,
    },
    /// A contact came online or went offline.
    Presence {
        user: String,
        online: bool,
    },
    /// To the caller: the callee's devices ring.
    Ringing {
        call: String,
        to: String,
    },
    /// To the callee: someone calls.
    Ring {
        call: String,
        from: Person,
    },
    /// To the caller: the callee took it; both join `room`.
    Accepted {
        call: String,
        room: String,
    },
    /// To the callee's other devices: answered on another one.
    AnsweredElsewhere {
        call: String,
    },
    Rejected {
        call: String,
    },
    Busy {
        call: String,
        to: String,
    },
    /// To the callee: the caller gave up.
    Cancelled {
        call: String,
    },
    /// Nobody answered in time.
    NoAnswer {
        call: String,
    },
    HungUp {
        call: String,
        by: String,
    },
    /// The callee is not online: the caller is told at once, the callee later gets a missed
    /// call.
    Offline {
        to: String,
    },
    /// Calls that came while this user was away or did not answer.
    MissedCall {
        from: Person,
        at_ms: u64,
    },
    Joined {
        room: String,
        participants: Vec<Participant>,
    },
    ParticipantJoined {
        room: String,
        participant: Participant,
    },
    ParticipantLeft {
        room: String,
        user: String,
    },
    /// A participant's tracks or mute states changed.
    ParticipantTracks {
        room: String,
        user: String,
        tracks: Vec<TrackInfo>,
    },
    /// This socket was put out of the room.
    Kicked {
        room: String,
        reason: String,
    },
    /// The answer to a participant's offer.
    Answer {
        room: String,
        sdp: String,
    },
    /// The server's offer: other participants' tracks added or gone. `tracks` names every
    /// track it sends, by the participant's `mid`.
    Offer {
        room: String,
        sdp: String,
        tracks: Vec<SentTrack>,
    },
    /// Who speaks now (the loudest over the last moment), or nobody.
    Speaker {
        room: String,
        user: Option<String>,
    },
    Pong,
    Error {
        code: String,
        message: String,
    },
}

impl ServerMessage {
    pub fn error(code: &str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A client's text as a message, or the error to answer it with.
pub fn parse(text: &str) -> Result<ClientMessage, ServerMessage> {
    if text.len() > MAX_MESSAGE {
        return Err(ServerMessage::error(
            "too_large",
            format!("messages are at most {MAX_MESSAGE} bytes"),
        ));
    }
    serde_json::from_str(text).map_err(|e| ServerMessage::error("bad_message", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_documented_and_junk_is_an_error() {
        assert_eq!(
            parse(r#"{"type":"call","to":"bob"}"#),
            Ok(ClientMessage::Call { to: "bob".into() })
        );
        assert_eq!(
            parse(r#"{"type":"join","room":"standup","pin":"1234"}"#),
            Ok(ClientMessage::Join {
                room: "standup".into(),
                pin: Some("1234".into())
            })
        );
        for junk in [
            "",
            "{",
            "[]",
            r#"{"type":"fly"}"#,
            r#"{"type":"call"}"#,
            "null",
        ] {
            assert!(
                matches!(parse(junk), Err(ServerMessage::Error { ref code, .. }) if code == "bad_message"),
                "{junk}"
            );
        }
        let big = format!(r#"{{"type":"call","to":"{}"}}"#, "x".repeat(MAX_MESSAGE));
        assert!(
            matches!(parse(&big), Err(ServerMessage::Error { ref code, .. }) if code == "too_large")
        );
        let text = serde_json::to_string(&ServerMessage::Ring {
            call: "c1".into(),
            from: Person {
                id: "alice".into(),
                name: "Alice".into(),
            },
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"ring","call":"c1","from":{"id":"alice","name":"Alice"}}"#
        );
    }
}
