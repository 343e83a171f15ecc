#!/usr/bin/env bash
# Throughput benchmark: dpdk-testpmd (io, macswap) and wlbs on the same vdevs in one run.
#
#   net_pcap0 (rx_pcap=<generated frames>, infinite_rx=1)  --one worker core-->  net_null0
#
# Prints Mpps for each and the ratio wlbs/testpmd. A benchmark that prints figures, not a
# test: these machines are shared, so compare ratios from the same run, never absolute rates
# across runs. Options: --seconds N (per measurement, default 5), --frames N (distinct frames
# in the capture, default 1024).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=5
frames=1024
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d /tmp/wlbs-bench.XXXXXX)
# Every DPDK process of this run has a --file-prefix ending in -$$.
cleanup() {
  pkill -KILL -f -- "--file-prefix bench-[a-z-]*-$$" 2>/dev/null || true
  rm -rf /var/run/dpdk/bench-*-"$$" "$work"
}
trap cleanup EXIT INT TERM

echo "bench: building wlbs (release)" >&2
(cd "$here" && cargo build --release -q -p wlbs-control)
wlbs="$here/target/release/wlbs"

# 64-byte Ethernet/IPv4/UDP frames to the cluster MAC, from many clients and ports: the
# pass-through path forwards them as they are; the filter rows (later) hash them.
python3 - "$work/frames.pcap" "$frames" <<'PY'
import struct, sys
path, n = sys.argv[1], int(sys.argv[2])
def frame(i):
    dst = bytes([0x02, 0xbf, 192, 0, 2, 10])
    src = bytes([0x02, 0, 0, 0, (i >> 8) & 255, i & 255])
    client = bytes([198, 51, 100, i % 250 + 1])
    ip = bytearray(struct.pack('!BBHHHBBH4s4s', 0x45, 0, 46, i & 0xffff, 0, 64, 17, 0,
                               client, bytes([192, 0, 2, 10])))
    s = sum(struct.unpack('!10H', ip)); s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
    ip[10:12] = struct.pack('!H', ~s & 0xffff)
    udp = struct.pack('!HHHH', 1024 + i % 60000, 80, 26, 0) + bytes(18)
    return dst + src + b'\x08\x00' + bytes(ip) + udp
with open(path, 'wb') as f:
    f.write(struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
    for i in range(n):
        d = frame(i)
        f.write(struct.pack('<IIII', 0, i, len(d), len(d)))
        f.write(d)
PY

# Same EAL layout for every contender: main lcore on CPU 0, one forwarding core on CPU 1.
eal_for() {
  local prefix=$1
  echo "-l 0,1 --in-memory --file-prefix $prefix --no-pci --log-level lib.eal:notice" \
       "--vdev net_pcap0,rx_pcap=$work/frames.pcap,infinite_rx=1 --vdev net_null0,no-rx=1"
}

# testpmd prints per-port rates every second; the forwarded rate is port 1's Tx-pps. Average
# the samples after the first (warm-up).
testpmd_mpps() {
  local mode=$1 prefix="bench-testpmd-$1-$$" out="$work/testpmd-$1.log"
  # shellcheck disable=SC2046
  dpdk-testpmd $(eal_for "$prefix") -- --forward-mode="$mode" --stats-period=1 \
    --no-mlockall >"$out" 2>&1 &
  local pid=$!
  sleep "$((seconds + 1))"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  awk '/Tx-pps:/ && $2 > 0 { n++; if (n > 1) { s += $2; k++ } }
       END { if (k) printf "%.2f\n", s / k / 1e6; else print "0" }' "$out"
}

# wlbs prints its totals and run time when stopped.
wlbs_mpps() {
  local prefix="bench-wlbs-$$" out="$work/wlbs.log" cfg="$work/wlbs.toml"
  printf '[dataplane]\ncluster_port = "net_pcap0"\nhost_port = "net_null0"\nworkers = 1\nbusy_poll = true\n' >"$cfg"
  # shellcheck disable=SC2046
  "$wlbs" run --config "$cfg" -- $(eal_for "$prefix") >"$out" 2>&1 &
  local pid=$!
  sleep "$((seconds + 1))"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  local line
  line=$(grep '^wlbs: stopped' "$out" || true)
  if [ -z "$line" ]; then
    echo "bench: wlbs did not report; its log:" >&2
    tail -20 "$out" >&2
    echo 0
    return
  fi
  echo "$line" | awk '{ for (i = 1; i <= NF; i++) { if ($i == "after") t = $(i + 1);
                          if ($i == "cluster->host") p = $(i + 1) } }
                      END { printf "%.2f\n", p / t / 1e6 }'
}

echo "bench: $frames distinct 64-byte frames, $seconds s per measurement, one worker core" >&2
io=$(testpmd_mpps io)
macswap=$(testpmd_mpps macswap)
pass=$(wlbs_mpps)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
printf '%-28s %10s  %s\n' "path" "Mpps" "ratio"
printf '%-28s %10s  %s\n' "testpmd io" "$io" ""
printf '%-28s %10s  %s\n' "testpmd macswap" "$macswap" ""
printf '%-28s %10s  %s\n' "wlbs pass-through" "$pass" "$(ratio "$pass" "$io") of testpmd io"
