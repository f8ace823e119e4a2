#!/usr/bin/env python3
"""Full WebRTC check against bench/janus_up.sh with aiortc (ICE, DTLS-SRTP, VP8 media).

  python3 -m venv /tmp/aiortc && /tmp/aiortc/bin/pip install aiortc
  /tmp/aiortc/bin/python bench/janus/checks/publish_subscribe.py <http-port>

Two publishers (alice, bob; one session each) publish VP8 (no simulcast: aiortc cannot send
it). One subscriber handle joins with streams [{feed: alice}], answers Janus's offer with
"start", then adds bob with "subscribe" and answers the renegotiation offer. Counts decoded
frames per track. No trickle anywhere: candidates are in the SDP, "trickle": false.
Host candidates are forced to 127.0.0.2 (Janus's ICE address); no STUN server is used.
"""
import asyncio, json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [os.environ.get('CLIENT_IP', '127.0.0.2')]
from aiortc import RTCPeerConnection, RTCConfiguration, RTCSessionDescription, VideoStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from janus_api import Janus, vr

PORT = int(sys.argv[1])
ROOM = 50000 + os.getpid() % 9999
T0 = time.time()


def log(*a):
    print('%7.3f' % (time.time() - T0), *a, flush=True)


async def wait(j, pred, timeout=20):
    return await asyncio.to_thread(j.wait, pred, timeout)


def cands(sdp):
    return [l for l in sdp.split('\r\n') if 'candidate' in l]


async def publisher(j, name):
    h = j.attach()
    j.msg(h, {'request': 'join', 'ptype': 'publisher', 'room': ROOM, 'display': name})
    joined = vr(await wait(j, lambda e: e.get('sender') == h and vr(e).get('videoroom') == 'joined'))
    log(name, 'joined as', joined['id'], 'active publishers:', [p['id'] for p in joined['publishers']])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tr = pc.addTransceiver(VideoStreamTrack(), direction='sendonly')
    tr.setCodecPreferences([c for c in RTCRtpSender.getCapabilities('video').codecs
                            if c.mimeType in ('video/VP8', 'video/rtx')])
    await pc.setLocalDescription(await pc.createOffer())
    log(name, 'offer candidates:', cands(pc.localDescription.sdp))
    r = j.msg(h, {'request': 'publish', 'display': name},
              {'type': 'offer', 'sdp': pc.localDescription.sdp, 'trickle': False})
    log(name, 'publish ->', r['janus'])
    ans = await wait(j, lambda e: e.get('sender') == h and 'jsep' in e)
    log(name, 'answer came as janus=%s data=%s' % (ans['janus'], json.dumps(vr(ans))))
    log(name, 'answer candidates:', cands(ans['jsep']['sdp']))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=ans['jsep']['sdp'], type='answer'))
    await wait(j, lambda e: e.get('sender') == h and e.get('janus') == 'webrtcup')
    log(name, 'webrtcup')
    media = await wait(j, lambda e: e.get('sender') == h and e.get('janus') == 'media')
    log(name, 'media event:', {k: media.get(k) for k in ('mid', 'type', 'receiving')})
    return h, joined['id'], pc


async def answer(j, hs, spc, offer):
    await spc.setRemoteDescription(RTCSessionDescription(sdp=offer['jsep']['sdp'], type='offer'))
    await spc.setLocalDescription(await spc.createAnswer())
    r = j.msg(hs, {'request': 'start'}, {'type': 'answer', 'sdp': spc.localDescription.sdp, 'trickle': False})
    st = await wait(j, lambda e: e.get('sender') == hs and vr(e).get('started'))
    log('start ->', r['janus'], '; event:', json.dumps(vr(st)))


async def main():
    j = Janus('http://127.0.0.1:%d/janus' % PORT)
    j.create()
    ha = j.attach()
    log('create room:', vr(j.msg(ha, {'request': 'create', 'room': ROOM, 'publishers': 30, 'videocodec': 'vp8'})))
    h1, id1, pc1 = await publisher(j, 'alice')

    frames = {}
    spc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @spc.on('track')
    def on_track(track):
        async def run():
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                frames[track.id] = frames.get(track.id, 0) + 1
        asyncio.ensure_future(run())

    hs = j.attach()
    r = j.msg(hs, {'request': 'join', 'ptype': 'subscriber', 'room': ROOM, 'streams': [{'feed': id1}]})
    log('subscriber join ->', r['janus'])
    off = await wait(j, lambda e: e.get('sender') == hs and 'jsep' in e)
    log('subscriber event %s, jsep.type=%s' % (json.dumps(vr(off)), off['jsep']['type']))
    log('subscriber offer candidates:', cands(off['jsep']['sdp']))
    await answer(j, hs, spc, off)
    await wait(j, lambda e: e.get('sender') == hs and e.get('janus') == 'webrtcup')
    log('subscriber webrtcup')
    await asyncio.sleep(3)
    log('decoded frames per subscriber track in 3 s:', frames)

    j2 = Janus('http://127.0.0.1:%d/janus' % PORT)
    j2.create()
    h2, id2, pc2 = await publisher(j2, 'bob')
    note = await wait(j, lambda e: e.get('sender') == h1 and vr(e).get('publishers'))
    log('alice told about the new feed:', json.dumps(vr(note)))
    r = j.msg(hs, {'request': 'subscribe', 'streams': [{'feed': id2}]})
    log('subscribe ->', r['janus'])
    upd = await wait(j, lambda e: e.get('sender') == hs and 'jsep' in e)
    log('renegotiation event %s, jsep.type=%s' % (json.dumps(vr(upd)), upd['jsep']['type']))
    await answer(j, hs, spc, upd)
    before = dict(frames)
    await asyncio.sleep(3)
    got = {k: v - before.get(k, 0) for k, v in frames.items()}
    log('decoded frames per subscriber track in 3 s after adding bob:', got)
    log('listparticipants:', json.dumps(vr(j.msg(ha, {'request': 'listparticipants', 'room': ROOM}))))
    for pc in (pc1, pc2, spc):
        await pc.close()
    j.msg(ha, {'request': 'destroy', 'room': ROOM})
    j.destroy()
    j2.destroy()
    ok = len(got) == 2 and min(got.values()) > 30
    print('OK' if ok else 'FAILED')
    sys.exit(0 if ok else 1)

asyncio.run(main())
