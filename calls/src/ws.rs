//! The signaling WebSocket, `GET /ws?token=<user token>`: the IO around the [`Switchboard`].
//! Each socket is one task that reads the client's messages into the switchboard and writes
//! what the switchboard has for it from a bounded queue (a client that does not read is let
//! go, not waited for); one more task wakes the switchboard when a call has rung too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pipelines::events::{EventBus, EventKind};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::directory::Directory;
use crate::protocol::{self, ClientMessage, ServerMessage};
use crate::sfu::{self, Sfu, ToSignaling};
use crate::switchboard::{CallEvent, Out, SocketId, Switchboard};

/// Messages a socket may have waiting to be written; past this, it is let go.
const QUEUE: usize = 256;
/// Sockets the node holds at once.
const MAX_SOCKETS: usize = 10_000;
/// A quiet socket is pinged this often, so that neither side takes it for a dead one.
const PING_EVERY: Duration = Duration::from_secs(20);

enum Outgoing {
    Message(ServerMessage),
    Close,
}

/// Calls on this node: the switchboard and the sockets it talks to.
pub struct Calls {
    pub(crate) board: Mutex<Switchboard>,
    sockets: Mutex<HashMap<SocketId, mpsc::Sender<Outgoing>>>,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) secret: String,
    bus: Arc<EventBus>,
    pub(crate) next: AtomicU64,
    /// WHIP publishers in rooms, by their resource id.
    pub(crate) http_clients: Mutex<HashMap<String, crate::doors::Client>>,
    /// The switchboard's deadline may have moved.
    wake: Notify,
    /// The call server, and what it has for participants' sockets (taken by [`Calls::run`]).
    pub(crate) sfu: Sfu,
    from_sfu: Mutex<Option<mpsc::Receiver<ToSignaling>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Calls {
    pub fn new(
        board: Switchboard,
        directory: Arc<dyn Directory>,
        secret: &str,
        bus: Arc<EventBus>,
        sfu: (Sfu, mpsc::Receiver<ToSignaling>),
    ) -> Arc<Calls> {
        Arc::new(Calls {
            board: Mutex::new(board),
            sockets: Mutex::new(HashMap::new()),
            directory,
            secret: secret.to_owned(),
            bus,
            next: AtomicU64::new(1),
            http_clients: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            sfu: sfu.0,
            from_sfu: Mutex::new(Some(sfu.1)),
        })
    }

    /// The user `token` is for, as the directory knows them (with `contacts`, their contacts
    /// looked up too); or the answer that refuses it.
    pub(crate) async fn user_of(
        &self,
        token: &str,
        contacts: bool,
    ) -> Result<protocol::Person, Response> {
        let claims = crate::token::verify(&self.secret, token, unix_ms() / 1000)
            .map_err(|e| refuse(StatusCode::UNAUTHORIZED, &format!("user token: {e}")))?;
        let sub = std::slice::from_ref(&claims.sub);
        self.directory.fetch(sub, contacts).await;
        let mut user = self
            .directory
            .user(&claims.sub)
            .ok_or_else(|| refuse(StatusCode::FORBIDDEN, "not a user of this node"))?;
        if !claims.name.is_empty() {
            user.name = claims.name;
        }
        Ok(user)
    }

    /// The call server's counters.
    pub fn sfu_figures(&self) -> Arc<sfu::Figures> {
        self.sfu.figures.clone()
    }

    /// Users online, rooms and participants, for `/metrics`.
    pub fn figures(&self) -> (usize, usize, usize) {
        let board = lock(&self.board);
        let (rooms, participants) = board.rooms();
        (board.online(), rooms, participants)
    }

    /// Does what the switchboard said.
    pub(crate) fn apply(&self, outs: Vec<Out>) {
        let mut sockets = lock(&self.sockets);
        for out in outs {
            match out {
                Out::Send(socket, message) => {
                    let full = sockets
                        .get(&socket)
                        .is_some_and(|tx| tx.try_send(Outgoing::Message(message)).is_err());
                    if full {
                        // It does not read what it is sent: let it go (its task sees the
                        // queue closed and ends the socket).
                        warn!(socket, "signaling socket not reading; closed");
                        sockets.remove(&socket);
                    }
                }
                Out::Close(socket) => {
                    if let Some(tx) = sockets.remove(&socket) {
                        let _ = tx.try_send(Outgoing::Close);
                    }
                }
                Out::Event(event) => {
                    self.bus.publish(event_kind(event));
                }
                Out::Media {
                    socket,
                    user,
                    message,
                } => {
                    let tx = sockets.get(&socket).cloned();
                    self.media(socket, user, message, tx);
                }
                Out::Left { socket, room } => {
                    if !self.sfu.send(sfu::Command::Leave { socket, room }) {
                        warn!(
                            socket,
                            "the call server is busy; its connection goes at ICE timeout"
                        );
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// A participant's media message, to the call server; the call server sends the answer
    /// to an offer itself, and why not comes back here.
    fn media(
        &self,
        socket: SocketId,
        user: String,
        message: ClientMessage,
        tx: Option<mpsc::Sender<Outgoing>>,
    ) {
        let command = match message {
            ClientMessage::Offer { room, sdp, sources } => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let message = match answer.await {
                        // The call server has sent it, in order with its own offers.
                        Ok(Ok(_)) => return,
                        Ok(Err(why)) => ServerMessage::error("bad_offer", why),
                        Err(_) => ServerMessage::error("no_media", "the call server is busy"),
                    };
                    if let Some(tx) = tx {
                        let _ = tx.try_send(Outgoing::Message(message));
                    }
                });
                sfu::Command::Offer {
                    socket,
                    room,
                    user,
                    sdp,
                    sources,
                    role: crate::sfu::Role::Member,
                    reply,
                }
            }
            ClientMessage::Answer { room, sdp } => sfu::Command::Answer { socket, room, sdp },
            ClientMessage::Candidate { room, candidate } => sfu::Command::Candidate {
                socket,
                room,
                candidate,
            },
            ClientMessage::Wanted {
                room,
                mid,
                width,
                height,
            } => sfu::Command::Wanted {
                socket,
                room,
                mid,
                size: (width, height),
            },
            _ => return,
        };
        if !self.sfu.send(command) {
            debug!(socket, "the call server is busy; a media message dropped");
        }
    }

    /// Wakes the switchboard at its deadlines (calls ringing too long) until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut from_sfu = lock(&self.from_sfu).take();
        loop {
            let deadline = lock(&self.board).deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {
                    let outs = lock(&self.board).tick(Instant::now(), unix_ms());
                    self.apply(outs);
                }
                _ = self.wake.notified() => {}
                Some(told) = recv(&mut from_sfu) => match told {
                    ToSignaling::Message(socket, message) => {
                        self.apply(vec![Out::Send(socket, message)]);
                    }
                    ToSignaling::Gone { socket, .. } => crate::doors::gone(&self, socket),
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn serve(self: Arc<Self>, mut socket: WebSocket, user: protocol::Person) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(QUEUE);
        lock(&self.sockets).insert(id, tx);
        info!(socket = id, user = %user.id, "signaling socket open");
        let outs = lock(&self.board).connect(id, user.clone());
        self.apply(outs);
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                outgoing = rx.recv() => match outgoing {
                    Some(Outgoing::Message(m)) => {
                        let Ok(text) = serde_json::to_string(&m) else { continue };
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Close) | None => break,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        match protocol::parse(&text) {
                            Ok(message) => {
                                if let ClientMessage::Call { to } = &message {
                                    // Who may call whom is asked of the directory once per call.
                                    let parties = [user.id.clone(), to.clone()];
                                    self.directory.fetch(&parties, false).await;
                                }
                                let outs = lock(&self.board).message(id, message, Instant::now(), unix_ms());
                                self.apply(outs);
                            }
                            Err(error) => {
                                debug!(socket = id, user = %user.id, "bad signaling message: {error:?}");
                                let too_large = matches!(&error, ServerMessage::Error { code, .. } if code == "too_large");
                                let text = serde_json::to_string(&error).unwrap_or_default();
                                if socket.send(Message::Text(text.into())).await.is_err() || too_large {
                                    break;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ServerMessage::error("bad_message", "messages are JSON text");
                        let text = serde_json::to_string(&error).unwrap_or_default();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
        lock(&self.sockets).remove(&id);
        let outs = lock(&self.board).disconnect(id, Instant::now(), unix_ms());
        self.apply(outs);
        info!(socket = id, user = %user.id, "signaling socket closed");
    }
}

/// The next message from the call server, or never once there is none.
async fn recv(rx: &mut Option<mpsc::Receiver<ToSignaling>>) -> Option<ToSignaling> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn event_kind(event: CallEvent) -> EventKind {
    match event {
        CallEvent::Started {
            call,
            kind,
            participants,
        } => EventKind::CallStarted {
            call,
            kind: kind.to_owned(),
            participants,
        },
        CallEvent::Ended {
            call,
            kind,
            duration,
            participants,
            reason,
        } => EventKind::CallEnded {
            call,
            kind: kind.to_owned(),
            duration_secs: duration.as_secs_f64(),
            participants,
            reason,
        },
        CallEvent::Joined { room, user } => EventKind::ParticipantJoined { room, user },
        CallEvent::Left { room, user } => EventKind::ParticipantLeft { room, user },
    }
}

/// The call page: contacts and ringing at `/call`, a room at `/call/<room>`.
const CALL_PAGE: &str = include_str!("../../web/call.html");

/// The request's `Authorization: Bearer` token, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub fn router(calls: Arc<Calls>) -> Router {
    Router::new()
        .route("/ws", get(open))
        .route("/call", get(call_page))
        .route("/call/{room}", get(room_page))
        .route(
            "/whip/room/{room}",
            axum::routing::post(crate::doors::publish),
        )
        .route(
            "/whip/room/{room}/{id}",
            axum::routing::delete(crate::doors::stop),
        )
        .route(
            "/whep/room/{room}/{user}",
            axum::routing::post(crate::doors::watch),
        )
        .route(
            "/whep/room/{room}/{user}/{id}",
            axum::routing::delete(crate::doors::stop_watching),
        )
        .with_state(calls)
}

async fn call_page() -> Response {
    let headers = [(header::CACHE_CONTROL, "no-cache")];
    (headers, axum::response::Html(CALL_PAGE)).into_response()
}

async fn room_page(axum::extract::Path(room): axum::extract::Path<String>) -> Response {
    if !pipelines::config::is_path_safe(&room) {
        return refuse(StatusCode::NOT_FOUND, "no such room");
    }
    call_page().await
}

#[derive(Debug, serde::Deserialize)]
struct OpenQuery {
    token: Option<String>,
}

pub(crate) fn refuse(status: StatusCode, why: &str) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), why);
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}

/// `GET /ws?token=...` (or `Authorization: Bearer`): the user's signaling socket.
async fn open(
    State(calls): State<Arc<Calls>>,
    Query(q): Query<OpenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !pipelines::origin::same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, pipelines::origin::CROSS_SITE);
    }
    let Some(token) = q.token.as_deref().or(bearer(&headers)) else {
        return refuse(StatusCode::UNAUTHORIZED, "a user token is needed (?token=)");
    };
    if lock(&calls.sockets).len() >= MAX_SOCKETS {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many signaling sockets",
        );
    }
    let user = match calls.user_of(token, true).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    upgrade
        .max_message_size(2 * protocol::MAX_MESSAGE)
        .on_upgrade(move |socket| calls.serve(socket, user))
}
