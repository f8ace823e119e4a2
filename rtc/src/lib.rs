//! WebRTC, once, for every policy that speaks it (WHIP publishers, WHEP viewers, next the call
//! server). No feature crate is needed to use it, and it uses none.
//!
//! - [`sdp`]: offers as clients other than browsers write them, made into what str0m answers.
//! - [`dtls`]: DTLS over the system's OpenSSL (takes the RSA certificates GStreamer presents).
//! - [`srtp`]: the fan-out's own SRTP sealing (AES-GCM, AES-CM + HMAC-SHA1-80) from a session's
//!   DTLS keys.
//! - [`resource`]: unguessable session ids, and how many sessions and offers one address may have.
//! - [`rtp`]: frames made into RTP payloads once and shared by every receiver.
//! - [`depacketize`]: RTP payloads made back into H.264 access units, VP8 and Opus frames.
//! - [`nack`]: what was sent, what a NACK asks for, and a retransmission budget.
//! - [`twcc`]: transport-wide sequence numbers for what is sealed here, their feedback, and
//!   the estimate of each peer's path made from it.
//! - [`udp`]: many datagrams per system call (`sendmmsg`, UDP GSO).
//! - [`net`]: the address peers are told to send to.
//! - [`driver`]: one IO driver serving many peers (sans-IO str0m sessions) on one socket, for
//!   any policy (WHIP, WHEP, the call server).
//! - [`workers`]: drivers on threads of their own, one per core, and how loaded each is
//!   (what admission reads).

pub mod depacketize;
pub mod driver;
pub mod dtls;
pub mod nack;
pub mod net;
pub mod resource;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod twcc;
pub mod udp;
pub mod workers;
