"""Minimal Janus HTTP API client (stdlib only) used by the checks in this folder."""
import json, random, string, time, urllib.request


class Janus:
    def __init__(self, base):
        self.base = base.rstrip('/')
        self.seen = []

    def post(self, path, msg):
        msg = dict(msg)
        msg.setdefault('transaction', ''.join(random.choice(string.ascii_letters) for _ in range(12)))
        req = urllib.request.Request(self.base + path, data=json.dumps(msg).encode(), method='POST',
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=35) as r:
            return json.load(r)

    def create(self):
        self.sid = self.post('', {'janus': 'create'})['data']['id']
        return self.sid

    def attach(self, plugin='janus.plugin.videoroom'):
        return self.post(f'/{self.sid}', {'janus': 'attach', 'plugin': plugin})['data']['id']

    def msg(self, hid, body, jsep=None):
        m = {'janus': 'message', 'body': body}
        if jsep:
            m['jsep'] = jsep
        return self.post(f'/{self.sid}/{hid}', m)

    def keepalive(self):
        return self.post(f'/{self.sid}', {'janus': 'keepalive'})

    def destroy(self):
        return self.post(f'/{self.sid}', {'janus': 'destroy'})

    def poll(self, maxev=10):
        with urllib.request.urlopen(f'{self.base}/{self.sid}?maxev={maxev}', timeout=40) as r:
            return json.load(r)

    def wait(self, pred, timeout=20):
        """Long-poll until an event matching pred arrives; other events stay in self.seen."""
        end = time.time() + timeout
        while time.time() < end:
            for ev in self.seen:
                if pred(ev):
                    self.seen.remove(ev)
                    return ev
            self.seen.extend(e for e in self.poll() if e.get('janus') != 'keepalive')
        raise TimeoutError('no matching event; seen=%s' % self.seen)


def vr(ev):
    """The VideoRoom payload of an event or response."""
    return ev.get('plugindata', {}).get('data', {})
