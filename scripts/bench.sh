#!/usr/bin/env bash
# Throughput benchmark: dpdk-testpmd and wlbs on the same vdevs, one forwarding core, in one
# run:
#
#   net_pcap0 (rx_pcap=<generated frames>, infinite_rx=1)  --one worker core-->  net_null0
#
# Rows: testpmd io and macswap (the ceiling), wlbs pass-through (no [cluster]), and wlbs as
# host 1 of static members 1,2,3 on its drop path (traffic whose buckets other hosts own) and
# its accept path (traffic in its own buckets: descriptor lookups, MAC rewrite). Then the same
# with 1,000,000 flows, so the accept path runs with a million live connection descriptors.
# Traffic is a realistic mix (60% TCP flows: SYN + data; 40% UDP), 64-byte frames, chosen by
# wlbs-traffic with the real hash and assignment.
#
# Prints Mpps and ratios. A benchmark, not a test: these machines are shared, so compare
# ratios from one run, never absolute rates across runs.
# Options: --seconds N (per measurement, default 5), --flows N (small captures, default 4096),
#          --big-flows N (default 1000000; 0 skips the big rows).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=5
flows=4096
big_flows=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --big-flows) big_flows=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d /tmp/wlbs-bench.XXXXXX)
# Every DPDK process of this run has a --file-prefix ending in -$$.
cleanup() {
  pkill -KILL -f -- "--file-prefix bench-[a-z0-9-]*-$$" 2>/dev/null || true
  rm -rf /var/run/dpdk/bench-*-"$$" "$work"
}
trap cleanup EXIT INT TERM

echo "bench: building (release)" >&2
(cd "$here" && cargo build --release -q -p wlbs-control -p wlbs-tests --bin wlbs --bin wlbs-traffic)
wlbs="$here/target/release/wlbs"
traffic="$here/target/release/wlbs-traffic"

cluster_config() { # cluster_config FILE MBUFS MAX_CONNECTIONS
  cat >"$1" <<TOML
[dataplane]
cluster_port = "net_pcap0"
host_port = "net_null0"
workers = 1
busy_poll = true
mbufs = $2
mbuf_size = 256
max_connections = $3
udp_idle_timeout_s = 600

[cluster]
ip = "192.0.2.10"
members = [1, 2, 3]

[host]
priority = 1

[[port_rule]]
ports = "0-65535"
protocol = "both"
affinity = "none"
TOML
}

# Frames in a capture = records (the pcap header is 24 bytes, each record 16 + 60).
frames_in() { echo $(( ($(stat -c %s "$1") - 24) / 76 )); }

# Same EAL layout for every contender: main lcore on CPU 0, one forwarding core on CPU 1.
eal_for() { # eal_for PREFIX PCAP
  echo "-l 0,1 --in-memory --file-prefix $1 --no-pci --log-level lib.eal:notice" \
       "--vdev net_pcap0,rx_pcap=$2,infinite_rx=1 --vdev net_null0,no-rx=1"
}

# testpmd prints per-port rates every second; the forwarded rate is port 1's Tx-pps. Average
# the samples after the first (warm-up).
testpmd_mpps() { # testpmd_mpps MODE PCAP TAG
  local mode=$1 pcap=$2 tag=$3
  local prefix="bench-testpmd-$tag-$$" out="$work/testpmd-$tag.log"
  local mbufs=$(( $(frames_in "$pcap") + 65536 ))
  # shellcheck disable=SC2046
  dpdk-testpmd $(eal_for "$prefix" "$pcap") -- --forward-mode="$mode" --stats-period=1 \
    --no-mlockall --total-num-mbufs="$mbufs" --mbuf-size=256 >"$out" 2>&1 &
  local pid=$!
  wait_started "$out" "Start automatic packet forwarding\|Tx-pps" || true
  sleep "$((seconds + 1))"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  awk '/Tx-pps:/ && $2 > 0 { n++; if (n > 1) { s += $2; k++ } }
       END { if (k) printf "%.2f\n", s / k / 1e6; else print "0" }' "$out"
}

wait_started() { # wait_started LOG PATTERN: bounded wait for a start line (big captures load slowly)
  local i
  for i in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# wlbs prints its totals and run time when stopped.
wlbs_mpps() { # wlbs_mpps CONFIG PCAP TAG
  local cfg=$1 pcap=$2 tag=$3
  local prefix="bench-wlbs-$tag-$$" out="$work/wlbs-$tag.log"
  # shellcheck disable=SC2046
  "$wlbs" run --config "$cfg" -- $(eal_for "$prefix" "$pcap") >"$out" 2>&1 &
  local pid=$!
  wait_started "$out" "forwarding:" || true
  sleep "$seconds"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  local line
  line=$(grep '^wlbs: stopped' "$out" || true)
  if [ -z "$line" ]; then
    echo "bench: wlbs ($tag) did not report; its log:" >&2
    tail -20 "$out" >&2
    echo 0
    return
  fi
  echo "bench: wlbs $tag: ${line#wlbs: }" >&2
  # Rate of frames judged: forwarded plus those the filter dropped as not ours.
  echo "$line" | awk '{ for (i = 1; i <= NF; i++) { if ($i == "after") t = $(i + 1);
                          if ($i == "cluster->host") p = $(i + 1);
                          if ($i == "ours") d = $(i + 1) + 0 } }
                      END { printf "%.2f\n", (p + d) / t / 1e6 }'
}

echo "bench: generating traffic ($flows flows; $big_flows for the big rows)" >&2
small_mbufs=65536
cluster_config "$work/small.toml" "$small_mbufs" 262144
"$traffic" --config "$work/small.toml" --host 1 --select any --flows "$flows" --out "$work/mix.pcap"
"$traffic" --config "$work/small.toml" --host 1 --select owned --flows "$flows" --out "$work/owned.pcap"
"$traffic" --config "$work/small.toml" --host 1 --select not-owned --flows "$flows" --out "$work/not-owned.pcap"
printf '[dataplane]\ncluster_port = "net_pcap0"\nhost_port = "net_null0"\nbusy_poll = true\nmbufs = %s\nmbuf_size = 256\n' \
  "$small_mbufs" >"$work/pass.toml"

echo "bench: $seconds s per measurement, one worker core" >&2
io=$(testpmd_mpps io "$work/mix.pcap" io)
macswap=$(testpmd_mpps macswap "$work/mix.pcap" macswap)
pass=$(wlbs_mpps "$work/pass.toml" "$work/mix.pcap" pass)
drop=$(wlbs_mpps "$work/small.toml" "$work/not-owned.pcap" drop)
accept=$(wlbs_mpps "$work/small.toml" "$work/owned.pcap" accept)

if [ "$big_flows" -gt 0 ]; then
  "$traffic" --config "$work/small.toml" --host 1 --select owned --flows "$big_flows" --out "$work/owned-big.pcap"
  "$traffic" --config "$work/small.toml" --host 1 --select not-owned --flows "$big_flows" --out "$work/not-owned-big.pcap"
  big_mbufs=$(( $(frames_in "$work/owned-big.pcap") + 65536 ))
  cluster_config "$work/big.toml" "$big_mbufs" "$(( big_flows + big_flows / 8 ))"
  io_big=$(testpmd_mpps io "$work/owned-big.pcap" io-big)
  macswap_big=$(testpmd_mpps macswap "$work/owned-big.pcap" macswap-big)
  drop_big=$(wlbs_mpps "$work/big.toml" "$work/not-owned-big.pcap" drop-big)
  accept_big=$(wlbs_mpps "$work/big.toml" "$work/owned-big.pcap" accept-big)
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
row() { printf '%-44s %8s  %s\n' "$1" "$2" "$3"; }
row "path ($flows flows)" "Mpps" "ratio"
row "testpmd io" "$io" ""
row "testpmd macswap" "$macswap" ""
row "wlbs pass-through" "$pass" "$(ratio "$pass" "$io") of testpmd io (target 0.90x)"
row "wlbs drop path (not-owned buckets)" "$drop" "$(ratio "$drop" "$io") of testpmd io (target 0.75x)"
row "wlbs accept path (owned buckets)" "$accept" "$(ratio "$accept" "$macswap") of testpmd macswap (target 0.75x)"
if [ "$big_flows" -gt 0 ]; then
  row "path ($big_flows flows)" "Mpps" "ratio"
  row "testpmd io" "$io_big" ""
  row "testpmd macswap" "$macswap_big" ""
  row "wlbs drop path" "$drop_big" "$(ratio "$drop_big" "$io_big") of testpmd io (target 0.75x)"
  row "wlbs accept path, $big_flows live descriptors" "$accept_big" "$(ratio "$accept_big" "$macswap_big") of testpmd macswap (target 0.75x)"
fi
