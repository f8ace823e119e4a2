//! Signaling as clients send it: each line is one socket's message (the first byte picks
//! which of four sockets, the rest is its text). Whatever arrives, nothing panics, rooms
//! never hold more than the sockets there are, and a socket that went is never sent to.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calls::directory::Embedded;
use calls::protocol::{self, Person};
use calls::switchboard::{Out, RoomRules, Switchboard};
use libfuzzer_sys::fuzz_target;
use pipelines::config::CallUser;

const USERS: [&str; 4] = ["alice", "bob", "carol", "alice"];

fn user(id: &str, contacts: &[&str]) -> CallUser {
    CallUser {
        id: id.into(),
        name: String::new(),
        contacts: contacts.iter().map(|c| c.to_string()).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let directory = Arc::new(Embedded::new(&[
        user("alice", &["bob", "carol"]),
        user("bob", &["alice", "carol"]),
        user("carol", &["alice", "bob"]),
    ]));
    let rooms = HashMap::from([(
        "small".to_owned(),
        RoomRules { pin: Some("1234".into()), max: Some(2) },
    )]);
    let mut board = Switchboard::new(directory, rooms, Duration::from_secs(30), 3);
    let start = Instant::now();
    let mut open = HashSet::new();
    for (socket, id) in USERS.iter().enumerate() {
        let person = Person { id: id.to_string(), name: id.to_string() };
        board.connect(socket as u64, person);
        open.insert(socket as u64);
    }
    let check = |outs: &[Out], open: &HashSet<u64>| {
        for out in outs {
            if let Out::Send(socket, _) = out {
                assert!(open.contains(socket), "sent to socket {socket}, which went");
            }
        }
    };
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let Some((&pick, text)) = line.split_first() else { continue };
        let socket = u64::from(pick % 4);
        let now = start + Duration::from_secs(i as u64);
        if pick >= 0xf0 {
            // The socket goes (a closed tab), and comes back.
            let outs = board.disconnect(socket, now, i as u64);
            open.remove(&socket);
            check(&outs, &open);
            let id = USERS[socket as usize];
            let outs = board.connect(socket, Person { id: id.into(), name: id.into() });
            open.insert(socket);
            check(&outs, &open);
            continue;
        }
        let Ok(text) = std::str::from_utf8(text) else { continue };
        if let Ok(message) = protocol::parse(text) {
            let outs = board.message(socket, message, now, i as u64);
            check(&outs, &open);
        }
        check(&board.tick(now, i as u64), &open);
        let (_, participants) = board.rooms();
        assert!(participants <= 4, "{participants} participants of 4 sockets");
    }
});
