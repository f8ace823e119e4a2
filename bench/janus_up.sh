#!/usr/bin/env bash
# Start Janus 1.1.2 (Debian package `janus`) as the baseline SFU for the room benchmark.
#
#   bench/janus_up.sh <dir-for-generated-configs> <http-port>
#
# Writes janus.jcfg, janus.transport.http.jcfg and janus.plugin.videoroom.jcfg into <dir>
# (from the templates in bench/janus/) and execs janus in the foreground, logging to stdout.
# Only the VideoRoom plugin and the plain-HTTP transport are loaded; the Janus API is at
# http://127.0.0.1:<http-port>/janus, the Admin API is off.
#
# ICE over loopback: Janus 1.1.2 never gathers candidates on an interface flagged LOOPBACK
# (src/ice.c skips IFF_LOOPBACK), so "lo" / 127.0.0.1 cannot be used directly. The script
# makes a non-loopback interface (ifb, or veth if ifb is missing) named $JANUS_ICE_IFACE
# (default tcjanus0) holding $JANUS_ICE_IP/32 (default 127.0.0.2, in 127.0.0.0/8 and delivered
# locally through lo), and tells Janus to gather only there. Janus's only host candidate is then
# 127.0.0.2:<port in JANUS_RTP_PORTS>. libnice pins its sockets to that interface
# (IP_UNICAST_IF), so Janus can only reach client candidates whose address is on the same
# interface: clients must bind their UDP sockets to 127.0.0.2 too (127.0.0.1 fails with EINVAL).
# Needs root (CAP_NET_ADMIN) the first time; the interface stays until `ip link del tcjanus0`.
#
# Environment (all optional):
#   JANUS_ICE_IFACE   interface to create/use          (default tcjanus0)
#   JANUS_ICE_IP      its address, must be in 127/8    (default 127.0.0.2)
#   JANUS_RTP_PORTS   UDP range for ICE/RTP            (default 20000-40000)
#   JANUS_DEBUG       log level 0-7                    (default 3 = warnings and errors)
#   JANUS_BIN         janus binary                     (default janus)
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 <dir-for-generated-configs> <http-port>" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmpl="$here/janus"
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
port="$2"
case "$port" in ''|*[!0-9]*) echo "http-port must be a number" >&2; exit 2;; esac

iface="${JANUS_ICE_IFACE:-tcjanus0}"
ice_ip="${JANUS_ICE_IP:-127.0.0.2}"
rtp_ports="${JANUS_RTP_PORTS:-20000-40000}"
debug="${JANUS_DEBUG:-3}"
janus="${JANUS_BIN:-janus}"
case "$ice_ip" in 127.*) ;; *) echo "JANUS_ICE_IP must be in 127.0.0.0/8" >&2; exit 2;; esac

command -v "$janus" >/dev/null || { echo "janus not found: apt-get install -y janus" >&2; exit 1; }

# Debian layout of the janus package.
libdir=/usr/lib/x86_64-linux-gnu/janus
[ -d "$libdir" ] || libdir="$(dirname "$(dpkg -L janus 2>/dev/null | grep -m1 '/janus/plugins$')")"
[ -f "$libdir/plugins/libjanus_videoroom.so" ] || { echo "no libjanus_videoroom.so under $libdir" >&2; exit 1; }
[ -f "$libdir/transports/libjanus_http.so" ] || { echo "no libjanus_http.so under $libdir" >&2; exit 1; }

# The non-loopback interface that carries the loopback-range ICE address.
if ! ip -4 addr show dev "$iface" 2>/dev/null | grep -q "inet $ice_ip/"; then
    if ! ip link show "$iface" >/dev/null 2>&1; then
        if ! ip link add "$iface" type ifb 2>/dev/null; then
            ip link add "$iface" type veth peer name "${iface}p"
            ip link set "${iface}p" up
        fi
        ip link set dev "$iface" addrgenmode none 2>/dev/null || true
    fi
    ip addr add "$ice_ip/32" dev "$iface"
fi
ip link set "$iface" up
# Refuse to start if the interface is not usable: with nothing to gather on, libnice would fall
# back to every non-loopback address of the machine.
ip -4 addr show dev "$iface" | grep -q "inet $ice_ip/" || { echo "$iface has no $ice_ip" >&2; exit 1; }
ip link show "$iface" | grep -q 'LOWER_UP' || { echo "$iface is not running" >&2; exit 1; }

# Everything in the Debian folders except what we want is disabled by file name.
disable_except() { # folder keep
    local f out=()
    for f in "$1"/*.so; do
        [ -e "$f" ] || continue
        f="$(basename "$f")"
        [ "$f" = "$2" ] || out+=("$f")
    done
    (IFS=,; echo "${out[*]:-}")
}
plugins_off="$(disable_except "$libdir/plugins" libjanus_videoroom.so)"
transports_off="$(disable_except "$libdir/transports" libjanus_http.so)"
events_off="$(disable_except "$libdir/events" none)"
loggers_off="$(disable_except "$libdir/loggers" none)"

render() { # template output
    sed -e "s|@CONFIGS@|$dir|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@PORT@|$port|g" \
        -e "s|@ICE_IFACE@|$iface|g" -e "s|@ICE_IP@|$ice_ip|g" -e "s|@RTP_PORTS@|$rtp_ports|g" \
        -e "s|@DEBUG@|$debug|g" -e "s|@PLUGINS_OFF@|$plugins_off|g" \
        -e "s|@TRANSPORTS_OFF@|$transports_off|g" -e "s|@EVENTS_OFF@|$events_off|g" \
        -e "s|@LOGGERS_OFF@|$loggers_off|g" "$1" > "$2"
}
render "$tmpl/janus.jcfg.in" "$dir/janus.jcfg"
render "$tmpl/janus.transport.http.jcfg.in" "$dir/janus.transport.http.jcfg"
render "$tmpl/janus.plugin.videoroom.jcfg.in" "$dir/janus.plugin.videoroom.jcfg"

exec "$janus" -F "$dir" -C "$dir/janus.jcfg" -o
