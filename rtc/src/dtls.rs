//! DTLS for every WebRTC session (WHIP publishers, WHEP viewers), over the system's OpenSSL.
//!
//! str0m's own DTLS (dimpl) takes only ECDSA client certificates, while GStreamer's `webrtcbin`
//! (the WHIP/WHEP clients of gst-plugins-rs, and every GStreamer-based encoder) presents an RSA
//! one, and so could not connect. OpenSSL takes both, as browsers do. This is the DTLS instance
//! str0m drives, sans-IO: datagrams in through [`DtlsInstance::handle_packet`], out through
//! [`DtlsInstance::poll_output`], retransmissions on [`DtlsInstance::handle_timeout`].
//!
//! Once connected, a session that carries no application data (no data channel: every WHEP
//! viewer and WHIP publisher here) lets its OpenSSL state go after [`RELEASE_AFTER`], when the
//! peer can no longer be asking for our last flight again: it is some 70 KiB a session, as
//! much as all the rest of a viewer, and the SRTP keys are out by then.
//!
//! Our certificate stays the ECDSA P-256 one str0m generates. The peer's certificate is not
//! checked here: str0m compares its fingerprint with the one in the SDP. The SRTP profiles are
//! offered cheapest first (AES-128-GCM), and OpenSSL, as a server, takes the first of ours the
//! client also offers.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};
use tracing::debug;

/// SRTP profiles, ours first: RFC 7714's AES-128-GCM costs a third less than AES-256-GCM.
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM:SRTP_AES128_CM_SHA1_80";
/// Suites, AES-GCM first. As a server we take those of our ECDSA certificate; as a client
/// (the load client's, against `webrtcbin`) a server's RSA certificate is taken too.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
                       ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:\
                       ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:\
                       ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA";
/// The label RFC 5764 exports the SRTP keys under.
const SRTP_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// Record size when str0m names none; fits any path a WebRTC packet takes.
const DEFAULT_MTU: usize = 1150;
/// Largest application record we read (SCTP packets are far smaller).
const MAX_RECORD: usize = 16 * 1024;
/// Queued datagrams a peer may have waiting before the handshake consumes them.
const MAX_INCOMING: usize = 64;

/// How long a connected session keeps its OpenSSL state without application data. A peer
/// whose copy of our last flight was lost asks again after 1, 2 and 4 s (RFC 6347, 4.2.4.1).
pub const RELEASE_AFTER: Duration = Duration::from_secs(10);

// From OpenSSL's ssl.h: DTLSv1_get_timeout and DTLSv1_handle_timeout are macros over SSL_ctrl.
const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

/// str0m's crypto of this build, with this DTLS in place of its own.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            Arc::new(CryptoProvider {
                dtls_provider: provider(),
                ..base
            })
        })
        .clone()
}

/// A new ECDSA P-256 certificate for a node's sessions (browsers and GStreamer both take it).
pub fn certificate() -> Option<DtlsCert> {
    provider().generate_certificate()
}

/// The DTLS provider alone, for providers that wrap it.
pub fn provider() -> &'static OpensslDtls {
    static DTLS: OnceLock<OpensslDtls> = OnceLock::new();
    DTLS.get_or_init(OpensslDtls::default)
}

/// Makes [`Dtls`] instances. One OpenSSL context is kept per certificate (a node has one).
#[derive(Default)]
pub struct OpensslDtls {
    contexts: Mutex<Vec<(Vec<u8>, SslContext)>>,
}

impl std::fmt::Debug for OpensslDtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpensslDtls")
    }
}

impl OpensslDtls {
    fn context(&self, cert: &DtlsCert) -> Result<SslContext, CryptoError> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ctx)) = contexts.iter().find(|(der, _)| *der == cert.certificate) {
            return Ok(ctx.clone());
        }
        let ctx = new_context(cert).map_err(|e| CryptoError::Other(format!("DTLS set-up: {e}")))?;
        // Certificates made per session would otherwise pile up here.
        if contexts.len() >= 8 {
            contexts.remove(0);
        }
        contexts.push((cert.certificate.clone(), ctx.clone()));
        Ok(ctx)
    }
}

fn new_context(cert: &DtlsCert) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    let x509 = X509::from_der(&cert.certificate)?;
    b.set_certificate(&x509)?;
    let key = PKey::private_key_from_der(&cert.private_key)
        .or_else(|_| PKey::private_key_from_pkcs8(&cert.private_key))?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    b.set_cipher_list(CIPHERS)?;
    b.set_tlsext_use_srtp(SRTP_PROFILES)?;
    // Any certificate: its fingerprint is what authenticates it, and str0m checks that.
    b.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    // The MTU is ours to say: there is no socket under this BIO to ask.
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    // Once connected a viewer's DTLS is idle (media goes as SRTP): its record buffers go back
    // to the allocator in between, some 30 KiB a session.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(b.build())
}

impl DtlsProvider for OpensslDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        if dtls_version == DtlsVersion::Dtls13 {
            return Err(CryptoError::Other("DTLS 1.3 is not offered".into()));
        }
        let context = self.context(cert)?;
        let mut ssl =
            Ssl::new(&context).map_err(|e| CryptoError::Other(format!("DTLS set-up: {e}")))?;
        ssl.set_mtu(mtu.unwrap_or(DEFAULT_MTU) as u32)
            .map_err(|e| CryptoError::Other(format!("DTLS MTU: {e}")))?;
        Ok(Box::new(Dtls {
            state: State::Unstarted(Some(ssl)),
            events: VecDeque::new(),
            now,
            deadline: None,
            active: false,
            closing: false,
            connected_at: None,
            app_data: false,
        }))
    }
}

/// One session's DTLS.
pub struct Dtls {
    state: State,
    /// What `poll_output` hands out next, in order.
    events: VecDeque<Event>,
    /// The latest time str0m told us.
    now: Instant,
    /// When OpenSSL wants to retransmit its last flight.
    deadline: Option<Instant>,
    active: bool,
    closing: bool,
    /// When the handshake completed (the latest time str0m had told us by then).
    connected_at: Option<Instant>,
    /// Whether application data (SCTP, data channels) went either way: then the state stays.
    app_data: bool,
}

enum State {
    /// Until str0m says which side we are.
    Unstarted(Option<Ssl>),
    Handshaking(SslStream<Datagrams>),
    Connected(SslStream<Datagrams>),
    /// Connected, and the OpenSSL state let go ([`RELEASE_AFTER`]).
    Released,
    Closed,
}

enum Event {
    Packet(Vec<u8>),
    PeerCert(Vec<u8>),
    Keys(KeyingMaterial, SrtpProfile),
    Connected,
    Data(Vec<u8>),
    CloseNotify,
}

// The OpenSSL handles are only reached through `&mut self`; a panic leaves nothing half-shared.
impl UnwindSafe for Dtls {}
impl RefUnwindSafe for Dtls {}

impl std::fmt::Debug for Dtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Unstarted(_) => "unstarted",
            State::Handshaking(_) => "handshaking",
            State::Connected(_) => "connected",
            State::Released => "released",
            State::Closed => "closed",
        };
        f.debug_struct("Dtls").field("state", &state).finish()
    }
}

/// The BIO under OpenSSL: whole datagrams in and out, never blocking.
#[derive(Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(datagram) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a session's DTLS ended, for the log; str0m only needs to know that it did.
fn fail(why: impl std::fmt::Display) -> DtlsImplError {
    debug!("DTLS failed: {why}");
    DtlsImplError::ConnectionClosed
}

impl Dtls {
    /// When this session's OpenSSL state goes, if it is to.
    fn release_at(&self) -> Option<Instant> {
        let connected = matches!(self.state, State::Connected(_));
        if connected && !self.app_data && !self.closing {
            self.connected_at.map(|at| at + RELEASE_AFTER)
        } else {
            None
        }
    }

    fn stream(&mut self) -> Option<&mut SslStream<Datagrams>> {
        match &mut self.state {
            State::Handshaking(s) | State::Connected(s) => Some(s),
            _ => None,
        }
    }

    /// Moves the handshake on and reads what arrived, then queues what OpenSSL wrote.
    fn advance(&mut self) -> Result<(), DtlsImplError> {
        let queued = self.events.len();
        let result = self.step();
        // What OpenSSL wrote goes before what this step found (the handshake's last flight
        // before `Connected`), after what was already queued.
        self.queue_sent(queued);
        if let Some(stream) = self.stream() {
            self.deadline = retransmit_in(stream).map(|d| self.now + d);
        }
        if result.is_err() {
            self.state = State::Closed;
        }
        result
    }

    /// Datagrams OpenSSL wrote, into the events at `at`.
    fn queue_sent(&mut self, at: usize) {
        let Some(stream) = self.stream() else { return };
        let sent: Vec<_> = stream.get_mut().outgoing.drain(..).collect();
        for (i, datagram) in sent.into_iter().enumerate() {
            self.events.insert(at + i, Event::Packet(datagram));
        }
    }

    fn step(&mut self) -> Result<(), DtlsImplError> {
        if let State::Handshaking(stream) = &mut self.state {
            match stream.do_handshake() {
                Ok(()) => {
                    let done = connected(stream)?;
                    self.events.extend(done);
                    let State::Handshaking(stream) =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!()
                    };
                    self.state = State::Connected(stream);
                    self.connected_at = Some(self.now);
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(fail(format_args!("handshake: {e}"))),
            }
        }
        let State::Connected(stream) = &mut self.state else {
            return Ok(());
        };
        let mut buf = vec![0; MAX_RECORD];
        loop {
            match stream.ssl_read(&mut buf) {
                Ok(n) => {
                    self.app_data = true;
                    self.events.push_back(Event::Data(buf[..n].to_vec()));
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.events.push_back(Event::CloseNotify);
                    self.closing = true;
                    return Ok(());
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(fail(format_args!("read: {e}"))),
            }
        }
    }
}

/// `bytes` into the front of `buf`, which is known to be large enough.
fn put<'a>(buf: &'a mut [u8], bytes: &[u8]) -> &'a [u8] {
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out
}

fn would_block(e: &openssl::ssl::Error) -> bool {
    matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
}

/// What str0m learns when the handshake completes: the peer's certificate (for its
/// fingerprint), the SRTP keys, and that we are connected.
fn connected(stream: &SslStream<Datagrams>) -> Result<[Event; 3], DtlsImplError> {
    let ssl = stream.ssl();
    let cert = ssl
        .peer_certificate()
        .ok_or_else(|| fail("the peer sent no certificate"))?
        .to_der()
        .map_err(|e| fail(format_args!("peer certificate: {e}")))?;
    let (profile, key_len, salt_len) = match ssl.selected_srtp_profile().map(|p| p.name()) {
        Some("SRTP_AEAD_AES_128_GCM") => (SrtpProfile::AEAD_AES_128_GCM, 16, 12),
        Some("SRTP_AEAD_AES_256_GCM") => (SrtpProfile::AEAD_AES_256_GCM, 32, 12),
        Some("SRTP_AES128_CM_SHA1_80") => (SrtpProfile::AES128_CM_SHA1_80, 16, 14),
        other => return Err(fail(format_args!("no common SRTP profile ({other:?})"))),
    };
    let mut material = vec![0; 2 * (key_len + salt_len)];
    ssl.export_keying_material(&mut material, SRTP_LABEL, None)
        .map_err(|e| fail(format_args!("keying material: {e}")))?;
    Ok([
        Event::PeerCert(cert),
        Event::Keys(KeyingMaterial::new(&material), profile),
        Event::Connected,
    ])
}

/// How long until OpenSSL retransmits its last flight, if it is waiting for an answer.
fn retransmit_in(stream: &SslStream<Datagrams>) -> Option<Duration> {
    let mut left = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: DTLS_CTRL_GET_TIMEOUT writes one timeval through the pointer, which is valid
    // for the call, and the SSL handle is alive as long as `stream`.
    let running = unsafe {
        openssl_sys::SSL_ctrl(
            stream.ssl().as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&mut left as *mut libc::timeval).cast(),
        )
    };
    (running == 1).then(|| {
        Duration::from_secs(left.tv_sec.max(0) as u64)
            + Duration::from_micros(left.tv_usec.max(0) as u64)
    })
}

impl DtlsInstance for Dtls {
    fn set_active(&mut self, active: bool) {
        let State::Unstarted(ssl) = &mut self.state else {
            return;
        };
        let Some(mut ssl) = ssl.take() else { return };
        self.active = active;
        if active {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        match SslStream::new(ssl, Datagrams::default()) {
            Ok(stream) => self.state = State::Handshaking(stream),
            Err(e) => {
                let _ = fail(format_args!("stream: {e}"));
                self.state = State::Closed;
                return;
            }
        }
        // A client speaks first.
        if active {
            let _ = self.advance();
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if matches!(self.state, State::Released) {
            // A late retransmission or alert; the keys are long out.
            return Ok(());
        }
        let Some(stream) = self.stream() else {
            return Err(DtlsImplError::ConnectionClosed);
        };
        if packet.is_empty() {
            // An empty read would look like the end of the stream to OpenSSL.
            return Ok(());
        }
        let incoming = &mut stream.get_mut().incoming;
        if incoming.len() >= MAX_INCOMING {
            return Err(DtlsImplError::ReceiveQueueFull);
        }
        incoming.push_back(packet.to_vec());
        self.advance()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let Some(event) = self.events.pop_front() else {
            let far = self.now + Duration::from_secs(24 * 3600);
            let release = self.release_at().unwrap_or(far);
            return DtlsOutput::Timeout(self.deadline.unwrap_or(far).min(release));
        };
        let needed = match &event {
            Event::Packet(p) | Event::PeerCert(p) | Event::Data(p) => p.len(),
            _ => 0,
        };
        if needed > buf.len() {
            // Kept for the next poll, with a larger buffer.
            self.events.push_front(event);
            return DtlsOutput::BufferTooSmall { needed };
        }
        match event {
            Event::Packet(p) => DtlsOutput::Packet(put(buf, &p)),
            Event::PeerCert(p) => DtlsOutput::PeerCert(put(buf, &p)),
            Event::Data(p) => DtlsOutput::ApplicationData(put(buf, &p)),
            Event::Keys(material, profile) => DtlsOutput::KeyingMaterial(material, profile),
            Event::Connected => DtlsOutput::Connected,
            Event::CloseNotify => DtlsOutput::CloseNotify,
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = now;
        if self.release_at().is_some_and(|at| at <= now) {
            self.state = State::Released;
            self.deadline = None;
            return Ok(());
        }
        if self.deadline.is_none_or(|d| d > now) {
            return Ok(());
        }
        let Some(stream) = self.stream() else {
            return Ok(());
        };
        // SAFETY: DTLS_CTRL_HANDLE_TIMEOUT takes no pointer; the SSL handle is alive.
        let handled = unsafe {
            openssl_sys::SSL_ctrl(
                stream.ssl().as_ptr(),
                DTLS_CTRL_HANDLE_TIMEOUT,
                0,
                std::ptr::null_mut(),
            )
        };
        if handled < 0 {
            self.state = State::Closed;
            return Err(fail("too many retransmissions"));
        }
        self.advance()
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        if matches!(self.state, State::Released | State::Closed) {
            return Err(DtlsImplError::ConnectionClosed);
        }
        if !data.is_empty() {
            self.app_data = true;
        }
        let State::Connected(stream) = &mut self.state else {
            // Kept by str0m until the handshake is done.
            return Ok(0);
        };
        if data.is_empty() {
            return Ok(0);
        }
        match stream.ssl_write(data) {
            Ok(n) => {
                self.advance()?;
                Ok(n)
            }
            Err(e) if would_block(&e) => Ok(0),
            Err(e) => Err(fail(format_args!("write: {e}"))),
        }
    }

    fn is_active(&self) -> bool {
        self.active
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        matches!(self.state, State::Connected(_) | State::Released)
            .then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.closing && !self.events.is_empty()
    }

    fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed) || (self.closing && self.events.is_empty())
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.closing = true;
        if let State::Connected(stream) = &mut self.state {
            let _ = stream.shutdown();
            self.queue_sent(self.events.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::rsa::Rsa;
    use openssl::x509::X509NameBuilder;

    /// A self-signed RSA certificate, as GStreamer's `webrtcbin` makes.
    fn rsa_cert() -> DtlsCert {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "gstreamer").unwrap();
        let name = name.build();
        let mut x509 = X509::builder().unwrap();
        x509.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        x509.set_serial_number(&serial).unwrap();
        x509.set_subject_name(&name).unwrap();
        x509.set_issuer_name(&name).unwrap();
        x509.set_pubkey(&key).unwrap();
        x509.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        x509.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        x509.sign(&key, MessageDigest::sha256()).unwrap();
        DtlsCert {
            certificate: x509.build().to_der().unwrap(),
            private_key: key.private_key_to_der().unwrap(),
        }
    }

    #[derive(Default, Debug)]
    struct Seen {
        peer_cert: Option<Vec<u8>>,
        keys: Option<(Vec<u8>, SrtpProfile)>,
        connected: bool,
        data: Vec<Vec<u8>>,
    }

    /// Polls `from` until it waits, handing its datagrams to `to`; returns how many went.
    fn pump(from: &mut dyn DtlsInstance, to: &mut dyn DtlsInstance, seen: &mut Seen) -> usize {
        let mut buf = vec![0; 2000];
        let mut sent = 0;
        loop {
            match from.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    let p = p.to_vec();
                    sent += 1;
                    // Errors surface through the peer's own events; a refused record is fine.
                    let _ = to.handle_packet(&p);
                }
                DtlsOutput::PeerCert(c) => seen.peer_cert = Some(c.to_vec()),
                DtlsOutput::KeyingMaterial(k, p) => seen.keys = Some((k.to_vec(), p)),
                DtlsOutput::Connected => seen.connected = true,
                DtlsOutput::ApplicationData(d) => seen.data.push(d.to_vec()),
                DtlsOutput::Timeout(_) => return sent,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn handshake(client: &mut dyn DtlsInstance, server: &mut dyn DtlsInstance) -> (Seen, Seen) {
        let (mut c, mut s) = (Seen::default(), Seen::default());
        client.set_active(true);
        server.set_active(false);
        for _ in 0..20 {
            // dimpl starts on its first timer.
            let now = Instant::now();
            client.handle_timeout(now).unwrap();
            server.handle_timeout(now).unwrap();
            let moved = pump(client, server, &mut c) + pump(server, client, &mut s);
            if moved == 0 && c.connected && s.connected {
                break;
            }
        }
        (c, s)
    }

    fn ours(cert: &DtlsCert) -> Box<dyn DtlsInstance> {
        provider()
            .new_dtls(cert, Instant::now(), DtlsVersion::Dtls12, None)
            .unwrap()
    }

    fn dimpl(cert: &DtlsCert) -> Box<dyn DtlsInstance> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .new_dtls(cert, Instant::now(), DtlsVersion::Dtls12, Some(1150))
            .unwrap()
    }

    #[test]
    fn a_client_with_an_rsa_certificate_connects_and_both_sides_hold_the_same_srtp_keys() {
        let server_cert = certificate().unwrap();
        let client_cert = rsa_cert();
        let (mut client, mut server) = (ours(&client_cert), ours(&server_cert));
        let (c, s) = handshake(client.as_mut(), server.as_mut());
        assert!(c.connected && s.connected, "client {c:?}, server {s:?}");
        assert_eq!(s.peer_cert.as_deref(), Some(&client_cert.certificate[..]));
        assert_eq!(c.peer_cert.as_deref(), Some(&server_cert.certificate[..]));
        let (keys, profile) = s.keys.clone().unwrap();
        assert_eq!(
            profile,
            SrtpProfile::AEAD_AES_128_GCM,
            "the cheaper GCM is chosen"
        );
        assert_eq!(keys.len(), 56);
        assert_eq!(c.keys.map(|k| k.0), Some(keys));

        // Application data (SCTP, for data channels) both ways.
        let (mut c, mut s) = (Seen::default(), Seen::default());
        assert_eq!(client.send_application_data(b"ping").unwrap(), 4);
        pump(client.as_mut(), server.as_mut(), &mut c);
        pump(server.as_mut(), client.as_mut(), &mut s);
        assert_eq!(s.data, vec![b"ping".to_vec()]);
        assert_eq!(server.send_application_data(b"pong").unwrap(), 4);
        pump(server.as_mut(), client.as_mut(), &mut s);
        pump(client.as_mut(), server.as_mut(), &mut c);
        assert_eq!(c.data, vec![b"pong".to_vec()]);
    }

    #[test]
    fn str0m_s_own_dtls_connects_to_ours_both_ways() {
        let a = certificate().unwrap();
        let b = certificate().unwrap();
        let (mut client, mut server) = (dimpl(&a), ours(&b));
        let (c, s) = handshake(client.as_mut(), server.as_mut());
        assert!(
            c.connected && s.connected,
            "dimpl client {c:?}, our server {s:?}"
        );
        assert_eq!(c.keys.map(|k| k.0), s.keys.map(|k| k.0));

        let (mut client, mut server) = (ours(&a), dimpl(&b));
        let (c, s) = handshake(client.as_mut(), server.as_mut());
        assert!(
            c.connected && s.connected,
            "our client {c:?}, dimpl server {s:?}"
        );
        assert_eq!(c.keys.map(|k| k.0), s.keys.map(|k| k.0));
    }

    #[test]
    fn a_quiet_session_lets_its_openssl_state_go_and_one_with_data_keeps_it() {
        let t0 = Instant::now();
        let connect = || {
            let (mut client, mut server) = (ours(&rsa_cert()), ours(&certificate().unwrap()));
            let (c, s) = handshake(client.as_mut(), server.as_mut());
            assert!(c.connected && s.connected);
            (client, server)
        };
        let (_client, mut quiet) = connect();
        let mut buf = vec![0; 2000];
        let DtlsOutput::Timeout(at) = quiet.poll_output(&mut buf) else {
            panic!("nothing else to say")
        };
        assert!(at <= t0 + RELEASE_AFTER + Duration::from_secs(5), "{at:?}");
        quiet.handle_timeout(at).unwrap();
        assert_eq!(format!("{quiet:?}"), "Dtls { state: \"released\" }");
        assert_eq!(quiet.protocol_version(), Some(ProtocolVersion::DTLS1_2));
        // Late records are ignored; no data channel can start now.
        quiet
            .handle_packet(&[21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 1, 0])
            .unwrap();
        assert!(quiet.send_application_data(b"late").is_err());

        let (mut client, mut busy) = connect();
        client.send_application_data(b"sctp").unwrap();
        let mut seen = Seen::default();
        pump(client.as_mut(), busy.as_mut(), &mut Seen::default());
        pump(busy.as_mut(), client.as_mut(), &mut seen);
        busy.handle_timeout(t0 + RELEASE_AFTER * 3).unwrap();
        assert_eq!(format!("{busy:?}"), "Dtls { state: \"connected\" }");
        assert_eq!(busy.send_application_data(b"still").unwrap(), 5);
    }

    #[test]
    fn a_lost_flight_is_sent_again_when_its_timer_fires() {
        let (mut client, _server) = (ours(&rsa_cert()), ours(&certificate().unwrap()));
        client.set_active(true);
        let mut buf = vec![0; 2000];
        let DtlsOutput::Packet(_) = client.poll_output(&mut buf) else {
            panic!("a client speaks first")
        };
        let DtlsOutput::Timeout(at) = client.poll_output(&mut buf) else {
            panic!("then waits")
        };
        let wait = at.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        // OpenSSL's own clock must pass the deadline too.
        std::thread::sleep(wait + Duration::from_millis(50));
        client
            .handle_timeout(at + Duration::from_millis(50))
            .unwrap();
        assert!(
            matches!(client.poll_output(&mut buf), DtlsOutput::Packet(_)),
            "the ClientHello again"
        );
    }

    #[test]
    fn garbage_before_the_handshake_is_dropped_and_the_session_still_connects() {
        let mut server = ours(&certificate().unwrap());
        server.set_active(false);
        // A truncated handshake record, noise, and nothing at all.
        for junk in [
            &[22, 254, 253, 0, 0, 1, 2, 3][..],
            &[0xff; 300][..],
            &[][..],
        ] {
            server.handle_packet(junk).unwrap();
        }
        let mut client = ours(&rsa_cert());
        let (c, s) = handshake(client.as_mut(), server.as_mut());
        assert!(c.connected && s.connected, "client {c:?}, server {s:?}");
    }
}
