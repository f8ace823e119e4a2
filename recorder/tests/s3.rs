//! The S3 path against a real S3-API server (moto's, started here on loopback): chunks in a
//! bucket prefix, a multipart upload, a presigned download, and the error a dead store gives.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use pipelines::config::S3Config;
use recorder::chunks::ChunkStore;
use recorder::s3::{Bucket, PART_SIZE};

struct S3Server {
    child: Child,
    _stdin: ChildStdin,
    endpoint: String,
    log: std::path::PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn start_s3(bucket: &str) -> S3Server {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/s3-test-server.py");
    // What it says on its standard error (moto logs every request there), read only if it
    // does not start.
    let log = std::env::temp_dir().join(format!(
        "s3-test-server-{}-{bucket}.log",
        std::process::id()
    ));
    let mut child = Command::new("python3")
        .args([script, bucket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("python3 runs (scripts/setup-tests.sh installs moto)");
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(endpoint) = line.trim().strip_prefix("s3 listening ").map(str::to_owned) else {
        let _ = child.wait();
        let why = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("the S3 server did not start: {line:?}\n{why}");
    };
    S3Server {
        child,
        _stdin: stdin,
        endpoint,
        log,
    }
}

fn config(endpoint: &str, bucket: &str) -> S3Config {
    toml::from_str(&format!(
        "bucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         path_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn chunks_live_in_a_bucket_prefix() {
    let server = start_s3("chunks");
    let bucket = Bucket::connect(&config(&server.endpoint, "chunks")).await;
    bucket.check().await.unwrap();
    let store = ChunkStore::S3 {
        bucket: bucket.clone(),
        prefix: "chunks/".into(),
    };
    for seq in [2u64, 0, 10, 1] {
        let data = Bytes::from(vec![seq as u8; 188 * 10]);
        store.write("main", "s1", seq, data).await.unwrap();
    }
    store
        .write("other", "s9", 0, Bytes::from_static(&[7; 188]))
        .await
        .unwrap();
    assert_eq!(store.list("main", "s1").await.unwrap(), [0, 1, 2, 10]);
    assert_eq!(
        store.read("main", "s1", 10).await.unwrap(),
        vec![10u8; 1880]
    );
    let sessions: Vec<(String, String)> = store
        .sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            let age = s.last_write.elapsed().unwrap_or_default();
            assert!(age < Duration::from_secs(60), "{s:?}");
            (s.stream, s.session)
        })
        .collect();
    assert_eq!(
        sessions,
        [("main".into(), "s1".into()), ("other".into(), "s9".into())]
    );
    store.remove("main", "s1").await.unwrap();
    assert!(store.list("main", "s1").await.unwrap().is_empty());
    assert_eq!(
        bucket.list("chunks/").await.unwrap(),
        ["chunks/other/s9/0000000000.ts"]
    );
}

#[tokio::test]
async fn large_files_go_up_in_parts_and_come_back_through_a_presigned_url() {
    let server = start_s3("objects");
    let bucket = Bucket::connect(&config(&server.endpoint, "objects")).await;
    let dir = std::env::temp_dir().join(format!("tiercast-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.mp4");
    // Two and a half parts of a pattern that shows any part out of place.
    let size = PART_SIZE * 5 / 2;
    let data: Vec<u8> = (0..size).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();

    let reports = std::sync::Mutex::new(Vec::new());
    bucket
        .put_file("recordings/main/s1.mp4", &file, "video/mp4", &|n| {
            reports.lock().unwrap().push(n)
        })
        .await
        .unwrap();
    assert_eq!(
        reports.into_inner().unwrap(),
        [PART_SIZE as u64, 2 * PART_SIZE as u64, size as u64]
    );

    let url = bucket
        .presign_get("recordings/main/s1.mp4", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let downloaded = Command::new("curl")
        .args(["-sSf", &url])
        .output()
        .expect("curl runs");
    assert!(downloaded.status.success(), "{downloaded:?}");
    assert!(
        downloaded.stdout == data,
        "the object differs from the file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_store_that_is_down_is_a_clear_error() {
    let server = start_s3("gone");
    let endpoint = server.endpoint.clone();
    drop(server);
    let bucket = Bucket::connect(&config(&endpoint, "gone")).await;
    let err = bucket
        .put("k", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("put k"), "{err}");
    assert!(bucket.get("k").await.is_err());
}
