//! The fuzz corpus as a regression test: every file under `fuzz/corpus/rtmp_conn`, and
//! deterministic mutations of each (bit flips, truncations, splices, huge lengths), go through
//! a fresh RTMP connection. None may panic or hang.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use ingest::rtmp::conn::{Connection, Event, fuzz_one_connection};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rtmp_conn");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus is empty");
    files
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
        }
        1 => data.truncate(rng.below(data.len())),
        2 => {
            // Overwrite a run with 0xff: huge lengths, chunk sizes, timestamps.
            let at = rng.below(data.len());
            let len = (1 + rng.below(8)).min(data.len() - at);
            data[at..at + len].fill(0xff);
        }
        3 => {
            let at = rng.below(data.len());
            let len = rng.below(4096).min(data.len() - at);
            let copy = data[at..at + len].to_vec();
            let to = rng.below(data.len());
            data.splice(to..to, copy);
        }
        _ => {
            let at = rng.below(data.len());
            for b in &mut data[at..(at + 64).min(seed.len())] {
                *b = rng.next() as u8;
            }
        }
    }
    data
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit` (a hang).
fn bounded(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("input took longer than {limit:?}: a hang"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("input panicked the connection"),
    }
}

#[test]
fn a_recorded_ffmpeg_publish_parses_into_a_publish_and_media() {
    let (_, data) = corpus()
        .into_iter()
        .find(|(n, _)| n == "ffmpeg_publish.bin")
        .expect("ffmpeg recording");
    let mut conn = Connection::new("live");
    let (mut publish, mut video_frames, mut audio_frames) = (None, 0, 0);
    // Small pieces, as a client that waits for each answer sends them: the connection is
    // accepted before the publish that follows it is read.
    for piece in data.chunks(64) {
        let out = conn
            .handle_input(piece)
            .expect("a real ffmpeg session is valid RTMP");
        for event in out.events {
            match event {
                Event::Publish {
                    request_id,
                    app,
                    key,
                } => {
                    publish = Some((app, key));
                    conn.accept(request_id).unwrap();
                }
                Event::Video { .. } => video_frames += 1,
                Event::Audio { .. } => audio_frames += 1,
                _ => {}
            }
        }
    }
    assert_eq!(publish, Some(("live".to_owned(), "s3cret".to_owned())));
    assert!(
        video_frames > 10 && audio_frames > 10,
        "video {video_frames}, audio {audio_frames}"
    );
}

#[test]
fn corpus_and_mutations_never_panic_or_hang() {
    let files = corpus();
    for (name, data) in &files {
        let data = data.clone();
        bounded(Duration::from_secs(20), move || {
            fuzz_one_connection(&data);
        });
        let _ = name;
    }
    let mut rng = Rng(0x7ee5_ca57);
    let inputs: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let (_, seed) = &files[rng.below(files.len())];
            mutate(&mut rng, seed)
        })
        .collect();
    bounded(Duration::from_secs(240), move || {
        for input in inputs {
            fuzz_one_connection(&input);
        }
    });
}
