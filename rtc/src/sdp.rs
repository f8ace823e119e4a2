//! SDP offers as WebRTC clients other than browsers write them, made into what str0m answers
//! (WHIP and WHEP both read offers through [`normalize_offer`]).
//!
//! GStreamer's `webrtcbin` (the WHIP/WHEP clients of gst-plugins-rs, and encoders built on it)
//! writes two things str0m does not take as meant:
//! - Media bundled with the first one has port 0 and `a=bundle-only` (RFC 8843 7.2.1). Port 0
//!   otherwise means "rejected", and str0m reads it so: the audio was answered as refused. These
//!   get port 9, as browsers write it.
//! - H.264 without `packetization-mode`, which means mode 0 (one NAL unit per packet). Pictures
//!   of a real bit rate do not fit a packet, so we send mode 1 (FU-A, STAP-A), which
//!   `webrtcbin`'s depayloader takes, and say so in the answer: such formats are read as
//!   offering `packetization-mode=1`.
//! - Opus as `OPUS/48000`, where RFC 7587 says `opus/48000/2` (two channels always, what is
//!   played being the decoder's choice). Without the channels str0m finds no Opus to answer.

/// Why an HTTP body is not an offer to read: the status to answer and the reason.
pub type NotAnOffer = (u16, &'static str);

/// The SDP text of a WHIP or WHEP request's body: `application/sdp`, at most `max` bytes,
/// UTF-8.
pub fn offer_text<'a>(
    content_type: &str,
    body: &'a [u8],
    max: usize,
) -> Result<&'a str, NotAnOffer> {
    if !content_type.starts_with("application/sdp") {
        return Err((415, "send an SDP offer (application/sdp)"));
    }
    if body.len() > max {
        return Err((413, "the offer is too large"));
    }
    std::str::from_utf8(body).map_err(|_| (400, "the offer is not text"))
}

/// `sdp` with bundle-only media given a port, every H.264 format a packetization mode, and
/// Opus its channels.
pub fn normalize_offer(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    let mut start = 0;
    while start < lines.len() {
        // One section: the session part, or one `m=` line and what follows it.
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |i| start + 1 + i);
        normalize_section(&lines[start..end], &mut out);
        start = end;
    }
    let mut text = out.join("\r\n");
    text.push_str("\r\n");
    text
}

fn normalize_section(section: &[&str], out: &mut Vec<String>) {
    let bundle_only = section.iter().any(|l| l.trim_end() == "a=bundle-only");
    let h264: Vec<&str> = section
        .iter()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, codec)| codec.trim_end().eq_ignore_ascii_case("H264/90000"))
        .map(|(pt, _)| pt)
        .collect();
    let fmtp_of = |pt: &str| {
        section.iter().any(|l| {
            l.strip_prefix("a=fmtp:")
                .and_then(|r| r.split_once(' '))
                .is_some_and(|(p, _)| p == pt)
        })
    };
    for line in section {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=")
            && bundle_only
            && let Some((kind, rest)) = rest.split_once(' ')
            && let Some(rest) = rest.strip_prefix("0 ")
        {
            out.push(format!("m={kind} 9 {rest}"));
            continue;
        }
        if let Some((pt, params)) = line.strip_prefix("a=fmtp:").and_then(|r| r.split_once(' '))
            && h264.contains(&pt)
            && !params.contains("packetization-mode")
        {
            out.push(format!("{line};packetization-mode=1"));
            continue;
        }
        if let Some((pt, codec)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|r| r.split_once(' '))
            && codec.eq_ignore_ascii_case("opus/48000")
        {
            out.push(format!("a=rtpmap:{pt} {codec}/2"));
            continue;
        }
        out.push(line.to_owned());
        if let Some((pt, _)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|r| r.split_once(' '))
            && h264.contains(&pt)
            && !fmtp_of(pt)
        {
            out.push(format!("a=fmtp:{pt} packetization-mode=1"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a `whepclientsrc` offer (GStreamer 1.22), cut short.
    const WEBRTCBIN: &str = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE video0 audio1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\na=rtcp-fb:97 nack\r\n\
        a=fmtp:97 profile-level-id=42e016\r\na=rtpmap:98 H264/90000\r\na=mid:video0\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 101\r\nc=IN IP4 0.0.0.0\r\na=bundle-only\r\n\
        a=recvonly\r\na=rtpmap:101 OPUS/48000\r\na=mid:audio1\r\n";

    #[test]
    fn bundle_only_media_gets_a_port_and_h264_gets_mode_1() {
        let sdp = normalize_offer(WEBRTCBIN);
        assert!(
            sdp.contains("\r\nm=audio 9 UDP/TLS/RTP/SAVPF 101\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains("\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=fmtp:97 profile-level-id=42e016;packetization-mode=1\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=1\r\n"),
            "{sdp}"
        );
        assert!(!sdp.contains("a=fmtp:96"), "VP8 is left alone: {sdp}");
        assert!(sdp.contains("a=rtpmap:101 OPUS/48000/2\r\n"), "{sdp}");
        assert_eq!(
            sdp.matches("\r\n").count(),
            WEBRTCBIN.matches("\r\n").count() + 1
        );
    }

    #[test]
    fn a_browser_offer_is_left_as_it_is() {
        let browser = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        // A rejected m-line (port 0 without bundle-only) stays rejected.
        assert_eq!(normalize_offer(browser), browser);
        // Line ends of either kind.
        assert_eq!(normalize_offer(&browser.replace("\r\n", "\n")), browser);
    }
}
