//! Calls: the seed's 1-to-1 and group calls.
//!
//! - [`token`]: user tokens (HS256 JWTs under `[calls] secret`), minted by
//!   `tiercast token --user` or any identity provider holding the secret.
//! - [`directory`]: who the users are and who may call whom (the seed's User Service).
//! - [`protocol`]: the signaling messages (`docs/signaling.md`).
//! - [`switchboard`]: signaling as a sans-IO state machine: presence, ringing, rooms.
//! - [`sfu`]: the call server: one WebRTC connection per participant and room, media
//!   forwarded between them without decoding; [`layers`]: its choices per subscriber.
//! - [`ws`]: the WebSocket `GET /ws` around it; [`doors`]: WHIP clients publishing into rooms,
//!   WHEP clients watching a participant.

pub mod directory;
pub mod doors;
pub mod layers;
pub mod protocol;
pub mod sfu;
pub mod switchboard;
pub mod token;
pub mod ws;
