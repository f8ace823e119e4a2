//! The WHEP fan-out's own SRTP sender. str0m runs each viewer's ICE, DTLS and RTCP; the media
//! packets, shared by every viewer, only need a viewer's header and encryption, and that is
//! cheaper done here, straight into the send batch, than through a whole session per packet.
//!
//! The keys come from the viewer's DTLS handshake: the DTLS provider handed to str0m wraps the
//! usual one and keeps a copy of the exported keying material (RFC 5764) in the viewer's
//! [`KeySlot`]. From it, the session key and salt are derived as RFC 3711 (4.3) says, and each
//! packet is sealed as the agreed profile says: AES-GCM (RFC 7714, what browsers agree on) or
//! AES-CM with HMAC-SHA1-80 (RFC 3711, what GStreamer's `webrtcbin` agrees on).

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{Aes128CmSha1_80, Aes128CmSha1_80Cipher, CryptoError, Sha1HmacProvider};

/// Where a viewer's DTLS leaves its keying material and the profile it agreed on.
pub type KeySlot = Arc<Mutex<Option<(Vec<u8>, SrtpProfile)>>>;

thread_local! {
    /// The slot the next DTLS instance made on this thread reports to.
    static NEXT_SLOT: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Runs `build` (which makes one str0m `Rtc`) with its DTLS reporting its keys into the
/// returned slot.
pub fn with_key_slot<T>(build: impl FnOnce() -> T) -> (T, KeySlot) {
    let slot = KeySlot::default();
    NEXT_SLOT.with(|s| *s.borrow_mut() = Some(slot.clone()));
    let built = build();
    NEXT_SLOT.with(|s| s.borrow_mut().take());
    (built, slot)
}

/// The crypto provider of the WebRTC sessions ([`crate::dtls`]) with the key-keeping DTLS
/// provider in front.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            static KEEPING: OnceLock<KeepingProvider> = OnceLock::new();
            let keeping = KEEPING.get_or_init(|| KeepingProvider {
                inner: crate::dtls::provider(),
            });
            Arc::new(CryptoProvider {
                dtls_provider: keeping,
                ..(*crate::dtls::crypto_provider()).clone()
            })
        })
        .clone()
}

#[derive(Debug)]
struct KeepingProvider {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for KeepingProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        let slot = NEXT_SLOT.with(|s| s.borrow_mut().take());
        Ok(Box::new(KeepingDtls { inner, slot }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct KeepingDtls {
    inner: Box<dyn DtlsInstance>,
    slot: Option<KeySlot>,
}

impl DtlsInstance for KeepingDtls {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let (DtlsOutput::KeyingMaterial(material, profile), Some(slot)) = (&out, &self.slot) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((material.to_vec(), *profile));
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

enum Cipher {
    /// AES-GCM, 128 or 256 bits (RFC 7714), as browsers agree on: aws-lc's assembly, sealing
    /// the payload straight from the shared packet into the datagram (no copy first).
    Gcm(LessSafeKey),
    /// AES-128 in counter mode, authenticated with HMAC-SHA1 (RFC 3711), as GStreamer's
    /// `webrtcbin` agrees on.
    Cm {
        cipher: Box<dyn Aes128CmSha1_80Cipher>,
        auth_key: [u8; 20],
        hmac: &'static dyn Sha1HmacProvider,
    },
}

/// Bytes the GCM tag adds to every packet.
pub const TAG_LEN: usize = 16;
const SALT_LEN: usize = 12;
const CM_SALT_LEN: usize = 14;
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;

/// Seals one side's RTP packets: AEAD AES-GCM (RFC 7714), or AES-CM with HMAC-SHA1-80
/// (RFC 3711).
pub struct SrtpSender {
    cipher: Cipher,
    salt: [u8; CM_SALT_LEN],
}

impl std::fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpSender")
    }
}

impl SrtpSender {
    /// The sender for the passive (DTLS server) side, or `None` for material of the wrong
    /// length.
    pub fn for_server(material: &[u8], profile: SrtpProfile) -> Option<SrtpSender> {
        let (key_len, salt_len) = match profile {
            SrtpProfile::AEAD_AES_128_GCM => (16, SALT_LEN),
            SrtpProfile::AEAD_AES_256_GCM => (32, SALT_LEN),
            SrtpProfile::AES128_CM_SHA1_80 => (16, CM_SALT_LEN),
            _ => return None,
        };
        if material.len() != 2 * (key_len + salt_len) {
            return None;
        }
        // [client key | server key | client salt | server salt]; the server writes with its own.
        let master = &material[key_len..2 * key_len];
        let master_salt = &material[2 * key_len + salt_len..];
        let crypto = str0m::crypto::from_feature_flags();
        let provider = crypto.srtp_provider;
        let mut salt = [0u8; CM_SALT_LEN];
        derive(
            provider,
            master,
            master_salt,
            LABEL_RTP_SALT,
            &mut salt[..salt_len],
        );
        let cipher = match profile {
            SrtpProfile::AEAD_AES_128_GCM => {
                let mut key = [0u8; 16];
                derive(provider, master, master_salt, LABEL_RTP_KEY, &mut key);
                Cipher::Gcm(LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).ok()?))
            }
            SrtpProfile::AEAD_AES_256_GCM => {
                let mut key = [0u8; 32];
                derive(provider, master, master_salt, LABEL_RTP_KEY, &mut key);
                Cipher::Gcm(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).ok()?))
            }
            _ => {
                let mut key = [0u8; 16];
                derive(provider, master, master_salt, LABEL_RTP_KEY, &mut key);
                let mut auth_key = [0u8; 20];
                derive(provider, master, master_salt, LABEL_RTP_AUTH, &mut auth_key);
                Cipher::Cm {
                    cipher: provider.aes_128_cm_sha1_80().create_cipher(key, true),
                    auth_key,
                    hmac: crypto.sha1_hmac_provider,
                }
            }
        };
        Some(SrtpSender { cipher, salt })
    }

    /// Seals `payload` behind `header` (12 bytes, then any CSRCs and header extensions,
    /// which stay in the clear) into a new datagram. `index` is the packet's extended
    /// sequence number (rollover counter and sequence).
    pub fn seal(&mut self, header: &[u8], index: u64, payload: &[u8]) -> Vec<u8> {
        self.seal_into(header, index, payload, Vec::new())
    }

    /// [`SrtpSender::seal`] into `out`, a buffer to reuse: whatever it holds is overwritten,
    /// and bytes it already has are not zeroed first.
    pub fn seal_into(
        &mut self,
        header: &[u8],
        index: u64,
        payload: &[u8],
        mut out: Vec<u8>,
    ) -> Vec<u8> {
        if header.len() < 12 {
            out.clear();
            return out;
        }
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let at = header.len();
        let end = at + payload.len();
        let sealed = match &mut self.cipher {
            Cipher::Cm {
                cipher,
                auth_key,
                hmac,
            } => {
                out.resize(end + Aes128CmSha1_80::HMAC_TAG_LEN, 0);
                out[..at].copy_from_slice(header);
                let iv = Aes128CmSha1_80::rtp_iv(self.salt, ssrc, index);
                let sealed = cipher.encrypt(&iv, payload, &mut out[at..end]);
                let hmac = |key: &[u8], parts: &[&[u8]]| hmac.sha1_hmac(key, parts);
                Aes128CmSha1_80::rtp_hmac(hmac, auth_key, &mut out, index, end);
                sealed.is_ok()
            }
            Cipher::Gcm(key) => {
                out.resize(end + TAG_LEN, 0);
                out[..at].copy_from_slice(header);
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&((index >> 16) as u32).to_be_bytes());
                iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
                for (b, s) in iv.iter_mut().zip(self.salt) {
                    *b ^= s;
                }
                let (clear, sealed) = out.split_at_mut(at);
                let (ciphertext, tag) = sealed.split_at_mut(payload.len());
                key.seal_out_of_place_scatter(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(clear),
                    payload,
                    ciphertext,
                    &[],
                    tag,
                )
                .is_ok()
            }
        };
        if !sealed {
            out.clear();
        }
        out
    }
}

/// The RFC 3711 key derivation (AES in counter mode keyed with the master key) of the session
/// key or salt `label`, with no key derivation rate. The 96-bit master salt of the GCM
/// profiles takes the place of the 112-bit one, padded with zeros (RFC 7714, 11).
fn derive(
    provider: &dyn str0m::crypto::SrtpProvider,
    master: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) {
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    x[7] ^= label;
    let mut block = [0u8; 32];
    for (round, chunk) in out.chunks_mut(16).enumerate() {
        x[14..].copy_from_slice(&(round as u16).to_be_bytes());
        match master.len() {
            16 => provider.srtp_aes_128_ecb_round(master, &x, &mut block),
            _ => provider.srtp_aes_256_ecb_round(master, &x, &mut block),
        }
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3711, B.3: the AES-CM key derivation test vectors.
    #[test]
    fn the_key_derivation_matches_rfc_3711() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let provider = str0m::crypto::from_feature_flags().srtp_provider;
        let mut key = [0u8; 16];
        derive(provider, &master, &salt, LABEL_RTP_KEY, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut session_salt = [0u8; 14];
        derive(provider, &master, &salt, LABEL_RTP_SALT, &mut session_salt);
        assert_eq!(session_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(provider, &master, &salt, LABEL_RTP_AUTH, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// A packet sealed straight into a reused, dirty buffer is what str0m's own AES-GCM makes
    /// of it (RFC 7714 8.1: the IV from the salt, SSRC and index; the header authenticated).
    #[test]
    fn gcm_sealing_matches_str0ms_cipher_and_leaves_nothing_of_the_old_buffer() {
        let material: Vec<u8> = (0..56u8).collect();
        let mut sender = SrtpSender::for_server(&material, SrtpProfile::AEAD_AES_128_GCM).unwrap();
        let header = [0x80, 96, 0x12, 0x34, 0, 0, 0x10, 0, 0xde, 0xad, 0xbe, 0xef];
        let payload: Vec<u8> = (0..200).map(|i| (i * 7) as u8).collect();
        let index = (3u64 << 16) | 0x1234;
        let dirty = vec![0xAA; 1400];
        let sealed = sender.seal_into(&header, index, &payload, dirty);

        let provider = str0m::crypto::from_feature_flags().srtp_provider;
        let (master, master_salt) = (&material[16..32], &material[44..56]);
        let mut key = [0u8; 16];
        derive(provider, master, master_salt, LABEL_RTP_KEY, &mut key);
        let mut salt = [0u8; 12];
        derive(provider, master, master_salt, LABEL_RTP_SALT, &mut salt);
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&header[8..12]);
        iv[6..10].copy_from_slice(&3u32.to_be_bytes());
        iv[10..12].copy_from_slice(&0x1234u16.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(salt) {
            *b ^= s;
        }
        let mut theirs = vec![0u8; payload.len() + TAG_LEN];
        let mut cipher = provider.aead_aes_128_gcm().create_cipher(key, true);
        cipher.encrypt(&iv, &header, &payload, &mut theirs).unwrap();
        assert_eq!(sealed.len(), header.len() + payload.len() + TAG_LEN);
        assert_eq!(&sealed[..12], &header);
        assert_eq!(&sealed[12..], &theirs[..]);
    }

    #[test]
    fn only_whole_material_gets_a_sender() {
        assert!(SrtpSender::for_server(&[7; 56], SrtpProfile::AEAD_AES_128_GCM).is_some());
        assert!(SrtpSender::for_server(&[7; 88], SrtpProfile::AEAD_AES_256_GCM).is_some());
        assert!(SrtpSender::for_server(&[7; 60], SrtpProfile::AES128_CM_SHA1_80).is_some());
        assert!(SrtpSender::for_server(&[7; 56], SrtpProfile::AES128_CM_SHA1_80).is_none());
        assert!(SrtpSender::for_server(&[7; 50], SrtpProfile::AEAD_AES_128_GCM).is_none());
    }
}
