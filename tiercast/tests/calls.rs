//! Calls' signaling against the real binary: users hold tokens minted by
//! `tiercast token --user`, and each of their devices is a WebSocket client (tungstenite) on
//! `GET /ws`. What each device is told is what a call page would show.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

use common::calls::{Device, calls_config, events, open, token};

#[test]
fn a_call_rings_on_every_device_is_answered_on_one_and_hung_up() {
    let node = start_node(&calls_config(30));
    let mut alice = Device::of(&node, "alice");
    let mut bob_phone = Device::of(&node, "bob");
    // Alice sees bob come online.
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","user":"bob","online":true})
    );
    let mut bob_laptop = Device::of(&node, "bob");

    alice.send(json!({"type":"call","to":"bob"}));
    let ringing = alice.expect("ringing");
    let call = ringing["call"].as_str().unwrap().to_owned();
    assert_eq!(call.len(), 32, "{ringing}");
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let ring = bob.expect("ring");
        assert_eq!(ring["from"], json!({"id":"alice","name":"Alice"}));
    }
    bob_laptop.send(json!({"type":"accept","call":call}));
    let accepted = alice.expect("accepted");
    assert_eq!(bob_laptop.expect("accepted"), accepted);
    assert_eq!(
        bob_phone.expect("answered_elsewhere")["call"],
        call.as_str()
    );
    // Their room is theirs: both join, and see each other.
    let room = accepted["room"].as_str().unwrap().to_owned();
    alice.send(json!({"type":"join","room":room}));
    alice.expect("joined");
    bob_laptop.send(json!({"type":"join","room":room}));
    let joined = bob_laptop.expect("joined");
    assert_eq!(joined["participants"][0]["id"], "alice");
    assert_eq!(
        alice.expect("participant_joined")["participant"]["id"],
        "bob"
    );

    std::thread::sleep(Duration::from_secs(1));
    alice.send(json!({"type":"hangup","call":call}));
    let hung_up = bob_laptop.expect("hung_up");
    assert_eq!(hung_up, json!({"type":"hung_up","call":call,"by":"alice"}));
    let started = events(&node, "call.started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["call"], call.as_str());
    assert_eq!(started[0]["participants"], json!(["alice", "bob"]));
    // The event is written as the node goes on: wait for it a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&node, "call.ended").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = events(&node, "call.ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0]["duration_secs"].as_f64().unwrap() >= 1.0,
        "{ended:?}"
    );
    assert_eq!(events(&node, "participant.joined").len(), 2);
}

#[test]
fn offline_strangers_rejections_and_calls_nobody_answers() {
    let node = start_node(&calls_config(5));
    let mut alice = Device::of(&node, "alice");
    // Carol is offline: alice is told at once; carol hears of it when she comes.
    alice.send(json!({"type":"call","to":"carol"}));
    assert_eq!(
        alice.expect("offline"),
        json!({"type":"offline","to":"carol"})
    );
    let token = token(&node, "carol", "1h");
    let mut carol = open(&node, &format!("?token={token}"), &[]).unwrap();
    carol.expect("welcome");
    assert_eq!(carol.expect("missed_call")["from"]["id"], "alice");
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","user":"carol","online":true})
    );
    // Dave does not list alice: refused.
    let mut dave = Device::of(&node, "dave");
    alice.send(json!({"type":"call","to":"dave"}));
    assert_eq!(alice.expect("error")["code"], "not_a_contact");
    assert!(
        dave.next_within(Duration::from_millis(500)).is_none(),
        "dave never rang"
    );
    // Bob rejects.
    let mut bob = Device::of(&node, "bob");
    alice.expect("presence");
    alice.send(json!({"type":"call","to":"bob"}));
    let call = alice.expect("ringing")["call"].clone();
    bob.expect("ring");
    bob.send(json!({"type":"reject","call":call}));
    assert_eq!(alice.expect("rejected")["call"], call);
    // Bob does not answer: after ring_seconds (5) both are told.
    alice.send(json!({"type":"call","to":"bob"}));
    let call = alice.expect("ringing")["call"].clone();
    bob.expect("ring");
    let asked = Instant::now();
    assert_eq!(alice.expect("no_answer")["call"], call);
    assert!(
        asked.elapsed() >= Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(bob.expect("no_answer")["call"], call);
    // The caller gives up: the callee stops ringing.
    alice.send(json!({"type":"call","to":"bob"}));
    let call = alice.expect("ringing")["call"].clone();
    bob.expect("ring");
    alice.send(json!({"type":"cancel","call":call}));
    assert_eq!(bob.expect("cancelled")["call"], call);
    assert!(
        events(&node, "call.started").is_empty(),
        "no call was answered"
    );
}

#[test]
fn rooms_keep_their_pin_size_and_mute_states_and_lose_a_dead_browser() {
    let node = start_node(&calls_config(30));
    let mut alice = Device::of(&node, "alice");
    let mut bob = Device::of(&node, "bob");
    alice.expect("presence");
    let mut carol = Device::of(&node, "carol");
    let mut dave = Device::of(&node, "dave");
    alice.expect("presence");
    alice.send(json!({"type":"join","room":"standup","pin":"0000"}));
    assert_eq!(alice.expect("error")["code"], "wrong_pin");
    for d in [&mut alice, &mut bob, &mut carol] {
        d.send(json!({"type":"join","room":"standup","pin":"4321"}));
        d.expect("joined");
    }
    dave.send(json!({"type":"join","room":"standup","pin":"4321"}));
    assert_eq!(dave.expect("error")["code"], "room_full");
    // Bob mutes his microphone; the others see it.
    bob.send(json!({"type":"tracks","room":"standup","tracks":[
        {"source":"camera","muted":false},{"source":"microphone","muted":true}]}));
    for d in [&mut alice, &mut carol] {
        let tracks = loop {
            let m = d
                .next_within(Duration::from_secs(10))
                .expect("bob's tracks");
            if m["type"] == "participant_tracks" {
                break m;
            }
        };
        assert_eq!(tracks["user"], "bob");
        assert_eq!(
            tracks["tracks"][1],
            json!({"source":"microphone","muted":true})
        );
    }
    // Carol's browser dies (the socket goes without a word): she is gone from the others.
    drop(carol);
    for d in [&mut alice, &mut bob] {
        let left = loop {
            let m = d
                .next_within(Duration::from_secs(5))
                .expect("carol left within 5 s");
            if m["type"] == "participant_left" {
                break m;
            }
        };
        assert_eq!(left["user"], "carol");
    }
    alice.send(json!({"type":"leave","room":"standup"}));
    bob.send(json!({"type":"leave","room":"standup"}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while events(&node, "call.ended").is_empty() {
        assert!(Instant::now() < deadline, "the room never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = &events(&node, "call.ended")[0];
    assert_eq!(ended["kind"], "room");
    assert_eq!(ended["participants"], json!(["alice", "bob", "carol"]));
}

#[test]
fn bad_tokens_and_bad_messages_cost_only_their_socket() {
    let node = start_node(&calls_config(30));
    assert_eq!(open(&node, "", &[]).err(), Some(401), "no token");
    let forged = {
        let real = token(&node, "alice", "1h");
        let mut parts: Vec<&str> = real.split('.').collect();
        parts[2] = "AAAA";
        parts.join(".")
    };
    assert_eq!(
        open(&node, &format!("?token={forged}"), &[]).err(),
        Some(401)
    );
    let short = token(&node, "alice", "1s");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        open(&node, &format!("?token={short}"), &[]).err(),
        Some(401),
        "expired"
    );
    let stranger = token(&node, "mallory", "1h");
    assert_eq!(
        open(&node, &format!("?token={stranger}"), &[]).err(),
        Some(403),
        "not a user"
    );
    let good = token(&node, "alice", "1h");
    let other_site = [("Origin", "http://evil.example")];
    assert_eq!(
        open(&node, &format!("?token={good}"), &other_site).err(),
        Some(403)
    );

    let mut alice = Device::of(&node, "alice");
    let mut bob = Device::of(&node, "bob");
    alice.expect("presence");
    for junk in ["not json", "{}", r#"{"type":"fly"}"#, r#"{"type":"call"}"#] {
        alice.send_text(junk);
        assert_eq!(alice.expect("error")["code"], "bad_message", "{junk}");
    }
    alice.send(json!({"type":"ping"}));
    alice.expect("pong");
    // Bob cannot touch alice's calls.
    bob.send(json!({"type":"hangup","call":"0".repeat(32)}));
    assert_eq!(bob.expect("error")["code"], "no_such_call");
    // An oversized message: told, and that socket only is closed.
    alice.send_text(&format!(
        r#"{{"type":"call","to":"{}"}}"#,
        "x".repeat(70 * 1024)
    ));
    assert_eq!(alice.expect("error")["code"], "too_large");
    assert!(alice.closed(), "the oversized sender's socket is closed");
    bob.send(json!({"type":"ping"}));
    loop {
        let m = bob
            .next_within(Duration::from_secs(5))
            .expect("bob still answered");
        if m["type"] == "pong" {
            break;
        }
    }
}

/// A user directory service as an operator runs one (`GET /users/<id>`), answering from
/// `users`; while `down`, it answers 503. It counts what it is asked.
struct DirectoryService {
    addr: std::net::SocketAddr,
    users: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DirectoryService {
    fn start(users: &[(&str, &[&str])]) -> DirectoryService {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let service = DirectoryService {
            addr: listener.local_addr().unwrap(),
            users: Default::default(),
            down: Default::default(),
            asked: Default::default(),
        };
        for (id, contacts) in users {
            service.set(id, contacts);
        }
        let (known, down, asked) = (
            service.users.clone(),
            service.down.clone(),
            service.asked.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                asked.fetch_add(1, Ordering::Relaxed);
                let path = line.split_whitespace().nth(1).unwrap_or_default();
                let id = path.strip_prefix("/users/").unwrap_or_default();
                let user = known.lock().unwrap().get(id).cloned();
                let (status, body) = match user {
                    _ if down.load(Ordering::Relaxed) => ("503 Unavailable", String::new()),
                    Some(user) => ("200 OK", user.to_string()),
                    None => ("404 Not Found", String::new()),
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        service
    }

    fn set(&self, id: &str, contacts: &[&str]) {
        let user = json!({"id": id, "name": id.to_uppercase(), "contacts": contacts});
        self.users.lock().unwrap().insert(id.to_owned(), user);
    }
}

#[test]
fn a_directory_service_says_who_may_call_whom_and_refuses_when_it_is_down() {
    use std::sync::atomic::Ordering;
    let directory = DirectoryService::start(&[
        ("alice", &["bob", "dave"]),
        ("bob", &["alice"]),
        ("dave", &[]),
    ]);
    let node = start_node(&format!(
        "[calls]\nsecret = \"{}\"\nlisten = \"0.0.0.0:0\"\nusers_url = \"http://{}/users\"\nusers_cache_seconds = 1\n",
        common::calls::SECRET,
        directory.addr
    ));
    let mut alice = Device::of(&node, "alice");
    // (Device::of read the welcome; its contacts are the two-way ones.)
    let mut bob = Device::of(&node, "bob");
    assert_eq!(
        alice.expect("presence"),
        json!({"type":"presence","user":"bob","online":true})
    );
    alice.send(json!({"type":"call","to":"bob"}));
    let call = alice.expect("ringing")["call"].clone();
    assert_eq!(
        bob.expect("ring")["from"]["name"],
        "ALICE",
        "named by the directory"
    );
    alice.send(json!({"type":"cancel","call":call}));
    bob.expect("cancelled");
    alice.send(json!({"type":"call","to":"dave"}));
    assert_eq!(alice.expect("error")["code"], "not_a_contact");

    // Bob drops alice: once the cache has let go (1 s), her call is refused.
    directory.set("bob", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    alice.send(json!({"type":"call","to":"bob"}));
    assert_eq!(alice.expect("error")["code"], "not_a_contact");
    // Someone the directory does not know signs in: refused.
    let stranger = token(&node, "mallory", "1h");
    assert_eq!(
        open(&node, &format!("?token={stranger}"), &[]).err(),
        Some(403)
    );

    // The directory goes down: it fails closed; back up, it answers again.
    directory.set("bob", &["alice"]);
    directory.down.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    alice.send(json!({"type":"call","to":"bob"}));
    assert_eq!(alice.expect("error")["code"], "not_a_contact");
    let again = token(&node, "alice", "1h");
    assert_eq!(
        open(&node, &format!("?token={again}"), &[]).err(),
        Some(403)
    );
    directory.down.store(false, Ordering::Relaxed);
    alice.send(json!({"type":"call","to":"bob"}));
    alice.expect("ringing");
    bob.expect("ring");
    assert!(
        directory.asked.load(Ordering::Relaxed) < 40,
        "answers are cached"
    );
}
