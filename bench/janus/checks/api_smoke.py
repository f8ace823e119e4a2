#!/usr/bin/env python3
"""Stdlib-only check of a running bench/janus_up.sh instance.

  python3 bench/janus/checks/api_smoke.py <http-port> [client-ip]

Creates a session, a VideoRoom handle and a room; joins as publisher; publishes a hand-written
VP8 offer with three rids (h, m, l), its host candidate inline and "trickle": false; prints the
answer (an async event on the long poll) and checks that Janus sends ICE connectivity checks to
the inline candidate. The client IP must be on Janus's ICE interface (default 127.0.0.2).
No DTLS/media: see publish_subscribe.py and simulcast.py for that.
"""
import json, socket, sys, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from janus_api import Janus, vr

port = int(sys.argv[1])
cip = sys.argv[2] if len(sys.argv) > 2 else '127.0.0.2'
room = 90000 + os.getpid() % 9999
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((cip, 0))
cport = u.getsockname()[1]
sdp = '\r\n'.join([
    'v=0', 'o=- 4611731400430051336 2 IN IP4 %s' % cip, 's=-', 't=0 0',
    'a=group:BUNDLE 0', 'a=msid-semantic: WMS',
    'm=video %d UDP/TLS/RTP/SAVPF 96 97' % cport,
    'c=IN IP4 %s' % cip,
    'a=candidate:1 1 udp 2130706431 %s %d typ host' % (cip, cport),
    'a=end-of-candidates',
    'a=ice-ufrag:abcd', 'a=ice-pwd:0123456789abcdefghijklmn',
    'a=fingerprint:sha-256 ' + ':'.join(['AB'] * 32), 'a=setup:actpass', 'a=mid:0',
    'a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid',
    'a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id',
    'a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id',
    'a=sendonly', 'a=msid:- v0', 'a=rtcp-mux', 'a=rtcp-rsize',
    'a=rtpmap:96 VP8/90000', 'a=rtcp-fb:96 goog-remb', 'a=rtcp-fb:96 ccm fir',
    'a=rtcp-fb:96 nack', 'a=rtcp-fb:96 nack pli',
    'a=rtpmap:97 rtx/90000', 'a=fmtp:97 apt=96',
    'a=rid:h send', 'a=rid:m send', 'a=rid:l send', 'a=simulcast:send h;m;l', ''])

j = Janus('http://127.0.0.1:%d/janus' % port)
import urllib.request
info = json.load(urllib.request.urlopen('http://127.0.0.1:%d/janus/info' % port))
print('info:', info['version_string'], list(info['plugins']), list(info['transports']))
print('session', j.create())
h = j.attach()
print('handle', h)
print('create ->', vr(j.msg(h, {'request': 'create', 'room': room, 'publishers': 30, 'videocodec': 'vp8'})))
print('join ->', j.msg(h, {'request': 'join', 'ptype': 'publisher', 'room': room, 'display': 'smoke'})['janus'])
print('joined:', json.dumps(vr(j.wait(lambda e: vr(e).get('videoroom') == 'joined'))))
print('publish ->', j.msg(h, {'request': 'publish'}, {'type': 'offer', 'sdp': sdp, 'trickle': False})['janus'])
ev = j.wait(lambda e: 'jsep' in e)
print('event:', json.dumps(vr(ev)), 'jsep.type:', ev['jsep']['type'])
print('\n'.join(l for l in ev['jsep']['sdp'].split('\r\n')
                if l.startswith(('a=rid', 'a=simulcast', 'a=candidate', 'a=end-of', 'a=setup', 'a=extmap'))))
u.settimeout(3)
ok = False
try:
    d, src = u.recvfrom(2000)
    ok = d[:2] == b'\x00\x01'
    print('Janus sent a STUN Binding request from %s:%d to the inline candidate' % src)
except socket.timeout:
    print('no ICE check from Janus within 3 s')
print('participants:', json.dumps(vr(j.msg(h, {'request': 'listparticipants', 'room': room}))['participants']))
print('keepalive ->', j.keepalive()['janus'])
j.msg(h, {'request': 'destroy', 'room': room})
j.destroy()
sys.exit(0 if ok else 1)
