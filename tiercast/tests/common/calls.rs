//! Calls in tests: a node's `[calls]` with four users, their tokens, and their devices'
//! signaling WebSockets.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Node;

pub const SECRET: &str = "calls-secret-0123456789abcdef";

/// alice may call bob and carol (each lists her back); dave lists nobody. `standup` has a PIN
/// and holds three; other rooms are made when first joined. The call server on a free port of
/// every address, as deployed (its answers name the default route's address, which libnice
/// pairs with; it gathers no loopback candidates).
pub fn calls_config(ring_seconds: u32) -> String {
    format!(
        "[calls]\nsecret = \"{SECRET}\"\nring_seconds = {ring_seconds}\nlisten = \"0.0.0.0:0\"\n\
         [[calls.users]]\nid = \"alice\"\nname = \"Alice\"\ncontacts = [\"bob\", \"carol\", \"dave\"]\n\
         [[calls.users]]\nid = \"bob\"\nname = \"Bob\"\ncontacts = [\"alice\"]\n\
         [[calls.users]]\nid = \"carol\"\nname = \"Carol\"\ncontacts = [\"alice\"]\n\
         [[calls.users]]\nid = \"dave\"\nname = \"Dave\"\n\
         [[calls.rooms]]\nname = \"standup\"\npin = \"4321\"\nmax_participants = 3\n"
    )
}

/// The events of `kind` in the node's `events.jsonl`.
pub fn events(node: &Node, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(node.data_dir().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == kind)
        .collect()
}

/// A user token, as an operator mints one.
pub fn token(node: &Node, user: &str, ttl: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["token", "--config"])
        .arg(node.dir.0.join("node.toml"))
        .args(["--user", user, "--ttl", ttl])
        .output()
        .expect("tiercast token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One device of a user: a signaling WebSocket.
pub struct Device {
    pub socket: tungstenite::WebSocket<TcpStream>,
}

/// Opens `/ws` with `query` and `headers`; the HTTP status when the node refuses.
pub fn open(node: &Node, query: &str, headers: &[(&str, &str)]) -> Result<Device, u16> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/ws{query}", node.http);
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(node.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match tungstenite::client::client(request, stream) {
        Ok((socket, _)) => Ok(Device { socket }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

impl Device {
    pub fn of(node: &Node, user: &str) -> Device {
        let token = token(node, user, "1h");
        let mut device = open(node, &format!("?token={token}"), &[]).expect("the socket opens");
        let welcome = device.expect("welcome");
        assert_eq!(welcome["user"]["id"], user);
        device
    }

    pub fn send(&mut self, message: Value) {
        self.send_text(&message.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(tungstenite::Message::Text(text.into()))
            .expect("sent");
    }

    /// The next frame before `deadline` (`Err` once the socket has ended), if one comes.
    pub fn frame_before(&mut self, deadline: Instant) -> Option<Result<tungstenite::Message, ()>> {
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(frame) => return Some(Ok(frame)),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(Err(())),
            }
        }
        None
    }

    /// The next message, if one comes within `limit`.
    pub fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            match self.frame_before(deadline)? {
                Ok(tungstenite::Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).unwrap());
                }
                Ok(_) => {}
                Err(()) => return None,
            }
        }
    }

    /// The next message, which must be of `kind`, within 10 s.
    pub fn expect(&mut self, kind: &str) -> Value {
        let message = self
            .next_within(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no {kind} within 10 s"));
        assert_eq!(message["type"], kind, "{message}");
        message
    }

    /// Whether the node has closed the socket (within 5 s).
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.frame_before(deadline) {
                Some(Ok(tungstenite::Message::Close(_))) | Some(Err(())) => return true,
                Some(Ok(_)) => {}
                None => return false,
            }
        }
    }
}
