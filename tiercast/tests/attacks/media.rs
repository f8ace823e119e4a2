//! Media validated at the door: bad codec configurations cost only their publisher.

use std::time::Duration;

use crate::common::webrtc::*;
use crate::common::*;
use crate::*;

#[test]
fn a_publisher_with_an_empty_pps_is_refused_and_other_viewers_go_on() {
    let _turn = heavy();
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n\
         [[streams]]\nname = \"other\"\nkey = \"other-key-0123456789\"\n",
    );
    let publisher = publish_main(&node, 60);
    // A WebRTC viewer of `main` (GStreamer's whepclientsrc) watches while the attack goes on.
    let whep = format!("http://{}/whep/main", node.http);
    let viewer = std::thread::spawn(move || gst_play(&whep, 8));

    // An empty PPS, no PPS, a PPS that is an SPS, and a keyframe after each: refused at the
    // door, every time; the stream never goes live.
    let keyframe = vec![
        0x17, 0x01, 0, 0, 0, 0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x33,
    ];
    let empty: &[u8] = &[];
    let sps_as_pps: &[u8] = &[0x67, 0x64, 0x00, 0x1f];
    for pps in [vec![empty], vec![], vec![sps_as_pps]] {
        let mut socket = crafted_publisher(
            node.rtmp,
            "live",
            "other-key-0123456789",
            &[sequence_header(&pps), keyframe.clone(), keyframe.clone()],
        );
        assert!(
            closed_within(&mut socket, Duration::from_secs(5), false),
            "a publisher with PPS {pps:?} was kept"
        );
    }
    let log = node.log();
    assert_eq!(
        log.matches("bad H.264 sequence header").count(),
        3,
        "each refused for its configuration:\n{log}"
    );
    let other = node.get("/api/v1/streams/other").text();
    assert!(!other.contains("\"live\""), "{other}");
    // The same publisher with a real PPS is taken: the door refuses the record, not the client.
    let mut good = crafted_publisher(
        node.rtmp,
        "live",
        "other-key-0123456789",
        &[
            sequence_header(&[&[0x68, 0xeb, 0xe3, 0xcb]]),
            keyframe.clone(),
            keyframe.clone(),
        ],
    );
    assert!(
        !closed_within(&mut good, Duration::from_secs(2), false),
        "a good header was refused"
    );
    drop(good);

    assert_plays(&viewer.join().expect("the viewer ran"), 320, 180);
    drop(publisher);
}
