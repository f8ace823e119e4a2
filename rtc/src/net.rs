//! Addresses a node gives its peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The address WebRTC peers are told to send to (our ICE candidate): `advertise` when set;
/// else the address the socket is bound to; else, for a socket bound to all addresses, the
/// address this machine's default route leaves from (so browsers on this machine and its
/// network reach it), or 127.0.0.1 without one. Nothing is sent to find it.
pub fn candidate_ip(bound: IpAddr, advertise: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = advertise {
        return ip;
    }
    if !bound.is_unspecified() {
        return bound;
    }
    let outbound = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        // A connected UDP socket only picks a route and a source address.
        // (198.51.100.1 is a documentation address, reached like any other through the
        // default route.)
        s.connect(SocketAddr::from(([198, 51, 100, 1], 9)))?;
        s.local_addr()
    });
    match outbound {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => IpAddr::from(Ipv4Addr::LOCALHOST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_then_bound_then_a_routed_address() {
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let bound: IpAddr = "127.0.0.1".parse().unwrap();
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        assert_eq!(candidate_ip(any, Some(public)), public);
        assert_eq!(candidate_ip(bound, None), bound);
        assert!(!candidate_ip(any, None).is_unspecified());
    }
}
