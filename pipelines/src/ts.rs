//! An MPEG-TS muxer for HLS segments and recording chunks, sans-IO: frames of the internal
//! stream model in, 188-byte packets out. H.264 (AVC in, Annex B out, SPS/PPS before every keyframe) and AAC (raw in,
//! ADTS out). Passthrough renditions never touch GStreamer: this is their whole packaging.

use crate::media::{AudioTrack, Frame, TrackKind, VideoTrack};

pub const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;
/// Every timestamp is shifted by this so PCR (slightly before DTS) never goes negative.
const BASE_90K: u64 = 90_000;
/// PCR runs this far behind the DTS it accompanies (the decoder's buffering time).
const PCR_LEAD_90K: u64 = 9_000;
const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
const START_CODE: [u8; 4] = [0, 0, 0, 1];

#[derive(Debug, Clone)]
pub struct TsMuxer {
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    /// Scratch space reused for each PES payload.
    pes: Vec<u8>,
}

fn ts_90k(t: std::time::Duration) -> u64 {
    (BASE_90K + (t.as_nanos() * 9 / 100_000) as u64) & 0x1_ffff_ffff
}

impl TsMuxer {
    pub fn new(video: Option<VideoTrack>, audio: Option<AudioTrack>) -> TsMuxer {
        TsMuxer {
            video,
            audio,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            cc_audio: 0,
            pes: Vec::new(),
        }
    }

    /// The video configuration (an encoder's is known only once it has negotiated).
    pub fn set_video(&mut self, video: VideoTrack) {
        self.video = Some(video);
    }

    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// PAT and PMT; every segment starts with them.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        // PAT: program 1 -> PMT_PID.
        let pat = [
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00,
            0x00,
            0x01,
            0xe0 | (PMT_PID >> 8) as u8,
            PMT_PID as u8,
        ];
        write_section(out, 0x0000, &mut self.cc_pat, 0x00, &pat);
        let mut pmt = vec![0x00, 0x01, 0xc1, 0x00, 0x00];
        let pcr_pid = if self.video.is_some() {
            VIDEO_PID
        } else {
            AUDIO_PID
        };
        pmt.extend_from_slice(&[0xe0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xf0, 0x00]);
        if self.video.is_some() {
            pmt.extend_from_slice(&[
                STREAM_TYPE_H264,
                0xe0 | (VIDEO_PID >> 8) as u8,
                VIDEO_PID as u8,
                0xf0,
                0x00,
            ]);
        }
        if self.audio.is_some() {
            pmt.extend_from_slice(&[
                STREAM_TYPE_AAC_ADTS,
                0xe0 | (AUDIO_PID >> 8) as u8,
                AUDIO_PID as u8,
                0xf0,
                0x00,
            ]);
        }
        write_section(out, PMT_PID, &mut self.cc_pmt, 0x02, &pmt);
    }

    /// Appends `frame` as one PES to `out`. A video frame with no configuration yet, or an
    /// audio frame without an audio track, is skipped (returns false).
    pub fn write_frame(&mut self, frame: &Frame, out: &mut Vec<u8>) -> bool {
        let mut pes = std::mem::take(&mut self.pes);
        pes.clear();
        let written = match frame.kind {
            TrackKind::Video => match &self.video {
                None => false,
                Some(video) => {
                    pes_header(
                        &mut pes,
                        0xe0,
                        0,
                        ts_90k(frame.pts),
                        Some(ts_90k(frame.dts)),
                    );
                    annex_b(&mut pes, video, &frame.data, frame.keyframe);
                    let pcr = ts_90k(frame.dts).saturating_sub(PCR_LEAD_90K);
                    packetize(
                        out,
                        VIDEO_PID,
                        &mut self.cc_video,
                        &pes,
                        Some(pcr),
                        frame.keyframe,
                    );
                    true
                }
            },
            TrackKind::Audio => match &self.audio {
                None => false,
                Some(audio) => {
                    let len = 7 + frame.data.len();
                    pes_header(&mut pes, 0xc0, len, ts_90k(frame.pts), None);
                    adts_header(&mut pes, audio, len);
                    pes.extend_from_slice(&frame.data);
                    let pcr = (self.video.is_none())
                        .then(|| ts_90k(frame.pts).saturating_sub(PCR_LEAD_90K));
                    packetize(
                        out,
                        AUDIO_PID,
                        &mut self.cc_audio,
                        &pes,
                        pcr,
                        self.video.is_none(),
                    );
                    true
                }
            },
        };
        self.pes = pes;
        written
    }
}

/// PES header; `payload_len` 0 means unbounded (allowed for video).
fn pes_header(out: &mut Vec<u8>, stream_id: u8, payload_len: usize, pts: u64, dts: Option<u64>) {
    let dts = dts.filter(|&d| d != pts);
    let header_data = if dts.is_some() { 10 } else { 5 };
    out.extend_from_slice(&[0, 0, 1, stream_id]);
    let pes_len = if payload_len == 0 {
        0
    } else {
        3 + header_data + payload_len
    };
    let pes_len = if pes_len > 0xffff { 0 } else { pes_len as u16 };
    out.extend_from_slice(&pes_len.to_be_bytes());
    out.push(0x80);
    out.push(if dts.is_some() { 0xc0 } else { 0x80 });
    out.push(header_data as u8);
    write_timestamp(out, if dts.is_some() { 0x3 } else { 0x2 }, pts);
    if let Some(dts) = dts {
        write_timestamp(out, 0x1, dts);
    }
}

fn write_timestamp(out: &mut Vec<u8>, prefix: u8, t: u64) {
    out.push((prefix << 4) | (((t >> 30) & 0x07) as u8) << 1 | 1);
    out.push((t >> 22) as u8);
    out.push((((t >> 15) & 0x7f) as u8) << 1 | 1);
    out.push((t >> 7) as u8);
    out.push(((t & 0x7f) as u8) << 1 | 1);
}

/// AVC length-prefixed NAL units to Annex B, with an access unit delimiter first and the
/// parameter sets before a keyframe that does not carry its own.
fn annex_b(out: &mut Vec<u8>, video: &VideoTrack, data: &[u8], keyframe: bool) {
    out.extend_from_slice(&AUD);
    let nals = || {
        let mut rest = data;
        std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let nal = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            Some(nal)
        })
    };
    if keyframe && !nals().any(|n| n.first().is_some_and(|b| b & 0x1f == 7)) {
        for ps in video.parameter_sets() {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(ps);
        }
    }
    for nal in nals() {
        // The source's own delimiters are replaced by ours.
        if nal.first().is_some_and(|b| b & 0x1f == 9) {
            continue;
        }
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
    }
}

fn adts_header(out: &mut Vec<u8>, audio: &AudioTrack, frame_len: usize) {
    let sr_index = audio.frequency_index & 0x0f;
    let profile = audio.object_type.saturating_sub(1).min(3);
    let channels = audio.channels.min(7);
    let len = frame_len.min(0x1fff);
    out.extend_from_slice(&[
        0xff,
        0xf1,
        (profile << 6) | (sr_index << 2) | (channels >> 2),
        ((channels & 3) << 6) | ((len >> 11) as u8 & 0x03),
        (len >> 3) as u8,
        ((len as u8 & 0x07) << 5) | 0x1f,
        0xfc,
    ]);
}

/// Splits one PES into TS packets; the first carries PCR and random access when asked.
fn packetize(
    out: &mut Vec<u8>,
    pid: u16,
    cc: &mut u8,
    pes: &[u8],
    pcr: Option<u64>,
    random_access: bool,
) {
    let mut rest = pes;
    let mut first = true;
    while !rest.is_empty() || first {
        let start = out.len();
        out.extend_from_slice(&[
            0x47,
            (if first { 0x40 } else { 0 }) | (pid >> 8) as u8 & 0x1f,
            pid as u8,
            0,
        ]);
        let mut adaptation: Vec<u8> = Vec::new();
        if first && (pcr.is_some() || random_access) {
            let mut flags = 0u8;
            if random_access {
                flags |= 0x40;
            }
            adaptation.push(0);
            if let Some(pcr) = pcr {
                flags |= 0x10;
                adaptation.extend_from_slice(&[
                    (pcr >> 25) as u8,
                    (pcr >> 17) as u8,
                    (pcr >> 9) as u8,
                    (pcr >> 1) as u8,
                    (((pcr & 1) as u8) << 7) | 0x7e,
                    0,
                ]);
            }
            adaptation[0] = flags;
        }
        let room = PACKET
            - 4
            - if adaptation.is_empty() {
                0
            } else {
                1 + adaptation.len()
            };
        let take = rest.len().min(room);
        // Stuff the adaptation field so the payload ends the packet exactly.
        if take < room || !adaptation.is_empty() {
            let mut stuffing = room - take;
            if adaptation.is_empty() {
                // An adaptation field of length 0 takes one byte, a longer one at least two.
                stuffing = stuffing.saturating_sub(1);
                if stuffing > 0 {
                    adaptation.push(0);
                    stuffing -= 1;
                }
            }
            adaptation.extend(std::iter::repeat_n(0xff, stuffing));
            out[start + 3] = 0x30 | (*cc & 0x0f);
            out.push(adaptation.len() as u8);
            out.extend_from_slice(&adaptation);
        } else {
            out[start + 3] = 0x10 | (*cc & 0x0f);
        }
        out.extend_from_slice(&rest[..take]);
        debug_assert_eq!(out.len() - start, PACKET);
        rest = &rest[take..];
        *cc = (*cc + 1) & 0x0f;
        first = false;
    }
}

/// One PSI section (PAT or PMT) in one packet, with its CRC.
fn write_section(out: &mut Vec<u8>, pid: u16, cc: &mut u8, table_id: u8, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[
        0x47,
        0x40 | (pid >> 8) as u8,
        pid as u8,
        0x10 | (*cc & 0x0f),
        0x00,
    ]);
    let section_start = out.len();
    let length = body.len() + 4;
    out.extend_from_slice(&[table_id, 0xb0 | (length >> 8) as u8, length as u8]);
    out.extend_from_slice(body);
    let crc = crc32_mpeg2(&out[section_start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.resize(start + PACKET, 0xff);
    *cc = (*cc + 1) & 0x0f;
}

fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::media::Bytes;

    use super::*;
    use crate::media::fixtures::{audio_track, video_track};

    fn frame(kind: TrackKind, ms: u64, keyframe: bool, data: &[u8]) -> Frame {
        let t = Duration::from_millis(ms);
        Frame {
            kind,
            pts: t,
            dts: t,
            keyframe,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// (pid, payload start, continuity counter) of each packet.
    fn packets(ts: &[u8]) -> Vec<(u16, bool, u8)> {
        assert_eq!(ts.len() % PACKET, 0);
        ts.chunks(PACKET)
            .map(|p| {
                assert_eq!(p[0], 0x47);
                (
                    u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]),
                    p[1] & 0x40 != 0,
                    p[3] & 0x0f,
                )
            })
            .collect()
    }

    #[test]
    fn crc_matches_the_mpeg2_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn tables_then_frames_in_whole_packets_with_counting_continuity() {
        let mut m = TsMuxer::new(Some(video_track()), Some(audio_track()));
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let big = vec![0x65u8; 5000];
        let mut nal = (big.len() as u32).to_be_bytes().to_vec();
        nal.extend_from_slice(&big);
        assert!(m.write_frame(&frame(TrackKind::Video, 0, true, &nal), &mut out));
        assert!(m.write_frame(&frame(TrackKind::Audio, 10, true, &[1; 300]), &mut out));
        for size in 0..400 {
            let mut nal = (size as u32 + 1).to_be_bytes().to_vec();
            nal.extend(std::iter::repeat_n(0x41, size + 1));
            m.write_frame(&frame(TrackKind::Video, 33, false, &nal), &mut out);
        }
        let pk = packets(&out);
        assert_eq!(&pk[..2], &[(0, true, 0), (0x1000, true, 0)]);
        let video: Vec<_> = pk.iter().filter(|p| p.0 == VIDEO_PID).collect();
        for (i, p) in video.iter().enumerate() {
            assert_eq!(p.2, (i % 16) as u8, "video continuity");
        }
        assert!(pk.iter().filter(|p| p.0 == AUDIO_PID).count() == 2);
    }

    #[test]
    fn keyframes_get_parameter_sets_and_everything_gets_a_delimiter() {
        let v = video_track();
        let mut out = Vec::new();
        annex_b(&mut out, &v, &[0, 0, 0, 2, 0x65, 0x88], true);
        let mut want = AUD.to_vec();
        for ps in v.parameter_sets() {
            want.extend_from_slice(&START_CODE);
            want.extend_from_slice(ps);
        }
        want.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
        assert_eq!(out, want);
        out.clear();
        annex_b(
            &mut out,
            &v,
            &[0, 0, 0, 2, 0x09, 0x10, 0, 0, 0, 1, 0x41],
            false,
        );
        assert_eq!(out, [&AUD[..], &[0, 0, 0, 1, 0x41]].concat());
    }

    #[test]
    fn pes_timestamps_round_trip() {
        let mut out = Vec::new();
        pes_header(
            &mut out,
            0xe0,
            0,
            0x1_2345_6789 & 0x1_ffff_ffff,
            Some(0x0_8765_4321),
        );
        let read = |b: &[u8]| {
            (u64::from(b[0] >> 1) & 7) << 30
                | u64::from(b[1]) << 22
                | u64::from(b[2] >> 1) << 15
                | u64::from(b[3]) << 7
                | u64::from(b[4] >> 1)
        };
        assert_eq!(read(&out[9..14]), 0x1_2345_6789);
        assert_eq!(read(&out[14..19]), 0x0_8765_4321);
        assert_eq!(out[7], 0xc0);
    }

    #[test]
    fn adts_header_describes_the_frame() {
        let mut out = Vec::new();
        adts_header(&mut out, &audio_track(), 7 + 300);
        assert_eq!(out[..2], [0xff, 0xf1]);
        let len =
            (usize::from(out[3] & 3) << 11) | (usize::from(out[4]) << 3) | usize::from(out[5] >> 5);
        assert_eq!(len, 307);
        assert_eq!((out[2] >> 2) & 0x0f, 3, "48 kHz");
        assert_eq!(((out[2] & 1) << 2) | (out[3] >> 6), 2, "stereo");
    }
}
