#!/usr/bin/env python3
"""Rid-based 3-layer VP8 simulcast through Janus (same venv as publish_subscribe.py).

  /tmp/aiortc/bin/python bench/janus/checks/simulcast.py <http-port>

aiortc does ICE/DTLS-SRTP; the offer is edited to carry a=rid:h/m/l send + a=simulcast:send h;m;l
and the rtp-stream-id extension (no a=ssrc lines), and the three layers (640x360, 320x180,
160x90, keyframe every 30 frames) are encoded and packetised here, each on its own SSRC with
the rid in every packet. A subscriber then asks for substream 0, 1, 2 with "configure" and the
decoded frame size is counted.
"""
import asyncio, json, os, sys, time, fractions, random
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [os.environ.get('CLIENT_IP', '127.0.0.2')]
import av
from aiortc import RTCPeerConnection, RTCConfiguration, RTCSessionDescription, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpParameters, RTCRtpHeaderExtensionParameters
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket, HeaderExtensionsMap
from janus_api import Janus, vr

PORT = int(sys.argv[1]); ROOM = 70000 + os.getpid() % 9999
T0 = time.time()
def log(*a): print('%7.3f' % (time.time() - T0), *a, flush=True)
async def wait(j, pred, timeout=20): return await asyncio.to_thread(j.wait, pred, timeout)

class Idle(MediaStreamTrack):
    kind = 'video'
    async def recv(self): await asyncio.Future()

LAYERS = [('h', 640, 360), ('m', 320, 180), ('l', 160, 90)]   # SDP order high, medium, low

def munge(sdp):
    out = []
    for line in sdp.split('\r\n'):
        if line.startswith('a=ssrc'): continue
        out.append(line)
        if line.startswith('a=extmap:1 '):
            out.append('a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id')
        if line.startswith('a=fmtp:98 apt=97'):
            out += ['a=rid:%s send' % r for r, _, _ in LAYERS] + ['a=simulcast:send h;m;l']
    return '\r\n'.join(out)

async def send_layers(transport, stop):
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri='urn:ietf:params:rtp-hdrext:sdes:mid'),
        RTCRtpHeaderExtensionParameters(id=4, uri='urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id')]))
    st = [{'rid': r, 'w': w, 'h': h, 'enc': Vp8Encoder(), 'ssrc': random.getrandbits(32), 'seq': random.getrandbits(16)} for r, w, h in LAYERS]
    n = 0
    while not stop.is_set():
        for s in st:
            f = av.VideoFrame(s['w'], s['h'], 'yuv420p')
            for i, p in enumerate(f.planes):
                p.update(bytes([(n * 4 + i * 60) % 256]) * p.buffer_size)
            f.pts = n * 3000; f.time_base = fractions.Fraction(1, 90000)
            payloads, ts = s['enc'].encode(f, force_keyframe=(n % 30 == 0))
            for k, pl in enumerate(payloads):
                pkt = RtpPacket(payload_type=97, marker=int(k == len(payloads) - 1),
                                sequence_number=s['seq'], timestamp=ts, ssrc=s['ssrc'], payload=pl)
                s['seq'] = (s['seq'] + 1) & 0xffff
                pkt.extensions.mid = '0'; pkt.extensions.rtp_stream_id = s['rid']
                await transport._send_rtp(pkt.serialize(ext))
        n += 1
        await asyncio.sleep(1 / 30)

async def main():
    j = Janus('http://127.0.0.1:%d/janus' % PORT); j.create()
    h = j.attach()
    log('create:', vr(j.msg(h, {'request': 'create', 'room': ROOM, 'publishers': 30, 'videocodec': 'vp8'})))
    j.msg(h, {'request': 'join', 'ptype': 'publisher', 'room': ROOM, 'display': 'sim'})
    me = vr(await wait(j, lambda e: e.get('sender') == h and vr(e).get('videoroom') == 'joined'))['id']
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tr = pc.addTransceiver(Idle(), direction='sendonly')
    tr.setCodecPreferences([c for c in RTCRtpSender.getCapabilities('video').codecs if c.mimeType in ('video/VP8', 'video/rtx')])
    await pc.setLocalDescription(await pc.createOffer())
    offer = munge(pc.localDescription.sdp)
    log('offer simulcast lines:', [l for l in offer.split('\r\n') if 'rid' in l or 'simulcast' in l])
    j.msg(h, {'request': 'publish'}, {'type': 'offer', 'sdp': offer, 'trickle': False})
    ans = await wait(j, lambda e: e.get('sender') == h and 'jsep' in e)
    log('publish answer event:', json.dumps(vr(ans)))
    log('answer simulcast lines:', [l for l in ans['jsep']['sdp'].split('\r\n') if 'rid' in l or 'simulcast' in l])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=ans['jsep']['sdp'], type='answer'))
    await wait(j, lambda e: e.get('sender') == h and e.get('janus') == 'webrtcup'); log('publisher webrtcup')
    stop = asyncio.Event()
    sender_task = asyncio.ensure_future(send_layers(tr.sender.transport, stop))
    await asyncio.sleep(1.5)

    hs = j.attach()
    spc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sizes = {}
    @spc.on('track')
    def on_track(track):
        async def run():
            while True:
                try: f = await track.recv()
                except Exception: return
                sizes[(f.width, f.height)] = sizes.get((f.width, f.height), 0) + 1
        asyncio.ensure_future(run())
    j.msg(hs, {'request': 'join', 'ptype': 'subscriber', 'room': ROOM, 'streams': [{'feed': me}]})
    off = await wait(j, lambda e: e.get('sender') == hs and 'jsep' in e)
    log('subscriber attached:', json.dumps(vr(off)))
    await spc.setRemoteDescription(RTCSessionDescription(sdp=off['jsep']['sdp'], type='offer'))
    await spc.setLocalDescription(await spc.createAnswer())
    j.msg(hs, {'request': 'start'}, {'type': 'answer', 'sdp': spc.localDescription.sdp, 'trickle': False})
    await wait(j, lambda e: e.get('sender') == hs and e.get('janus') == 'webrtcup'); log('subscriber webrtcup')
    await asyncio.sleep(2.5); log('default substream, decoded sizes:', dict(sizes))
    default = max(sizes, key=sizes.get, default=None)
    want = {0: (160, 90), 1: (320, 180), 2: (640, 360)}
    results = {}
    j.seen = [e for e in j.seen if 'substream' not in vr(e)]  # drop the switch-to-2 at start
    for sub in (0, 1, 2):
        r = j.msg(hs, {'request': 'configure', 'streams': [{'mid': '0', 'substream': sub}]})
        ev = await wait(j, lambda e: e.get('sender') == hs and vr(e).get('configured'), 5)
        log('configure substream=%d -> %s, then event %s' % (sub, r['janus'], json.dumps(vr(ev))))
        sw = await wait(j, lambda e: e.get('sender') == hs and vr(e).get('substream') == sub, 5)
        log('  switch event:', json.dumps(vr(sw)))
        sizes.clear(); await asyncio.sleep(2.5)
        log('  decoded sizes in the next 2.5 s:', dict(sizes))
        results[sub] = max(sizes, key=sizes.get, default=None)
    stop.set(); await sender_task
    await pc.close(); await spc.close()
    j.msg(h, {'request': 'destroy', 'room': ROOM}); j.destroy()
    ok = default == want[2] and all(results[k] == want[k] for k in want)
    print('OK' if ok else 'FAILED')
    sys.exit(0 if ok else 1)

asyncio.run(main())
