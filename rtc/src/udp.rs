//! Sending many datagrams from one UDP socket with few system calls: one `sendmmsg(2)` per
//! batch, and a run of equal-sized datagrams to the same address (one viewer's packets of one
//! frame) as one message the kernel segments (UDP GSO, `UDP_SEGMENT`). Where the kernel or the
//! device refuses segmentation, every datagram goes as its own message, still batched. And
//! reading many datagrams with one `recvmmsg(2)` ([`Reader`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// Datagrams one segmented message carries at most (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Bytes one segmented message carries at most.
const MAX_GSO_BYTES: usize = 60_000;
/// Buffers kept for reuse, at most.
const MAX_SPARE: usize = 4096;
/// Messages per `sendmmsg` call.
const MAX_MESSAGES: usize = 256;
/// Datagrams one `recvmmsg` call reads at most.
pub const READ_AT_ONCE: usize = 32;
/// Bytes kept for each datagram read: more than any path's MTU.
const READ_SIZE: usize = 2048;

/// Datagrams waiting to be sent, in order.
pub struct Batch {
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    /// Buffers of datagrams sent, for the next ones (a send costs no allocation).
    spare: Vec<Vec<u8>>,
    gso: bool,
    /// Datagrams sent, for metrics and tests.
    pub sent: u64,
    /// System calls made for them.
    pub calls: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            datagrams: Vec::new(),
            spare: Vec::new(),
            gso: cfg!(target_os = "linux"),
            sent: 0,
            calls: 0,
        }
    }
}

/// One message: datagrams `start..end` of the batch, segmented if more than one.
#[derive(Debug, Clone, Copy)]
struct Message {
    start: usize,
    end: usize,
}

impl Batch {
    pub fn push(&mut self, to: SocketAddr, contents: Vec<u8>) {
        self.datagrams.push((to, contents));
    }

    /// A buffer to make a datagram in: one sent before, still holding its bytes (a writer
    /// overwrites them rather than paying to zero them), or a new one.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(1500))
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Runs of datagrams that can go as one message: same address, all the size of the first
    /// but the last, which may be shorter and ends the run.
    fn messages(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.datagrams.len() {
            let (to, first) = &self.datagrams[i];
            let size = first.len();
            let mut end = i + 1;
            let mut bytes = size;
            while self.gso
                && end < self.datagrams.len()
                && end - i < MAX_SEGMENTS
                && self.datagrams[end].0 == *to
                && self.datagrams[end].1.len() <= size
                && bytes + self.datagrams[end].1.len() <= MAX_GSO_BYTES
            {
                bytes += self.datagrams[end].1.len();
                end += 1;
                if self.datagrams[end - 1].1.len() < size {
                    break;
                }
            }
            out.push(Message { start: i, end });
            i = end;
        }
        out
    }

    /// Sends everything, waiting while the socket's buffer is full. A datagram the kernel
    /// refuses (no route, say) is dropped, as one `send_to` would drop it.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut messages = self.messages();
        let mut done = 0;
        while done < messages.len() {
            let upto = (done + MAX_MESSAGES).min(messages.len());
            let chunk = &messages[done..upto];
            if socket.writable().await.is_err() {
                break;
            }
            let result = socket.try_io(Interest::WRITABLE, || {
                send_messages(socket, &self.datagrams, chunk)
            });
            self.calls += 1;
            match result {
                Ok(n) => {
                    self.sent += chunk[..n]
                        .iter()
                        .map(|m| (m.end - m.start) as u64)
                        .sum::<u64>();
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if self.gso && chunk[0].end - chunk[0].start > 1 && gso_refused(&e) => {
                    warn!("UDP segmentation refused ({e}); sending datagrams one by one");
                    self.gso = false;
                    let rest = Message {
                        start: chunk[0].start,
                        end: messages.last().map_or(0, |m| m.end),
                    };
                    messages.truncate(done);
                    messages.extend((rest.start..rest.end).map(|i| Message {
                        start: i,
                        end: i + 1,
                    }));
                }
                Err(e) => {
                    // The first message of the chunk failed: skip it, keep the rest.
                    debug!(
                        "datagram to {} not sent: {e}",
                        self.datagrams[chunk[0].start].0
                    );
                    done += 1;
                }
            }
        }
        for (_, buf) in self.datagrams.drain(..) {
            if self.spare.len() < MAX_SPARE && buf.capacity() >= 1200 {
                self.spare.push(buf);
            }
        }
    }
}

/// Reads the datagrams waiting on a socket, many per system call.
pub struct Reader {
    buffers: Vec<[u8; READ_SIZE]>,
    /// Where each came from, as the kernel writes it.
    addresses: Vec<libc::sockaddr_storage>,
    /// Each datagram of the last read: its length and where it came from.
    got: Vec<(usize, SocketAddr)>,
    /// System calls made.
    pub calls: u64,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buffers: vec![[0; READ_SIZE]; READ_AT_ONCE],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
            addresses: vec![unsafe { std::mem::zeroed() }; READ_AT_ONCE],
            got: Vec::with_capacity(READ_AT_ONCE),
            calls: 0,
        }
    }
}

impl Reader {
    /// Reads what waits, up to [`READ_AT_ONCE`] datagrams (then [`Reader::datagrams`] has
    /// them); `WouldBlock` when nothing waits, which clears the socket's readiness.
    pub fn read(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        self.calls += 1;
        let (buffers, addresses, got) = (&mut self.buffers, &mut self.addresses, &mut self.got);
        socket.try_io(Interest::READABLE, || {
            receive_messages(socket, buffers, addresses, got)
        })
    }

    /// The datagrams of the last read, in order, with where each came from.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.got
            .iter()
            .zip(&self.buffers)
            .map(|(&(n, from), buffer)| (from, &buffer[..n]))
    }
}

/// One `recvmmsg` call into `buffers`; each datagram's length and source into `got`.
fn receive_messages(
    socket: &UdpSocket,
    buffers: &mut [[u8; READ_SIZE]],
    addresses: &mut [libc::sockaddr_storage],
    got: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<usize> {
    let count = buffers.len().min(addresses.len());
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = (0..count)
        .map(|i| {
            // SAFETY: msghdr is plain data; all zeroes is "no name, no data, no control".
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = &mut addresses[i] as *mut _ as *mut libc::c_void;
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: every header points into `addresses`, `iovecs` and `buffers`, all alive and
    // unmoved until the call returns; the kernel writes within the lengths given.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for (header, address) in headers.iter().zip(addresses.iter()).take(n as usize) {
        // A datagram from an address of no family we know (none on a UDP/IP socket) is
        // dropped.
        if let Some(from) = socket_address(address) {
            got.push((header.msg_len as usize, from));
        } else {
            got.push((0, SocketAddr::from(([0, 0, 0, 0], 0))));
        }
    }
    Ok(n as usize)
}

/// A socket address the kernel wrote, if it is IPv4 or IPv6.
fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks for socket buffers of `bytes` each way (the kernel caps them at `net.core.rmem_max`
/// and `wmem_max`): a node with a thousand viewers takes their RTCP in bursts.
pub fn set_buffers(socket: &impl AsRawFd, bytes: libc::c_int) {
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a plain int option on a socket this process owns.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &bytes as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

/// A socket address in the kernel's form.
fn raw_address(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Room for one `UDP_SEGMENT` control message (a u16), aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentControl([u8; 32]);

/// One `sendmmsg` call for `messages`; the number of messages the kernel took.
fn send_messages(
    socket: &UdpSocket,
    datagrams: &[(SocketAddr, Vec<u8>)],
    messages: &[Message],
) -> io::Result<usize> {
    let count = messages.len();
    let mut addresses = Vec::with_capacity(count);
    let mut iovecs: Vec<libc::iovec> =
        Vec::with_capacity(messages.iter().map(|m| m.end - m.start).sum());
    let mut controls = vec![SegmentControl([0; 32]); count];
    for m in messages {
        addresses.push(raw_address(&datagrams[m.start].0));
        for (_, contents) in &datagrams[m.start..m.end] {
            iovecs.push(libc::iovec {
                iov_base: contents.as_ptr() as *mut libc::c_void,
                iov_len: contents.len(),
            });
        }
    }
    // Every vector above is complete: the pointers taken below stay valid for the call.
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(count);
    let mut iov_at = 0;
    for (i, m) in messages.iter().enumerate() {
        let segments = m.end - m.start;
        // SAFETY: msghdr is plain data; all zeroes is "no name, no data, no control".
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = &mut addresses[i].0 as *mut _ as *mut libc::c_void;
        header.msg_namelen = addresses[i].1;
        header.msg_iov = iovecs[iov_at..].as_mut_ptr();
        header.msg_iovlen = segments as _;
        iov_at += segments;
        if segments > 1 {
            let size = datagrams[m.start].1.len() as u16;
            header.msg_control = controls[i].0.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA only compute offsets into the
            // control buffer set just above, which is large and aligned enough for one
            // control message with a u16.
            unsafe {
                header.msg_controllen = libc::CMSG_SPACE(2) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, size);
            }
        }
        headers.push(libc::mmsghdr {
            msg_hdr: header,
            msg_len: 0,
        });
    }
    // SAFETY: `headers` points into `addresses`, `iovecs`, `controls` and the datagrams, all
    // alive and unmoved until the call returns; the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            0,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_datagram_arrives_whole_and_in_order_with_few_calls() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut batch = Batch::default();
        // Two "frames" per receiver: runs of equal datagrams with a shorter last one.
        let mut expected_a = Vec::new();
        let mut expected_b = Vec::new();
        for frame in 0..2u8 {
            for (to, expected) in [(to_a, &mut expected_a), (to_b, &mut expected_b)] {
                for n in 0..5u8 {
                    let len = if n == 4 { 300 } else { 1100 };
                    let d = vec![frame * 10 + n; len];
                    expected.push(d.clone());
                    batch.push(to, d);
                }
            }
        }
        batch.flush(&tx).await;
        assert_eq!(batch.sent, 20);
        assert!(batch.calls <= 2, "{} calls", batch.calls);
        for (socket, expected) in [(&a, expected_a), (&b, expected_b)] {
            let mut buf = vec![0u8; 2000];
            for want in expected {
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf))
                        .await
                        .expect("a datagram within 5 s")
                        .unwrap();
                assert_eq!(&buf[..n], &want[..]);
            }
        }
    }

    #[tokio::test]
    async fn a_reader_takes_many_datagrams_per_call_with_their_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sent = Vec::new();
        for n in 0..40u8 {
            a.send_to(&vec![n; 100 + usize::from(n)], to).await.unwrap();
            sent.push((a.local_addr().unwrap(), vec![n; 100 + usize::from(n)]));
        }
        let mut reader = Reader::default();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            rx.readable().await.unwrap();
            match reader.read(&rx) {
                Ok(_) => got.extend(reader.datagrams().map(|(f, d)| (f, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert!(reader.calls < 40, "{} calls for 40 datagrams", reader.calls);
        // Nothing waits: the read says so.
        assert_eq!(
            reader.read(&rx).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn runs_break_on_a_new_address_a_longer_datagram_or_a_short_one() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = Batch::default();
        for (to, len) in [(a, 10), (a, 10), (a, 5), (a, 10), (b, 10), (b, 12)] {
            batch.push(to, vec![0; len]);
        }
        let runs: Vec<(usize, usize)> = batch.messages().iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(runs, vec![(0, 3), (3, 4), (4, 5), (5, 6)]);
    }
}
