//! `tiercast check`: what an operator sees for good and bad config files.

mod common;

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = common::TempDir::new("check");
    let path = dir.0.join("node.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_accepts_the_documented_config() {
    let (ok, out) = check(
        "[node]\ndata_dir = \"/var/lib/tiercast\"\n[http]\nlisten = \"0.0.0.0:8080\"\n[rtmp]\nlisten = \"0.0.0.0:1935\"\n\
         [[streams]]\nname = \"main\"\nkey = \"s3cret-0123456789ab\"\nladder = \"default\"\n\
         [[ladders.default]]\nname = \"720p\"\nheight = 720\nvideo_kbps = 2800\naudio_kbps = 128\n",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("stream \"main\"") && out.contains("720p"),
        "{out}"
    );
}

#[test]
fn check_names_the_key_and_line_of_a_mistake() {
    let cases = [
        (
            "[rtmp]\nlisten = \"0.0.0.0:1935\"\nlissten = 1\n",
            "lissten",
            "line 3",
        ),
        (
            "[[streams]]\nname = \"a\"\nkey = \"k\"\nladder = \"nope\"\n",
            "streams[0].ladder",
            ":4:",
        ),
        (
            "[[streams]]\nname = \"a\"\nkey = \"k\"\n[[streams]]\nname = \"a\"\nkey = \"j\"\n",
            "duplicate stream name",
            ":5:",
        ),
        (
            "[[ladders.default]]\nname = \"x\"\nheight = 99999\nvideo_kbps = 100\n",
            "ladders.default[0].height",
            ":3:",
        ),
        ("[http]\nlisten = \"not an address\"\n", "listen", "line 2"),
    ];
    for (text, needle, line) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "{text:?} must be refused");
        assert!(
            out.contains(needle) && out.contains(line),
            "{text:?}: {out}"
        );
    }
}

#[test]
fn run_refuses_a_bad_config_before_binding_anything() {
    let dir = common::TempDir::new("run-bad");
    let path = dir.0.join("node.toml");
    std::fs::write(&path, "[hls]\nsegment_seconds = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hls.segment_seconds"));
}

#[test]
fn the_example_config_in_deploy_is_valid_once_its_placeholder_key_is_replaced() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/node.example.toml"
    ))
    .unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("key = \"change-me\""))
        .expect("the example's stream key");
    let (ok, out) = check(&text);
    assert!(!ok, "the placeholder key was taken: {out}");
    assert!(
        out.contains(&format!("node.toml:{line}: streams[0].key")) && out.contains("placeholder"),
        "{out}"
    );
    let (ok, out) = check(&text.replace("\"change-me\"", "\"a-key-of-my-own-4f9a2c\""));
    assert!(ok, "{out}");
    assert!(out.contains("stream \"main\""), "{out}");
}

#[test]
fn check_refuses_guessable_keys_and_secrets_naming_each() {
    let (ok, out) = check(
        "[cluster]\nsecret = \"short\"\n[[streams]]\nname = \"a\"\nkey = \"k\"\n\
         [[streams]]\nname = \"b\"\nkey = \"b-key-nobody-could-guess\"\n",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("node.toml:5: streams[0].key: 1 characters"),
        "{out}"
    );
    assert!(
        out.contains("node.toml:2: cluster.secret: 5 characters"),
        "{out}"
    );
    assert!(!out.contains("streams[1]"), "{out}");
}
