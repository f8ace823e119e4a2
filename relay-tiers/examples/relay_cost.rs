//! What the relay's encryption costs a node that sends one rendition to `k` nodes below:
//! the relay's own sealing before TLS (ChaCha20-Poly1305 once per message, the same sealed
//! bytes written to every connection) against TLS (rustls with aws-lc-rs, each connection
//! encrypting on its own), with plain TCP as the floor. Loopback, blocking sockets, one sending
//! thread whose CPU time is read with `RUSAGE_THREAD`, receivers on their own threads (their
//! CPU read the same way).
//!
//! `cargo run --release -p relay-tiers --example relay_cost -- [MiB per connection] [k,k,...]`
//! (defaults: 256 and 1,2,4,8). bench/RESULTS.md has a run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use relay_tiers::relay::tls::ClusterTls;
use rustls::pki_types::ServerName;

/// A message the size of a 2.5 Mb/s rendition's video frame at 30 fps.
const MESSAGE: usize = 10_400;

fn thread_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the call to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Method {
    Plain,
    Sealed,
    Tls,
}

/// The sealing the relay had: one key per tap, the message counter as nonce.
struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Sealer {
    fn seal(&mut self, message: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), message)
            .expect("seals");
        let mut out = Vec::with_capacity(13 + sealed.len());
        out.push(7);
        out.extend_from_slice(&((8 + sealed.len()) as u32).to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&sealed);
        out
    }
}

fn opener_open(cipher: &ChaCha20Poly1305, sealed: &[u8]) -> usize {
    let counter = u64::from_be_bytes(sealed[5..13].try_into().expect("8 bytes")) - 1;
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    cipher
        .decrypt(Nonce::from_slice(&nonce), &sealed[13..])
        .expect("opens")
        .len()
}

/// Sends `total` bytes to each of `k` receivers with `method`; the sender's and the receivers'
/// CPU seconds.
fn run(method: Method, k: usize, total: usize, tls: &ClusterTls) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("bound");
    let key = [7u8; 32];
    let mut receivers = Vec::new();
    for _ in 0..k {
        let client = tls.client_config();
        receivers.push(thread::spawn(move || {
            let socket = TcpStream::connect(addr).expect("connects");
            let start = thread_cpu_seconds();
            let mut received = 0usize;
            match method {
                Method::Plain => {
                    let mut socket = socket;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = socket.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received += n;
                    }
                }
                Method::Sealed => {
                    let cipher = ChaCha20Poly1305::new(&key.into());
                    let mut socket = std::io::BufReader::with_capacity(256 * 1024, socket);
                    let mut head = [0u8; 5];
                    let mut message = Vec::new();
                    while socket.read_exact(&mut head).is_ok() {
                        let len = u32::from_be_bytes(head[1..5].try_into().expect("4")) as usize;
                        message.resize(5 + len, 0);
                        message[..5].copy_from_slice(&head);
                        if socket.read_exact(&mut message[5..]).is_err() {
                            break;
                        }
                        received += opener_open(&cipher, &message);
                    }
                }
                Method::Tls => {
                    let name = ServerName::try_from("127.0.0.1").expect("a name");
                    let connection = rustls::ClientConnection::new(client, name).expect("a client");
                    let mut tls = rustls::StreamOwned::new(connection, socket);
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = tls.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received += n;
                    }
                }
            }
            assert!(received >= total, "received {received} of {total}");
            thread_cpu_seconds() - start
        }));
    }
    let server = tls.server_config();
    let sockets: Vec<TcpStream> = (0..k)
        .map(|_| listener.accept().expect("accepts").0)
        .collect();
    let start = thread_cpu_seconds();
    let message = vec![0x5au8; MESSAGE];
    let count = total.div_ceil(MESSAGE);
    match method {
        Method::Plain => {
            let mut sockets = sockets;
            for _ in 0..count {
                for s in &mut sockets {
                    s.write_all(&message).expect("writes");
                }
            }
        }
        Method::Sealed => {
            let mut sockets = sockets;
            let mut sealer = Sealer {
                cipher: ChaCha20Poly1305::new(&key.into()),
                counter: 0,
            };
            for _ in 0..count {
                let sealed = sealer.seal(&message);
                for s in &mut sockets {
                    s.write_all(&sealed).expect("writes");
                }
            }
        }
        Method::Tls => {
            let mut streams: Vec<_> = sockets
                .into_iter()
                .map(|s| {
                    let connection =
                        rustls::ServerConnection::new(server.clone()).expect("a server");
                    rustls::StreamOwned::new(connection, s)
                })
                .collect();
            for _ in 0..count {
                for s in &mut streams {
                    s.write_all(&message).expect("writes");
                }
            }
            for s in &mut streams {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        }
    }
    let sender = thread_cpu_seconds() - start;
    let receivers: f64 = receivers
        .into_iter()
        .map(|r| r.join().expect("a receiver"))
        .sum();
    (sender, receivers)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let ks: Vec<usize> = args
        .next()
        .map(|a| a.split(',').filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    let total = mib * 1024 * 1024;
    let tls = ClusterTls::from_secret("relay-cost-cluster-secret").expect("TLS");
    println!(
        "{mib} MiB to each of k connections, {MESSAGE}-byte messages; CPU ms per MiB delivered (sender | receivers), and the sender's share of a core at 10 Mb/s to k nodes"
    );
    println!(
        "| k | plain | sealed once | TLS each | TLS / sealed (sender) | sender at 10 Mb/s × k: sealed, TLS |"
    );
    println!("|---|---|---|---|---|---|");
    for k in ks {
        let delivered = (mib * k) as f64;
        let per = |m: Method| {
            let (s, r) = run(m, k, total, &tls);
            (s * 1000.0 / delivered, r * 1000.0 / delivered)
        };
        let plain = per(Method::Plain);
        let sealed = per(Method::Sealed);
        let tls_each = per(Method::Tls);
        // 10 Mb/s = 1.19 MiB/s to each of k nodes.
        let share = |ms_per_mib: f64| ms_per_mib / 1000.0 * 1.19 * k as f64 * 100.0;
        println!(
            "| {k} | {:.2} \\| {:.2} | {:.2} \\| {:.2} | {:.2} \\| {:.2} | {:.2} | {:.3} %, {:.3} % |",
            plain.0,
            plain.1,
            sealed.0,
            sealed.1,
            tls_each.0,
            tls_each.1,
            tls_each.0 / sealed.0,
            share(sealed.0),
            share(tls_each.0),
        );
    }
}
