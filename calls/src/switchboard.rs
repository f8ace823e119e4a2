//! The switchboard: signaling as a state machine, sans IO (str0m's `handle_input` /
//! `poll_output` shape). Sockets connect as a user and send [`ClientMessage`]s; the
//! switchboard answers with what to send to which socket, which sockets to close, and the
//! call events to publish. Time comes in with every input; [`Switchboard::deadline`] says when
//! to come back with [`Switchboard::tick`] (a call that rings too long).
//!
//! - Presence: a user is online while one of their sockets is; their contacts are told.
//! - 1-to-1 calls: call → ring on every device of the callee → accept (one device; the others
//!   are told), reject, busy, cancel, no answer, hang up. A callee who is offline is said so at
//!   once, and gets a missed call when they come back.
//! - Rooms: join (with a PIN where the room has one, up to its size), leave, tracks and mute
//!   states; an answered call is a room of two that only its parties may join.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::directory::Directory;
use crate::protocol::{ClientMessage, Contact, Participant, Person, ServerMessage, TrackInfo};

pub type SocketId = u64;

/// Missed calls kept per user; older ones go.
const MAX_MISSED: usize = 32;
/// Rooms open at once, and rooms one socket may be in.
const MAX_ROOMS: usize = 10_000;
const MAX_ROOMS_PER_SOCKET: usize = 4;
/// Tracks one participant may say it publishes.
const MAX_TRACKS: usize = 8;
/// Calls ringing or answered at once.
const MAX_CALLS: usize = 10_000;

/// What the switchboard wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Send(SocketId, ServerMessage),
    Close(SocketId),
    Event(CallEvent),
    /// For the call server: a member's media message (offer, answer, candidate, wanted size)
    /// about a room it is in.
    Media {
        socket: SocketId,
        user: String,
        message: ClientMessage,
    },
    /// For the call server: `socket` is out of `room` (left, hung up, kicked, gone).
    Left {
        socket: SocketId,
        room: String,
    },
}

/// What happened, for the event bus (`tiercast.calls`).
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    Started {
        call: String,
        kind: &'static str,
        participants: Vec<String>,
    },
    Ended {
        call: String,
        kind: &'static str,
        duration: Duration,
        participants: Vec<String>,
        reason: String,
    },
    Joined {
        room: String,
        user: String,
    },
    Left {
        room: String,
        user: String,
    },
}

/// A room as configured (`[[calls.rooms]]`): its PIN and size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomRules {
    pub pin: Option<String>,
    pub max: Option<usize>,
}

#[derive(Debug)]
struct Socket {
    user: Person,
    rooms: BTreeSet<String>,
    /// One of the user's devices (a signaling socket): it makes them online and rings. A
    /// WHIP publisher in a room is not.
    device: bool,
}

#[derive(Debug)]
enum Phase {
    Ringing {
        until: Instant,
    },
    Answered {
        since: Instant,
        callee_socket: SocketId,
    },
}

#[derive(Debug)]
struct Call {
    caller: Person,
    caller_socket: SocketId,
    callee: Person,
    phase: Phase,
}

#[derive(Debug)]
struct Room {
    members: BTreeMap<SocketId, Participant>,
    /// Everyone who was in it, for `call.ended`.
    everyone: BTreeSet<String>,
    opened: Instant,
    /// A call's room: only its two parties.
    only: Option<[String; 2]>,
    max: usize,
}

pub struct Switchboard {
    directory: Arc<dyn Directory>,
    rooms_config: HashMap<String, RoomRules>,
    ring_for: Duration,
    max_room: usize,
    sockets: HashMap<SocketId, Socket>,
    by_user: HashMap<String, BTreeSet<SocketId>>,
    calls: HashMap<String, Call>,
    missed: HashMap<String, VecDeque<(Person, u64)>>,
    rooms: HashMap<String, Room>,
}

/// A new unguessable id: 128 random bits, hex.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    hex::encode(bytes)
}

impl Switchboard {
    pub fn new(
        directory: Arc<dyn Directory>,
        rooms_config: HashMap<String, RoomRules>,
        ring_for: Duration,
        max_room: usize,
    ) -> Switchboard {
        Switchboard {
            directory,
            rooms_config,
            ring_for,
            max_room,
            sockets: HashMap::new(),
            by_user: HashMap::new(),
            calls: HashMap::new(),
            missed: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    /// Users online now.
    pub fn online(&self) -> usize {
        self.by_user.len()
    }

    /// Rooms open now, and participants in them.
    pub fn rooms(&self) -> (usize, usize) {
        let members = self.rooms.values().map(|r| r.members.len()).sum();
        (self.rooms.len(), members)
    }

    /// Whether `user` is in `room` now.
    pub fn in_room(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.values().any(|m| m.id == user))
    }

    /// When [`Switchboard::tick`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|c| match c.phase {
                Phase::Ringing { until } => Some(until),
                Phase::Answered { .. } => None,
            })
            .min()
    }

    fn sockets_of(&self, user: &str) -> Vec<SocketId> {
        self.by_user
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn send_user(&self, out: &mut Vec<Out>, user: &str, message: &ServerMessage) {
        for s in self.sockets_of(user) {
            out.push(Out::Send(s, message.clone()));
        }
    }

    /// Whether `user` is a party of a call, ringing or answered.
    fn in_call(&self, user: &str) -> bool {
        self.calls
            .values()
            .any(|c| c.caller.id == user || c.callee.id == user)
    }

    fn miss(&mut self, callee: &str, caller: &Person, unix_ms: u64) {
        let missed = self.missed.entry(callee.to_owned()).or_default();
        if missed.len() >= MAX_MISSED {
            missed.pop_front();
        }
        missed.push_back((caller.clone(), unix_ms));
    }

    /// `socket` is `user`'s, connected now.
    pub fn connect(&mut self, socket: SocketId, user: Person) -> Vec<Out> {
        let mut out = Vec::new();
        let first = !self.by_user.contains_key(&user.id);
        self.by_user
            .entry(user.id.clone())
            .or_default()
            .insert(socket);
        self.sockets.insert(
            socket,
            Socket {
                user: user.clone(),
                rooms: BTreeSet::new(),
                device: true,
            },
        );
        let contacts = self.directory.contacts(&user.id);
        if first {
            let online = ServerMessage::Presence {
                user: user.id.clone(),
                online: true,
            };
            for c in &contacts {
                self.send_user(&mut out, &c.id, &online);
            }
        }
        let contacts = contacts
            .into_iter()
            .map(|p| Contact {
                online: self.by_user.contains_key(&p.id),
                id: p.id,
                name: p.name,
            })
            .collect();
        out.push(Out::Send(
            socket,
            ServerMessage::Welcome {
                v: crate::protocol::VERSION,
                user: user.clone(),
                contacts,
            },
        ));
        for (from, at_ms) in self.missed.remove(&user.id).unwrap_or_default() {
            out.push(Out::Send(socket, ServerMessage::MissedCall { from, at_ms }));
        }
        // A call ringing on the user's other devices rings on this one too.
        for (id, call) in &self.calls {
            if call.callee.id == user.id && matches!(call.phase, Phase::Ringing { .. }) {
                out.push(Out::Send(
                    socket,
                    ServerMessage::Ring {
                        call: id.clone(),
                        from: call.caller.clone(),
                    },
                ));
            }
        }
        out
    }

    /// `socket` is `user`'s publisher without signaling of its own (a WHIP client): it may
    /// join rooms and say its tracks, and is neither presence nor rung.
    pub fn connect_publisher(&mut self, socket: SocketId, user: Person) {
        let rooms = BTreeSet::new();
        let socket_of = Socket {
            user,
            rooms,
            device: false,
        };
        self.sockets.insert(socket, socket_of);
    }

    /// `socket` is gone (closed, or its peer vanished).
    pub fn disconnect(&mut self, socket: SocketId, now: Instant, unix_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(gone) = self.sockets.remove(&socket) else {
            return out;
        };
        for room in gone.rooms.clone() {
            self.leave_room(&mut out, socket, &gone.user.id, &room, now);
        }
        if !gone.device {
            return out;
        }
        let user = gone.user.id.clone();
        let last = match self.by_user.get_mut(&user) {
            Some(sockets) => {
                sockets.remove(&socket);
                sockets.is_empty()
            }
            None => true,
        };
        if last {
            self.by_user.remove(&user);
        }
        // Calls this socket was in.
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            let call = &self.calls[&id];
            match call.phase {
                Phase::Ringing { .. } if call.caller_socket == socket => {
                    self.end_ringing(
                        &mut out,
                        &id,
                        ServerMessage::Cancelled { call: id.clone() },
                        unix_ms,
                    );
                }
                Phase::Ringing { .. } if call.callee.id == user && last => {
                    // Nobody is left to answer.
                    let caller_socket = call.caller_socket;
                    out.push(Out::Send(
                        caller_socket,
                        ServerMessage::NoAnswer { call: id.clone() },
                    ));
                    let call = self.calls.remove(&id).expect("listed");
                    self.miss(&user, &call.caller, unix_ms);
                }
                Phase::Answered { callee_socket, .. }
                    if call.caller_socket == socket || callee_socket == socket =>
                {
                    self.hang_up(&mut out, &id, &user, "left", now);
                }
                _ => {}
            }
        }
        if last {
            let offline = ServerMessage::Presence {
                user: user.clone(),
                online: false,
            };
            for c in self.directory.contacts(&user) {
                self.send_user(&mut out, &c.id, &offline);
            }
        }
        out
    }

    /// Calls that rang too long end as not answered.
    pub fn tick(&mut self, now: Instant, unix_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Ringing { until } if until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let message = ServerMessage::NoAnswer { call: id.clone() };
            let caller_socket = self.calls[&id].caller_socket;
            out.push(Out::Send(caller_socket, message.clone()));
            self.end_ringing(&mut out, &id, message, unix_ms);
        }
        out
    }

    /// Ends a ringing call: `to_callee` goes to every device of the callee, who gets a missed
    /// call.
    fn end_ringing(
        &mut self,
        out: &mut Vec<Out>,
        id: &str,
        to_callee: ServerMessage,
        unix_ms: u64,
    ) {
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        self.send_user(out, &call.callee.id, &to_callee);
        self.miss(&call.callee.id, &call.caller, unix_ms);
    }

    fn hang_up(&mut self, out: &mut Vec<Out>, id: &str, by: &str, reason: &str, now: Instant) {
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        let Phase::Answered {
            since,
            callee_socket,
        } = call.phase
        else {
            return;
        };
        let message = ServerMessage::HungUp {
            call: id.to_owned(),
            by: by.to_owned(),
        };
        for s in [call.caller_socket, callee_socket] {
            if self.sockets.get(&s).is_some_and(|k| k.user.id != by) {
                out.push(Out::Send(s, message.clone()));
            }
        }
        // The call's room closes with it.
        let room = call_room(id);
        if let Some(r) = self.rooms.get(&room) {
            let members: Vec<(SocketId, String)> =
                r.members.iter().map(|(s, p)| (*s, p.id.clone())).collect();
            for (s, user) in members {
                self.leave_room(out, s, &user, &room, now);
            }
        }
        out.push(Out::Event(CallEvent::Ended {
            call: id.to_owned(),
            kind: "1-to-1",
            duration: now.saturating_duration_since(since),
            participants: vec![call.caller.id, call.callee.id],
            reason: reason.to_owned(),
        }));
    }

    /// A message from `socket`.
    pub fn message(
        &mut self,
        socket: SocketId,
        message: ClientMessage,
        now: Instant,
        unix_ms: u64,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(me) = self.sockets.get(&socket).map(|s| s.user.clone()) else {
            return out;
        };
        let error =
            |code: &str, text: &str| vec![Out::Send(socket, ServerMessage::error(code, text))];
        match message {
            ClientMessage::Ping => out.push(Out::Send(socket, ServerMessage::Pong)),
            ClientMessage::Call { to } => {
                let Some(callee) = self
                    .directory
                    .user(&to)
                    .filter(|_| self.directory.may_call(&me.id, &to))
                else {
                    return error("not_a_contact", "you may not call this user");
                };
                if self.in_call(&me.id) {
                    return error("in_a_call", "hang up first");
                }
                if self.calls.len() >= MAX_CALLS {
                    return error("busy_node", "too many calls on this node, try later");
                }
                if !self.by_user.contains_key(&to) {
                    self.miss(&to, &me, unix_ms);
                    out.push(Out::Send(socket, ServerMessage::Offline { to }));
                    return out;
                }
                let id = new_id();
                if self.in_call(&to) {
                    self.miss(&to, &me, unix_ms);
                    out.push(Out::Send(socket, ServerMessage::Busy { call: id, to }));
                    return out;
                }
                out.push(Out::Send(
                    socket,
                    ServerMessage::Ringing {
                        call: id.clone(),
                        to: to.clone(),
                    },
                ));
                self.send_user(
                    &mut out,
                    &to,
                    &ServerMessage::Ring {
                        call: id.clone(),
                        from: me.clone(),
                    },
                );
                self.calls.insert(
                    id,
                    Call {
                        caller: me,
                        caller_socket: socket,
                        callee,
                        phase: Phase::Ringing {
                            until: now + self.ring_for,
                        },
                    },
                );
            }
            ClientMessage::Accept { call: id } => {
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.callee.id == me.id) else {
                    return error("no_such_call", "no call of yours by that id");
                };
                if !matches!(call.phase, Phase::Ringing { .. }) {
                    return error("no_such_call", "that call is not ringing");
                }
                call.phase = Phase::Answered {
                    since: now,
                    callee_socket: socket,
                };
                let (caller, caller_socket, callee) = (
                    call.caller.id.clone(),
                    call.caller_socket,
                    call.callee.id.clone(),
                );
                let room = call_room(&id);
                self.rooms.insert(
                    room.clone(),
                    Room {
                        members: BTreeMap::new(),
                        everyone: BTreeSet::new(),
                        opened: now,
                        only: Some([caller.clone(), callee.clone()]),
                        max: 2,
                    },
                );
                let accepted = ServerMessage::Accepted {
                    call: id.clone(),
                    room,
                };
                out.push(Out::Send(caller_socket, accepted.clone()));
                out.push(Out::Send(socket, accepted));
                for other in self.sockets_of(&me.id).into_iter().filter(|s| *s != socket) {
                    out.push(Out::Send(
                        other,
                        ServerMessage::AnsweredElsewhere { call: id.clone() },
                    ));
                }
                out.push(Out::Event(CallEvent::Started {
                    call: id,
                    kind: "1-to-1",
                    participants: vec![caller, callee],
                }));
            }
            ClientMessage::Reject { call: id } | ClientMessage::Busy { call: id } => {
                let Some(call) = self.calls.get(&id).filter(|c| c.callee.id == me.id) else {
                    return error("no_such_call", "no call of yours by that id");
                };
                if !matches!(call.phase, Phase::Ringing { .. }) {
                    return error("no_such_call", "that call is not ringing");
                }
                let call = self.calls.remove(&id).expect("found above");
                out.push(Out::Send(
                    call.caller_socket,
                    ServerMessage::Rejected { call: id.clone() },
                ));
                for other in self.sockets_of(&me.id).into_iter().filter(|s| *s != socket) {
                    out.push(Out::Send(
                        other,
                        ServerMessage::Cancelled { call: id.clone() },
                    ));
                }
            }
            ClientMessage::Cancel { call: id } => {
                let ringing = self.calls.get(&id).is_some_and(|c| {
                    c.caller_socket == socket && matches!(c.phase, Phase::Ringing { .. })
                });
                if !ringing {
                    return error("no_such_call", "no ringing call of yours by that id");
                }
                self.end_ringing(
                    &mut out,
                    &id,
                    ServerMessage::Cancelled { call: id.clone() },
                    unix_ms,
                );
            }
            ClientMessage::Hangup { call: id } => {
                let party = self.calls.get(&id).is_some_and(|c| match c.phase {
                    Phase::Answered { callee_socket, .. } => {
                        c.caller_socket == socket || callee_socket == socket
                    }
                    Phase::Ringing { .. } => c.caller_socket == socket,
                });
                if !party {
                    return error("no_such_call", "no call of yours by that id");
                }
                if matches!(self.calls[&id].phase, Phase::Ringing { .. }) {
                    self.end_ringing(
                        &mut out,
                        &id,
                        ServerMessage::Cancelled { call: id.clone() },
                        unix_ms,
                    );
                } else {
                    self.hang_up(&mut out, &id, &me.id, "hung_up", now);
                }
            }
            ClientMessage::Join { room, pin } => {
                if let Err(e) = self.join(&mut out, socket, &me, &room, pin.as_deref(), now) {
                    return e;
                }
            }
            ClientMessage::Leave { room } => {
                if !self
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.members.contains_key(&socket))
                {
                    return error("not_in_room", "you are not in that room");
                }
                self.leave_room(&mut out, socket, &me.id, &room, now);
            }
            ClientMessage::Offer { ref room, .. }
            | ClientMessage::Answer { ref room, .. }
            | ClientMessage::Candidate { ref room, .. }
            | ClientMessage::Wanted { ref room, .. } => {
                let member = self
                    .rooms
                    .get(room)
                    .is_some_and(|r| r.members.contains_key(&socket));
                if !member {
                    return error("not_in_room", "join the room first");
                }
                out.push(Out::Media {
                    socket,
                    user: me.id.clone(),
                    message,
                });
            }
            ClientMessage::Tracks { room, tracks } => {
                if tracks.len() > MAX_TRACKS
                    || tracks
                        .iter()
                        .any(|t| !matches!(t.source.as_str(), "camera" | "microphone" | "screen"))
                {
                    return error(
                        "bad_message",
                        "at most 8 tracks, each camera, microphone or screen",
                    );
                }
                let Some(r) = self.rooms.get_mut(&room) else {
                    return error("not_in_room", "you are not in that room");
                };
                let Some(me_in_room) = r.members.get_mut(&socket) else {
                    return error("not_in_room", "you are not in that room");
                };
                me_in_room.tracks = tracks.clone();
                let message = ServerMessage::ParticipantTracks {
                    room: room.clone(),
                    user: me.id.clone(),
                    tracks,
                };
                for s in r.members.keys().filter(|s| **s != socket) {
                    out.push(Out::Send(*s, message.clone()));
                }
            }
        }
        out
    }

    fn join(
        &mut self,
        out: &mut Vec<Out>,
        socket: SocketId,
        me: &Person,
        room: &str,
        pin: Option<&str>,
        now: Instant,
    ) -> Result<(), Vec<Out>> {
        let error =
            |code: &str, text: &str| vec![Out::Send(socket, ServerMessage::error(code, text))];
        if !pipelines::config::is_path_safe(room) {
            return Err(error(
                "bad_room",
                "a room name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        let rules = self.rooms_config.get(room).cloned().unwrap_or_default();
        if let Some(want) = &rules.pin
            && !pin.is_some_and(|p| pipelines::secret::same(p, want))
        {
            return Err(error("wrong_pin", "this room needs its PIN"));
        }
        let in_rooms = self.sockets.get(&socket).map_or(0, |s| s.rooms.len());
        if in_rooms >= MAX_ROOMS_PER_SOCKET {
            return Err(error("too_many_rooms", "leave a room first"));
        }
        match self.rooms.get(room) {
            Some(r) if r.only.as_ref().is_some_and(|only| !only.contains(&me.id)) => {
                return Err(error(
                    "not_in_call",
                    "only the call's parties may join its room",
                ));
            }
            Some(r) if r.members.contains_key(&socket) => {
                return Err(error("already_joined", "you are in that room"));
            }
            None if room.starts_with(CALL_ROOM) => {
                return Err(error("no_such_room", "that call is over"));
            }
            None if self.rooms.len() >= MAX_ROOMS => {
                return Err(error("busy_node", "too many rooms on this node, try later"));
            }
            _ => {}
        }
        let max = rules.max.unwrap_or(self.max_room).min(self.max_room);
        // The same user joining from another device takes their place.
        let replaced: Vec<SocketId> = self
            .rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|(_, p)| p.id == me.id)
                    .map(|(s, _)| *s)
                    .collect()
            })
            .unwrap_or_default();
        for s in replaced {
            out.push(Out::Send(
                s,
                ServerMessage::Kicked {
                    room: room.to_owned(),
                    reason: "joined from another device".into(),
                },
            ));
            self.leave_room(out, s, &me.id, room, now);
        }
        let r = self.rooms.entry(room.to_owned()).or_insert_with(|| Room {
            members: BTreeMap::new(),
            everyone: BTreeSet::new(),
            opened: now,
            only: None,
            max,
        });
        if r.members.len() >= r.max {
            return Err(error("room_full", "the room is full"));
        }
        let first = r.members.is_empty() && r.only.is_none() && r.everyone.is_empty();
        let participant = Participant {
            id: me.id.clone(),
            name: me.name.clone(),
            tracks: Vec::new(),
        };
        let others: Vec<Participant> = r.members.values().cloned().collect();
        for s in r.members.keys() {
            out.push(Out::Send(
                *s,
                ServerMessage::ParticipantJoined {
                    room: room.to_owned(),
                    participant: participant.clone(),
                },
            ));
        }
        r.members.insert(socket, participant);
        r.everyone.insert(me.id.clone());
        if let Some(s) = self.sockets.get_mut(&socket) {
            s.rooms.insert(room.to_owned());
        }
        out.push(Out::Send(
            socket,
            ServerMessage::Joined {
                room: room.to_owned(),
                participants: others,
            },
        ));
        if first {
            out.push(Out::Event(CallEvent::Started {
                call: room.to_owned(),
                kind: "room",
                participants: vec![me.id.clone()],
            }));
        }
        out.push(Out::Event(CallEvent::Joined {
            room: room.to_owned(),
            user: me.id.clone(),
        }));
        Ok(())
    }

    fn leave_room(
        &mut self,
        out: &mut Vec<Out>,
        socket: SocketId,
        user: &str,
        room: &str,
        now: Instant,
    ) {
        if let Some(s) = self.sockets.get_mut(&socket) {
            s.rooms.remove(room);
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.members.remove(&socket).is_none() {
            return;
        }
        out.push(Out::Left {
            socket,
            room: room.to_owned(),
        });
        let left = ServerMessage::ParticipantLeft {
            room: room.to_owned(),
            user: user.to_owned(),
        };
        for s in r.members.keys() {
            out.push(Out::Send(*s, left.clone()));
        }
        out.push(Out::Event(CallEvent::Left {
            room: room.to_owned(),
            user: user.to_owned(),
        }));
        if r.members.is_empty() {
            let r = self.rooms.remove(room).expect("found above");
            // A call's room ends with its call (its own call.ended); a room, when its last
            // participant leaves.
            if r.only.is_none() {
                out.push(Out::Event(CallEvent::Ended {
                    call: room.to_owned(),
                    kind: "room",
                    duration: now.saturating_duration_since(r.opened),
                    participants: r.everyone.into_iter().collect(),
                    reason: "empty".into(),
                }));
            }
        }
    }
}

/// Rooms of answered calls are named after them.
const CALL_ROOM: &str = "call-";

fn call_room(call: &str) -> String {
    format!("{CALL_ROOM}{call}")
}

/// Tracks, as a participant says them (for tests elsewhere).
pub fn track(source: &str, muted: bool) -> TrackInfo {
    TrackInfo {
        source: source.to_owned(),
        muted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Embedded;
    use pipelines::config::CallUser;

    fn board() -> Switchboard {
        let user = |id: &str, contacts: &[&str]| CallUser {
            id: id.into(),
            name: id.to_uppercase(),
            contacts: contacts.iter().map(|c| c.to_string()).collect(),
        };
        let directory = Embedded::new(&[
            user("alice", &["bob", "carol", "dave"]),
            user("bob", &["alice"]),
            user("carol", &["alice"]),
            user("dave", &[]),
        ]);
        let rooms = HashMap::from([(
            "secret".to_owned(),
            RoomRules {
                pin: Some("1234".into()),
                max: Some(2),
            },
        )]);
        Switchboard::new(Arc::new(directory), rooms, Duration::from_secs(30), 25)
    }

    fn person(id: &str) -> Person {
        Person {
            id: id.into(),
            name: id.to_uppercase(),
        }
    }

    /// What `socket` was sent, in order.
    fn to(out: &[Out], socket: SocketId) -> Vec<ServerMessage> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(s, m) if *s == socket => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Out]) -> Vec<CallEvent> {
        out.iter()
            .filter_map(|o| match o {
                Out::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn call_id(out: &[Out], socket: SocketId) -> String {
        to(out, socket)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::Ringing { call, .. } => Some(call),
                _ => None,
            })
            .expect("ringing")
    }

    #[test]
    fn presence_goes_to_contacts_and_the_welcome_says_who_is_online() {
        let mut b = board();
        let t = Instant::now();
        b.connect(1, person("bob"));
        let out = b.connect(2, person("alice"));
        assert_eq!(
            to(&out, 1),
            [ServerMessage::Presence {
                user: "alice".into(),
                online: true
            }]
        );
        let ServerMessage::Welcome { contacts, v, .. } = &to(&out, 2)[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*v, 1);
        let online: Vec<(&str, bool)> =
            contacts.iter().map(|c| (c.id.as_str(), c.online)).collect();
        assert_eq!(online, [("bob", true), ("carol", false)]);
        // A second device of alice's: nobody is told again; the last one gone, they are.
        assert!(to(&b.connect(3, person("alice")), 1).is_empty());
        assert!(to(&b.disconnect(2, t, 0), 1).is_empty());
        assert_eq!(
            to(&b.disconnect(3, t, 0), 1),
            [ServerMessage::Presence {
                user: "alice".into(),
                online: false
            }]
        );
        assert_eq!(b.online(), 1);
    }

    #[test]
    fn a_call_rings_every_device_and_one_answers() {
        let mut b = board();
        let t = Instant::now();
        b.connect(1, person("alice"));
        b.connect(2, person("bob"));
        b.connect(3, person("bob"));
        let out = b.message(1, ClientMessage::Call { to: "bob".into() }, t, 0);
        let id = call_id(&out, 1);
        assert_eq!(id.len(), 32, "128 random bits");
        for s in [2, 3] {
            assert!(
                matches!(&to(&out, s)[0], ServerMessage::Ring { from, .. } if from.id == "alice")
            );
        }
        // Nobody else may answer alice's call to bob.
        let wrong = b.message(1, ClientMessage::Accept { call: id.clone() }, t, 0);
        assert!(
            matches!(&to(&wrong, 1)[0], ServerMessage::Error { code, .. } if code == "no_such_call")
        );
        let out = b.message(3, ClientMessage::Accept { call: id.clone() }, t, 0);
        let room = format!("call-{id}");
        assert_eq!(
            to(&out, 1),
            [ServerMessage::Accepted {
                call: id.clone(),
                room: room.clone()
            }]
        );
        assert_eq!(
            to(&out, 2),
            [ServerMessage::AnsweredElsewhere { call: id.clone() }]
        );
        assert!(matches!(
            &events(&out)[0],
            CallEvent::Started { kind: "1-to-1", .. }
        ));
        // Their room takes the two of them and nobody else.
        b.connect(4, person("carol"));
        let carol = b.message(
            4,
            ClientMessage::Join {
                room: room.clone(),
                pin: None,
            },
            t,
            0,
        );
        assert!(
            matches!(&to(&carol, 4)[0], ServerMessage::Error { code, .. } if code == "not_in_call")
        );
        b.message(
            1,
            ClientMessage::Join {
                room: room.clone(),
                pin: None,
            },
            t,
            0,
        );
        let joined = b.message(
            3,
            ClientMessage::Join {
                room: room.clone(),
                pin: None,
            },
            t,
            0,
        );
        assert!(
            matches!(&to(&joined, 3)[0], ServerMessage::Joined { participants, .. } if participants.len() == 1)
        );
        // Alice hangs up a minute later: bob is told, the room closes, the call ends.
        let later = t + Duration::from_secs(60);
        let out = b.message(1, ClientMessage::Hangup { call: id.clone() }, later, 0);
        assert!(to(&out, 3).contains(&ServerMessage::HungUp {
            call: id.clone(),
            by: "alice".into()
        }));
        let ended = events(&out)
            .into_iter()
            .find(|e| matches!(e, CallEvent::Ended { .. }))
            .unwrap();
        assert!(
            matches!(ended, CallEvent::Ended { duration, kind: "1-to-1", .. } if duration == Duration::from_secs(60))
        );
        assert_eq!(b.rooms(), (0, 0));
    }

    #[test]
    fn offline_busy_strangers_rejections_and_silence() {
        let mut b = board();
        let t = Instant::now();
        b.connect(1, person("alice"));
        // Carol is offline: alice is told at once, carol later.
        let out = b.message(1, ClientMessage::Call { to: "carol".into() }, t, 77);
        assert_eq!(to(&out, 1), [ServerMessage::Offline { to: "carol".into() }]);
        let out = b.connect(5, person("carol"));
        assert!(to(&out, 5).contains(&ServerMessage::MissedCall {
            from: person("alice"),
            at_ms: 77
        }));
        // Dave is not alice's contact (he does not list her).
        b.connect(6, person("dave"));
        let out = b.message(1, ClientMessage::Call { to: "dave".into() }, t, 0);
        assert!(
            matches!(&to(&out, 1)[0], ServerMessage::Error { code, .. } if code == "not_a_contact")
        );
        assert!(to(&out, 6).is_empty());
        // Bob rejects.
        b.connect(2, person("bob"));
        let id = call_id(
            &b.message(1, ClientMessage::Call { to: "bob".into() }, t, 0),
            1,
        );
        let out = b.message(2, ClientMessage::Reject { call: id.clone() }, t, 0);
        assert_eq!(to(&out, 1), [ServerMessage::Rejected { call: id }]);
        // Bob does not answer: 30 s later both are told, and bob has a missed call.
        let id = call_id(
            &b.message(1, ClientMessage::Call { to: "bob".into() }, t, 0),
            1,
        );
        assert_eq!(b.deadline(), Some(t + Duration::from_secs(30)));
        assert!(b.tick(t + Duration::from_secs(29), 0).is_empty());
        let out = b.tick(t + Duration::from_secs(30), 0);
        assert_eq!(to(&out, 1), [ServerMessage::NoAnswer { call: id.clone() }]);
        assert_eq!(to(&out, 2), [ServerMessage::NoAnswer { call: id }]);
        assert_eq!(b.deadline(), None);
        // Carol calls alice while alice rings bob: busy.
        let _ = call_id(
            &b.message(1, ClientMessage::Call { to: "bob".into() }, t, 0),
            1,
        );
        let out = b.message(5, ClientMessage::Call { to: "alice".into() }, t, 0);
        assert!(matches!(&to(&out, 5)[0], ServerMessage::Busy { to, .. } if to == "alice"));
        // The caller's socket goes: the callee stops ringing and has a missed call.
        let out = b.disconnect(1, t, 0);
        assert!(matches!(&to(&out, 2)[0], ServerMessage::Cancelled { .. }));
    }

    #[test]
    fn rooms_hold_their_pin_size_tracks_and_departures() {
        let mut b = board();
        let t = Instant::now();
        for (s, u) in [(1, "alice"), (2, "bob"), (3, "carol")] {
            b.connect(s, person(u));
        }
        let out = b.message(
            1,
            ClientMessage::Join {
                room: "secret".into(),
                pin: Some("0000".into()),
            },
            t,
            0,
        );
        assert!(
            matches!(&to(&out, 1)[0], ServerMessage::Error { code, .. } if code == "wrong_pin")
        );
        let pin = || Some("1234".to_owned());
        let out = b.message(
            1,
            ClientMessage::Join {
                room: "secret".into(),
                pin: pin(),
            },
            t,
            0,
        );
        assert!(matches!(
            &events(&out)[0],
            CallEvent::Started { kind: "room", .. }
        ));
        let out = b.message(
            2,
            ClientMessage::Join {
                room: "secret".into(),
                pin: pin(),
            },
            t,
            0,
        );
        assert!(
            matches!(&to(&out, 1)[0], ServerMessage::ParticipantJoined { participant, .. } if participant.id == "bob")
        );
        let out = b.message(
            3,
            ClientMessage::Join {
                room: "secret".into(),
                pin: pin(),
            },
            t,
            0,
        );
        assert!(
            matches!(&to(&out, 3)[0], ServerMessage::Error { code, .. } if code == "room_full")
        );
        // Bob mutes his microphone: alice sees it.
        let tracks = vec![track("camera", false), track("microphone", true)];
        let out = b.message(
            2,
            ClientMessage::Tracks {
                room: "secret".into(),
                tracks: tracks.clone(),
            },
            t,
            0,
        );
        assert_eq!(
            to(&out, 1),
            [ServerMessage::ParticipantTracks {
                room: "secret".into(),
                user: "bob".into(),
                tracks
            }]
        );
        let bad = vec![track("printer", false)];
        let out = b.message(
            2,
            ClientMessage::Tracks {
                room: "secret".into(),
                tracks: bad,
            },
            t,
            0,
        );
        assert!(matches!(&to(&out, 2)[0], ServerMessage::Error { .. }));
        // Bob's browser dies: alice sees him leave; alice leaves last and the room ends.
        let out = b.disconnect(2, t, 0);
        assert_eq!(
            to(&out, 1),
            [
                ServerMessage::ParticipantLeft {
                    room: "secret".into(),
                    user: "bob".into()
                },
                ServerMessage::Presence {
                    user: "bob".into(),
                    online: false
                },
            ]
        );
        let out = b.message(
            1,
            ClientMessage::Leave {
                room: "secret".into(),
            },
            t + Duration::from_secs(5),
            0,
        );
        let ended = events(&out)
            .into_iter()
            .find(|e| matches!(e, CallEvent::Ended { .. }))
            .unwrap();
        assert_eq!(
            ended,
            CallEvent::Ended {
                call: "secret".into(),
                kind: "room",
                duration: Duration::from_secs(5),
                participants: vec!["alice".into(), "bob".into()],
                reason: "empty".into(),
            }
        );
        let out = b.message(
            3,
            ClientMessage::Join {
                room: "../etc".into(),
                pin: None,
            },
            t,
            0,
        );
        assert!(matches!(&to(&out, 3)[0], ServerMessage::Error { code, .. } if code == "bad_room"));
    }
}
