#!/usr/bin/env bash
# The wlbs virtual lab (ARCHITECTURE.md section 8, level 4): a whole cluster in network
# namespaces on one machine, with real kernel TCP clients and servers, sharing ONE cluster IP.
#
#   client ns ---+    (64 client addresses; learns the cluster MAC by ARP from the appliances)
#                |        switch ns (Linux bridge: floods frames for the cluster MAC to all)
#                +--- wlbs-br ---+------------------+------------------+---- ...
#                                |                  |                  |
#               appliance ns a1: [cluster port] wlbs [host port] --- server ns s1 (HTTP "host 1")
#               appliance ns a2: [cluster port] wlbs [host port] --- server ns s2 (HTTP "host 2")
#                                                                      bystander ns by (tcpdump)
#
# Every appliance is a `wlbs` process on two net_af_packet ports over veths (cluster side to
# the bridge, host side to its server), a bump in the wire exactly where the WLBS driver sat.
# The cluster IP 192.0.2.10 has a cluster MAC by NLB mode (--mode): unicast 02:bf:c0:00:02:0a,
# which no frame carries as its source (each host sends with 02:0I:c0:00:02:0a), so the
# bridge never learns it and floods every frame for the cluster IP to every port; multicast
# 03:bf:c0:00:02:0a, which the bridge (snooping off) floods to every port; igmp
# 01:00:5e:7f:02:0a, the MAC of group 239.255.2.10, which the hosts join by IGMP, on a bridge
# with IGMP snooping and a querier. The client has no static entry: the appliances answer its
# ARP for the cluster IP with the cluster MAC. Each appliance keeps the frames whose bucket its
# host owns, rewrites their destination MAC to its server's and drops the others; everything
# else (dedicated addresses) crosses unchanged. Each server holds the cluster IP on lo
# (arp_ignore=1, arp_announce=2: it never answers ARP for it) and its dedicated address
# 192.0.2.(10+I) on its NIC. The bystander is a bridge port with no host behind it (in igmp
# mode with mcast_flood off), captured to see where the switch sends the cluster's frames.
#
#   scripts/lab.sh [run]   build, set the lab up, send a bounded HTTP workload to the cluster
#                          IP from many client addresses and ports, print each host's share,
#                          tear everything down. Non-zero exit when any request failed, the
#                          servers' counts of served requests differ from what the client saw
#                          answered, a host got nothing, the bridge learned the cluster MAC,
#                          or an appliance failed to start, crashed or did not stop cleanly.
#                          MAC mode checks: the client learned the cluster MAC by ARP (and
#                          still has it at the end; in the multicast modes, were Linux to
#                          refuse a multicast MAC by ARP, the entry is pinned with the line
#                          `wlbs ip2mac` prints, and the output says so); each appliance's
#                          bridge port is captured from before its start to after its stop
#                          (tcpdump -Q in in the switch namespace): in unicast mode every frame
#                          an appliance sent must have its masked source 02:0I:..., in every
#                          mode none the cluster MAC; the bystander must get the cluster's
#                          frames in unicast and multicast mode (the flood), none in igmp mode;
#                          igmp mode: `bridge mdb show` must list the group on every running
#                          appliance's port, not on the bystander's, and the captures must show
#                          each appliance's reports, its answers to the bridge's queries (every
#                          3 s) and its leave at stop. (The Linux bridge forwards IPv4 by
#                          destination IP, so the joins cannot steer frames to the unicast
#                          cluster IP: the hosts' ports are multicast router ports, see
#                          create_host.)
#                          Heartbeat membership (2+ hosts) adds a failover phase: the time
#                          each host took to converge, then kill -9 of the last host under a
#                          client load (fails unless the survivors converge without it within
#                          tolerance + 3 periods and every request started after that bound
#                          is answered), then that host restarted until all converge again.
#                          Then a join phase: a spare host (N+1, set up with the others but
#                          not started) starts while 30 long connections (GET /slow) and a
#                          stream of short requests run (fails unless every host converges
#                          with all N+1 in time, every long connection completes with its
#                          whole body, every request started after the convergence is
#                          answered and the new host answers some); and a drain phase:
#                          `wlbs drainstop` of host 2 over its control socket while long
#                          connections are open on it (fails unless they all complete, no
#                          request started 5 periods after the drainstop reaches host 2,
#                          every one started tolerance + 3 periods after it is answered,
#                          host 2 logs "drainstop complete" after its last connection ends
#                          and within the close wait + the 1 s expiry sweep + 5 periods,
#                          `wlbs query` says stopped, and the others log "host 2 left the
#                          cluster" and converge without it). Then a remote control phase
#                          (the appliances have a cluster key, cluster.key in the log folder,
#                          and [remote_control] enabled): `wlbs query --remote cluster` from
#                          the client must be answered once by every running host, `wlbs
#                          stop|start --remote cluster:3` must stop and start host 3 (its
#                          state read over its control socket), and the query's datagram,
#                          captured in the client namespace and sent again, must get no answer
#                          and be logged "refused: replayed" and counted by every host. Then a
#                          reload phase: under short requests, a rule added on every host
#                          (--reload change: the port-80 rule widened to 80-81) and applied
#                          with `wlbs reload` (odd hosts) or SIGHUP (even ones): each must log
#                          "reload: applied" (staged until every host has it) and know the new
#                          port (`wlbs queryport`); then a
#                          broken configuration on host 1 must be refused ("reload refused,
#                          nothing changed", exit 1); every request started in the phase must
#                          be answered, and each server's count must equal the answers that
#                          name it. The times of each phase are printed at the end.
#   scripts/lab.sh up      build and set the lab up, then leave it running (prints how to use it;
#                          each appliance answers `wlbs query|drainstop|stop|start --socket`
#                          on its control socket hI.sock in the log folder)
#   scripts/lab.sh down    remove everything a previous run/up left (idempotent)
#
# Options (or environment): --hosts N (WLBS_LAB_HOSTS, default 3), --requests N in all
# (WLBS_LAB_REQUESTS, default 300), --parallel N client loops at once (WLBS_LAB_PARALLEL,
# default 4), --membership heartbeats|static (WLBS_LAB_MEMBERSHIP, default heartbeats),
# --mode unicast|multicast|igmp ([cluster] mode; WLBS_LAB_MODE, default unicast),
# --reload add|change|none (the reload phase; none skips it; WLBS_LAB_RELOAD, default add),
# --no-build (WLBS_LAB_NO_BUILD=1).
#
# Addresses are documentation addresses (192.0.2.0/24) inside the namespaces only: no default
# routes, no link into the root namespace. Every namespace is named wlbs-lab-*, every
# interface wlbs-*, every DPDK runtime folder /var/run/dpdk/wlbs-lab-*, so cleanup is exact.
set -euo pipefail

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$SCRIPTS")
readonly SCRIPTS ROOT

# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------
HOSTS=${WLBS_LAB_HOSTS:-3}
# heartbeats: the appliances find each other and converge (WLBS membership, 100 ms period);
# static: [cluster] members lists every host.
MEMBERSHIP=${WLBS_LAB_MEMBERSHIP:-heartbeats}
# NLB cluster operation mode ([cluster] mode): unicast, multicast or igmp.
MODE=${WLBS_LAB_MODE:-unicast}
REQUESTS=${WLBS_LAB_REQUESTS:-300}       # requests to the cluster IP, in all
PARALLEL=${WLBS_LAB_PARALLEL:-4}         # client loops sending at the same time
NO_BUILD=${WLBS_LAB_NO_BUILD:-0}
RULE_PORTS=80                            # the port rule's ports (the reload phase widens it)
WORKERS=1                                # wlbs [dataplane] workers; lcores = workers + 1
                                         # (more needs qpairs=N on the af_packet vdevs)
CURL_MAX_TIME=2                          # seconds per request
WORKLOAD_TIMEOUT=${WLBS_LAB_TIMEOUT:-60} # seconds for the whole workload
READY_TIMEOUT=30                         # seconds for all appliances + servers to carry traffic
STOP_TIMEOUT=5                           # seconds an appliance gets to stop after SIGINT
MAX_HOSTS=20                             # 256 MiB and a share of 2 CPUs per appliance
MAX_PARALLEL=16
HB_PERIOD_MS=100                         # heartbeats membership: period and tolerance
HB_TOLERANCE=5                           # (periods without a heartbeat before "failed")
FO_INTERVAL=0.05                         # failover phase: a new request every ~50 ms,
FO_MAX_TIME=0.5                          # each bounded by 0.5 s, the client by 10 s;
FO_CLIENT_LIMIT=10                       # the kill 1 s after the client starts, the
FO_BEFORE_KILL=1                         # client stopped 3 s after it
FO_AFTER_KILL=3
FO_REJOIN_TIMEOUT=10                     # seconds for the restarted host to converge again
CLOSE_WAIT_S=1                           # [dataplane] tcp_close_wait_s: drains end fast
CLEANUP_DELAY_S=60                       # [cluster] connection_cleanup_delay_s
LONG_CONNS=30                            # join and drain phases: long connections (GET
JOIN_LONG_MS=6000                        # /slow) open at once, lasting this long: across
DRAIN_LONG_MS=4000                       # the join's convergence, past the drainstop
LONG_START_TIMEOUT=5                     # seconds for all of them to get their first line
PHASE_BEFORE=1                           # the join / drainstop 1 s into the load
JOIN_TIMEOUT=10                          # seconds for every host to converge with the joiner
JOIN_AFTER=2                             # short requests go on 2 s after the convergence
DRAIN_HOST=2                             # drainstop host 2 (not the default host 1)
DRAIN_NEW_PERIODS=5                      # no new connection reaches it after 5 periods
DRAIN_AFTER=1                            # short requests go on 1 s after "drainstop complete"
PHASE_CLIENT_LIMIT=30                    # backstop of the phases' short-request client
REMOTE_PORT=2504                         # remote control phase: [remote_control] port,
REMOTE_HOST=3                            # the host stopped and started remotely (else the last)
# reload phase: "add" a rule for port RELOAD_ADD_PORT, or "change" the port-80 rule to
# RELOAD_PORTS (the rule the traffic uses), or "none" to skip the phase
RELOAD_KIND=${WLBS_LAB_RELOAD:-add}
RELOAD_ADD_PORT=8080
RELOAD_PORTS=80-81
RELOAD_AFTER=1                           # short requests go on 1 s after each reload,
RELOAD_BROKEN_HOST=1                     # the host given a broken configuration
SWEEP_MS=1000                            # the dataplane's expiry sweep visits every
                                         # descriptor once a second (worker.rs
                                         # SWEEP_PERIOD_MS): a closed connection's goes
                                         # close wait .. close wait + 1 s after its last packet

readonly NS_PREFIX=wlbs-lab
readonly NS_SW=wlbs-lab-sw NS_CLIENT=wlbs-lab-c NS_BY=wlbs-lab-by
readonly BRIDGE=wlbs-br CLIENT_IF=wlbs-c SW_CLIENT_IF=wlbs-sw-c
readonly BY_IF=wlbs-by SW_BY_IF=wlbs-sw-by # the bystander: a bridge port with no cluster host
readonly BRIDGE_IP=192.0.2.254             # igmp mode: the querier's source address,
readonly IGMP_QUERY_CS=300                 # and its query interval (centiseconds)
readonly NET=192.0.2 PREFIX_LEN=24
readonly CLUSTER_IP=192.0.2.10 # the cluster IP (VIP) every host shares
readonly CLIENT_BASE=100 CLIENT_ADDRS=64 # client addresses 192.0.2.100 .. 192.0.2.163
readonly CLIENT_MAC=02:00:00:00:00:64
readonly LOCK_FILE=/run/wlbs-lab.lock

# The cluster MAC of each NLB mode: unicast 02-BF-a-b-c-d, multicast 03-BF-a-b-c-d, igmp
# 01-00-5E-7F-c-d (the MAC of the IGMP group 239.255.c.d); as `wlbs ip2mac` prints them.
cluster_mac() { # cluster_mac MODE IPV4
  local a b c d
  IFS=. read -r a b c d <<<"$2"
  case $1 in
    unicast) printf '02:bf:%02x:%02x:%02x:%02x' "$a" "$b" "$c" "$d" ;;
    multicast) printf '03:bf:%02x:%02x:%02x:%02x' "$a" "$b" "$c" "$d" ;;
    igmp) printf '01:00:5e:7f:%02x:%02x' "$c" "$d" ;;
  esac
}
# unicast mode: host I sends every frame with the masked source 02-0I-a-b-c-d.
masked_mac() { # masked_mac I
  local a b c d
  IFS=. read -r a b c d <<<"$CLUSTER_IP"
  printf '02:%02x:%02x:%02x:%02x:%02x' "$1" "$a" "$b" "$c" "$d"
}
IGMP_GROUP="239.255.$(cut -d. -f3,4 <<<"$CLUSTER_IP")"
readonly IGMP_GROUP
CLUSTER_MAC="" # of MODE, set once the options are read

ns_app() { echo "wlbs-lab-a$1"; }      # appliance namespace of host $1
ns_srv() { echo "wlbs-lab-s$1"; }      # server namespace of host $1
if_sw() { echo "wlbs-sw-a$1"; }        # bridge port towards appliance $1 (switch ns)
if_cluster() { echo "wlbs-a$1-cl"; }   # appliance $1's cluster port (appliance ns)
if_host() { echo "wlbs-a$1-ho"; }      # appliance $1's host port (appliance ns)
if_srv() { echo "wlbs-s$1"; }          # server $1's NIC (server ns)
server_ip() { echo "$NET.$((10 + $1))"; }                # host $1's dedicated address
server_mac() { printf '02:00:00:00:01:%02x' "$1"; }     # server $1's NIC
client_ip() { echo "$NET.$((CLIENT_BASE + $1))"; }     # client address $1, 0..CLIENT_ADDRS-1
dpdk_prefix() { echo "wlbs-lab-h$1"; }                  # EAL --file-prefix of appliance $1
ctl_socket() { echo "$LOGDIR/h$1.sock"; }               # appliance $1's control socket

# State of this run (run/up only).
LOGDIR=""
KEEP_LAB=0          # `up`: leave the lab running at exit
FOUND_LOGDIR=""     # `down`: where the stopped appliances logged
FAILED=0            # something went wrong that does not abort at once (reported at exit)
declare -a APP_PID=() APP_T0=() SRV_PID=() CLIENT_PID=()
declare -A ANSWERED=() SERVED=() BUCKETS=() FAILURES=() SUMMARY=() DEAD=()
declare -A LONG_ON=() LONG_DONE=() LONG_LAST=() # join/drain: long connections per host
LONG_OK=0 LONG_SERVED=""
TOTAL=0 OK=0        # requests with a result so far, and those answered with "host N"
SOURCES=0           # distinct source address:port pairs of the answered requests
WORKLOAD_STATE=none # none | running | finished
WORKLOAD_MS=0
KILLED=""           # failover phase: the host killed on purpose, while it is down
RESTARTED=""        # ... and once it runs again (its counters start at its restart)
FO_PID=""           # the failover (and join, drain) phase's short-request client loop
LONG_PID=""         # the join and drain phases' long connections
JOINER=""           # the spare host of the join phase (HOSTS + 1) once set up
JOINED=""           # ... once every host converged with it
declare -a TIMING=() # the failover phase's summary lines
PASS_EXTRA=""
FO_KILL_SUMMARY=""

say() { printf 'lab: %s\n' "$*"; }
warn() { printf 'lab: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
fmt_ms() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }

usage() {
  sed -n '/^#   scripts/,/^# --no-build/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# ----------------------------------------------------------------------------------------
# Preconditions
# ----------------------------------------------------------------------------------------
check_env() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, veths, DPDK)"
  local missing=() t
  for t in ip bridge ethtool curl python3 setsid flock taskset; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if [ "$NO_BUILD" != 1 ]; then
    command -v cargo >/dev/null || missing+=(cargo)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing: ${missing[*]} (scripts/setup.sh installs dpdk, iproute2, ethtool, curl, python3)"
  fi
  # Children must not inherit the shell's "ignore SIGINT" (bash sets it for background jobs),
  # else the SIGINT that stops an appliance could be lost: env --default-signal resets it.
  env --default-signal=INT true 2>/dev/null || die "env --default-signal unsupported (coreutils >= 8.31 needed)"
}

check_args() {
  if ! [[ $HOSTS =~ ^[0-9]+$ ]] || [ "$HOSTS" -lt 1 ] || [ "$HOSTS" -gt $MAX_HOSTS ]; then
    die "--hosts must be 1..$MAX_HOSTS (got '$HOSTS')"
  fi
  if ! [[ $REQUESTS =~ ^[0-9]+$ ]] || [ "$REQUESTS" -lt 1 ]; then
    die "--requests must be a number >= 1 (got '$REQUESTS')"
  fi
  if ! [[ $PARALLEL =~ ^[0-9]+$ ]] || [ "$PARALLEL" -lt 1 ] || [ "$PARALLEL" -gt $MAX_PARALLEL ]; then
    die "--parallel must be 1..$MAX_PARALLEL (got '$PARALLEL')"
  fi
  [[ $WORKLOAD_TIMEOUT =~ ^[0-9]+$ ]] || die "WLBS_LAB_TIMEOUT must be seconds"
  case $MODE in
    unicast | multicast | igmp) ;;
    *) die "--mode must be unicast, multicast or igmp (got '$MODE')" ;;
  esac
  case $RELOAD_KIND in
    add | change | none) ;;
    *) die "--reload must be add, change or none (got '$RELOAD_KIND')" ;;
  esac
  CLUSTER_MAC=$(cluster_mac "$MODE" "$CLUSTER_IP")
  readonly CLUSTER_MAC
}

# One lab at a time: names are fixed. fd 9 holds the lock for this script's lifetime; every
# long-lived child gets 9>&- so a lab left `up` does not keep it.
take_lock() {
  exec 9>"$LOCK_FILE"
  flock -n 9 || die "another scripts/lab.sh is running (lock $LOCK_FILE); wait for it or stop it"
}

wlbs_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/wlbs"; }

build() {
  if [ "$NO_BUILD" = 1 ]; then
    return
  fi
  say "building (cargo build --release -p wlbs-control)"
  (cd "$ROOT" && cargo build --release -p wlbs-control --quiet 9>&-)
  [ -x "$(wlbs_bin)" ] || die "build produced no $(wlbs_bin)"
}

# ----------------------------------------------------------------------------------------
# Teardown (shared by `down`, the end of `run` and any error / Ctrl-C)
# ----------------------------------------------------------------------------------------
lab_namespaces() {
  # Exactly our names, nothing else that merely starts with wlbs-.
  ip netns list 2>/dev/null | awk '{print $1}' |
    grep -E "^${NS_PREFIX}-(sw|c|by|a[0-9]+|s[0-9]+)\$" | sort -V || true
}

is_running() {
  # A zombie still answers kill -0; look at the state.
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# SIGINT every appliance, give them STOP_TIMEOUT seconds, show their summary line.
stop_appliances() {
  local ns pid i log
  local -a pids=() hosts=() logs=()
  for ns in $(lab_namespaces); do
    [[ $ns =~ ^${NS_PREFIX}-a([0-9]+)$ ]] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      pids+=("$pid")
      hosts+=("${BASH_REMATCH[1]}")
      logs+=("$(readlink "/proc/$pid/fd/2" 2>/dev/null || true)")
      if [ -n "${logs[-1]}" ]; then FOUND_LOGDIR=$(dirname "${logs[-1]}"); fi
    done
  done
  [ ${#pids[@]} -gt 0 ] || return 0

  local t0 deadline
  t0=$(now_ms)
  deadline=$((t0 + STOP_TIMEOUT * 1000))
  kill -INT "${pids[@]}" 2>/dev/null || true
  while [ "$(now_ms)" -lt $deadline ]; do
    local alive=0
    for pid in "${pids[@]}"; do is_running "$pid" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.05
  done

  for i in "${!pids[@]}"; do
    pid=${pids[$i]} log=${logs[$i]}
    local h=h${hosts[$i]} rc=""
    if is_running "$pid"; then
      warn "$h: still running ${STOP_TIMEOUT}s after SIGINT; killing it (pid $pid)"
      kill -KILL "$pid" 2>/dev/null || true
      FAILED=1
    fi
    # Our own child (run mode): collect its exit status.
    if [ "${APP_PID[${hosts[$i]}]:-}" = "$pid" ]; then
      wait "$pid" 2>/dev/null && rc=0 || rc=$?
    fi
    local line=""
    if [ -n "$log" ] && [ -f "$log" ]; then
      line=$(grep -a 'wlbs: stopped' "$log" | tail -n 1 || true)
    fi
    if [ -n "$line" ]; then
      say "$h: $line"
      SUMMARY[${hosts[$i]}]=$line
    elif [ -n "$rc" ]; then
      warn "$h: no 'wlbs: stopped' line in its log${log:+ ($log)}"
      FAILED=1
    fi
    if [ -n "$rc" ] && [ "$rc" != 0 ]; then
      warn "$h: exited with status $rc after SIGINT (expected 0)"
      FAILED=1
    fi
  done
  say "appliances stopped in $(fmt_ms $(($(now_ms) - t0)))"
}

# Anything else still inside a lab namespace (servers, an interactive shell from `up`...).
kill_rest() {
  local ns pid
  local -a pids=()
  for ns in $(lab_namespaces); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 40); do
    local alive=0
    for pid in "${pids[@]}"; do is_running "$pid" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do
    if is_running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  # Reap our own children quietly.
  for pid in "${SRV_PID[@]}" "${CLIENT_PID[@]}" $FO_PID $LONG_PID; do wait "$pid" 2>/dev/null || true; done
}

teardown() {
  local ns n=0 dirs
  stop_appliances
  kill_rest
  for ns in $(lab_namespaces); do
    # Deleting a namespace destroys its veth ends, and with them their peers.
    ip netns del "$ns" 2>/dev/null || warn "could not delete namespace $ns"
    n=$((n + 1))
  done
  # Insurance: nothing of ours is ever created in the root namespace, but a half-done run of
  # an older version might have; remove exactly our interface names.
  local ifname
  for ifname in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
    grep -E '^wlbs-(br|c|by|sw-c|sw-by|sw-a[0-9]+|a[0-9]+-(cl|ho)|s[0-9]+)$' || true); do
    ip link del "$ifname" 2>/dev/null || true
    n=$((n + 1))
  done
  # --no-shconf still creates the EAL runtime folder; it outlives the process.
  dirs=$(compgen -G "/var/run/dpdk/${NS_PREFIX}-*" || true)
  if [ -n "$dirs" ]; then
    # shellcheck disable=SC2086 # the glob results, one per word, no spaces in our names
    rm -rf $dirs
    n=$((n + 1))
  fi
  return $((n == 0 ? 1 : 0))   # tells `down` whether there was anything to clean
}

on_exit() {
  local rc=$?
  trap '' INT TERM # a second Ctrl-C must not interrupt the teardown (it is bounded anyway)
  set +e
  if [ $KEEP_LAB = 1 ]; then
    return
  fi
  if [ "$WORKLOAD_STATE" = running ]; then
    stop_clients
    collect_results
    say "interrupted during the workload: $OK of $TOTAL requests answered so far" \
      "($REQUESTS planned)"
  fi
  if [ -n "$FO_PID" ] && is_running "$FO_PID"; then kill -TERM "$FO_PID" 2>/dev/null || true; fi
  if [ -n "$LONG_PID" ] && is_running "$LONG_PID"; then kill -TERM "$LONG_PID" 2>/dev/null || true; fi
  say "tearing down"
  teardown
  [ $rc = 0 ] && [ $FAILED = 1 ] && rc=1
  if [ $rc = 0 ]; then
    [ -n "$LOGDIR" ] && rm -rf "$LOGDIR"
    say "PASS: $OK/$REQUESTS requests to the cluster IP answered, each served by exactly one host$PASS_EXTRA"
  else
    [ -n "$LOGDIR" ] && say "logs kept in $LOGDIR"
    say "FAIL (exit $rc)"
  fi
  exit $rc
}

# ----------------------------------------------------------------------------------------
# Building the lab
# ----------------------------------------------------------------------------------------
ns_add() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  # No IPv6 in the lab: DAD, router and MLD solicitations would only add frames (and noise in
  # captures) on ports that are meant to carry the workload. Ignored if IPv6 is off anyway.
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
}

# A veth pair created directly inside the two namespaces (it never exists in the root one).
veth() { # veth NS1 IF1 NS2 IF2
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
  if_prep "$1" "$2"
  if_prep "$3" "$4"
}

if_prep() { # if_prep NS IF
  # TX checksum offload off: a veth that originates TCP otherwise hands out segments with
  # partial checksums (CHECKSUM_PARTIAL); across the af_packet ports they arrive as-is and
  # the receiving stack drops them. Off everywhere is simplest.
  ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
  ip -n "$1" link set "$2" up
}

create_switch() {
  ns_add "$NS_SW"
  # STP stays off (the default), so ports forward at once; the bridge learns source MACs and
  # floods unknown unicast (the defaults), like the switch in front of a WLBS cluster: the
  # cluster MAC is never a source, so frames for it go to every port.
  case $MODE in
    igmp)
      # IGMP snooping with the bridge as the querier (source BRIDGE_IP): it learns which
      # ports joined the cluster's group from the appliances' reports (bridge mdb show).
      # Queries every 3 s (centiseconds), answers within 1 s: a short lab sees many.
      ip -n "$NS_SW" link add "$BRIDGE" type bridge mcast_snooping 1 mcast_querier 1 \
        mcast_query_use_ifaddr 1 mcast_query_interval "$IGMP_QUERY_CS" \
        mcast_query_response_interval 100 mcast_startup_query_interval 100
      ip -n "$NS_SW" addr add "$BRIDGE_IP/$PREFIX_LEN" dev "$BRIDGE"
      ;;
    *)
      # No snooping: multicast frames (the multicast cluster MAC) go to every port.
      ip -n "$NS_SW" link add "$BRIDGE" type bridge mcast_snooping 0
      ;;
  esac
  ip -n "$NS_SW" link set "$BRIDGE" up
}

# A port with no cluster host behind it: a namespace with nothing but a capture, to see what
# the switch sends to ports that are not the cluster's. In igmp mode it has mcast_flood off,
# as a snooping switch treats ports that joined nothing.
create_bystander() {
  ns_add "$NS_BY"
  veth "$NS_BY" "$BY_IF" "$NS_SW" "$SW_BY_IF"
  ip -n "$NS_SW" link set "$SW_BY_IF" master "$BRIDGE"
  ip -n "$NS_BY" link set "$BY_IF" address 02:00:00:00:00:fe
  if [ "$MODE" = igmp ]; then
    ip netns exec "$NS_SW" bridge link set dev "$SW_BY_IF" mcast_flood off
  fi
}

create_client() {
  local k
  ns_add "$NS_CLIENT"
  veth "$NS_CLIENT" "$CLIENT_IF" "$NS_SW" "$SW_CLIENT_IF"
  ip -n "$NS_SW" link set "$SW_CLIENT_IF" master "$BRIDGE"
  ip -n "$NS_CLIENT" link set "$CLIENT_IF" address "$CLIENT_MAC"
  # Many clients in one namespace: the first address is primary, the others secondary on the
  # same interface; curl --interface picks the source address of each request.
  for ((k = 0; k < CLIENT_ADDRS; k++)); do
    echo "address add $(client_ip "$k")/$PREFIX_LEN dev $CLIENT_IF"
  done | ip -n "$NS_CLIENT" -batch -
  # No neighbour entry for the cluster IP: the client learns the cluster MAC by ARP from the
  # appliances (learn_cluster_mac).
}

create_host() {
  local i=$1 na ns nic
  na=$(ns_app "$i") ns=$(ns_srv "$i") nic=$(if_srv "$i")
  ns_add "$na"
  ns_add "$ns"
  veth "$NS_SW" "$(if_sw "$i")" "$na" "$(if_cluster "$i")"
  ip -n "$NS_SW" link set "$(if_sw "$i")" master "$BRIDGE"
  if [ "$MODE" = igmp ]; then
    # With snooping and a querier, the Linux bridge forwards an IPv4 frame by its destination
    # IP, not its MAC: frames to the cluster IP (a unicast IP behind the group's MAC) match no
    # group, and go to multicast router ports only (br_multicast_ipv4_rcv: "mrouters_only"),
    # whatever the hosts joined. So the hosts' ports are made router ports, statically.
    ip netns exec "$NS_SW" bridge link set dev "$(if_sw "$i")" mcast_router 2
  fi
  veth "$na" "$(if_host "$i")" "$ns" "$nic"
  # The appliance's ports carry no addresses; promiscuous because they carry frames for
  # other MACs (the cluster MAC, the server's).
  ip -n "$na" link set "$(if_cluster "$i")" promisc on
  ip -n "$na" link set "$(if_host "$i")" promisc on
  # Fixed MACs make captures readable: server i is 02:00:00:00:01:ii (the appliance's
  # host_mac: accepted frames are rewritten to it).
  ip -n "$ns" link set "$nic" address "$(server_mac "$i")"
  ip -n "$ns" addr add "$(server_ip "$i")/$PREFIX_LEN" dev "$nic"
  # The cluster IP on lo: the kernel accepts packets for it and replies from it. arp_ignore=1
  # (answer ARP only for addresses on the interface asked) and arp_announce=2 (ARP with the
  # interface's own address) so a server never answers or announces the cluster IP.
  ip -n "$ns" addr add "$CLUSTER_IP/32" dev lo
  ip netns exec "$ns" sysctl -qw \
    net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
    "net.ipv4.conf.$nic.arp_ignore=1" "net.ipv4.conf.$nic.arp_announce=2" >/dev/null
}

# Start a long-lived process in a namespace, detached from our terminal (its own session: a
# Ctrl-C on the terminal reaches only this script, which then stops everything in order) and
# with SIGINT at its default. `ip netns exec` and `setsid` exec, so $! is the process itself.
spawn() { # spawn NS LOG CMD...
  local ns=$1 log=$2
  shift 2
  setsid env --default-signal=INT,QUIT ip netns exec "$ns" "$@" </dev/null >"$log" 2>&1 9>&- &
}

start_server() {
  local i=$1
  # Listens on every address: the cluster IP (lo) and the dedicated address (NIC).
  spawn "$(ns_srv "$i")" "$LOGDIR/s$i.log" \
    python3 "$SCRIPTS/lab-server.py" --host "$i" --bind 0.0.0.0 --name "$(ns_srv "$i")"
  SRV_PID[i]=$!
}

lcores() {
  # Appliances share the CPUs we may use: every lcore floats over all of them (wlbs backs
  # off when idle, so three appliances fit on two cores).
  local cpus l out=""
  cpus=${WLBS_LAB_CPUS:-$(taskset -cp $$ | awk -F': ' '{print $2}')}
  for ((l = 0; l <= WORKERS; l++)); do out+="${out:+,}$l@($cpus)"; done
  echo "$out"
}

membership_config() { # the [cluster] lines that choose how hosts know each other
  case "$MEMBERSHIP" in
    static) echo "members = [$(members)]  # static membership: every host of the lab is live" ;;
    *) echo "heartbeat_period_ms = $HB_PERIOD_MS  # WLBS membership: heartbeats every $HB_PERIOD_MS ms"
       echo "heartbeat_tolerance = $HB_TOLERANCE"
       echo "connection_cleanup_delay_s = $CLEANUP_DELAY_S  # a moved bucket's old owner keeps its connections this long at most"
       echo "key_file = \"$(key_file)\"  # signed heartbeats and remote control" ;;
  esac
}

key_file() { echo "$LOGDIR/cluster.key"; } # the cluster key (heartbeats membership)

remote_config() { # [remote_control] (heartbeats membership: with the cluster key)
  [ "$MEMBERSHIP" != static ] || return 0
  printf '\n[remote_control]\nenabled = true  # wlbs VERB --remote cluster[:N], UDP port 2504\n'
}

# The lab's [[port_rule]]: port 80 (the reload phase widens it).
port_rule() { # port_rule [PORTS]
  printf '[[port_rule]]\nports = "%s"\nprotocol = "tcp"\naffinity = "none"  # client address + port: each connection on its own\n' "${1:-80}"
}

lab_hosts() { # every host set up: 1..HOSTS, and the join phase's spare host once there is one
  seq 1 "$HOSTS"
  [ -z "$JOINER" ] || echo "$JOINER"
}

members() { # the static membership: every host of the lab, "1, 2, 3"
  local i out=""
  for ((i = 1; i <= HOSTS; i++)); do out+="${out:+, }$i"; done
  echo "$out"
}

start_appliance() {
  local i=$1
  local cfg="$LOGDIR/h$i.toml" log="$LOGDIR/h$i.log"
  # --no-pci: the lab's ports are vdevs only; never let EAL probe the machine's real NIC.
  local -a eal=(--no-huge --no-shconf -m 256 --no-pci --file-prefix "$(dpdk_prefix "$i")"
    --vdev "net_af_packet0,iface=$(if_cluster "$i")"
    --vdev "net_af_packet1,iface=$(if_host "$i")"
    --lcores "$(lcores)")
  cat >"$cfg" <<EOF
# wlbs lab, host $i (written by scripts/lab.sh)
[dataplane]
cluster_port = "net_af_packet0"  # $(if_cluster "$i"), towards the switch
host_port = "net_af_packet1"  # $(if_host "$i"), towards server $i
workers = $WORKERS
busy_poll = false  # the appliances share the CPUs
host_mac = "$(server_mac "$i")"  # server $i: accepted frames are rewritten to it
tcp_close_wait_s = $CLOSE_WAIT_S  # a closed connection's descriptor goes soon: drains end fast

[cluster]
ip = "$CLUSTER_IP"
mode = "$MODE"  # cluster MAC $CLUSTER_MAC
$(membership_config)

[host]
priority = $i
dedicated_ip = "$(server_ip "$i")"  # server $i's own address: never load balanced

$(port_rule "$RULE_PORTS")

[control]
socket = "$(ctl_socket "$i")"  # wlbs query|drainstop|stop|start|reload --socket ...
$(remote_config)
EOF
  APP_T0[i]=$(now_ms)
  spawn "$(ns_app "$i")" "$log" "$(wlbs_bin)" run --config "$cfg" -- "${eal[@]}"
  APP_PID[i]=$!
}

log_tail() { # log_tail FILE
  [ -f "$1" ] || return 0
  printf '  | %s\n' "---- last lines of $1 (EAL usage text left out)" >&2
  # On bad arguments EAL prints its whole usage text, which buries the one useful line.
  grep -avE '^([[:space:]]|$|Usage: |EAL (common|Linux) options:|EAL options for DEBUG)' "$1" | tail -n 15 | sed 's/^/  | /' >&2
}

# The one readiness probe: GET /ready (answers "host N" like /, but the servers do not count
# it) at ADDR from the client. Prints the host that answered.
probe() { # probe ADDR
  local out
  out=$(ip netns exec "$NS_CLIENT" curl -s --max-time 0.5 "http://$1/ready" 2>/dev/null) &&
    [[ $out =~ ^host\ ([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}"
}

# An appliance or a server that exited: it failed to start or crashed.
check_alive() {
  local i rc dead=0
  for i in $(lab_hosts); do
    # (The host killed on purpose in the failover phase is down until its restart; the
    # joiner's appliance does not run before the join phase, its server does.)
    if [ -n "${APP_PID[i]:-}" ] && [ "$i" != "$KILLED" ] && ! is_running "${APP_PID[i]}"; then
      dead=1
      [ -z "${DEAD[$i]:-}" ] || continue # reported already
      DEAD[$i]=1
      rc=0
      wait "${APP_PID[i]}" 2>/dev/null || rc=$?
      warn "appliance h$i exited with status $rc"
      log_tail "$LOGDIR/h$i.log"
    elif ! is_running "${SRV_PID[i]}"; then
      warn "server s$i exited"
      log_tail "$LOGDIR/s$i.log"
      dead=1
    fi
  done
  return $dead
}

# Wait until every host answers at its dedicated address through its appliance (which passes
# it through unchanged), then until the cluster IP answers (some host accepted it).
wait_ready() {
  local t0 deadline i who pending=()
  t0=$(now_ms)
  deadline=$((t0 + READY_TIMEOUT * 1000))
  for ((i = 1; i <= HOSTS; i++)); do pending+=("$i"); done
  while [ ${#pending[@]} -gt 0 ]; do
    check_alive || exit 1
    local still=()
    for i in "${pending[@]}"; do
      who=$(probe "$(server_ip "$i")") && [ "$who" = "$i" ] || still+=("$i")
    done
    pending=("${still[@]}")
    [ ${#pending[@]} -eq 0 ] && break
    if [ "$(now_ms)" -ge $deadline ]; then
      for i in "${pending[@]}"; do
        if ip netns exec "$(ns_srv "$i")" curl -s --max-time 1 "http://$(server_ip "$i")/ready" >/dev/null; then
          warn "host $i ($(server_ip "$i")) answers locally but not through appliance h$i within ${READY_TIMEOUT}s"
        else
          warn "server s$i does not answer even locally"
          log_tail "$LOGDIR/s$i.log"
        fi
        log_tail "$LOGDIR/h$i.log"
      done
      exit 1
    fi
    sleep 0.2
  done
  local t1
  t1=$(now_ms)
  learn_cluster_mac
  until who=$(probe "$CLUSTER_IP"); do
    check_alive || exit 1
    if [ "$(now_ms)" -ge $deadline ]; then
      warn "the cluster IP $CLUSTER_IP does not answer within ${READY_TIMEOUT}s, though every dedicated address does"
      for ((i = 1; i <= HOSTS; i++)); do log_tail "$LOGDIR/h$i.log"; done
      exit 1
    fi
    sleep 0.2
  done
  say "all $HOSTS dedicated addresses answer through their appliances after $(fmt_ms $((t1 - t0)));" \
    "the cluster IP $CLUSTER_IP answers (host $who) after $(fmt_ms $(($(now_ms) - t0)))"
  read_buckets
}

# ----------------------------------------------------------------------------------------
# The cluster MAC modes: what the client learns by ARP, what the switch does with the frames
# ----------------------------------------------------------------------------------------

# The client's neighbour entry for the cluster IP: "LLADDR STATE" (or "- STATE", or "").
neigh_entry() {
  ip -n "$NS_CLIENT" neigh show "$CLUSTER_IP" dev "$CLIENT_IF" 2>/dev/null |
    awk '{ mac = "-"; for (i = 1; i < NF; i++) if ($i == "lladdr") mac = $(i + 1); print mac, $NF; exit }'
}

# The client has no neighbour entry for the cluster IP: it must learn the cluster MAC from
# the appliances' ARP answers (probes to the cluster IP make it ask). A router may refuse to
# map a unicast IP to a multicast MAC (RFC 1812 3.3.2): then, in the multicast modes only,
# the entry is pinned as a router admin would, with the line `wlbs ip2mac` prints.
ARP_TIMEOUT=5
NEIGH_HOW="" # how the client got the cluster MAC, for the report
learn_cluster_mac() {
  local deadline entry line
  local -a words
  deadline=$(($(now_ms) + ARP_TIMEOUT * 1000))
  while :; do
    entry=$(neigh_entry)
    if [ "${entry%% *}" = "$CLUSTER_MAC" ]; then
      NEIGH_HOW="learned by ARP"
      say "arp: the client learned $CLUSTER_IP -> $CLUSTER_MAC from the appliances' ARP answers" \
        "(neighbour state ${entry#* })"
      return 0
    fi
    [ "$(now_ms)" -lt $deadline ] || break
    probe "$CLUSTER_IP" >/dev/null || true
    sleep 0.2
  done
  if [ "$MODE" = unicast ]; then
    warn "FAIL: arp: the client did not learn $CLUSTER_IP -> $CLUSTER_MAC within ${ARP_TIMEOUT}s" \
      "(its neighbour entry: '${entry:-none}')"
    for ((i = 1; i <= HOSTS; i++)); do log_tail "$LOGDIR/h$i.log"; done
    exit 1
  fi
  line=$("$(wlbs_bin)" ip2mac "$CLUSTER_IP" | grep -m 1 "ip neigh replace $CLUSTER_IP lladdr $CLUSTER_MAC " || true)
  [ -n "$line" ] || die "FAIL: wlbs ip2mac $CLUSTER_IP printed no static ARP line for $CLUSTER_MAC"
  read -r -a words <<<"${line#*Linux}"
  words=("${words[@]/#IFACE/$CLIENT_IF}")
  say "arp: the client did not take $CLUSTER_IP -> $CLUSTER_MAC from the ARP answers within" \
    "${ARP_TIMEOUT}s (neighbour entry '${entry:-none}'): Linux refuses a multicast MAC for a" \
    "unicast IP; pinning it as a router admin would, with the line wlbs ip2mac prints: ${words[*]}"
  ip -n "$NS_CLIENT" "${words[@]:1}"
  NEIGH_HOW="pinned statically (Linux refused it by ARP)"
}

# Every appliance's cluster-side bridge port (what the appliance sends) and the bystander's
# port (what the switch sends it) are captured from before the appliances start to after they
# stop.
declare -a CAP_PID=()
start_captures() {
  local i
  for i in $(lab_hosts); do
    spawn "$NS_SW" "$LOGDIR/sw-a$i.cap.log" tcpdump -i "$(if_sw "$i")" -Q in -n -U -s 128 \
      -w "$LOGDIR/sw-a$i.pcap"
    CAP_PID[i]=$!
  done
  spawn "$NS_BY" "$LOGDIR/by.cap.log" tcpdump -i "$BY_IF" -Q in -n -U -s 128 -w "$LOGDIR/by.pcap"
  CAP_PID[0]=$!
  # Until each one says it listens (else the first frames would be missed).
  local deadline=$(($(now_ms) + 5000)) f
  for f in "$LOGDIR"/sw-a*.cap.log "$LOGDIR/by.cap.log"; do
    until grep -q 'listening on' "$f" 2>/dev/null; do
      [ "$(now_ms)" -lt $deadline ] || die "tcpdump did not start (see $f)"
      sleep 0.05
    done
  done
}

stop_captures() {
  local pid
  for pid in "${CAP_PID[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${CAP_PID[@]}"; do wait "$pid" 2>/dev/null || true; done
  CAP_PID=()
}

# unicast mode: every frame appliance I sent to the switch has the masked source
# 02-0I-a-b-c-d (heartbeats, ARP, the servers' frames). Every mode: none has the cluster MAC
# as source. And what reached the bystander: the flood of the cluster's traffic (unicast,
# multicast) or nothing of it (igmp, mcast_flood off).
check_captures() {
  local i f lines n bad want by_ip by_mac by_all
  local -a frames=()
  for i in $(lab_hosts); do
    f="$LOGDIR/sw-a$i.pcap"
    [ -n "${APP_PID[i]:-}" ] || continue
    lines=$(tcpdump -r "$f" -e -n -t 2>/dev/null) || true
    n=$(grep -c . <<<"$lines" || true)
    if [ "$MODE" = unicast ]; then
      want=$(masked_mac "$i")
      bad=$(awk -v w="$want" '$1 != w' <<<"$lines" | grep -c . || true)
    else
      want="not $CLUSTER_MAC"
      bad=$(awk -v w="$CLUSTER_MAC" '$1 == w' <<<"$lines" | grep -c . || true)
    fi
    if [ "$n" = 0 ]; then
      warn "FAIL: capture: no frame from appliance h$i on bridge port $(if_sw "$i") ($f)"
      FAILED=1
    elif [ "$bad" != 0 ]; then
      warn "FAIL: capture: $bad of $n frames from appliance h$i on bridge port $(if_sw "$i")" \
        "have another source than $want; the first ones:"
      if [ "$MODE" = unicast ]; then
        awk -v w="$want" '$1 != w' <<<"$lines" | head -n 10 | sed 's/^/  | /' >&2
      else
        awk -v w="$CLUSTER_MAC" '$1 == w' <<<"$lines" | head -n 10 | sed 's/^/  | /' >&2
      fi
      FAILED=1
    fi
    frames+=("h$i $n")
  done
  if [ "$MODE" = unicast ]; then
    say "capture: every frame the appliances sent to the switch has its masked source" \
      "02:0I:c0:00:02:0a (frames: ${frames[*]})"
  else
    say "capture: no frame the appliances sent to the switch has the cluster MAC as source" \
      "(frames: ${frames[*]}; sources: $(for i in $(lab_hosts); do
        tcpdump -r "$LOGDIR/sw-a$i.pcap" -e -n -t 2>/dev/null | awk '{print $1}' | sort -u | paste -sd/
      done | paste -sd' '))"
  fi

  [ "$MODE" != igmp ] || check_igmp_frames

  by_all=$(tcpdump -r "$LOGDIR/by.pcap" -n 2>/dev/null | grep -c . || true)
  # (IP only: "dst host" would also match the ARP broadcasts asking for the cluster IP.)
  by_ip=$(tcpdump -r "$LOGDIR/by.pcap" -n "ip dst host $CLUSTER_IP" 2>/dev/null | grep -c . || true)
  by_mac=$(tcpdump -r "$LOGDIR/by.pcap" -n "ether dst $CLUSTER_MAC" 2>/dev/null | grep -c . || true)
  case $MODE in
    igmp)
      if [ "$by_ip" != 0 ] || [ "$by_mac" != 0 ]; then
        warn "FAIL: bystander: the port with mcast_flood off got $by_ip frames to $CLUSTER_IP" \
          "and $by_mac to $CLUSTER_MAC (of $by_all)"
        FAILED=1
      else
        say "bystander: the bridge port with mcast_flood off got none of the cluster's frames" \
          "($by_all frames in all, broadcasts such as ARP). Why: the Linux bridge snoops" \
          "IPv4 by destination IP; frames to $CLUSTER_IP (MAC $CLUSTER_MAC) match no group, so" \
          "with a querier they go to multicast router ports only (the hosts' ports, mcast_router" \
          "2); before the querier counts (its first query response interval) they flood to" \
          "mcast_flood ports (not the bystander's);" \
          "the group $IGMP_GROUP the hosts joined does not decide where they go"
      fi
      ;;
    *)
      if [ "$by_ip" = 0 ]; then
        warn "FAIL: bystander: got no frame to $CLUSTER_IP, though the switch should flood the" \
          "cluster MAC $CLUSTER_MAC to every port"
        FAILED=1
      else
        say "bystander: the switch flooded $by_ip frames to $CLUSTER_IP ($by_mac to $CLUSTER_MAC)" \
          "to the port with no cluster host too, as $MODE mode makes every switch do"
      fi
      ;;
  esac
}

# igmp mode, from the captures: every appliance sent a report for the group at start, answered
# the bridge's queries (seen by the bystander) with reports within 2 s while it ran, and sent
# a leave when it stopped (SIGINT at the end of the run).
check_igmp_frames() {
  local i f queries res nr nl na nq bad=0
  local -a per_host=()
  queries=$(tcpdump -r "$LOGDIR/by.pcap" -n -tt 'igmp' 2>/dev/null | awk '/igmp query/ { print $1 }')
  for i in $(lab_hosts); do
    [ -n "${APP_PID[i]:-}" ] || continue
    f="$LOGDIR/sw-a$i.pcap"
    # "REPORTS LEAVES ANSWERED ASKED": queries between this host's first and last frame
    # (minus 2 s) are asked; answered when a report follows within 2 s.
    res=$(tcpdump -r "$f" -n -tt 2>/dev/null | awk -v q="$queries" -v g="$IGMP_GROUP" '
      BEGIN { nq = split(q, qs, "\n") }
      NR == 1 { first = $1 }
      { last = $1 }
      / igmp v[12] report / && $NF == g { rep[++nr] = $1 }
      / igmp leave / && $NF == g { nl++ }
      END {
        for (k = 1; k <= nq; k++) {
          if (qs[k] == "" || qs[k] < first || qs[k] > last - 2) continue
          asked++
          for (r = 1; r <= nr; r++) if (rep[r] >= qs[k] && rep[r] <= qs[k] + 2) { answered++; break }
        }
        printf "%d %d %d %d\n", nr, nl, answered, asked
      }')
    read -r nr nl na nq <<<"$res"
    per_host+=("h$i $nr reports, answered $na/$nq queries, $nl leaves")
    if [ "$nr" = 0 ]; then
      warn "FAIL: igmp: h$i sent no membership report for $IGMP_GROUP"
      bad=1
    fi
    if [ "$nq" -ge 2 ] && [ "$na" = 0 ]; then
      warn "FAIL: igmp: h$i answered none of the $nq queries the bridge sent while it ran"
      bad=1
    fi
    if [ "$nl" = 0 ]; then
      warn "FAIL: igmp: h$i sent no leave for $IGMP_GROUP when it stopped (SIGINT)"
      bad=1
    fi
  done
  [ $bad = 0 ] || FAILED=1
  say "igmp: from the captures: $(printf '%s; ' "${per_host[@]}" | sed 's/; $//')"
}

# igmp mode: the bridge learned from the appliances' reports that every running appliance's
# port joined the group 239.255.c.d, and the bystander's did not.
check_mdb() { # check_mdb WHEN
  local mdb i missing=() joined=() deadline
  deadline=$(($(now_ms) + 3000))
  while :; do
    mdb=$(ip netns exec "$NS_SW" bridge mdb show dev "$BRIDGE" 2>&1) || true
    missing=() joined=()
    for i in $(lab_hosts); do
      if [ -z "${APP_PID[i]:-}" ] || [ "$i" = "$KILLED" ]; then continue; fi
      if grep -qE "port $(if_sw "$i") grp $IGMP_GROUP( |$)" <<<"$mdb"; then
        joined+=("$(if_sw "$i")")
      else
        missing+=("$(if_sw "$i")")
      fi
    done
    if [ ${#missing[@]} = 0 ] || [ "$(now_ms)" -ge $deadline ]; then break; fi
    sleep 0.2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    warn "FAIL: mdb ($1): the bridge has no membership of $IGMP_GROUP on ${missing[*]}:"
    awk '{ print "  | " $0 }' <<<"$mdb" >&2
    FAILED=1
  elif grep -qE "port $SW_BY_IF grp" <<<"$mdb"; then
    warn "FAIL: mdb ($1): the bystander's port joined a group"
    FAILED=1
  else
    say "mdb ($1): the bridge learned group $IGMP_GROUP on every appliance's port" \
      "(${joined[*]}) from their IGMP reports, not on the bystander's"
  fi
}

# How many buckets each appliance says it owns (its start-up log line).
read_buckets() {
  local i n
  for ((i = 1; i <= HOSTS; i++)); do
    n=$(grep -aoE '[0-9]+ bucket\(s\) owned here' "$LOGDIR/h$i.log" | tail -n 1 | cut -d' ' -f1 || true)
    BUCKETS[$i]=${n:--}
  done
}

# The switch must flood frames for the cluster MAC to every host: the bridge must never have
# learned it (no frame carries it as source), and every port must flood unknown unicast.
# Checked before the workload (a failure ends the run at once) and after it.
check_switch() { # check_switch [before|after]
  local fdb ports learned bad=0
  if ! fdb=$(ip netns exec "$NS_SW" bridge fdb show br "$BRIDGE" 2>&1); then
    warn "FAIL: bridge fdb show in $NS_SW failed: $fdb"
    FAILED=1
    return
  fi
  if grep -qi "^$CLUSTER_MAC " <<<"$fdb"; then
    warn "FAIL: the bridge learned the cluster MAC $CLUSTER_MAC, so it no longer floods frames" \
      "for the cluster IP to every host (something sent a frame with it as source):"
    grep -i "^$CLUSTER_MAC " <<<"$fdb" | sed 's/^/  | /' >&2
    bad=1
  fi
  # (" flood", not "mcast_flood": the bystander has mcast_flood off in igmp mode.)
  ports=$(ip netns exec "$NS_SW" bridge -d link show 2>&1 | grep -cE '(^|[[:space:]])flood off' || true)
  if [ "$ports" != 0 ]; then
    warn "FAIL: $ports bridge port(s) do not flood unknown unicast (bridge -d link show in $NS_SW)"
    bad=1
  fi
  learned=$(grep -v permanent <<<"$fdb" | grep -c ' master ' || true)
  if [ $bad = 1 ]; then
    FAILED=1
    [ "${1:-after}" = after ] || exit 1
  elif [ "${1:-after}" = after ]; then
    case $MODE in
      unicast) say "switch: the bridge learned $learned MACs (the client's and the hosts' masked" \
        "02:0I:c0:00:02:0a), not the cluster MAC $CLUSTER_MAC: it floods frames for the cluster IP to" \
        "all $(lab_hosts | wc -l) hosts" ;;
      multicast) say "switch: the bridge learned $learned MACs; the cluster MAC $CLUSTER_MAC is" \
        "multicast: it floods frames for the cluster IP to every port (no snooping)" ;;
      igmp) say "switch: the bridge learned $learned MACs; frames to the cluster MAC" \
        "$CLUSTER_MAC go where IGMP snooping sends them" ;;
    esac
  fi
  if [ "${1:-after}" = after ]; then
    local entry
    entry=$(neigh_entry)
    if [ "${entry%% *}" != "$CLUSTER_MAC" ]; then
      warn "FAIL: arp: the client's neighbour entry for $CLUSTER_IP is now '${entry:-none}'," \
        "not $CLUSTER_MAC"
      FAILED=1
    else
      say "arp: the client's neighbour entry for $CLUSTER_IP is still $CLUSTER_MAC" \
        "(${entry#* }; $NEIGH_HOW)"
    fi
  fi
}

# ----------------------------------------------------------------------------------------
# The workload
# ----------------------------------------------------------------------------------------

# One client loop; runs inside the client namespace (bash -c, see run_workload). It sends
# requests FIRST, FIRST+STEP, ... below TOTAL; request k goes from client address k mod ADDRS,
# each a new curl and so a new TCP connection from a new source port. No request starts after
# DEADLINE (epoch ms). One tab-separated line per request: k, source address, source port,
# curl status ("skip": not sent), the answer or curl's error.
client_loop() { # client_loop URL FIRST STEP TOTAL NET BASE ADDRS DEADLINE MAX_TIME ERRFILE
  local url=$1 k=$2 step=$3 total=$4 net=$5 base=$6 addrs=$7 deadline=$8 max=$9 errf=${10}
  local src out rc port t
  for ((; k < total; k += step)); do
    src=$net.$((base + k % addrs))
    t=${EPOCHREALTIME/[.,]/}
    if ((t / 1000 >= deadline)); then
      printf '%d\t%s\t-\tskip\tnot sent: workload time limit reached\n' "$k" "$src"
      continue
    fi
    rc=0
    out=$(curl -sS --fail --max-time "$max" --interface "$src" -w '\t%{local_port}' "$url" \
      2>"$errf") || rc=$?
    port=${out##*$'\t'}
    out=${out%$'\t'*}
    [ $rc = 0 ] || out=$(cat "$errf")
    out=${out%$'\n'}
    printf '%d\t%s\t%s\t%s\t%s\n' "$k" "$src" "${port:--}" "$rc" "${out//$'\n'/ }"
  done
}

count_failure() { FAILURES[$1]=$((${FAILURES[$1]:-0} + 1)); }

# Stop the client loops (Ctrl-C or time-out); their curls end with them or within
# CURL_MAX_TIME, and teardown kills whatever is left in the client namespace.
stop_clients() {
  local pid
  for pid in "${CLIENT_PID[@]}"; do
    if is_running "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
}

# PARALLEL client loops in the client namespace share the REQUESTS requests to the cluster IP;
# bounded per request (CURL_MAX_TIME) and overall (WORKLOAD_TIMEOUT).
run_workload() {
  local t0 deadline guard w pid alive
  WORKLOAD_STATE=running
  t0=$(now_ms)
  deadline=$((t0 + WORKLOAD_TIMEOUT * 1000))
  for ((w = 0; w < PARALLEL; w++)); do
    ip netns exec "$NS_CLIENT" bash -c "$(declare -f client_loop); client_loop \"\$@\"" \
      client_loop "http://$CLUSTER_IP/" "$w" "$PARALLEL" "$REQUESTS" "$NET" "$CLIENT_BASE" \
      "$CLIENT_ADDRS" "$deadline" "$CURL_MAX_TIME" "$LOGDIR/c$w.err" \
      </dev/null >"$LOGDIR/c$w.out" 2>"$LOGDIR/c$w.log" 9>&- &
    CLIENT_PID[w]=$!
  done
  # The loops stop on their own by the deadline plus one request; this is the backstop.
  guard=$((deadline + (CURL_MAX_TIME + 3) * 1000))
  while :; do
    alive=0
    for pid in "${CLIENT_PID[@]}"; do is_running "$pid" && alive=1; done
    [ $alive = 0 ] && break
    if [ "$(now_ms)" -ge $guard ]; then
      warn "client loops still running $((CURL_MAX_TIME + 3))s after the workload deadline; stopping them"
      stop_clients
      FAILED=1
      break
    fi
    sleep 0.1
  done
  for pid in "${CLIENT_PID[@]}"; do wait "$pid" 2>/dev/null || true; done
  WORKLOAD_MS=$(($(now_ms) - t0))
  collect_results
  WORKLOAD_STATE=finished
}

# Tally the client loops' lines: ANSWERED[host], OK, TOTAL, FAILURES[reason] and the number
# of distinct sources (address:port) of answered requests.
collect_results() {
  local k src port rc text reason w
  ANSWERED=() FAILURES=() TOTAL=0 OK=0
  local -A seen=()
  for ((w = 0; w < PARALLEL; w++)); do
    [ -f "$LOGDIR/c$w.out" ] || continue
    while IFS=$'\t' read -r k src port rc text; do
      [ -n "$rc" ] || continue # a line cut short by an interruption
      TOTAL=$((TOTAL + 1))
      reason=""
      if [ "$rc" = skip ]; then
        reason="$text (${WORKLOAD_TIMEOUT}s)"
      elif [ "$rc" != 0 ]; then
        # Failures of one kind group together: drop curl's per-attempt figures.
        reason=$(sed -E 's/after [0-9]+ (ms|milliseconds|seconds)/after .../; s/ with [0-9]+ (out of -?[0-9]+ )?bytes received//' <<<"${text:-curl exit $rc}")
      elif [[ ! $text =~ ^host\ ([0-9]+)$ ]]; then
        reason="unexpected answer '${text:0:60}'"
      else
        ANSWERED[${BASH_REMATCH[1]}]=$((${ANSWERED[${BASH_REMATCH[1]}]:-0} + 1))
        OK=$((OK + 1))
        seen[$src:$port]=1
      fi
      [ -z "$reason" ] || count_failure "$reason"
    done <"$LOGDIR/c$w.out"
  done
  SOURCES=${#seen[@]}
}

# Each server's count of requests to / it served, fetched at its dedicated address (not
# counted itself).
fetch_served() {
  local i out
  for ((i = 1; i <= HOSTS; i++)); do
    if out=$(ip netns exec "$NS_CLIENT" curl -sS --fail --max-time "$CURL_MAX_TIME" \
      "http://$(server_ip "$i")/count" 2>&1) && [[ $out =~ ^[0-9]+$ ]]; then
      SERVED[$i]=$out
    else
      warn "could not fetch server s$i's count at http://$(server_ip "$i")/count: ${out:0:80}"
      SERVED[$i]=-
      FAILED=1
    fi
  done
}

pct() { # pct PART WHOLE: one decimal
  local p=$(($2 > 0 ? ($1 * 1000 + $2 / 2) / $2 : 0))
  printf '%d.%d%%' $((p / 10)) $((p % 10))
}

# Who answered how much, what each server says it served, the failures grouped by reason;
# and the verdict: every request answered, counts adding up, every host taking a share.
summarize() {
  local i failed reason served_sum=0 missing
  local -a problems=()
  failed=$((REQUESTS - OK))
  missing=$((REQUESTS - TOTAL))
  [ $missing -le 0 ] || FAILURES["no result from a client loop (see $LOGDIR/c*.log)"]=$missing
  say "workload: $REQUESTS requests to http://$CLUSTER_IP/ from $CLIENT_ADDRS client addresses" \
    "($(client_ip 0)-$((CLIENT_BASE + CLIENT_ADDRS - 1))), $PARALLEL at a time, in" \
    "$(fmt_ms "$WORKLOAD_MS"); $SOURCES distinct source address:port pairs answered;" \
    "max ${CURL_MAX_TIME}s each, ${WORKLOAD_TIMEOUT}s overall"
  printf '  %-6s %-12s %7s %9s %7s %9s\n' host dedicated buckets answered share served
  for ((i = 1; i <= HOSTS; i++)); do
    printf '  %-6s %-12s %7s %9d %7s %9s\n' "h$i" "$(server_ip "$i")" "${BUCKETS[$i]:--}" \
      "${ANSWERED[$i]:-0}" "$(pct "${ANSWERED[$i]:-0}" "$OK")" "${SERVED[$i]:--}"
    if [[ ${SERVED[$i]:--} =~ ^[0-9]+$ ]]; then
      served_sum=$((served_sum + SERVED[$i]))
      if [ "${SERVED[$i]}" != "${ANSWERED[$i]:-0}" ]; then
        problems+=("h$i: its server served ${SERVED[$i]} requests, the client got ${ANSWERED[$i]:-0} answers from host $i")
      fi
    else
      problems+=("h$i: its server's count is unknown")
    fi
    [ "${ANSWERED[$i]:-0}" != 0 ] || problems+=("h$i answered no request")
  done
  # Answers naming a host that does not exist (cannot happen; shows if it does).
  for i in "${!ANSWERED[@]}"; do
    if [ "$i" -lt 1 ] || [ "$i" -gt "$HOSTS" ]; then
      problems+=("${ANSWERED[$i]} answers from host $i, which does not exist")
    fi
  done
  printf '  %-6s %-12s %7s %9d %7s %9d\n' all "$CLUSTER_IP" 60 "$OK" "$(pct "$OK" "$OK")" "$served_sum"
  printf '  %-6s %-12s %7s %9d\n' failed "" "" "$failed"
  for reason in "${!FAILURES[@]}"; do
    printf '    %4dx %s\n' "${FAILURES[$reason]}" "$reason"
  done
  [ "$failed" = 0 ] || problems+=("$failed of $REQUESTS requests failed")
  if [ "$served_sum" -gt "$OK" ]; then
    problems+=("the servers served $served_sum requests but the client got $OK answers:" \
      "some request was served twice or served and then lost")
  elif [ "$served_sum" -lt "$OK" ]; then
    problems+=("the servers served $served_sum requests but the client got $OK answers")
  fi
  if [ ${#problems[@]} -eq 0 ]; then
    say "the servers served $served_sum requests = $OK answered: each request served exactly once"
  else
    for reason in "${problems[@]}"; do warn "FAIL: $reason"; done
    FAILED=1
  fi
}

# An appliance or server that died under the workload is a failure even if every request
# got through.
check_appliances() {
  check_alive || FAILED=1
}

# From the appliances' summary lines: every frame to the cluster IP reaches every host (the
# bridge floods it) and exactly one accepts it, so accepted + not ours is the same on every
# host and equals the accepted frames of all hosts together. Informational: a frame one
# af_packet port missed shows here too.
check_filter_counts() {
  local i acc=0 seen line late=""
  local -a each=() hosts=()
  mapfile -t hosts < <(seq 1 "$HOSTS")
  # The restarted host counts from its restart, the joiner from its start.
  [ -z "$RESTARTED" ] || late+="h$RESTARTED counts from its restart"
  if [ -n "$JOINER" ] && [ -n "${APP_PID[JOINER]:-}" ]; then
    hosts+=("$JOINER")
    late+="${late:+, }h$JOINER from its start"
  fi
  for i in "${hosts[@]}"; do
    line=${SUMMARY[$i]:-}
    if [[ $line =~ filter\ accepted\ ([0-9]+),\ passed\ ([0-9]+),\ not\ ours\ ([0-9]+) ]]; then
      acc=$((acc + BASH_REMATCH[1]))
      each+=("h$i $((BASH_REMATCH[1] + BASH_REMATCH[3]))")
    else
      warn "h$i: no filter counts in its summary line"
      return
    fi
  done
  seen=$(printf '%s\n' "${each[@]}" | awk '{print $2}' | sort -u | tr '\n' ' ')
  if [ -n "$late" ]; then
    # What the killed host had is lost, and the late hosts count from their start: only the
    # hosts that ran throughout must agree (a stopped or drained host still judges every
    # frame: "not ours").
    seen=$(printf '%s\n' "${each[@]}" | grep -vE "^h(${RESTARTED:-0}|${JOINER:-0}) " | awk '{print $2}' | sort -u)
    if [ "$(wc -l <<<"$seen")" = 1 ]; then
      say "filter: the hosts that ran throughout each judged the same $seen frames to the" \
        "cluster IP ($late)"
    else
      warn "filter: frames to the cluster IP judged per host (accepted + not ours): ${each[*]};" \
        "the hosts that ran throughout should agree ($late)"
    fi
  elif [ "$seen" = "$acc " ]; then
    say "filter: every host judged the same $acc frames to the cluster IP; together they" \
      "accepted $acc, each frame exactly once"
  else
    warn "filter: frames to the cluster IP judged per host (accepted + not ours): ${each[*]};" \
      "accepted by all hosts together: $acc (should all be equal)"
  fi
}

# ----------------------------------------------------------------------------------------
# The failover phase (heartbeats membership, 2+ hosts): convergence at start, kill -9 of the
# last host under load, its restart. Times come from the appliances' log lines (RFC 3339 UTC
# timestamps, the same clock as ours).
# ----------------------------------------------------------------------------------------

# "MS<TAB>LINE" for every timestamped line of LOG matching the ERE, MS its epoch milliseconds.
log_events() { # log_events LOG ERE
  local lines
  [ -f "$1" ] || return 0
  lines=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -aE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[^ ]+ .*$2" || true)
  [ -n "$lines" ] || return 0
  paste <(cut -d' ' -f1 <<<"$lines" | date -u -f - +%s%3N) - <<<"$lines"
}

# The first line of LOG matching the ERE logged at or after AFTER_MS: "MS<TAB>LINE".
first_event() { # first_event LOG ERE AFTER_MS
  local ms line
  while IFS=$'\t' read -r ms line; do
    if [ "$ms" -ge "$3" ]; then
      printf '%s\t%s\n' "$ms" "$line"
      return 0
    fi
  done < <(log_events "$1" "$2")
  return 1
}

# Until LOG has a line matching the ERE logged at or after AFTER_MS (bounded by TIMEOUT_MS):
# prints that line.
wait_event() { # wait_event LOG ERE AFTER_MS TIMEOUT_MS
  local deadline ev
  deadline=$(($(now_ms) + $4))
  until ev=$(first_event "$1" "$2" "$3"); do
    [ "$(now_ms)" -lt $deadline ] || return 1
    sleep 0.05
  done
  echo "${ev#*$'\t'}"
}

periods() { # periods MS: in heartbeat periods, one decimal
  local p=$((($1 * 10 + HB_PERIOD_MS / 2) / HB_PERIOD_MS))
  printf '%d.%d' $((p / 10)) $((p % 10))
}

host_set() { # host_set [EXCEPT]: "{1,2,3}" as the appliances log it, without host EXCEPT
  local i out=""
  for ((i = 1; i <= HOSTS; i++)); do
    [ "$i" = "${1:-}" ] || out+="${out:+,}$i"
  done
  echo "{$out}"
}

# Each host's time from its start (spawn) to its first "converged with hosts" line (and, in the
# detail line, from its "starting, converging with heartbeats" line: without EAL's start-up).
report_start_convergence() {
  local i ev ms set all st parts="" detail=""
  all=$(host_set)
  for ((i = 1; i <= HOSTS; i++)); do
    if ! ev=$(first_event "$LOGDIR/h$i.log" 'converged with hosts \{' 0); then
      warn "FAIL: h$i never logged 'converged with hosts'"
      FAILED=1
      parts+="${parts:+, }h$i never"
      continue
    fi
    ms=$((${ev%%$'\t'*} - APP_T0[i]))
    set=$(grep -oE '\{[0-9,]*\}' <<<"$ev" | head -n 1)
    parts+="${parts:+, }h$i $ms ms"
    [ "$set" = "$all" ] || parts+=" (with $set)"
    if st=$(first_event "$LOGDIR/h$i.log" 'starting, converging with heartbeats' 0); then
      detail+="${detail:+, }h$i $((${ev%%$'\t'*} - ${st%%$'\t'*})) ms"
    fi
  done
  TIMING+=("convergence at start: $parts")
  say "failover: first 'converged with hosts' of each host after its spawn: $parts;" \
    "after its 'starting' line: ${detail:-unknown}"
}

# Runs inside the client namespace (bash -c): a new request to URL every INTERVAL seconds from
# rotating client addresses, each in the background and bounded by MAX_TIME, until STOPFILE
# exists or DEADLINE (epoch ms). One line per request, appended to OUT: k, start (epoch ms),
# source address, curl status, the answer or curl's error.
failover_client() { # failover_client URL NET BASE ADDRS INTERVAL MAX_TIME STOPFILE DEADLINE OUT
  local url=$1 net=$2 base=$3 addrs=$4 interval=$5 max=$6 stopf=$7 deadline=$8 out=$9
  local k=0 t src
  while [ ! -e "$stopf" ]; do
    t=${EPOCHREALTIME/[.,]/}
    t=$((t / 1000))
    ((t < deadline)) || break
    src=$net.$((base + (k * 7) % addrs))
    (
      rc=0
      ans=$(curl -sS --fail --max-time "$max" --interface "$src" "$url" 2>&1) || rc=$?
      printf '%d\t%d\t%s\t%s\t%s\n' "$k" "$t" "$src" "$rc" "${ans//$'\n'/ }" >>"$out"
    ) &
    k=$((k + 1))
    sleep "$interval"
  done
  wait
}

# kill -9 the last host under load; check the survivors converge without it in time and that
# the cluster IP answers every request started after that bound.
failover_kill() {
  local n=$HOSTS i pid t0 kill_t kill_ms stop_ms ev fail_ms conv_ms set
  local bound=$(((HB_TOLERANCE + 3) * HB_PERIOD_MS)) survivors detect=0 conv=0 bad=0
  local out="$LOGDIR/failover.out" stopf="$LOGDIR/failover.stop"
  survivors=$(host_set "$n")
  pid=${APP_PID[n]}
  rm -f "$out" "$stopf"
  : >"$out"
  t0=$(now_ms)
  ip netns exec "$NS_CLIENT" bash -c "$(declare -f failover_client); failover_client \"\$@\"" \
    failover_client "http://$CLUSTER_IP/" "$NET" "$CLIENT_BASE" "$CLIENT_ADDRS" "$FO_INTERVAL" \
    "$FO_MAX_TIME" "$stopf" "$((t0 + FO_CLIENT_LIMIT * 1000))" "$out" \
    </dev/null >"$LOGDIR/failover.log" 2>&1 9>&- &
  FO_PID=$!
  sleep "$FO_BEFORE_KILL"
  is_running "$pid" || die "FAIL: h$n (pid $pid) is not running before the kill"
  KILLED=$n
  kill_t=$(date +%s.%N)
  kill -KILL "$pid"
  kill_ms=$((10#${kill_t%.*} * 1000 + 10#${kill_t#*.} / 1000000))
  wait "$pid" 2>/dev/null || true # reap it: its status 137 is what we asked for
  say "failover: kill -9 h$n (pid $pid) at $kill_t, $(fmt_ms $((kill_ms - t0))) into the client load"

  # Keep the client running until FO_AFTER_KILL seconds after the kill; its curls end by
  # FO_MAX_TIME after that.
  stop_ms=$((kill_ms + FO_AFTER_KILL * 1000))
  while [ "$(now_ms)" -lt $stop_ms ]; do
    check_alive || FAILED=1 # a survivor died: a failure, but see what the others did
    sleep 0.1
  done
  stop_client "$stopf" "failover"

  # What the survivors logged, relative to the kill (the latest survivor counts).
  for ((i = 1; i < n; i++)); do
    local log="$LOGDIR/h$i.log" d="" c=""
    if ev=$(first_event "$log" "host $n failed" "$kill_ms"); then
      fail_ms=$((${ev%%$'\t'*} - kill_ms))
      d="failed after $fail_ms ms"
      ((fail_ms > detect)) && detect=$fail_ms
      if ev=$(first_event "$log" 'converged with hosts \{' "${ev%%$'\t'*}"); then
        conv_ms=$((${ev%%$'\t'*} - kill_ms))
        set=$(grep -oE '\{[0-9,]*\}' <<<"$ev" | head -n 1)
        c=", converged with hosts $set after $conv_ms ms"
        ((conv_ms > conv)) && conv=$conv_ms
        if [ "$set" != "$survivors" ]; then
          warn "FAIL: h$i converged with hosts $set after the kill of h$n, not $survivors"
          bad=1
        fi
      else
        warn "FAIL: h$i did not converge after it saw h$n fail"
        bad=1
        conv=999999
      fi
    else
      warn "FAIL: h$i never logged 'host $n failed' after the kill"
      bad=1
      detect=999999 conv=999999
    fi
    say "failover: h$i: host $n ${d:-never failed}$c"
  done
  if ((conv > bound)) && ((conv < 999999)); then
    warn "FAIL: the survivors converged without h$n after $conv ms, beyond the bound of" \
      "$bound ms (tolerance $HB_TOLERANCE + 3 periods of $HB_PERIOD_MS ms)"
    bad=1
  fi

  # The client's requests: those started after kill + bound must all be answered.
  local k start src rc text total=0 ok=0 failed=0 late=0 after=0 last=""
  local -A by=()
  while IFS=$'\t' read -r k start src rc text; do
    [ -n "$rc" ] || continue
    total=$((total + 1))
    ((start >= kill_ms + bound)) && after=$((after + 1))
    if [ "$rc" = 0 ] && [[ $text =~ ^host\ ([0-9]+)$ ]]; then
      ok=$((ok + 1))
      by[${BASH_REMATCH[1]}]=$((${by[${BASH_REMATCH[1]}]:-0} + 1))
      continue
    fi
    failed=$((failed + 1))
    if [ -z "$last" ] || ((start - kill_ms > last)); then last=$((start - kill_ms)); fi
    if ((start >= kill_ms + bound)); then
      late=$((late + 1))
      warn "FAIL: request $k from $src started $((start - kill_ms)) ms after the kill" \
        "(after the bound of $bound ms) failed: ${text:0:100}"
    fi
  done < <(sort -n "$out")
  local answered=""
  for ((i = 1; i <= n; i++)); do answered+="${answered:+, }h$i ${by[$i]:-0}"; done
  say "failover: the client sent $total requests ($ok answered: $answered; $failed failed)," \
    "$after of them started after kill + $bound ms"
  if [ "$late" != 0 ]; then
    bad=1
  elif [ "$after" = 0 ]; then
    warn "FAIL: no request started after kill + $bound ms: nothing checked the cluster without h$n"
    bad=1
  fi
  [ $bad = 0 ] || FAILED=1

  local s="kill -9 h$n under load:"
  if ((detect < 999999)); then
    s+=" failure detected after $detect ms ($(periods "$detect") periods),"
  else
    s+=" failure NOT detected,"
  fi
  if ((conv < 999999)); then
    s+=" converged with hosts $survivors after $conv ms ($(periods "$conv") periods; bound $((HB_TOLERANCE + 3)))"
  else
    s+=" NOT converged with hosts $survivors"
  fi
  if [ -n "$last" ]; then
    s+="; last failed request started $last ms after the kill"
  else
    s+="; no request failed"
  fi
  TIMING+=("$s; $late failures after the bound")
  FO_KILL_SUMMARY="h$n killed under load: converged without it in $conv ms (bound $bound ms), $late failures after the bound"
}

# Wait until each HOST logs "converged with hosts SET" after T0 (ms), at most TIMEOUT seconds
# from T0. Sets CONV_MS[host] (ms after T0) and CONV_LATEST; on a timeout or a dead appliance
# it says which hosts are missing (AFTER names what T0 was, e.g. "h3's restart"), leaves them
# in CONV_PENDING and returns 1.
wait_converged() { # wait_converged SET T0 TIMEOUT AFTER HOST...
  local set=$1 t0=$2 timeout=$3 after=$4 i ev deadline
  shift 4
  local -a pending=("$@")
  CONV_MS=()
  CONV_LATEST=0
  CONV_PENDING=()
  deadline=$((t0 + timeout * 1000))
  while [ ${#pending[@]} -gt 0 ]; do
    local still=()
    for i in "${pending[@]}"; do
      if ev=$(first_event "$LOGDIR/h$i.log" "converged with hosts \\$set" "$t0"); then
        CONV_MS[i]=$((${ev%%$'\t'*} - t0))
        ((CONV_MS[i] > CONV_LATEST)) && CONV_LATEST=${CONV_MS[i]}
      else
        still+=("$i")
      fi
    done
    pending=("${still[@]}")
    [ ${#pending[@]} -eq 0 ] && return 0
    CONV_PENDING=("${pending[@]}")
    if ! check_alive; then
      warn "FAIL: an appliance died while waiting for convergence after $after"
      return 1
    fi
    if [ "$(now_ms)" -ge $deadline ]; then
      for i in "${pending[@]}"; do
        warn "FAIL: h$i did not converge with hosts $set within ${timeout}s of $after"
        log_tail "$LOGDIR/h$i.log"
      done
      return 1
    fi
    sleep 0.1
  done
}

# Start the killed host again (same config and namespace) and wait until every host converged
# with all hosts.
failover_restart() {
  local n=$KILLED i t0 all dir
  local -a pending=()
  all=$(host_set)
  dir="/var/run/dpdk/$(dpdk_prefix "$n")"
  rm -rf "$dir" # the killed EAL's runtime folder outlives it
  mv "$LOGDIR/h$n.log" "$LOGDIR/h$n.killed.log"
  start_appliance "$n"
  t0=${APP_T0[n]}
  say "failover: h$n restarted (pid ${APP_PID[n]}), waiting for all to converge with hosts $all"
  KILLED=""
  RESTARTED=$n
  for ((i = 1; i <= HOSTS; i++)); do pending+=("$i"); done
  if wait_converged "$all" "$t0" "$FO_REJOIN_TIMEOUT" "h$n's restart" "${pending[@]}"; then
    TIMING+=("h$n restarted: converged with hosts $all after $CONV_LATEST ms")
    PASS_EXTRA+="; $FO_KILL_SUMMARY; restarted, all converged again in $CONV_LATEST ms"
  else
    FAILED=1
    TIMING+=("h$n restarted: NOT converged with hosts $all (still missing: $(printf 'h%s ' "${CONV_PENDING[@]}"| sed 's/ $//'))")
  fi
}

failover_phase() {
  if [ "$HOSTS" -lt 2 ]; then
    say "failover: skipped (one host: no survivor to take over)"
    return
  fi
  report_start_convergence
  failover_kill
  failover_restart
}

# ----------------------------------------------------------------------------------------
# The join and drain phases (heartbeats membership, 2+ hosts): long connections (GET /slow,
# one byte every 100 ms) and a stream of short requests while the spare host joins, then
# while host 2 drains. Established connections must never break.
# ----------------------------------------------------------------------------------------

set_of() { echo "{$(paste -sd,)}"; } # host numbers, one a line: "{1,2,4}" as the appliances log it

# A verb to appliance I over its control socket (from the root namespace: the socket is a
# file in the log folder). Exit status: wlbs's (0 ok, 1 refused, 2 no appliance).
wlbs_ctl() { # wlbs_ctl VERB I [--json]
  local verb=$1 i=$2
  shift 2
  timeout 10 "$(wlbs_bin)" "$verb" --socket "$(ctl_socket "$i")" "$@" 9>&-
}

# Appliance I's state as `wlbs query --json` says it (converged, draining, stopped...).
query_state() { # query_state I
  local json
  json=$(wlbs_ctl query "$1" --json 2>&1) || { echo "unreachable (${json:0:100})"; return 1; }
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["state"])' <<<"$json" 2>/dev/null ||
    echo "unreadable (${json:0:100})"
}

# Runs inside the client namespace (bash -c): COUNT long connections to URL (GET /slow) at
# once, from client addresses spread over all of them, each bounded by MAX_TIME seconds.
# Connection j's body goes to DIR/long.j as it arrives (its first line names the host); when
# it ends, one line is appended to DIR/long.out: j, start and end (epoch ms), source address,
# source port, curl status, bytes received, the body's first line, curl's error.
long_client() { # long_client URL NET BASE ADDRS COUNT MAX_TIME DIR
  local url=$1 net=$2 base=$3 addrs=$4 count=$5 max=$6 dir=$7 j
  for ((j = 0; j < count; j++)); do
    (
      src=$net.$((base + (j * 11 + 3) % addrs))
      t0=${EPOCHREALTIME/[.,]/}
      rc=0
      # --no-buffer: the body reaches the file as it arrives (the first line at once).
      info=$(curl -sS --fail --no-buffer --max-time "$max" --interface "$src" -o "$dir/long.$j" \
        -w '%{local_port}\t%{size_download}' "$url" 2>"$dir/long.$j.err") || rc=$?
      t1=${EPOCHREALTIME/[.,]/}
      first=""
      [ ! -f "$dir/long.$j" ] || first=$(head -n 1 "$dir/long.$j")
      err=$(tr '\n' ' ' <"$dir/long.$j.err")
      port=${info%%$'\t'*} size=${info##*$'\t'}
      printf '%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$j" $((t0 / 1000)) $((t1 / 1000)) "$src" \
        "${port:--}" "$rc" "${size:--}" "${first:0:40}" "$err" >>"$dir/long.out"
    ) &
  done
  wait
}

start_long() { # start_long DIR MS: LONG_CONNS long connections of MS ms each, in the background
  local dir=$1 ms=$2
  mkdir -p "$dir"
  : >"$dir/long.out"
  ip netns exec "$NS_CLIENT" bash -c "$(declare -f long_client); long_client \"\$@\"" \
    long_client "http://$CLUSTER_IP/slow?ms=$ms" "$NET" "$CLIENT_BASE" "$CLIENT_ADDRS" \
    "$LONG_CONNS" "$((ms / 1000 + 5))" "$dir" </dev/null >"$dir/long.log" 2>&1 9>&- &
  LONG_PID=$!
}

# Which host holds each long connection so far (the first line of its body): LONG_ON[host].
# Fails while some have no first line yet.
long_hosts() { # long_hosts DIR
  local j line all=0
  LONG_ON=()
  for ((j = 0; j < LONG_CONNS; j++)); do
    line=""
    [ ! -s "$1/long.$j" ] || line=$(head -n 1 "$1/long.$j")
    if [[ $line =~ ^host\ ([0-9]+)$ ]]; then
      LONG_ON[${BASH_REMATCH[1]}]=$((${LONG_ON[${BASH_REMATCH[1]}]:-0} + 1))
      all=$((all + 1))
    fi
  done
  [ $all = "$LONG_CONNS" ]
}

per_host() { # per_host ASSOC-NAME: "h1 10, h2 9, h3 11" over every host set up
  local -n counts=$1
  local i out=""
  for i in $(lab_hosts); do out+="${out:+, }h$i ${counts[$i]:-0}"; done
  echo "$out"
}

# Until every long connection got its first line (bounded by LONG_START_TIMEOUT).
wait_long_open() { # wait_long_open DIR
  local deadline n c
  deadline=$(($(now_ms) + LONG_START_TIMEOUT * 1000))
  until long_hosts "$1"; do
    if [ "$(now_ms)" -ge $deadline ]; then
      n=0
      for c in "${LONG_ON[@]}"; do n=$((n + c)); done
      warn "FAIL: only $n of $LONG_CONNS long connections got their first line within" \
        "${LONG_START_TIMEOUT}s"
      FAILED=1
      return 1
    fi
    sleep 0.05
  done
}

# The long connections end by themselves within their curl time limit; this is the backstop.
wait_long() { # wait_long T0 MS: started at T0 (epoch ms), MS ms each
  local guard=$(($1 + $2 + 8000))
  while is_running "$LONG_PID" && [ "$(now_ms)" -lt $guard ]; do
    check_alive || FAILED=1
    sleep 0.1
  done
  if is_running "$LONG_PID"; then
    warn "FAIL: the long connections still run $(fmt_ms $(($(now_ms) - $1))) after they started; stopping them"
    kill -TERM "$LONG_PID" 2>/dev/null || true
    FAILED=1
  fi
  wait "$LONG_PID" 2>/dev/null || true
  LONG_PID=""
}

# The long connections' results (DIR/long.out), each complete only with its whole body
# ("host N" and one byte per 100 ms): LONG_OK complete ones, LONG_DONE[host] of them per host
# and LONG_LAST[host] the end of the host's last one (epoch ms). A FAIL for any other.
long_results() { # long_results DIR MS WHAT REF_MS: times printed relative to REF_MS
  local dir=$1 ms=$2 what=$3 ref=$4 j t0 t1 src port rc size first err expect host seen=0
  LONG_OK=0 LONG_DONE=() LONG_LAST=()
  while IFS=$'\t' read -r j t0 t1 src port rc size first err; do
    [ -n "$rc" ] || continue
    seen=$((seen + 1))
    host=""
    [[ ! $first =~ ^host\ ([0-9]+)$ ]] || host=${BASH_REMATCH[1]}
    expect=$((${#first} + 1 + (ms + 99) / 100))
    if [ "$rc" = 0 ] && [ -n "$host" ] && [ "$size" = "$expect" ]; then
      LONG_OK=$((LONG_OK + 1))
      LONG_DONE[$host]=$((${LONG_DONE[$host]:-0} + 1))
      if [ "$t1" -gt "${LONG_LAST[$host]:-0}" ]; then LONG_LAST[$host]=$t1; fi
    else
      warn "FAIL: $what: long connection $j from $src:$port${host:+ (on h$host)} started at" \
        "$((t0 - ref)) ms, ended at $((t1 - ref)) ms with $size of $expect bytes, curl status" \
        "$rc${err:+: ${err:0:100}}"
      FAILED=1
    fi
  done < <(sort -n "$dir/long.out")
  if [ $seen != "$LONG_CONNS" ]; then
    warn "FAIL: $what: $((LONG_CONNS - seen)) of $LONG_CONNS long connections left no result (see $dir)"
    FAILED=1
  fi
}

# What the servers say about GET /slow so far, summed over every host whose appliance runs
# (a server is reached at its dedicated address, through its appliance, even when that one
# is stopped): "STARTED COMPLETED CUT".
long_served() {
  local i out s=0 c=0 b=0
  for i in $(lab_hosts); do
    [ -n "${APP_PID[i]:-}" ] || continue
    if out=$(ip netns exec "$NS_CLIENT" curl -sS --fail --max-time "$CURL_MAX_TIME" \
      "http://$(server_ip "$i")/slowcount" 2>&1) && [[ $out =~ ^([0-9]+)\ ([0-9]+)\ ([0-9]+)$ ]]; then
      s=$((s + BASH_REMATCH[1])) c=$((c + BASH_REMATCH[2])) b=$((b + BASH_REMATCH[3]))
    else
      warn "FAIL: could not fetch server s$i's count at http://$(server_ip "$i")/slowcount: ${out:0:80}"
      return 1
    fi
  done
  echo "$s $c $b"
}

# The servers' side of a phase's long connections (BEFORE: long_served at its start): each
# was served once, sent whole, never cut. LONG_SERVED: "servers: ..." for the phase's report.
check_long_served() { # check_long_served BEFORE WHAT
  local after s0 c0 b0 s1 c1 b1
  LONG_SERVED="servers: unknown"
  if [ -z "$1" ] || ! after=$(long_served); then
    FAILED=1
    return 0
  fi
  read -r s0 c0 b0 <<<"$1"
  read -r s1 c1 b1 <<<"$after"
  LONG_SERVED="servers: $((s1 - s0)) started, $((c1 - c0)) sent whole, $((b1 - b0)) cut"
  if [ $((s1 - s0)) != "$LONG_CONNS" ] || [ $((c1 - c0)) != "$LONG_CONNS" ] || [ $((b1 - b0)) != 0 ]; then
    warn "FAIL: $2: the servers started $((s1 - s0)), sent whole $((c1 - c0)) and cut $((b1 - b0))" \
      "long connections; expected $LONG_CONNS, $LONG_CONNS and 0"
    FAILED=1
  fi
}

start_short() { # start_short DIR: the failover phase's short-request client, in the background
  rm -f "$1/short.stop"
  : >"$1/short.out"
  ip netns exec "$NS_CLIENT" bash -c "$(declare -f failover_client); failover_client \"\$@\"" \
    failover_client "http://$CLUSTER_IP/" "$NET" "$CLIENT_BASE" "$CLIENT_ADDRS" "$FO_INTERVAL" \
    "$FO_MAX_TIME" "$1/short.stop" "$(($(now_ms) + PHASE_CLIENT_LIMIT * 1000))" "$1/short.out" \
    </dev/null >"$1/short.log" 2>&1 9>&- &
  FO_PID=$!
}

stop_short() { # stop_short DIR: tell the short-request client to stop; its curls end soon
  stop_client "$1/short.stop" "short-request"
}

# Tell the request client ($FO_PID) to stop by creating STOPFILE, and wait (3 s at most) for it.
stop_client() { # stop_client STOPFILE WHAT
  local guard
  : >"$1"
  guard=$(($(now_ms) + 3000))
  while is_running "$FO_PID" && [ "$(now_ms)" -lt $guard ]; do sleep 0.05; done
  if is_running "$FO_PID"; then
    warn "FAIL: the $2 client still runs 3 s after it was told to stop; stopping it"
    kill -TERM "$FO_PID" 2>/dev/null || true
    FAILED=1
  fi
  wait "$FO_PID" 2>/dev/null || true
  FO_PID=""
}

# Start the spare host under load: long connections open on every host, short requests
# coming. Every host must converge with it, no long connection may break, every request
# started after the convergence must be answered, and the new host must take some.
join_phase() {
  if [ -z "$JOINER" ]; then
    say "join: skipped (one host: the failover phase did not run either)"
    return
  fi
  local n=$JOINER dir="$LOGDIR/join" all i ev ms t0 t_join latest=0 own=0 from_start="" conv=""
  local stop_ms open=0 bad=0 served0
  local -a pending=()
  all=$(lab_hosts | set_of)
  mkdir -p "$dir"
  served0=$(long_served) || served0=""
  t0=$(now_ms)
  start_long "$dir" "$JOIN_LONG_MS"
  start_short "$dir"
  if wait_long_open "$dir"; then
    say "join: $LONG_CONNS long connections of $JOIN_LONG_MS ms open: $(per_host LONG_ON)"
  fi
  ms=$((t0 + PHASE_BEFORE * 1000 - $(now_ms)))
  ((ms <= 0)) || sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"

  start_appliance "$n"
  t_join=${APP_T0[n]}
  say "join: h$n started (pid ${APP_PID[n]}) $(fmt_ms $((t_join - t0))) into the load," \
    "waiting for all to converge with hosts $all"
  mapfile -t pending < <(lab_hosts)
  if wait_converged "$all" "$t_join" "$JOIN_TIMEOUT" "h$n's start" "${pending[@]}"; then
    JOINED=$n
    latest=$CONV_LATEST
    own=${CONV_MS[n]}
    conv=$((t_join + latest))
    if ev=$(first_event "$LOGDIR/h$n.log" 'starting, converging with heartbeats' "$t_join"); then
      from_start=" ($((t_join + own - ${ev%%$'\t'*})) ms after its 'starting' line)"
    fi
    say "join: h$n converged with hosts $all $own ms after its spawn$from_start; every host" \
      "converged with it after $latest ms"
  else
    bad=1
  fi

  # Short requests go on a while after the convergence; then wait for the long connections.
  stop_ms=$((${conv:-$(now_ms)} + JOIN_AFTER * 1000))
  while [ "$(now_ms)" -lt $stop_ms ]; do
    check_alive || FAILED=1
    sleep 0.1
  done
  stop_short "$dir"
  wait_long "$t0" "$JOIN_LONG_MS"

  long_results "$dir" "$JOIN_LONG_MS" "join" "$t_join"
  check_long_served "$served0" join
  if [ -n "$conv" ]; then
    open=$(awk -F'\t' -v c="$conv" '$3 > c' "$dir/long.out" | wc -l)
    if [ "$open" = 0 ]; then
      warn "FAIL: join: every long connection had ended before the cluster converged with h$n:" \
        "nothing checked the hand-off under load"
      bad=1
    fi
  fi
  say "join: long connections: $LONG_OK/$LONG_CONNS completed with their whole body" \
    "($(per_host LONG_DONE)); $open of them still open when all had converged; $LONG_SERVED"

  # The short requests: those started after the convergence must all be answered.
  local k start src rc text total=0 ok=0 failed=0 after=0 late=0
  local -A by=()
  while IFS=$'\t' read -r k start src rc text; do
    [ -n "$rc" ] || continue
    total=$((total + 1))
    if [ "$rc" = 0 ] && [[ $text =~ ^host\ ([0-9]+)$ ]]; then
      ok=$((ok + 1))
      by[${BASH_REMATCH[1]}]=$((${by[${BASH_REMATCH[1]}]:-0} + 1))
      [ -z "$conv" ] || ((start < conv)) || after=$((after + 1))
      continue
    fi
    failed=$((failed + 1))
    if [ -n "$conv" ] && ((start >= conv)); then
      after=$((after + 1))
      late=$((late + 1))
      warn "FAIL: join: request $k from $src started $((start - conv)) ms after the convergence" \
        "failed: ${text:0:100}"
    elif [ -n "$conv" ]; then
      say "join: request $k from $src started $((start - t_join)) ms after h$n's start (before" \
        "the convergence) failed: ${text:0:100}"
    fi
  done < <(sort -n "$dir/short.out")
  say "join: the client sent $total short requests ($ok answered: $(per_host by); $failed" \
    "failed), $after of them started after the convergence"
  [ "$late" = 0 ] || bad=1
  if [ -n "$conv" ] && [ "$after" = 0 ]; then
    warn "FAIL: join: no short request started after the convergence"
    bad=1
  fi
  if [ "${by[$n]:-0}" = 0 ]; then
    warn "FAIL: join: h$n answered no short request"
    bad=1
  fi
  [ $bad = 0 ] || FAILED=1
  if [ -n "$conv" ]; then
    TIMING+=("join h$n under load: converged with hosts $all after $latest ms (h$n itself after $own ms); $LONG_OK/$LONG_CONNS long connections completed; $total short requests, ${by[$n]:-0} answered by h$n")
    PASS_EXTRA+="; h$n joined under load: all converged in $latest ms, $LONG_OK/$LONG_CONNS long connections completed"
  else
    TIMING+=("join h$n under load: NOT converged with hosts $all; $LONG_OK/$LONG_CONNS long connections completed; $total short requests, ${by[$n]:-0} answered by h$n")
  fi
}

# Drainstop host 2 (not the default host) while long connections are open on it and short
# requests keep coming: its connections complete, new ones go elsewhere, it stops when its
# last descriptor goes, and the others converge without it.
drain_phase() {
  if [ -z "$JOINED" ]; then
    [ -z "$JOINER" ] || say "drain: skipped (the join phase did not converge)"
    return
  fi
  local d=$DRAIN_HOST dir="$LOGDIR/drain" rest i ev out rc state t0 drain_ms done_ms="" ms
  local new_ms=$((DRAIN_NEW_PERIODS * HB_PERIOD_MS))
  local done_bound=$((CLOSE_WAIT_S * 1000 + SWEEP_MS + DRAIN_NEW_PERIODS * HB_PERIOD_MS))
  local conv_bound=$(((HB_TOLERANCE + 3) * HB_PERIOD_MS))
  local deadline stop_ms on_d=0 bad=0 left_max=0 conv_max=0 served0
  rest=$(lab_hosts | grep -vx "$d" | set_of)
  mkdir -p "$dir"
  served0=$(long_served) || served0=""
  t0=$(now_ms)
  start_long "$dir" "$DRAIN_LONG_MS"
  start_short "$dir"
  wait_long_open "$dir" || true
  on_d=${LONG_ON[$d]:-0}
  say "drain: $LONG_CONNS long connections of $DRAIN_LONG_MS ms open: $(per_host LONG_ON)"
  if [ "$on_d" = 0 ]; then
    warn "FAIL: drain: no long connection landed on h$d: the drain does not wait for any"
    bad=1
  fi
  ms=$((t0 + PHASE_BEFORE * 1000 - $(now_ms)))
  ((ms <= 0)) || sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"

  drain_ms=$(now_ms)
  rc=0
  out=$(wlbs_ctl drainstop "$d" 2>&1) || rc=$?
  say "drain: wlbs drainstop --socket $(ctl_socket "$d") $(fmt_ms $((drain_ms - t0))) into the" \
    "load: exit $rc: ${out//$'\n'/ }"
  if [ "$rc" != 0 ]; then
    warn "FAIL: drain: wlbs drainstop of h$d exited with status $rc"
    bad=1
  fi
  state=$(query_state "$d") || true
  say "drain: h$d's state right after: $state"
  if [ "$on_d" != 0 ] && [ "$state" != draining ]; then
    warn "FAIL: drain: h$d holds $on_d long connections but its state is '$state', not draining"
    bad=1
  fi

  # Until h2 says it drained (its long connections end by DRAIN_LONG_MS, their descriptors
  # CLOSE_WAIT_S after).
  deadline=$((t0 + DRAIN_LONG_MS + CLOSE_WAIT_S * 1000 + 5000))
  until ev=$(first_event "$LOGDIR/h$d.log" 'drainstop complete' "$drain_ms"); do
    check_alive || FAILED=1
    if [ "$(now_ms)" -ge $deadline ]; then
      warn "FAIL: drain: h$d did not log 'drainstop complete' within $(fmt_ms $((deadline - drain_ms)))" \
        "of the drainstop"
      log_tail "$LOGDIR/h$d.log"
      bad=1
      ev=""
      break
    fi
    sleep 0.1
  done
  [ -z "$ev" ] || done_ms=${ev%%$'\t'*}
  stop_ms=$((${done_ms:-$(now_ms)} + DRAIN_AFTER * 1000))
  ((stop_ms >= drain_ms + new_ms + DRAIN_AFTER * 1000)) || stop_ms=$((drain_ms + new_ms + DRAIN_AFTER * 1000))
  while [ "$(now_ms)" -lt $stop_ms ]; do
    check_alive || FAILED=1
    sleep 0.1
  done
  stop_short "$dir"
  wait_long "$t0" "$DRAIN_LONG_MS"
  state=$(query_state "$d") || true
  if [ "$state" != stopped ]; then
    warn "FAIL: drain: wlbs query --socket $(ctl_socket "$d") says '$state', not stopped"
    bad=1
  fi

  # Its long connections: all complete, and the drain completes after the last one ends,
  # within the close wait and a few periods.
  long_results "$dir" "$DRAIN_LONG_MS" "drain" "$drain_ms"
  check_long_served "$served0" drain
  local last=${LONG_LAST[$d]:-} last_txt="none" done_txt="never"
  [ -z "$last" ] || last_txt="$((last - drain_ms)) ms"
  [ -z "$done_ms" ] || done_txt="$((done_ms - drain_ms)) ms"
  say "drain: long connections: $LONG_OK/$LONG_CONNS completed with their whole body" \
    "($(per_host LONG_DONE)); h$d's last ended $last_txt after the drainstop;" \
    "'drainstop complete' $done_txt after it; h$d says '$state'; $LONG_SERVED"
  if [ -n "$done_ms" ] && [ -n "$last" ]; then
    if ((done_ms <= last)); then
      warn "FAIL: drain: h$d logged 'drainstop complete' $((last - done_ms)) ms before its last long connection ended"
      bad=1
    elif ((done_ms - last > done_bound)); then
      warn "FAIL: drain: h$d logged 'drainstop complete' $((done_ms - last)) ms after its last long" \
        "connection ended, beyond the close wait + the expiry sweep + $DRAIN_NEW_PERIODS periods ($done_bound ms)"
      bad=1
    fi
  fi

  # The others: host 2 left, then converged without it (at once: its last heartbeat said so).
  for i in $(lab_hosts); do
    [ "$i" != "$d" ] || continue
    local log="$LOGDIR/h$i.log" l="" c=""
    if ev=$(first_event "$log" "host $d left the cluster" "$drain_ms"); then
      ms=${ev%%$'\t'*}
      l="host $d left after $((ms - drain_ms)) ms"
      ((ms - drain_ms > left_max)) && left_max=$((ms - drain_ms))
      if ev=$(first_event "$log" "converged with hosts \\$rest" "$ms"); then
        ms=${ev%%$'\t'*}
        c=", converged with hosts $rest after $((ms - drain_ms)) ms"
        [ -z "$done_ms" ] || c+=" ($((ms - done_ms)) ms after h$d's drain completed)"
        ((ms - drain_ms > conv_max)) && conv_max=$((ms - drain_ms))
        if [ -n "$done_ms" ] && ((ms - done_ms > conv_bound)); then
          warn "FAIL: drain: h$i converged with hosts $rest $((ms - done_ms)) ms after h$d's" \
            "drain completed, beyond $conv_bound ms (tolerance $HB_TOLERANCE + 3 periods)"
          bad=1
        fi
      else
        warn "FAIL: drain: h$i did not converge with hosts $rest after host $d left"
        bad=1
      fi
    else
      warn "FAIL: drain: h$i never logged 'host $d left the cluster' after the drainstop"
      bad=1
    fi
    say "drain: h$i: ${l:-host $d never left}$c"
  done

  # Short requests: none started DRAIN_NEW_PERIODS after the drainstop may reach h2, and
  # each started (tolerance + 3) periods after it must be answered, as after a failover:
  # until the others converged without h2's share, new connections for its buckets find
  # nobody (h2 takes none while draining); the client's SYN retransmission would cover that,
  # the lab's 0.5 s limit does not.
  local k start src rc2 text total=0 ok=0 failed=0 after=0 last_d="" last_f=""
  local -A by=()
  while IFS=$'\t' read -r k start src rc2 text; do
    [ -n "$rc2" ] || continue
    total=$((total + 1))
    ((start < drain_ms + new_ms)) || after=$((after + 1))
    if [ "$rc2" = 0 ] && [[ $text =~ ^host\ ([0-9]+)$ ]]; then
      ok=$((ok + 1))
      by[${BASH_REMATCH[1]}]=$((${by[${BASH_REMATCH[1]}]:-0} + 1))
      if [ "${BASH_REMATCH[1]}" = "$d" ] && ((start >= drain_ms)); then
        last_d=$((start - drain_ms))
        if ((start >= drain_ms + new_ms)); then
          warn "FAIL: drain: request $k from $src started $((start - drain_ms)) ms after the" \
            "drainstop was answered by h$d (bound $new_ms ms)"
          bad=1
        fi
      fi
      continue
    fi
    failed=$((failed + 1))
    ((start < drain_ms)) || last_f=$((start - drain_ms))
    if ((start >= drain_ms + conv_bound)); then
      warn "FAIL: drain: request $k from $src started $((start - drain_ms)) ms after the" \
        "drainstop (after the bound of $conv_bound ms) failed: ${text:0:100}"
      bad=1
    else
      say "drain: request $k from $src started $((start - drain_ms)) ms after the drainstop" \
        "(before the bound of $conv_bound ms) failed: ${text:0:100}"
    fi
  done < <(sort -n "$dir/short.out")
  say "drain: the client sent $total short requests ($ok answered: $(per_host by); $failed failed)," \
    "$after of them started $new_ms ms or more after the drainstop; the last one h$d answered" \
    "started $([ -n "$last_d" ] && echo "$last_d ms after" || echo before) the drainstop"
  if [ "$after" = 0 ]; then
    warn "FAIL: drain: no short request started $new_ms ms after the drainstop"
    bad=1
  fi
  [ $bad = 0 ] || FAILED=1

  local s="drainstop h$d: its ${LONG_DONE[$d]:-0} long connections completed"
  local failed_txt="no short request failed"
  [ -z "$last_f" ] || failed_txt="last failed short request started $last_f ms after the drainstop (bound $conv_bound ms)"
  if [ -n "$last" ]; then s+=", last at $((last - drain_ms)) ms"; fi
  if [ -n "$done_ms" ]; then
    s+="; drain complete at $((done_ms - drain_ms)) ms"
    [ -z "$last" ] || s+=" ($((done_ms - last)) ms after the last, bound $done_bound ms)"
  else
    s+="; drain NOT complete"
  fi
  if [ -n "$last_d" ]; then
    s+="; new connections went elsewhere after $last_d ms (bound $new_ms ms); the others"
  else
    s+="; new connections went elsewhere at once (bound $new_ms ms); the others"
  fi
  s+=" converged with hosts $rest after $conv_max ms"
  [ -z "$done_ms" ] || s+=" ($((conv_max + drain_ms - done_ms)) ms after the drain completed, bound $conv_bound ms)"
  s+="; h$d says $state; $failed_txt"
  TIMING+=("$s")
  if [ -n "$done_ms" ] && [ -n "$last" ]; then
    PASS_EXTRA+="; h$d drained under load: its ${LONG_DONE[$d]:-0} long connections completed, it stopped $((done_ms - last)) ms after the last"
  fi
}

# ----------------------------------------------------------------------------------------
# The remote control phase (heartbeats membership): the verbs over UDP to the cluster IP,
# signed with the cluster key, from the client namespace; and a replayed command refused.
# ----------------------------------------------------------------------------------------

running_hosts() { # every host whose appliance runs now, one a line
  local i
  for i in $(lab_hosts); do
    if [ -n "${APP_PID[i]:-}" ] && is_running "${APP_PID[i]}"; then echo "$i"; fi
  done
}

# `wlbs VERB --remote TARGET` from the client namespace. Exit status: wlbs's.
wlbs_remote() { # wlbs_remote VERB TARGET [ARGS...]
  local verb=$1 target=$2
  shift 2
  ip netns exec "$NS_CLIENT" timeout 10 "$(wlbs_bin)" "$verb" --remote "$target" \
    --cluster-ip "$CLUSTER_IP" --key-file "$(key_file)" "$@" 9>&-
}

# Until appliance I's state (wlbs query --socket --json) is one of the words (bounded).
wait_state() { # wait_state I TIMEOUT_MS STATE...
  local i=$1 deadline state
  deadline=$(($(now_ms) + $2))
  shift 2
  while :; do
    state=$(query_state "$i") || true
    if [[ " $* " == *" $state "* ]]; then
      echo "$state"
      return 0
    fi
    if [ "$(now_ms)" -ge $deadline ]; then
      echo "$state"
      return 1
    fi
    sleep 0.1
  done
}

remote_phase() {
  local dir="$LOGDIR/remote" out rc i n bad=0 hosts want t0 state line
  local -A got=()
  mkdir -p "$dir"
  mapfile -t hosts < <(running_hosts)
  want=$(printf '%s\n' "${hosts[@]}" | set_of)

  # Every host answers a query to the cluster, once; the command's datagram is captured
  # on its way out (for the replay below).
  spawn "$NS_CLIENT" "$dir/cap.log" tcpdump -i "$CLIENT_IF" -Q out -n -U -s 0 \
    -w "$dir/command.pcap" "udp and dst host $CLUSTER_IP and dst port $REMOTE_PORT"
  local cap=$!
  t0=$(now_ms)
  until grep -q 'listening on' "$dir/cap.log" 2>/dev/null; do
    [ "$(now_ms)" -lt $((t0 + 5000)) ] || break
    sleep 0.05
  done
  rc=0
  out=$(wlbs_remote query cluster 2>&1) || rc=$?
  sleep 0.2
  kill -INT "$cap" 2>/dev/null || true
  wait "$cap" 2>/dev/null || true
  printf '%s\n' "$out" >"$dir/query.out"
  while read -r line; do
    [[ $line =~ ^host\ ([0-9]+):\  ]] || continue
    n=${BASH_REMATCH[1]}
    got[$n]=$((${got[$n]:-0} + 1))
  done <<<"$out"
  local answers=""
  for n in $(printf '%s\n' "${!got[@]}" | sort -n); do answers+="${answers:+, }h$n ${got[$n]}"; done
  say "remote: wlbs query --remote cluster from the client: exit $rc; answers: ${answers:-none}" \
    "(running: $want)"
  if [ "$rc" != 0 ]; then
    warn "FAIL: remote: wlbs query --remote cluster exited with status $rc"
    bad=1
  fi
  for i in "${hosts[@]}"; do
    if [ "${got[$i]:-0}" != 1 ]; then
      warn "FAIL: remote: host $i answered the query ${got[$i]:-0} times, not once"
      bad=1
    fi
  done
  for n in "${!got[@]}"; do
    if ! printf '%s\n' "${hosts[@]}" | grep -qx "$n"; then
      warn "FAIL: remote: an answer from host $n, which does not run"
      bad=1
    fi
  done
  [ $bad = 0 ] || sed 's/^/  | /' "$dir/query.out" >&2

  # stop and start host 3 remotely; its own control socket tells its state.
  local r=$REMOTE_HOST s_stop s_start
  # (With fewer hosts: the last one that runs.)
  printf '%s\n' "${hosts[@]}" | grep -qx "$r" || r=${hosts[-1]}
  rc=0
  out=$(wlbs_remote stop "cluster:$r" 2>&1) || rc=$?
  s_stop=$(wait_state "$r" 3000 stopped) || true
  say "remote: wlbs stop --remote cluster:$r: exit $rc: ${out//$'\n'/ }; h$r says '$s_stop'"
  if [ "$rc" != 0 ] || [ "$s_stop" != stopped ] || [[ $out != *"host $r:"* ]]; then
    warn "FAIL: remote: stop of host $r: exit $rc, its state '$s_stop' (expected 0, stopped," \
      "an answer from host $r)"
    bad=1
  fi
  rc=0
  out=$(wlbs_remote start "cluster:$r" 2>&1) || rc=$?
  s_start=$(wait_state "$r" 3000 converged converged_default) || true
  say "remote: wlbs start --remote cluster:$r: exit $rc: ${out//$'\n'/ }; h$r says '$s_start'"
  if [ "$rc" != 0 ] || [[ $s_start != converged* ]] || [[ $out != *"host $r:"* ]]; then
    warn "FAIL: remote: start of host $r: exit $rc, its state '$s_start' (expected 0, converged," \
      "an answer from host $r)"
    bad=1
  fi

  # The replay: the query's datagram, byte for byte, sent again from the client namespace.
  local replay replayed=0 sent_ms logs_ok=0 counted=0 stats
  sent_ms=$(now_ms)
  if ! replay=$(ip netns exec "$NS_CLIENT" python3 - "$dir/command.pcap" "$CLUSTER_IP" \
    "$REMOTE_PORT" 2>&1 <<'PY'
import socket, struct, sys
pcap, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(pcap, "rb").read()
endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
off, payload = 24, None
while off + 16 <= len(data):
    incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
    frame = data[off + 16:off + 16 + incl]
    off += 16 + incl
    if frame[12:14] == b"\x08\x00" and frame[23] == 17:
        ihl = (frame[14] & 15) * 4
        payload = frame[14 + ihl + 8:]
        break
if payload is None:
    sys.exit("no command datagram in the capture")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(payload, (ip, port))
answers = 0
try:
    while True:
        s.recvfrom(2048)
        answers += 1
except socket.timeout:
    pass
print(f"{len(payload)} {answers}")
PY
  ); then
    warn "FAIL: remote: replay: ${replay//$'\n'/ }"
    bad=1
    replay="- -"
  fi
  read -r n replayed <<<"$replay"
  sleep 0.2
  for i in "${hosts[@]}"; do
    if first_event "$LOGDIR/h$i.log" 'remote control command from .* refused: replayed' \
      "$sent_ms" >/dev/null; then
      logs_ok=$((logs_ok + 1))
    else
      warn "FAIL: remote: h$i did not log 'refused: replayed' after the replay"
      bad=1
    fi
    stats=$(wlbs_ctl stats "$i" 2>/dev/null | grep -E '^wlbs_remote_commands_total\{result="replayed"\} ' || true)
    if [[ ${stats##* } =~ ^[1-9] ]]; then counted=$((counted + 1)); fi
  done
  say "remote: replayed the query's datagram ($n bytes, captured in the client namespace):" \
    "$replayed answers; 'refused: replayed' logged by $logs_ok of ${#hosts[@]} hosts," \
    "counted (wlbs_remote_commands_total{result=\"replayed\"}) by $counted"
  if [ "$replayed" != 0 ]; then
    warn "FAIL: remote: the replayed command got $replayed answers"
    bad=1
  fi
  if [ "$counted" != "${#hosts[@]}" ]; then
    warn "FAIL: remote: only $counted of ${#hosts[@]} hosts count the replay in wlbs stats"
    bad=1
  fi
  [ $bad = 0 ] || FAILED=1
  TIMING+=("remote control: query answered once by each of hosts $want; stop/start of host $r: $s_stop, then $s_start; a replayed command: $replayed answers, refused by $logs_ok hosts")
  [ $bad != 0 ] || PASS_EXTRA+="; remote control: every host answered, host $r stopped and started, a replay refused by all"
}

# ----------------------------------------------------------------------------------------
# The reload phase (heartbeats membership): under short requests, a rule added on every host
# (--reload change: the port-80 rule widened to 80-81), one host after the other, each with
# wlbs reload or SIGHUP; every request answered exactly once (issue 6: "no packet lost or
# double-accepted"). Then a broken configuration on one host: refused, nothing changes.
# ----------------------------------------------------------------------------------------

served_now() { # served_now ASSOC-NAME: each running host's server count of requests to /
  local -n into=$1
  local i out
  into=()
  for i in $(lab_hosts); do
    [ -n "${APP_PID[i]:-}" ] || continue
    if out=$(ip netns exec "$NS_CLIENT" curl -sS --fail --max-time "$CURL_MAX_TIME" \
      "http://$(server_ip "$i")/count" 2>&1) && [[ $out =~ ^[0-9]+$ ]]; then
      # shellcheck disable=SC2034,SC2004 # a nameref to the caller's associative array
      into[$i]=$out
    else
      warn "FAIL: reload: could not fetch server s$i's count: ${out:0:80}"
      return 1
    fi
  done
}

reload_phase() {
  if [ "$RELOAD_KIND" = none ]; then
    say "reload: skipped (--reload none)"
    return
  fi
  local dir="$LOGDIR/reload" i rc out t_reload bad=0 how line applied=0 broken=$RELOAD_BROKEN_HOST
  local -A before=() after=() by=()
  mkdir -p "$dir"
  served_now before || bad=1
  start_short "$dir"
  sleep "$PHASE_BEFORE"

  t_reload=$(now_ms)
  local what check_port
  if [ "$RELOAD_KIND" = change ]; then
    RULE_PORTS=$RELOAD_PORTS
    what="the port rule changed: ports 80 -> $RELOAD_PORTS"
    check_port=${RELOAD_PORTS##*-}
  else
    what="a rule added for port $RELOAD_ADD_PORT (the port-80 rule unchanged)"
    check_port=$RELOAD_ADD_PORT
  fi
  say "reload: $what, on every host under short requests"
  for i in $(running_hosts); do
    if [ "$RELOAD_KIND" = change ]; then
      sed -i "s/^ports = \"80\"$/ports = \"$RULE_PORTS\"/" "$LOGDIR/h$i.toml"
    else
      printf '\n# added by the reload phase\n%s\n' "$(port_rule "$RELOAD_ADD_PORT")" >>"$LOGDIR/h$i.toml"
    fi
    if ((i % 2)); then
      how="wlbs reload"
      rc=0
      out=$(wlbs_ctl reload "$i" 2>&1) || rc=$?
      if [ "$rc" != 0 ] || [[ $out != *"reload: applied"* && $out != *"reload: staged"* ]]; then
        warn "FAIL: reload: wlbs reload of h$i: exit $rc: ${out//$'\n'/ }"
        bad=1
      fi
    else
      how="SIGHUP"
      kill -HUP "${APP_PID[i]}"
    fi
    # In a cluster the reload is staged until every host has it (then all apply together).
    if line=$(wait_event "$LOGDIR/h$i.log" 'reload: (applied|staged)' "$t_reload" 3000); then
      say "reload: h$i ($how): ${line#*reload: }"
    else
      warn "FAIL: reload: h$i ($how) did not log 'reload: applied' or 'reload: staged'"
      bad=1
    fi
  done
  for i in $(running_hosts); do
    if line=$(wait_event "$LOGDIR/h$i.log" 'reload: (applied|every member has the new configuration: applied)' "$t_reload" 3000); then
      applied=$((applied + 1))
      say "reload: h$i: ${line#*reload: }"
    else
      warn "FAIL: reload: h$i never applied the new configuration"
      bad=1
    fi
  done
  # The new rule is in force everywhere: the new port has a rule.
  for i in $(running_hosts); do
    if ! out=$(wlbs_ctl queryport "$i" "$check_port" 2>&1); then
      warn "FAIL: reload: h$i: wlbs queryport $check_port after the reload: ${out//$'\n'/ }"
      bad=1
    fi
  done
  sleep "$RELOAD_AFTER"

  # A broken configuration on one host: refused, nothing changes, it keeps serving.
  cp "$LOGDIR/h$broken.toml" "$dir/h$broken.good.toml"
  sed -i '0,/^affinity = "none".*/s//&\nload_weight = 500  # broken on purpose: 0..100/' \
    "$LOGDIR/h$broken.toml"
  local t_broken
  t_broken=$(now_ms)
  rc=0
  out=$(wlbs_ctl reload "$broken" 2>&1) || rc=$?
  cp "$dir/h$broken.good.toml" "$LOGDIR/h$broken.toml"
  say "reload: a broken configuration on h$broken: wlbs reload exit $rc: ${out//$'\n'/ }" | cut -c1-400
  if [ "$rc" != 1 ] || [[ $out != *"reload refused, nothing changed"* ]]; then
    warn "FAIL: reload: the broken configuration on h$broken: exit $rc (expected 1 and" \
      "'reload refused, nothing changed')"
    bad=1
  fi
  if ! wait_event "$LOGDIR/h$broken.log" 'reload refused, nothing changed' "$t_broken" 2000 >/dev/null; then
    warn "FAIL: reload: h$broken did not log 'reload refused, nothing changed'"
    bad=1
  fi
  local s_broken
  s_broken=$(query_state "$broken") || true
  if [[ $s_broken != converged* ]] || ! wlbs_ctl queryport "$broken" "$check_port" >/dev/null 2>&1; then
    warn "FAIL: reload: after the broken reload h$broken says '$s_broken' (expected converged)" \
      "or no longer knows port $check_port"
    bad=1
  fi
  sleep "$RELOAD_AFTER"
  stop_short "$dir"
  served_now after || bad=1

  # Every request started in the phase answered, and each served exactly once.
  local k start src rc2 text total=0 ok=0 failed=0 after_broken=0 by_broken=0 served=0
  while IFS=$'\t' read -r k start src rc2 text; do
    [ -n "$rc2" ] || continue
    total=$((total + 1))
    ((start < t_broken)) || after_broken=$((after_broken + 1))
    if [ "$rc2" = 0 ] && [[ $text =~ ^host\ ([0-9]+)$ ]]; then
      ok=$((ok + 1))
      by[${BASH_REMATCH[1]}]=$((${by[${BASH_REMATCH[1]}]:-0} + 1))
      [ "${BASH_REMATCH[1]}" != "$broken" ] || ((start < t_broken)) || by_broken=$((by_broken + 1))
      continue
    fi
    failed=$((failed + 1))
    warn "FAIL: reload: request $k from $src started $((start - t_reload)) ms after the first" \
      "reload failed: ${text:0:100}"
  done < <(sort -n "$dir/short.out")
  local counts=""
  for i in $(lab_hosts); do
    [ -n "${APP_PID[i]:-}" ] || continue
    local d=$((${after[$i]:-0} - ${before[$i]:-0}))
    served=$((served + d))
    counts+="${counts:+, }h$i ${by[$i]:-0}/$d"
    if [ "$d" != "${by[$i]:-0}" ]; then
      warn "FAIL: reload: h$i's server served $d requests in the phase, the client got ${by[$i]:-0} answers from it"
      bad=1
    fi
  done
  say "reload: the client sent $total short requests ($ok answered, $failed failed; answered/served" \
    "per host: $counts); $after_broken started after the broken reload, $by_broken of them" \
    "answered by h$broken, which says '$s_broken'"
  [ "$failed" = 0 ] || bad=1
  if [ "$applied" = 0 ] || [ "$after_broken" = 0 ]; then
    warn "FAIL: reload: nothing checked (applied on $applied hosts, $after_broken requests after the broken reload)"
    bad=1
  fi
  [ $bad = 0 ] || FAILED=1
  TIMING+=("reload under load: $what, applied on $applied hosts; $ok/$total short requests answered, served $served; a broken config on h$broken refused (exit $rc)")
  [ $bad != 0 ] || PASS_EXTRA+="; reload under load: $ok/$total answered, each served once; a broken config refused"
}

print_usage_up() {
  cat <<EOF
lab: up: $HOSTS hosts share the cluster IP $CLUSTER_IP ($MODE mode, cluster MAC $CLUSTER_MAC,
  $NEIGH_HOW by the client); each host is a wlbs appliance in front of its server.
  the cluster: for n in \$(seq 10); do ip netns exec $NS_CLIENT curl -s http://$CLUSTER_IP/; done
  from another client address ($(client_ip 0) .. $(client_ip $((CLIENT_ADDRS - 1)))):
               ip netns exec $NS_CLIENT curl -s --interface $(client_ip 23) http://$CLUSTER_IP/
  one host:    ip netns exec $NS_CLIENT curl -s http://$(server_ip 1)/      (dedicated: always "host 1")
  served by I: ip netns exec $NS_CLIENT curl -s http://192.0.2.(10+I)/count
  shell:       ip netns exec $NS_CLIENT bash
  the switch:  ip netns exec $NS_SW tcpdump -eni $BRIDGE;  ip netns exec $NS_SW bridge fdb show br $BRIDGE
  appliance I: namespace wlbs-lab-aI, ports wlbs-aI-cl (cluster) / wlbs-aI-ho (host)
  server I:    namespace wlbs-lab-sI, wlbs-sI, address 192.0.2.(10+I), cluster IP on lo
  logs:        $LOGDIR (hI.log appliance, sI.log server, hI.toml config)
  control:     $(wlbs_bin) query --socket $LOGDIR/hI.sock  (also drainstop, stop, start, reload)
  remote:      ip netns exec $NS_CLIENT $(wlbs_bin) query --remote cluster --cluster-ip $CLUSTER_IP --key-file $(key_file)
  bystander:   ip netns exec $NS_BY tcpdump -eni $BY_IF    (a bridge port with no host behind it)
  long conn.:  ip netns exec $NS_CLIENT curl -s http://$CLUSTER_IP/slow?ms=5000   (first line: the host)
  stop:        scripts/lab.sh down   (prints each appliance's summary line)
EOF
}

# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------
main() {
  local cmd=run
  while [ $# -gt 0 ]; do
    case $1 in
      run | up | down) cmd=$1 ;;
      --hosts) HOSTS=${2:?--hosts needs a number}; shift ;;
      --membership) MEMBERSHIP=${2:?--membership needs heartbeats or static}; shift ;;
      --mode) MODE=${2:?--mode needs unicast, multicast or igmp}; shift ;;
      --mode=*) MODE=${1#*=} ;;
      --reload) RELOAD_KIND=${2:?--reload needs add, change or none}; shift ;;
      --reload=*) RELOAD_KIND=${1#*=} ;;
      --hosts=*) HOSTS=${1#*=} ;;
      --requests) REQUESTS=${2:?--requests needs a number}; shift ;;
      --requests=*) REQUESTS=${1#*=} ;;
      --parallel) PARALLEL=${2:?--parallel needs a number}; shift ;;
      --parallel=*) PARALLEL=${1#*=} ;;
      --no-build) NO_BUILD=1 ;;
      --appliance | --appliance=*)
        die "--appliance is gone: a pass-through stand-in (testpmd) cannot filter the cluster IP" ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
  check_args
  check_env
  take_lock

  if [ "$cmd" = down ]; then
    if teardown; then
      say "down: lab removed${FOUND_LOGDIR:+ (its logs stay in $FOUND_LOGDIR)}"
    else
      say "down: nothing to clean"
    fi
    return 0
  fi

  build
  if [ -n "$(lab_namespaces)" ] || compgen -G "/var/run/dpdk/${NS_PREFIX}-*" >/dev/null; then
    say "removing leftovers of a previous lab (scripts/lab.sh down)"
    teardown || true
    [ -z "$FOUND_LOGDIR" ] || say "its logs stay in $FOUND_LOGDIR"
  fi

  LOGDIR=$(mktemp -d /tmp/wlbs-lab.XXXXXX)
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local t0 i
  t0=$(now_ms)
  if [ "$MEMBERSHIP" != static ]; then
    # The cluster key: signs heartbeats and remote control commands.
    (umask 077 && head -c 32 /dev/urandom >"$(key_file)")
  fi
  create_switch
  create_client
  create_bystander
  # The join phase's spare host: namespaces and server now, its appliance in the phase.
  if [ "$cmd" = run ] && [ "$MEMBERSHIP" != static ] && [ "$HOSTS" -ge 2 ]; then
    JOINER=$((HOSTS + 1))
  fi
  for i in $(lab_hosts); do create_host "$i"; done
  say "namespaces and veths for $HOSTS hosts${JOINER:+ and the spare h$JOINER} ready in" \
    "$(fmt_ms $(($(now_ms) - t0))); cluster IP $CLUSTER_IP, cluster MAC $CLUSTER_MAC"

  for i in $(lab_hosts); do start_server "$i"; done
  [ "$cmd" = up ] || start_captures
  for ((i = 1; i <= HOSTS; i++)); do start_appliance "$i"; done
  say "started $HOSTS wlbs appliances ($MEMBERSHIP membership, lcores $(lcores)), logs in $LOGDIR"
  wait_ready
  [ "$MODE" != igmp ] || check_mdb "at start"

  if [ "$cmd" = up ]; then
    check_switch after
    KEEP_LAB=1
    print_usage_up
    return 0
  fi

  check_switch before
  run_workload
  fetch_served
  check_appliances
  if [ "$MEMBERSHIP" != static ]; then
    failover_phase
    join_phase
    drain_phase
    remote_phase
    reload_phase
  fi
  check_switch after
  [ "$MODE" != igmp ] || check_mdb "at the end"
  stop_appliances
  # tcpdump reads what the kernel buffered for it a little after the fact: give it time to
  # write the appliances' last frames (the IGMP leaves) before it is told to stop.
  sleep 1
  stop_captures
  check_captures
  check_filter_counts
  summarize
  for i in "${TIMING[@]}"; do say "$i"; done
}

main "$@"
