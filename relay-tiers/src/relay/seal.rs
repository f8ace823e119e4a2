//! Encryption of the relay with the cluster secret. Each tap draws a random salt; the
//! connection opens with it in the clear (`hello`), and every message after that is sealed with
//! ChaCha20-Poly1305 under `HMAC-SHA256(secret, "tiercast relay v1" ‖ salt)`. The nonce is the
//! tap's own message counter, so a message is sealed once and the same bytes go to every node
//! below (no per-connection encryption), and no key and nonce pair is ever used twice: the
//! salt is new for every tap, on every node, in every session.

use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use pipelines::media::Bytes;
use sha2::Sha256;

use super::wire::{HELLO, SEALED, WireError, frame_message};

pub const SALT_LEN: usize = 16;

fn cipher(secret: &str, salt: &[u8]) -> ChaCha20Poly1305 {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any size");
    mac.update(b"tiercast relay v1\0");
    mac.update(salt);
    let key = mac.finalize().into_bytes();
    ChaCha20Poly1305::new(&key)
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// The sending side, one per tap.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    salt: [u8; SALT_LEN],
    counter: AtomicU64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(secret: &str) -> Sealer {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).expect("the OS has randomness");
        Sealer {
            cipher: cipher(secret, &salt),
            salt,
            counter: AtomicU64::new(0),
        }
    }

    /// The first message of a connection: the salt, in the clear.
    pub fn hello(&self) -> Bytes {
        frame_message(HELLO, &[&self.salt])
    }

    /// `message` (a whole wire message) sealed into a `sealed` message.
    pub fn seal(&self, message: &[u8]) -> Bytes {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let sealed = self
            .cipher
            .encrypt(&nonce(counter), message)
            .expect("ChaCha20-Poly1305 seals any length we send");
        frame_message(SEALED, &[&counter.to_be_bytes(), &sealed])
    }
}

/// The receiving side, from a connection's `hello`.
pub struct Opener {
    cipher: ChaCha20Poly1305,
}

impl Opener {
    pub fn new(secret: &str, salt: &[u8]) -> Result<Opener, WireError> {
        if salt.len() != SALT_LEN {
            return Err(WireError::Malformed("hello"));
        }
        Ok(Opener {
            cipher: cipher(secret, salt),
        })
    }

    /// The wire message inside a `sealed` payload; an error if it was not sealed with our
    /// secret or was altered.
    pub fn open(&self, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        if payload.len() < 8 {
            return Err(WireError::Malformed("sealed"));
        }
        let counter = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        self.cipher
            .decrypt(&nonce(counter), &payload[8..])
            .map_err(|_| WireError::NotSealedForUs)
    }
}
