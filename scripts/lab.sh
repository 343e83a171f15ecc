#!/usr/bin/env bash
# The wlbs virtual lab (ARCHITECTURE.md section 8, level 4): a whole cluster in network
# namespaces on one machine, with real kernel TCP clients and servers.
#
#   client ns ---+
#                |        switch ns (Linux bridge)
#                +--- wlbs-br ---+------------------+---- ...
#                                |                  |
#               appliance ns a1: [cluster port] wlbs [host port] --- server ns s1 (HTTP "host 1")
#               appliance ns a2: [cluster port] wlbs [host port] --- server ns s2 (HTTP "host 2")
#
# Every appliance is a `wlbs` process on two net_af_packet ports over veths (cluster side to
# the bridge, host side to its server), a bump in the wire exactly where the WLBS driver sat.
#
#   scripts/lab.sh [run]   build, set the lab up, run a bounded HTTP workload from the client,
#                          print who answered, tear everything down. Non-zero exit when any
#                          request failed or an appliance failed to start, crashed or did
#                          not stop cleanly.
#   scripts/lab.sh up      build and set the lab up, then leave it running (prints how to use it)
#   scripts/lab.sh down    remove everything a previous run/up left (idempotent)
#
# Options (or environment): --hosts N (WLBS_LAB_HOSTS, default 3), --requests N per target
# (WLBS_LAB_REQUESTS, default 20), --no-build (WLBS_LAB_NO_BUILD=1), --appliance wlbs|testpmd
# (WLBS_LAB_APPLIANCE; `testpmd` runs dpdk-testpmd in io mode instead of wlbs, to tell lab
# problems from appliance problems).
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
REQUESTS=${WLBS_LAB_REQUESTS:-20}        # requests per workload target
NO_BUILD=${WLBS_LAB_NO_BUILD:-0}
APPLIANCE=${WLBS_LAB_APPLIANCE:-wlbs}    # wlbs | testpmd (stand-in)
WORKERS=1                                # wlbs [dataplane] workers; lcores = workers + 1
                                         # (more needs qpairs=N on the af_packet vdevs)
CURL_MAX_TIME=2                          # seconds per request
WORKLOAD_TIMEOUT=${WLBS_LAB_TIMEOUT:-60} # seconds for the whole workload
READY_TIMEOUT=30                         # seconds for all appliances + servers to carry traffic
STOP_TIMEOUT=5                           # seconds an appliance gets to stop after SIGINT
MAX_HOSTS=20                             # 256 MiB and a share of 2 CPUs per appliance

readonly NS_PREFIX=wlbs-lab
readonly NS_SW=wlbs-lab-sw NS_CLIENT=wlbs-lab-c
readonly BRIDGE=wlbs-br CLIENT_IF=wlbs-c SW_CLIENT_IF=wlbs-sw-c
readonly CLIENT_IP=192.0.2.100 PREFIX_LEN=24
readonly LOCK_FILE=/run/wlbs-lab.lock

ns_app() { echo "wlbs-lab-a$1"; }      # appliance namespace of host $1
ns_srv() { echo "wlbs-lab-s$1"; }      # server namespace of host $1
if_sw() { echo "wlbs-sw-a$1"; }        # bridge port towards appliance $1 (switch ns)
if_cluster() { echo "wlbs-a$1-cl"; }   # appliance $1's cluster port (appliance ns)
if_host() { echo "wlbs-a$1-ho"; }      # appliance $1's host port (appliance ns)
if_srv() { echo "wlbs-s$1"; }          # server $1's NIC (server ns)
server_ip() { echo "192.0.2.$((10 + $1))"; }   # host $1's dedicated address
dpdk_prefix() { echo "wlbs-lab-h$1"; }          # EAL --file-prefix of appliance $1

# State of this run (run/up only).
LOGDIR=""
KEEP_LAB=0          # `up`: leave the lab running at exit
FOUND_LOGDIR=""     # `down`: where the stopped appliances logged
FAILED=0            # something went wrong that does not abort at once (reported at exit)
declare -a APP_PID=() SRV_PID=()
declare -A ANSWERED=() FAILURES=()
TOTAL=0 OK=0
WORKLOAD_STATE=none # none | running | finished
WORKLOAD_MS=0

say() { printf 'lab: %s\n' "$*"; }
warn() { printf 'lab: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
fmt_ms() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }

usage() {
  sed -n '/^#   scripts/,/^# problems/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# ----------------------------------------------------------------------------------------
# Preconditions
# ----------------------------------------------------------------------------------------
check_env() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, veths, DPDK)"
  local missing=() t
  for t in ip ethtool curl python3 setsid flock taskset; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if [ "$APPLIANCE" = testpmd ]; then
    command -v dpdk-testpmd >/dev/null || missing+=(dpdk-testpmd)
  elif [ "$NO_BUILD" != 1 ]; then
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
  [[ $WORKLOAD_TIMEOUT =~ ^[0-9]+$ ]] || die "WLBS_LAB_TIMEOUT must be seconds"
  case $APPLIANCE in wlbs | testpmd) ;; *) die "--appliance must be wlbs or testpmd" ;; esac
}

# One lab at a time: names are fixed. fd 9 holds the lock for this script's lifetime; every
# long-lived child gets 9>&- so a lab left `up` does not keep it.
take_lock() {
  exec 9>"$LOCK_FILE"
  flock -n 9 || die "another scripts/lab.sh is running (lock $LOCK_FILE); wait for it or stop it"
}

wlbs_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/wlbs"; }

build() {
  if [ "$APPLIANCE" = testpmd ] || [ "$NO_BUILD" = 1 ]; then
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
    grep -E "^${NS_PREFIX}-(sw|c|a[0-9]+|s[0-9]+)\$" | sort -V || true
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
    elif [ "$APPLIANCE" = wlbs ] && [ -n "$rc" ]; then
      warn "$h: no 'wlbs: stopped' line in its log${log:+ ($log)}"
    fi
    if [ -n "$rc" ] && [ "$rc" != 0 ]; then
      # testpmd re-raises SIGINT after cleaning up (status 130); wlbs must exit 0.
      if [ "$APPLIANCE" = testpmd ] && [ "$rc" = 130 ]; then
        :
      else
        warn "$h: exited with status $rc after SIGINT (expected 0)"
        FAILED=1
      fi
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
  for pid in "${SRV_PID[@]}"; do wait "$pid" 2>/dev/null || true; done
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
    grep -E '^wlbs-(br|c|sw-c|sw-a[0-9]+|a[0-9]+-(cl|ho)|s[0-9]+)$' || true); do
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
    say "interrupted during the workload: $OK of $TOTAL requests answered so far" \
      "($((HOSTS * REQUESTS)) planned)"
  fi
  say "tearing down"
  teardown
  [ $rc = 0 ] && [ $FAILED = 1 ] && rc=1
  if [ $rc = 0 ]; then
    [ -n "$LOGDIR" ] && rm -rf "$LOGDIR"
    say "PASS: $OK/$TOTAL requests answered"
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
  # STP stays off (the default), so ports forward at once; the bridge floods unknown
  # unicast like the switch in front of a WLBS cluster.
  ip -n "$NS_SW" link add "$BRIDGE" type bridge
  ip -n "$NS_SW" link set "$BRIDGE" up
}

create_client() {
  ns_add "$NS_CLIENT"
  veth "$NS_CLIENT" "$CLIENT_IF" "$NS_SW" "$SW_CLIENT_IF"
  ip -n "$NS_SW" link set "$SW_CLIENT_IF" master "$BRIDGE"
  ip -n "$NS_CLIENT" link set "$CLIENT_IF" address 02:00:00:00:00:64
  ip -n "$NS_CLIENT" addr add "$CLIENT_IP/$PREFIX_LEN" dev "$CLIENT_IF"
}

create_host() {
  local i=$1 na ns
  na=$(ns_app "$i") ns=$(ns_srv "$i")
  ns_add "$na"
  ns_add "$ns"
  veth "$NS_SW" "$(if_sw "$i")" "$na" "$(if_cluster "$i")"
  ip -n "$NS_SW" link set "$(if_sw "$i")" master "$BRIDGE"
  veth "$na" "$(if_host "$i")" "$ns" "$(if_srv "$i")"
  # The appliance's ports carry no addresses; promiscuous because they carry frames for
  # other MACs (the server's, the cluster MAC later).
  ip -n "$na" link set "$(if_cluster "$i")" promisc on
  ip -n "$na" link set "$(if_host "$i")" promisc on
  # Fixed MACs make captures readable: server i is 02:00:00:00:01:ii.
  ip -n "$ns" link set "$(if_srv "$i")" address "$(printf '02:00:00:00:01:%02x' "$i")"
  ip -n "$ns" addr add "$(server_ip "$i")/$PREFIX_LEN" dev "$(if_srv "$i")"
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
  spawn "$(ns_srv "$i")" "$LOGDIR/s$i.log" \
    python3 "$SCRIPTS/lab-server.py" --host "$i" --bind "$(server_ip "$i")" --name "$(ns_srv "$i")"
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

start_appliance() {
  local i=$1
  local cfg="$LOGDIR/h$i.toml" log="$LOGDIR/h$i.log"
  # --no-pci: the lab's ports are vdevs only; never let EAL probe the machine's real NIC.
  local -a eal=(--no-huge --no-shconf -m 256 --no-pci --file-prefix "$(dpdk_prefix "$i")"
    --vdev "net_af_packet0,iface=$(if_cluster "$i")"
    --vdev "net_af_packet1,iface=$(if_host "$i")"
    --lcores "$(lcores)")
  if [ "$APPLIANCE" = testpmd ]; then
    # io forwarding between the two ports = the same bump in the wire. Non-interactive testpmd
    # waits in a stats loop (period long enough to stay silent) until SIGINT. Its default mbuf
    # pool (~155k mbufs, 338 MB) does not fit in -m 256: ask for far fewer.
    spawn "$(ns_app "$i")" "$log" dpdk-testpmd "${eal[@]}" -- \
      --forward-mode=io --no-mlockall --stats-period 86400 --total-num-mbufs 8192
  else
    cat >"$cfg" <<EOF
# wlbs lab, host $i (written by scripts/lab.sh)
[dataplane]
cluster_port = "net_af_packet0"   # $(if_cluster "$i"), towards the switch
host_port = "net_af_packet1"      # $(if_host "$i"), towards server $i
workers = $WORKERS
busy_poll = false                 # appliances share the CPUs
EOF
    spawn "$(ns_app "$i")" "$log" "$(wlbs_bin)" run --config "$cfg" -- "${eal[@]}"
  fi
  APP_PID[i]=$!
}

log_tail() { # log_tail FILE
  [ -f "$1" ] || return 0
  printf '  | %s\n' "---- last lines of $1 (EAL usage text left out)" >&2
  # On bad arguments EAL prints its whole usage text, which buries the one useful line.
  grep -avE '^([[:space:]]|$|Usage: |EAL (common|Linux) options:|EAL options for DEBUG)' "$1" | tail -n 15 | sed 's/^/  | /' >&2
}

# The one probe for "host i is reachable from the client through its appliance".
probe() {
  local out
  out=$(ip netns exec "$NS_CLIENT" curl -s --max-time 0.5 "http://$(server_ip "$1")/" 2>/dev/null) &&
    [ "$out" = "host $1" ]
}

# Wait until every appliance runs and carries traffic to its server. An appliance that exits
# meanwhile failed to start.
wait_ready() {
  local t0 deadline i pending=()
  t0=$(now_ms)
  deadline=$((t0 + READY_TIMEOUT * 1000))
  for ((i = 1; i <= HOSTS; i++)); do pending+=("$i"); done
  while [ ${#pending[@]} -gt 0 ]; do
    local still=()
    local dead=0
    for i in "${pending[@]}"; do
      if ! is_running "${APP_PID[i]}"; then
        local rc=0
        wait "${APP_PID[i]}" 2>/dev/null || rc=$?
        warn "appliance h$i failed to start: it exited with status $rc"
        log_tail "$LOGDIR/h$i.log"
        dead=1
      elif ! is_running "${SRV_PID[i]}"; then
        warn "server s$i exited"
        log_tail "$LOGDIR/s$i.log"
        dead=1
      elif ! probe "$i"; then
        still+=("$i")
      fi
    done
    [ $dead = 0 ] || exit 1
    pending=("${still[@]}")
    [ ${#pending[@]} -eq 0 ] && break
    if [ "$(now_ms)" -ge $deadline ]; then
      for i in "${pending[@]}"; do
        if ip netns exec "$(ns_srv "$i")" curl -s --max-time 1 "http://$(server_ip "$i")/" >/dev/null; then
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
  say "all $HOSTS hosts reachable through their appliances after $(fmt_ms $(($(now_ms) - t0)))"
}

# ----------------------------------------------------------------------------------------
# The workload: change these two functions when the workload changes (e.g. one cluster IP)
# ----------------------------------------------------------------------------------------

# What the client requests: one "URL EXPECTED" per line, EXPECTED the host that must answer
# or "-" for any host. Today each host is reached at its dedicated address, REQUESTS times,
# interleaved. With the filter this becomes REQUESTS*HOSTS lines "http://<cluster IP>/ -".
workload_targets() {
  local n i
  for ((n = 1; n <= REQUESTS; n++)); do
    for ((i = 1; i <= HOSTS; i++)); do
      printf 'http://%s/ %s\n' "$(server_ip "$i")" "$i"
    done
  done
}

count_failure() { FAILURES[$1]=$((${FAILURES[$1]:-0} + 1)); }

# Run the targets from the client namespace, one new TCP connection each (curl per request),
# bounded per request (CURL_MAX_TIME) and overall (WORKLOAD_TIMEOUT): tallies ANSWERED[host]
# and FAILURES[reason].
run_workload() {
  local url expect out rc t0 deadline
  WORKLOAD_STATE=running
  t0=$(now_ms)
  deadline=$((t0 + WORKLOAD_TIMEOUT * 1000))
  while read -r url expect; do
    TOTAL=$((TOTAL + 1))
    if [ "$(now_ms)" -ge $deadline ]; then
      count_failure "not sent: workload time limit (${WORKLOAD_TIMEOUT}s) reached"
      continue
    fi
    out=$(ip netns exec "$NS_CLIENT" curl -sS --fail --max-time "$CURL_MAX_TIME" "$url" \
      </dev/null 2>&1) && rc=0 || rc=$?
    local reason=""
    if [ $rc != 0 ]; then
      reason="$url: ${out:-curl exit $rc}"
      # Failures of one kind group together: drop curl's per-attempt timing.
      reason=$(sed -E 's/after [0-9]+ (ms|milliseconds|seconds)/after .../; s/ with [0-9]+ (out of -?[0-9]+ )?bytes received//' <<<"$reason")
    elif [[ ! $out =~ ^host\ ([0-9]+)$ ]]; then
      reason="$url: unexpected answer '${out:0:60}'"
    elif [ "$expect" != - ] && [ "${BASH_REMATCH[1]}" != "$expect" ]; then
      reason="$url: answered by host ${BASH_REMATCH[1]}, expected host $expect"
    else
      ANSWERED[${BASH_REMATCH[1]}]=$((${ANSWERED[${BASH_REMATCH[1]}]:-0} + 1))
      OK=$((OK + 1))
    fi
    [ -z "$reason" ] || count_failure "$reason"
  done < <(workload_targets)
  WORKLOAD_MS=$(($(now_ms) - t0))
  WORKLOAD_STATE=finished
}

# Which host answered how many requests, and the failures grouped by reason.
summarize() {
  local i failed=$((TOTAL - OK)) reason
  say "workload: $TOTAL requests from $NS_CLIENT ($CLIENT_IP) in $(fmt_ms "$WORKLOAD_MS")," \
    "max ${CURL_MAX_TIME}s each, ${WORKLOAD_TIMEOUT}s overall"
  printf '  %-6s %-14s %8s\n' host address answered
  for ((i = 1; i <= HOSTS; i++)); do
    printf '  %-6s %-14s %8d\n' "h$i" "$(server_ip "$i")" "${ANSWERED[$i]:-0}"
  done
  printf '  %-21s %8d\n' failed "$failed"
  for reason in "${!FAILURES[@]}"; do
    printf '    %4dx %s\n' "${FAILURES[$reason]}" "$reason"
  done
  [ "$failed" = 0 ] || FAILED=1
}

# An appliance that died under the workload is a failure even if every request got through.
check_appliances() {
  local i rc
  for ((i = 1; i <= HOSTS; i++)); do
    if ! is_running "${APP_PID[i]}"; then
      rc=0
      wait "${APP_PID[i]}" 2>/dev/null || rc=$?
      warn "appliance h$i died during the run (status $rc)"
      log_tail "$LOGDIR/h$i.log"
      FAILED=1
    fi
  done
}

print_usage_up() {
  local bin=wlbs
  [ "$APPLIANCE" = testpmd ] && bin=dpdk-testpmd
  cat <<EOF
lab: up: $HOSTS hosts, each behind its own $bin appliance; nothing is torn down.
  client:      ip netns exec $NS_CLIENT curl -s http://$(server_ip 1)/      (answers "host 1")
  shell:       ip netns exec $NS_CLIENT bash
  the switch:  ip netns exec $NS_SW tcpdump -eni $BRIDGE
  appliance i: namespace wlbs-lab-aI, ports wlbs-aI-cl (cluster) / wlbs-aI-ho (host)
  server i:    namespace wlbs-lab-sI, wlbs-sI, address 192.0.2.(10+I)
  logs:        $LOGDIR (hI.log appliance, sI.log server, hI.toml config)
  stop:        scripts/lab.sh down
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
      --hosts=*) HOSTS=${1#*=} ;;
      --requests) REQUESTS=${2:?--requests needs a number}; shift ;;
      --requests=*) REQUESTS=${1#*=} ;;
      --no-build) NO_BUILD=1 ;;
      --appliance) APPLIANCE=${2:?--appliance needs wlbs or testpmd}; shift ;;
      --appliance=*) APPLIANCE=${1#*=} ;;
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
  create_switch
  create_client
  for ((i = 1; i <= HOSTS; i++)); do create_host "$i"; done
  say "namespaces and veths for $HOSTS hosts ready in $(fmt_ms $(($(now_ms) - t0)))"

  for ((i = 1; i <= HOSTS; i++)); do start_server "$i"; done
  for ((i = 1; i <= HOSTS; i++)); do start_appliance "$i"; done
  say "started $HOSTS ${APPLIANCE} appliances (lcores $(lcores)), logs in $LOGDIR"
  wait_ready

  if [ "$cmd" = up ]; then
    KEEP_LAB=1
    print_usage_up
    return 0
  fi

  run_workload
  summarize
  check_appliances
}

main "$@"
