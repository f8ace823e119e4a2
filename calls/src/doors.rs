//! WHIP and WHEP into rooms, for clients that speak HTTP and no signaling socket:
//!
//! - `POST /whip/room/<room>` makes any WHIP client (OBS, GStreamer's `whipclientsink`, a
//!   browser) a participant that publishes and takes nothing;
//! - `POST /whep/room/<room>/<user>` makes any WHEP client (GStreamer's `whepclientsrc`, a
//!   WHEP player, OBS's WHEP source) a participant that takes `user`'s camera (or screen) and
//!   microphone into the sections of its offer, whenever `user` publishes them, and
//!   publishes nothing.
//!
//! Either comes with a user token as the Bearer token (and `?pin=` where the room has one),
//! and joins the room as its user does from the call page (the others see it join, a WHIP
//! client with its camera and microphone). Its connection is the call server's like any
//! participant's, and `DELETE` on the resource it is given (or its connection timing out)
//! takes it out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use str0m::media::MediaKind;
use tracing::{info, warn};

use crate::protocol::{ClientMessage, ServerMessage};
use crate::sfu::{self, Role};
use crate::switchboard::{self, Out, SocketId};
use crate::ws::{Calls, bearer, lock, refuse, unix_ms};

/// WHIP and WHEP clients the node holds in rooms at once.
pub const MAX_CLIENTS: usize = 1_000;
/// The largest offer taken.
const MAX_OFFER: usize = 64 * 1024;
/// How long the call server may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A WHIP or WHEP client in a room, by its resource's id.
#[derive(Debug)]
pub struct Client {
    socket: SocketId,
    room: String,
    /// Whom a WHEP client watches; `None` for a WHIP client.
    watching: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct RoomQuery {
    pin: Option<String>,
}

/// `POST /whip/room/<room>`: the offer in, the answer out, `Location` the resource.
pub(crate) async fn publish(
    State(calls): State<Arc<Calls>>,
    Path(room): Path<String>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sdp = match read_offer(&headers, &body) {
        Ok(sdp) => sdp,
        Err(refused) => return refused,
    };
    let sources = sources(&sdp);
    if sources.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "the offer sends no media");
    }
    enter(&calls, &headers, room, q.pin, sdp, sources, Role::Publisher).await
}

/// `POST /whep/room/<room>/<user>`: the offer in, the answer out, `Location` the resource.
pub(crate) async fn watch(
    State(calls): State<Arc<Calls>>,
    Path((room, user)): Path<(String, String)>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sdp = match read_offer(&headers, &body) {
        Ok(sdp) => sdp,
        Err(refused) => return refused,
    };
    let slots = receiving(&sdp);
    if slots.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "the offer receives no media");
    }
    let role = Role::Watcher { user, slots };
    enter(&calls, &headers, room, q.pin, sdp, BTreeMap::new(), role).await
}

/// Takes an HTTP client into `room` as its token's user, and its offer to the call server.
async fn enter(
    calls: &Calls,
    headers: &HeaderMap,
    room: String,
    pin: Option<String>,
    sdp: String,
    sources: BTreeMap<String, String>,
    role: Role,
) -> Response {
    let Some(token) = bearer(headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send a user token as the Bearer token",
        );
    };
    let user = match calls.user_of(token, false).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    if lock(&calls.http_clients).len() >= MAX_CLIENTS {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WHIP and WHEP clients",
        );
    }
    let watching = match &role {
        Role::Watcher { user: watched, .. } if *watched == user.id => {
            return refuse(StatusCode::BAD_REQUEST, "a user cannot watch themselves");
        }
        Role::Watcher { user: watched, .. } => Some(watched.clone()),
        _ => None,
    };

    // Into the room, as its user; the others are told, and see a publisher's tracks.
    let socket = calls.next.fetch_add(1, Ordering::Relaxed);
    let joined = {
        let mut board = lock(&calls.board);
        board.connect_publisher(socket, user.clone());
        let now = Instant::now();
        let join = ClientMessage::Join {
            room: room.clone(),
            pin,
        };
        let mut outs = board.message(socket, join, now, unix_ms());
        let absent = watching
            .as_deref()
            .filter(|watched| !board.in_room(&room, watched));
        let refused = refusal(&outs, socket).or_else(|| {
            absent.map(|watched| {
                refuse(
                    StatusCode::NOT_FOUND,
                    &format!("{watched} is not in room {room}"),
                )
            })
        });
        match refused {
            Some(refused) => {
                board.disconnect(socket, now, unix_ms());
                Err(refused)
            }
            None => {
                if !sources.is_empty() {
                    let tracks = sources
                        .values()
                        .map(|s| switchboard::track(s, false))
                        .collect();
                    let say = ClientMessage::Tracks {
                        room: room.clone(),
                        tracks,
                    };
                    outs.extend(board.message(socket, say, now, unix_ms()));
                }
                Ok(outs)
            }
        }
    };
    match joined {
        Ok(outs) => calls.apply(outs),
        Err(refused) => return refused,
    }

    let (reply, answer) = tokio::sync::oneshot::channel();
    let offer = sfu::Command::Offer {
        socket,
        room: room.clone(),
        user: user.id.clone(),
        sdp,
        sources,
        role,
        reply,
    };
    let answer = if calls.sfu.send(offer) {
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(Ok(sdp))) => Ok(sdp),
            Ok(Ok(Err(why))) => Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!("offer not accepted: {why}"),
            )),
            _ => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the call server is busy",
            )),
        }
    } else {
        Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the call server is busy",
        ))
    };
    let answer = match answer {
        Ok(sdp) => sdp,
        Err(refused) => {
            leave(calls, socket);
            return refused;
        }
    };
    let id = switchboard::new_id();
    let location = match &watching {
        Some(watched) => format!("/whep/room/{room}/{watched}/{id}"),
        None => format!("/whip/room/{room}/{id}"),
    };
    let client = Client {
        socket,
        room: room.clone(),
        watching: watching.clone(),
    };
    lock(&calls.http_clients).insert(id, client);
    match &watching {
        Some(watched) => info!(%room, user = %user.id, %watched, socket, "WHEP client watches"),
        None => info!(%room, user = %user.id, socket, "WHIP publisher joined the room"),
    }
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response()
}

/// `DELETE /whip/room/<room>/<id>`: the publisher leaves.
pub(crate) async fn stop(
    State(calls): State<Arc<Calls>>,
    Path((room, id)): Path<(String, String)>,
) -> Response {
    take_out(&calls, &id, &room, None)
}

/// `DELETE /whep/room/<room>/<user>/<id>`: the watcher leaves.
pub(crate) async fn stop_watching(
    State(calls): State<Arc<Calls>>,
    Path((room, user, id)): Path<(String, String, String)>,
) -> Response {
    take_out(&calls, &id, &room, Some(&user))
}

/// The client `id` names leaves, if it is in `room` (watching `watching`).
fn take_out(calls: &Calls, id: &str, room: &str, watching: Option<&str>) -> Response {
    let client = {
        let mut clients = lock(&calls.http_clients);
        match clients.get(id) {
            Some(c) if c.room == room && c.watching.as_deref() == watching => clients.remove(id),
            _ => None,
        }
    };
    let Some(client) = client else {
        return refuse(StatusCode::NOT_FOUND, "no such resource");
    };
    leave(calls, client.socket);
    StatusCode::OK.into_response()
}

/// The call server's connection for `socket` is gone: a WHIP or WHEP client leaves its room.
pub(crate) fn gone(calls: &Calls, socket: SocketId) {
    let mut clients = lock(&calls.http_clients);
    let before = clients.len();
    clients.retain(|_, c| c.socket != socket);
    let was_http = clients.len() != before;
    drop(clients);
    if was_http {
        info!(
            socket,
            "WHIP or WHEP client's connection gone; out of its room"
        );
        leave(calls, socket);
    }
}

fn leave(calls: &Calls, socket: SocketId) {
    let outs = lock(&calls.board).disconnect(socket, Instant::now(), unix_ms());
    calls.apply(outs);
}

/// The switchboard's refusal of a join, as an HTTP answer.
fn refusal(outs: &[Out], socket: SocketId) -> Option<Response> {
    outs.iter().find_map(|out| match out {
        Out::Send(s, ServerMessage::Error { code, message }) if *s == socket => {
            let status = match code.as_str() {
                "bad_room" | "no_such_room" => StatusCode::NOT_FOUND,
                "room_full" | "already_joined" | "too_many_rooms" => StatusCode::CONFLICT,
                "busy_node" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            warn!(socket, %code, "WHIP or WHEP client refused by the room");
            Some(refuse(status, message))
        }
        _ => None,
    })
}

/// The offer in a request, as the call server takes it; or the answer that refuses it.
#[allow(clippy::result_large_err)]
fn read_offer(headers: &HeaderMap, body: &[u8]) -> Result<String, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let sdp = rtc::sdp::offer_text(content_type, body, MAX_OFFER).map_err(|(status, why)| {
        refuse(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            why,
        )
    })?;
    if str0m::change::SdpOffer::from_sdp_string(sdp).is_err() {
        return Err(refuse(StatusCode::BAD_REQUEST, "malformed SDP offer"));
    }
    Ok(rtc::sdp::normalize_offer(sdp))
}

/// What each sending media section of `sdp` carries, by its mid: the first video is the
/// camera and any other the screen, audio the microphone.
fn sources(sdp: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut videos = 0;
    for section in sdp.split("\nm=").skip(1) {
        let kind = section.split_whitespace().next().unwrap_or_default();
        let attribute = |name: &str| {
            section
                .lines()
                .find_map(|l| l.trim_end().strip_prefix(name).map(str::to_owned))
        };
        let Some(mid) = attribute("a=mid:") else {
            continue;
        };
        let receives_only = section
            .lines()
            .any(|l| matches!(l.trim_end(), "a=recvonly" | "a=inactive"));
        if receives_only {
            continue;
        }
        let source = match kind {
            "audio" => "microphone",
            "video" if videos == 0 => "camera",
            "video" => "screen",
            _ => continue,
        };
        videos += usize::from(kind == "video");
        found.insert(mid, source.to_owned());
    }
    found
}

/// The sections of `sdp` that receive media: their mids and kinds, in order.
fn receiving(sdp: &str) -> Vec<(String, MediaKind)> {
    let mut found = Vec::new();
    for section in sdp.split("\nm=").skip(1) {
        let kind = match section.split_whitespace().next() {
            Some("audio") => MediaKind::Audio,
            Some("video") => MediaKind::Video,
            _ => continue,
        };
        let mid = section
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("a=mid:").map(str::to_owned));
        let sends_only = section
            .lines()
            .any(|l| matches!(l.trim_end(), "a=sendonly" | "a=inactive"));
        if let Some(mid) = mid
            && !sends_only
        {
            found.push((mid, kind));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whip_offer_publishes_a_camera_and_a_microphone() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:video0\r\na=sendonly\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:audio1\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendrecv\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:3\r\na=recvonly\r\n";
        let found = sources(sdp);
        assert_eq!(found["video0"], "camera");
        assert_eq!(found["audio1"], "microphone");
        assert_eq!(found["2"], "screen");
        assert!(!found.contains_key("3"), "it receives only: {found:?}");
        let taken = receiving(sdp);
        let mids: Vec<&str> = taken.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(mids, ["2", "3"], "what it can take: {taken:?}");
        assert_eq!(taken[1].1, MediaKind::Audio);
    }
}
