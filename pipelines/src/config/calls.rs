//! `[calls]`: 1-to-1 and group calls: who the users are, who may call whom, and how the
//! signaling behaves.

use serde::{Deserialize, Serialize};

use super::{Invalid, is_path_safe};

pub const DEFAULT_RING_SECONDS: u32 = 30;
pub const DEFAULT_MAX_ROOM_SIZE: usize = 25;
pub const DEFAULT_USERS_CACHE_SECONDS: u64 = 10;
/// The call server's UDP port: participants' media.
pub const DEFAULT_CALLS_LISTEN: &str = "0.0.0.0:8191";
/// The environment variable the binary reads the calls secret from, over the file's.
pub const CALLS_SECRET_ENV: &str = "TIERCAST_CALLS_SECRET";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Signs and checks user tokens (HS256 JWTs); empty: calls are off. At least 16 characters.
    pub secret: String,
    /// The user directory, when it lives in this file.
    pub users: Vec<CallUser>,
    /// The user directory, when it is a service: `GET <users_url>/<id>` answers a user as
    /// `{"id", "name", "contacts"}` (404: no such user), asked when a user signs in and when
    /// they call, its answers kept `users_cache_seconds`; a directory that cannot be reached
    /// refuses (fails closed). Not with `[[calls.users]]`.
    pub users_url: String,
    pub users_cache_seconds: u64,
    /// Rooms with a PIN or a size of their own; other rooms are made when first joined.
    pub rooms: Vec<CallRoom>,
    /// How long a call rings before it counts as not answered.
    pub ring_seconds: u32,
    /// Participants a room holds at most (a room may ask for fewer).
    pub max_room_size: usize,
    /// The call server's UDP socket (participants' media; the address they are told is
    /// `[webrtc] advertise`'s rule).
    pub listen: std::net::SocketAddr,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            users: Vec::new(),
            users_url: String::new(),
            users_cache_seconds: DEFAULT_USERS_CACHE_SECONDS,
            rooms: Vec::new(),
            ring_seconds: DEFAULT_RING_SECONDS,
            max_room_size: DEFAULT_MAX_ROOM_SIZE,
            listen: DEFAULT_CALLS_LISTEN.parse().expect("a literal address"),
        }
    }
}

/// A user of calls: who they are and whom they may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallUser {
    /// `[A-Za-z0-9_-]{1,64}`: what tokens name (`sub`) and others call.
    pub id: String,
    /// Shown to others.
    #[serde(default)]
    pub name: String,
    /// The users this one may call and see online (each must list this one back to be called
    /// by them: a contact goes both ways only when both say so).
    #[serde(default)]
    pub contacts: Vec<String>,
}

/// A room with rules of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRoom {
    pub name: String,
    /// Asked of everyone who joins.
    #[serde(default)]
    pub pin: Option<String>,
    /// At most this many at once (and never more than `max_room_size`).
    #[serde(default)]
    pub max_participants: Option<usize>,
}

impl CallsConfig {
    pub fn enabled(&self) -> bool {
        !self.secret.is_empty()
    }

    /// Keys are relative to `[calls]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.secret.is_empty() && self.secret.len() < 16 {
            return Err((
                "secret".into(),
                "at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
            ));
        }
        if !(5..=300).contains(&self.ring_seconds) {
            return Err(("ring_seconds".into(), "from 5 to 300".into()));
        }
        if !(2..=100).contains(&self.max_room_size) {
            return Err(("max_room_size".into(), "from 2 to 100".into()));
        }
        if !self.users_url.is_empty() {
            let url = self.users_url.as_str();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<http::Uri>().is_err()
            {
                return Err(("users_url".into(), format!("{url:?} is not an http(s) URL")));
            }
            if !self.users.is_empty() {
                return Err((
                    "users_url".into(),
                    "one directory: users_url or [[calls.users]], not both".into(),
                ));
            }
        }
        if self.users_cache_seconds > 3600 {
            return Err(("users_cache_seconds".into(), "at most 3600".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            if !is_path_safe(&user.id) {
                return Err((
                    format!("users[{i}].id"),
                    format!("{:?}: 1 to 64 letters, digits, '-' or '_'", user.id),
                ));
            }
            if !seen.insert(&user.id) {
                return Err((format!("users[{i}].id"), format!("{:?} twice", user.id)));
            }
        }
        for (i, room) in self.rooms.iter().enumerate() {
            if !is_path_safe(&room.name) || room.name.starts_with("call-") {
                return Err((
                    format!("rooms[{i}].name"),
                    format!(
                        "{:?}: 1 to 64 letters, digits, '-' or '_', not starting call-",
                        room.name
                    ),
                ));
            }
            if room.max_participants.is_some_and(|m| m < 2) {
                return Err((format!("rooms[{i}].max_participants"), "at least 2".into()));
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            if let Some(unknown) = user.contacts.iter().find(|c| !seen.contains(c)) {
                return Err((
                    format!("users[{i}].contacts"),
                    format!("{unknown:?} is not a user"),
                ));
            }
        }
        Ok(())
    }
}
