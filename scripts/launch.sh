#!/usr/bin/env bash
# Starts one wlbs appliance on bare metal: two physical NICs given to DPDK (vfio-pci), hugepages
# and cores on the NICs' NUMA node, and the NICs given back to their kernel driver on stop.
#
#   scripts/launch.sh --config FILE [--nic PCI]... [--workers N] [--cores LIST] [--mem MB]
#                     [--dry-run] [--sysfs ROOT] [-- EAL args]
#
#   1. reads the CPU and NUMA layout from /sys (online, isolated, each node's CPUs) and each
#      NIC's node (/sys/bus/pci/devices/PCI/numa_node; -1: none), warns when the two NICs
#      are on different nodes;
#   2. reserves --mem MB of 2 MiB hugepages on the NICs' node (no NUMA nodes: the global
#      pool), mounts hugetlbfs on /dev/hugepages when nothing is mounted;
#   3. loads vfio-pci and binds each NIC to it with dpdk-devbind.py, after noting its kernel
#      driver (in /run/wlbs/launch-NAME.drivers too, so a launch after a crash still knows it);
#   4. picks the cores: one per worker, isolated cores (isolcpus=) of the NIC's node first,
#      then its other cores, then other nodes', core 0 only when nothing else is left; the
#      main lcore (control thread) preferably on a non-isolated core;
#   5. runs `wlbs run --config FILE -- -l MAIN,WORKERS --main-lcore MAIN -a PCI -a PCI
#      --file-prefix wlbs-NAME --socket-mem ...` as a child, forwards SIGINT, SIGTERM and
#      SIGHUP (reload) to it and exits with its status;
#   6. on any exit (wlbs stopped or failed, a step above failed, a signal): binds each NIC it
#      took back to the driver it had.
#
# Options:
#   --config FILE  the appliance's config (required); NAME is its file name without .toml
#   --nic PCI      the cluster NIC, then (again) the host NIC; default: [dataplane]
#                  cluster_port and host_port of the config when they are PCI addresses
#                  ("0000:01:00.0"). Config ports given as ids (0, 1) are numbered by DPDK in
#                  PCI address order: 0 is the lower address.
#   --workers N    worker cores (default: [dataplane] workers of the config, else 1); wlbs
#                  starts the config's number of workers, so N must not be smaller
#   --cores LIST   use these CPUs instead of picking ("1,2-3": the first is the main lcore)
#   --mem MB       hugepage memory for DPDK on the NIC's node (default 1024, WLBS_LAUNCH_MEM)
#   --dry-run      print every command that would change the machine ("+ cmd", one per line
#                  on stdout, the rebind on stop included) and run none of them; reading
#                  /sys is fine. No root needed; exit 0 when every check passes
#   --sysfs ROOT   with --dry-run only: read /sys and /proc under ROOT instead of /. For the
#                  tests, which build a fake layout there (tests/tests/launch.rs)
#   -- ARGS        extra EAL arguments appended to wlbs's (e.g. --log-level lib.eal:debug)
#
# Environment: WLBS_BIN (the wlbs binary; else `wlbs` on PATH, else target/release/wlbs of
# this checkout), WLBS_LAUNCH_MEM.
#
# Exit status: wlbs's; 2 for a usage or precondition error (missing config, a NIC that does
# not exist, no vfio-pci module, not root, no wlbs binary); 1 when a step failed (hugepages,
# bind); 128+N when signal N arrived before wlbs started.
#
# packaging/wlbs@.service runs it as /usr/local/lib/wlbs/launch.sh for /etc/wlbs/NAME.toml.
set -euo pipefail

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPTS

say() { printf 'launch: %s\n' "$*" >&2; }
warn() { printf 'launch: warning: %s\n' "$*" >&2; }
die() { printf 'launch: error: %s\n' "$1" >&2; exit "${2:-1}"; }
usage_error() { die "$1 (scripts/launch.sh --help)" 2; }

usage() {
  sed -n '/^#   scripts/,/^# packaging/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------
CONFIG=""
NICS=()
WORKERS=""
CORES=""
MEM_MB=${WLBS_LAUNCH_MEM:-1024}
DRY_RUN=0
SYSFS=""              # prefix for /sys and /proc ("" = the real ones)
EXTRA_EAL=()
HUGEPAGE_KB=2048
STATE_DIR=/run/wlbs   # where the NICs' original drivers are noted (the unit's RuntimeDirectory)

# Filled in as the launch goes; cleanup() undoes what they record.
BOUND=()              # "PCI DRIVER": each NIC to give back to DRIVER on exit
STATE_FILE=""
CHILD=""              # pid of wlbs run

# ----------------------------------------------------------------------------------------
# Doing, or printing what would be done
# ----------------------------------------------------------------------------------------
# A word as a shell would need it: as is when plain, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints "+ CMD ARGS" on stdout (what --dry-run shows).
show() {
  local out="+" a
  for a in "$@"; do out+=" $(quote "$a")"; done
  printf '%s\n' "$out"
}

# Runs a command that changes the machine, or prints it with --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then show "$@"; else "$@"; fi
}

# Writes VALUE into FILE (sysfs knobs, the state file), or prints that with --dry-run.
write() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%s > %s\n' "$(show echo "$1")" "$(quote "$2")"
  else
    printf '%s\n' "$1" >"$2"
  fi
}

# ----------------------------------------------------------------------------------------
# Reading the layout
# ----------------------------------------------------------------------------------------
# Expands a kernel CPU list ("0-3,6,8-9") to one number per line.
expand_list() {
  local part
  local -a parts
  IFS=',' read -ra parts <<<"${1//[[:space:]]/}"
  for part in "${parts[@]}"; do
    [ -n "$part" ] || continue
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
      seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ $part =~ ^[0-9]+$ ]]; then
      echo "$part"
    else
      return 1
    fi
  done
}

# Prints the contents of a sysfs/procfs file under the root, or $2 when it is absent.
read_sys() {
  local f="$SYSFS$1"
  if [ -r "$f" ]; then
    tr -d '\n' <"$f"
  else
    printf '%s' "${2:-}"
  fi
}

# Whether the first argument is among the others.
contains() {
  local x=$1
  shift
  printf '%s\n' "$@" | grep -qx -- "$x"
}

# Joins its arguments with commas.
join() {
  local IFS=,
  echo "$*"
}

# "0000:01:00.0" (the domain may be left out) in lower case, or nothing.
pci_address() {
  local a=${1,,}
  [[ $a =~ ^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] && a="0000:$a"
  [[ $a =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] && echo "$a"
  return 0
}

pci_dir() { echo "$SYSFS/sys/bus/pci/devices/$1"; }

# The NIC's kernel driver, or "none".
nic_driver() {
  local link
  link=$(readlink "$(pci_dir "$1")/driver" 2>/dev/null) || { echo none; return; }
  basename "$link"
}

# The network controllers (PCI class 0x02) here, for error messages.
list_nics() {
  local d found=()
  for d in "$SYSFS"/sys/bus/pci/devices/*; do
    [ -e "$d/class" ] || continue
    [[ $(<"$d/class") == 0x02* ]] && found+=("$(basename "$d") ($(nic_driver "$(basename "$d")"))")
  done
  if [ ${#found[@]} -gt 0 ]; then echo "${found[*]}"; else echo "none found"; fi
}

# [dataplane] cluster_port, host_port and workers of the config, as key=value lines.
read_config() {
  python3 - "$1" <<'EOF'
import sys
try:
    import tomllib
except ImportError:
    sys.exit("launch: error: python3 >= 3.11 needed to read the config (tomllib)")
path = sys.argv[1]
try:
    with open(path, "rb") as f:
        config = tomllib.load(f)
except (OSError, tomllib.TOMLDecodeError) as e:
    sys.exit(f"launch: error: config {path}: {e}")
dataplane = config.get("dataplane", {})
for key in ("cluster_port", "host_port", "workers"):
    print(f"{key}={dataplane.get(key, '')}")
EOF
}

# ----------------------------------------------------------------------------------------
# Undoing, on any exit
# ----------------------------------------------------------------------------------------
cleanup() {
  local status=$? entry pci driver
  set +e
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    # Only when the script itself failed while wlbs runs: the NICs cannot go back under it.
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  for entry in ${BOUND[@]+"${BOUND[@]}"}; do
    read -r pci driver <<<"$entry"
    if [ "$driver" = none ]; then
      run dpdk-devbind.py -u "$pci" || warn "could not unbind $pci from vfio-pci"
    else
      run dpdk-devbind.py -b "$driver" "$pci" || warn "could not give $pci back to $driver"
    fi
  done
  if [ -n "$STATE_FILE" ]; then
    run rm -f "$STATE_FILE"
  fi
  [ ${#BOUND[@]} -eq 0 ] || say "NICs given back: ${BOUND[*]}"
  exit "$status"
}

# Before wlbs runs, a signal stops the launch (and cleanup() undoes it); after, it goes to wlbs.
on_signal() {
  local sig=$1 code=$2
  if [ -n "$CHILD" ]; then
    kill -s "$sig" "$CHILD" 2>/dev/null || true
  else
    say "SIG$sig before wlbs started: stopping"
    exit "$code"
  fi
}

# ----------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------
parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --config) CONFIG=${2:?--config needs a file}; shift ;;
      --config=*) CONFIG=${1#*=} ;;
      --nic) NICS+=("${2:?--nic needs a PCI address}"); shift ;;
      --nic=*) NICS+=("${1#*=}") ;;
      --workers) WORKERS=${2:?--workers needs a number}; shift ;;
      --workers=*) WORKERS=${1#*=} ;;
      --cores) CORES=${2:?--cores needs a CPU list}; shift ;;
      --cores=*) CORES=${1#*=} ;;
      --mem) MEM_MB=${2:?--mem needs a number of MB}; shift ;;
      --mem=*) MEM_MB=${1#*=} ;;
      --dry-run) DRY_RUN=1 ;;
      --sysfs) SYSFS=${2:?--sysfs needs a directory}; shift ;;
      --sysfs=*) SYSFS=${1#*=} ;;
      --) shift; EXTRA_EAL=("$@"); break ;;
      -h | --help) usage; exit 0 ;;
      *) usage_error "unknown argument '$1'" ;;
    esac
    shift
  done
  [ -n "$CONFIG" ] || usage_error "--config FILE is required"
  [ -f "$CONFIG" ] || die "config $CONFIG does not exist" 2
  [ ${#NICS[@]} -le 2 ] || usage_error "--nic at most twice (cluster NIC, host NIC)"
  if ! [[ $MEM_MB =~ ^[0-9]+$ ]] || [ "$MEM_MB" -lt 2 ]; then
    usage_error "--mem must be a number of MB >= 2 (got '$MEM_MB')"
  fi
  if [ -n "$SYSFS" ]; then
    [ "$DRY_RUN" = 1 ] || usage_error "--sysfs is for tests and needs --dry-run"
    [ -d "$SYSFS" ] || usage_error "--sysfs $SYSFS is not a directory"
    SYSFS=$(cd "$SYSFS" && pwd)
  fi
  CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
  NAME=$(basename "$CONFIG" .toml)
  NAME=${NAME//[^A-Za-z0-9_.-]/_}
}

check_privileges() {
  [ "$DRY_RUN" = 1 ] && return
  [ "$(id -u)" -eq 0 ] || die "must run as root (hugepages, vfio-pci, binding NICs); --dry-run shows what it would do" 2
  command -v dpdk-devbind.py >/dev/null || die "dpdk-devbind.py not found (package dpdk; scripts/setup.sh installs it)" 2
}

find_wlbs() {
  if [ -n "${WLBS_BIN:-}" ]; then
    WLBS=$WLBS_BIN
  elif command -v wlbs >/dev/null; then
    WLBS=$(command -v wlbs)
  else
    WLBS="$(dirname "$SCRIPTS")/target/release/wlbs"
  fi
  if [ ! -x "$WLBS" ]; then
    [ "$DRY_RUN" = 1 ] || die "no wlbs binary at $WLBS: set WLBS_BIN, install wlbs on PATH or cargo build --release" 2
    warn "no wlbs binary at $WLBS (fine for --dry-run)"
  fi
}

# The two NICs: --nic, else the config's ports when they are PCI addresses. Sets NIC_CLUSTER,
# NIC_HOST and CONFIG_WORKERS.
resolve_nics() {
  local config key value cluster_port="" host_port="" a class
  config=$(read_config "$CONFIG") || exit 2
  CONFIG_WORKERS=""
  while IFS='=' read -r key value; do
    case $key in
      cluster_port) cluster_port=$value ;;
      host_port) host_port=$value ;;
      workers) CONFIG_WORKERS=$value ;;
    esac
  done <<<"$config"

  NIC_CLUSTER=${NICS[0]:-$cluster_port}
  NIC_HOST=${NICS[1]:-$host_port}
  for key in cluster host; do
    if [ "$key" = cluster ]; then value=$NIC_CLUSTER; else value=$NIC_HOST; fi
    a=$(pci_address "$value")
    if [ -z "$a" ]; then
      die "the $key NIC '$value' is not a PCI address: name it in the config ([dataplane] ${key}_port = \"0000:01:00.0\") or give --nic; NICs here: $(list_nics)" 2
    fi
    [ -e "$(pci_dir "$a")" ] || die "$key NIC $a does not exist (no $(pci_dir "$a")); NICs here: $(list_nics)" 2
    class=$(read_sys "/sys/bus/pci/devices/$a/class" unknown)
    # Binding a disk controller to vfio-pci by a typo would take the disk away: refuse.
    [[ $class == 0x02* ]] || die "$key NIC $a is not a network controller (PCI class $class); NICs here: $(list_nics)" 2
    if [ "$key" = cluster ]; then NIC_CLUSTER=$a; else NIC_HOST=$a; fi
  done
  [ "$NIC_CLUSTER" != "$NIC_HOST" ] || die "the cluster and host NIC are both $NIC_CLUSTER" 2
  if [[ $cluster_port =~ ^[0-9]+$ ]]; then
    warn "the config names ports by id ($cluster_port, $host_port): DPDK numbers the -a devices in PCI address order, 0 is the lower one"
  fi
}

# CPUS_ONLINE, ISOLATED, NODES (node ids), NODE_CPUS[node], the NICs' nodes and NODE (where
# memory and workers go: the cluster NIC's node, else the host NIC's, else the only one).
read_layout() {
  local d n online nic_nodes=()
  online=$(read_sys /sys/devices/system/cpu/online)
  [ -n "$online" ] || die "cannot read $SYSFS/sys/devices/system/cpu/online" 2
  mapfile -t CPUS_ONLINE < <(expand_list "$online")
  mapfile -t ISOLATED < <(expand_list "$(read_sys /sys/devices/system/cpu/isolated)")
  NODES=()
  declare -gA NODE_CPUS=()
  for d in "$SYSFS"/sys/devices/system/node/node[0-9]*; do
    [ -d "$d" ] || continue
    n=${d##*/node}
    NODES+=("$n")
    NODE_CPUS[$n]=$(expand_list "$(read_sys "/sys/devices/system/node/node$n/cpulist")" | tr '\n' ' ')
  done
  [ ${#NODES[@]} -eq 0 ] || mapfile -t NODES < <(printf '%s\n' "${NODES[@]}" | sort -n)

  NODE_CLUSTER=$(read_sys "/sys/bus/pci/devices/$NIC_CLUSTER/numa_node" -1)
  NODE_HOST=$(read_sys "/sys/bus/pci/devices/$NIC_HOST/numa_node" -1)
  if [ "$NODE_CLUSTER" -ge 0 ]; then
    NODE=$NODE_CLUSTER
  elif [ "$NODE_HOST" -ge 0 ]; then
    NODE=$NODE_HOST
  elif [ ${#NODES[@]} -eq 1 ]; then
    NODE=${NODES[0]}
  else
    NODE=-1
  fi
  # Memory goes on every node a NIC is on (each port's rings live on its NIC's node).
  MEM_NODES=()
  [ "$NODE_CLUSTER" -ge 0 ] && nic_nodes+=("$NODE_CLUSTER")
  [ "$NODE_HOST" -ge 0 ] && [ "$NODE_HOST" != "$NODE_CLUSTER" ] && nic_nodes+=("$NODE_HOST")
  if [ ${#nic_nodes[@]} -gt 0 ]; then MEM_NODES=("${nic_nodes[@]}"); elif [ "$NODE" -ge 0 ]; then MEM_NODES=("$NODE"); fi

  local layout="CPUs $online online"
  if [ ${#NODES[@]} -gt 0 ]; then
    layout+=", ${#NODES[@]} NUMA node(s):"
    for n in "${NODES[@]}"; do layout+=" node$n [${NODE_CPUS[$n]% }]"; done
  else
    layout+=", no NUMA nodes"
  fi
  layout+=", isolated: $( [ ${#ISOLATED[@]} -gt 0 ] && join "${ISOLATED[@]}" || echo none)"
  say "$layout"
  say "cluster NIC $NIC_CLUSTER: node $NODE_CLUSTER, driver $(nic_driver "$NIC_CLUSTER"); host NIC $NIC_HOST: node $NODE_HOST, driver $(nic_driver "$NIC_HOST")"
  if [ "$NODE_CLUSTER" -ge 0 ] && [ "$NODE_HOST" -ge 0 ] && [ "$NODE_CLUSTER" != "$NODE_HOST" ]; then
    warn "the cluster NIC is on node $NODE_CLUSTER, the host NIC on node $NODE_HOST: every packet crosses between the nodes on one side; put both NICs on one node"
  fi
  if [ "$NODE_CLUSTER" -lt 0 ] && [ ${#NODES[@]} -gt 1 ]; then
    warn "the kernel does not know the cluster NIC's NUMA node: memory and cores are not placed by node"
  fi
}

# Hugepages on each node in MEM_NODES (or the global pool), hugetlbfs mounted.
reserve_hugepages() {
  local want=$((MEM_MB * 1024 / HUGEPAGE_KB)) n dir nr free target got
  local -a places=()
  for n in ${MEM_NODES[@]+"${MEM_NODES[@]}"}; do
    dir="/sys/devices/system/node/node$n/hugepages/hugepages-${HUGEPAGE_KB}kB"
    [ -e "$SYSFS$dir/nr_hugepages" ] && places+=("$dir")
  done
  [ ${#places[@]} -gt 0 ] || places=(global)
  for dir in "${places[@]}"; do
    if [ "$dir" = global ]; then
      nr=$(read_sys /proc/sys/vm/nr_hugepages 0)
      free=$(sed -n 's/^HugePages_Free: *//p' "$SYSFS/proc/meminfo" 2>/dev/null || true)
      dir=/proc/sys/vm/nr_hugepages
    else
      nr=$(read_sys "$dir/nr_hugepages" 0)
      free=$(read_sys "$dir/free_hugepages" "$nr")
      dir=$dir/nr_hugepages
    fi
    free=${free:-0}
    if [ "$free" -ge "$want" ]; then
      say "hugepages: $free of $nr free in $dir, $want needed"
      continue
    fi
    target=$((nr + want - free))
    say "hugepages: $free of $nr free in $dir, $want needed: reserving $target"
    write "$target" "$SYSFS$dir"
    if [ "$DRY_RUN" = 0 ]; then
      got=$(read_sys "$dir" 0)
      [ "$got" -ge "$target" ] || die "could only reserve $got of $target hugepages in $SYSFS$dir (memory is fragmented or short: reserve them at boot, hugepages= on the kernel command line, or lower --mem)"
    fi
  done
  if ! grep -qs ' hugetlbfs ' "$SYSFS/proc/mounts"; then
    run mkdir -p /dev/hugepages
    run mount -t hugetlbfs nodev /dev/hugepages
  fi
}

# Each NIC to vfio-pci, after noting its driver in STATE_FILE (for a launch after a crash);
# BOUND lists each NIC from the moment its bind is tried, for cleanup().
bind_nics() {
  local pci driver recorded entry notes="" give_back=() to_bind=()
  local file="$STATE_DIR/launch-$NAME.drivers"   # one line: "PCI=DRIVER PCI=DRIVER"
  if [ ! -d "$SYSFS/sys/bus/pci/drivers/vfio-pci" ]; then
    if [ "$DRY_RUN" = 0 ] && ! modinfo vfio-pci >/dev/null 2>&1; then
      die "no vfio-pci module for this kernel ($(uname -r)): install the kernel's modules package" 2
    fi
    run modprobe vfio-pci
  fi
  for pci in "$NIC_CLUSTER" "$NIC_HOST"; do
    driver=$(nic_driver "$pci")
    if [ "$driver" = vfio-pci ]; then
      # A launch that died without giving it back: its note says what to give it back to.
      recorded=$(tr ' ' '\n' <"$file" 2>/dev/null | sed -n "s/^$pci=//p" || true)
      if [ -z "$recorded" ]; then
        warn "$pci is already on vfio-pci and no earlier launch noted its driver: it stays on vfio-pci on stop"
        continue
      fi
      say "$pci is still on vfio-pci after an earlier launch (was $recorded)"
      driver=$recorded
    else
      to_bind+=("$pci")
      [ -e "$(pci_dir "$pci")/iommu_group" ] ||
        warn "$pci has no IOMMU group: vfio-pci needs the IOMMU on (intel_iommu=on or amd_iommu=on, iommu=pt on the kernel command line)"
    fi
    give_back+=("$pci $driver")
    notes+="${notes:+ }$pci=$driver"
  done
  [ ${#give_back[@]} -gt 0 ] || return 0
  run mkdir -p "$STATE_DIR"
  write "$notes" "$file"
  STATE_FILE=$file
  for entry in "${give_back[@]}"; do
    BOUND+=("$entry")
    pci=${entry%% *}
    contains "$pci" ${to_bind[@]+"${to_bind[@]}"} || continue
    run dpdk-devbind.py -b vfio-pci "$pci" ||
      die "dpdk-devbind.py could not bind $pci to vfio-pci (an interface that is up with routes must be taken down first)"
  done
}

# MAIN_LCORE and WORKER_LCORES: --cores, else picked from the layout.
pick_cores() {
  local n=${WORKERS:-${CONFIG_WORKERS:-1}} c where
  local -a here=() isolated_here=() picked=()
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ]; then
    usage_error "--workers must be a number >= 1 (got '$n')"
  fi
  if [ -n "$CONFIG_WORKERS" ] && [ "$n" -lt "$CONFIG_WORKERS" ]; then
    usage_error "--workers $n is fewer than the config's [dataplane] workers = $CONFIG_WORKERS, which wlbs starts"
  fi
  # "here": the CPUs of the NIC's node (all of them when it is unknown).
  if [ "$NODE" -ge 0 ] && [ -n "${NODE_CPUS[$NODE]:-}" ]; then
    read -ra here <<<"${NODE_CPUS[$NODE]}"
    where="node $NODE"
  else
    here=("${CPUS_ONLINE[@]}")
    where="this machine"
  fi
  for c in "${here[@]}"; do
    contains "$c" ${ISOLATED[@]+"${ISOLATED[@]}"} && isolated_here+=("$c")
  done

  if [ -n "$CORES" ]; then
    expand_list "$CORES" >/dev/null || usage_error "--cores '$CORES' is not a CPU list"
    mapfile -t picked < <(expand_list "$CORES")
    [ ${#picked[@]} -ge 2 ] || usage_error "--cores needs the main lcore and at least one worker"
    if [ $((${#picked[@]} - 1)) -lt "$n" ]; then
      usage_error "--cores gives $((${#picked[@]} - 1)) worker(s), $n needed"
    fi
    for c in "${picked[@]}"; do
      contains "$c" "${CPUS_ONLINE[@]}" || usage_error "--cores: CPU $c is not online"
    done
    [ "$(printf '%s\n' "${picked[@]}" | sort -u | wc -l)" -eq ${#picked[@]} ] ||
      usage_error "--cores '$CORES' names a CPU twice"
    MAIN_LCORE=${picked[0]}
    WORKER_LCORES=("${picked[@]:1}")
  else
    pick_from "$n" "${here[@]}"
  fi

  for c in "${WORKER_LCORES[@]}"; do
    contains "$c" "${here[@]}" || warn "the worker on CPU $c is not on $where, with the cluster NIC"
  done
  if [ ${#isolated_here[@]} -lt "$n" ]; then
    warn "${#isolated_here[@]} isolated CPU(s) on $where for $n worker(s): the kernel schedules other work on the workers' CPUs (isolcpus=, nohz_full= on the kernel command line)"
  fi
  if [ -z "$CORES" ] && { [ "$MAIN_LCORE" = 0 ] || contains 0 "${WORKER_LCORES[@]}"; }; then
    warn "CPU 0 is used: nothing else was left"
  fi
}

# pick_from N HERE...: the workers on isolated CPUs of HERE, then its other CPUs, then other
# nodes' (isolated first), CPU 0 last; the main lcore (the control thread, mostly asleep) on
# the first non-isolated CPU of HERE left over, else the next one in the same order.
pick_from() {
  local n=$1 c
  shift
  local -a iso_here=() other_here=() iso_else=() other_else=() order=()
  for c in "${CPUS_ONLINE[@]}"; do
    [ "$c" = 0 ] && continue
    if contains "$c" "$@"; then
      if contains "$c" ${ISOLATED[@]+"${ISOLATED[@]}"}; then iso_here+=("$c"); else other_here+=("$c"); fi
    else
      if contains "$c" ${ISOLATED[@]+"${ISOLATED[@]}"}; then iso_else+=("$c"); else other_else+=("$c"); fi
    fi
  done
  order=(${iso_here[@]+"${iso_here[@]}"} ${other_here[@]+"${other_here[@]}"}
    ${iso_else[@]+"${iso_else[@]}"} ${other_else[@]+"${other_else[@]}"})
  contains 0 "${CPUS_ONLINE[@]}" && order+=(0)
  [ ${#order[@]} -ge $((n + 1)) ] ||
    die "$n worker(s) and the main lcore need $((n + 1)) CPUs, this machine has ${#order[@]}" 2
  WORKER_LCORES=("${order[@]:0:n}")
  MAIN_LCORE=""
  for c in ${other_here[@]+"${other_here[@]}"} "${order[@]}"; do
    if ! contains "$c" "${WORKER_LCORES[@]}"; then
      MAIN_LCORE=$c
      break
    fi
  done
}

# The --socket-mem list: MEM_MB on each node in MEM_NODES, 0 on the others.
socket_mem() {
  local n max=0 out=()
  for n in ${NODES[@]+"${NODES[@]}"}; do [ "$n" -gt "$max" ] && max=$n; done
  for ((n = 0; n <= max; n++)); do
    if contains "$n" ${MEM_NODES[@]+"${MEM_NODES[@]}"}; then out+=("$MEM_MB"); else out+=(0); fi
  done
  join "${out[@]}"
}

start_wlbs() {
  local -a eal=(-l "$(join "$MAIN_LCORE" "${WORKER_LCORES[@]}")" --main-lcore "$MAIN_LCORE"
    -a "$NIC_CLUSTER" -a "$NIC_HOST" --file-prefix "wlbs-$NAME")
  if [ ${#MEM_NODES[@]} -gt 0 ]; then
    eal+=(--socket-mem "$(socket_mem)")
  else
    eal+=(-m "$MEM_MB")
  fi
  eal+=(${EXTRA_EAL[@]+"${EXTRA_EAL[@]}"})
  say "main lcore $MAIN_LCORE, workers on $(join "${WORKER_LCORES[@]}")"
  if [ "$DRY_RUN" = 1 ]; then
    run "$WLBS" run --config "$CONFIG" -- "${eal[@]}"
    return 0
  fi
  # Its own process group: a Ctrl-C on the terminal reaches the script only, which forwards
  # it once (two would make wlbs exit at once instead of stopping cleanly).
  set -m
  "$WLBS" run --config "$CONFIG" -- "${eal[@]}" &
  CHILD=$!
  set +m
  say "wlbs running (pid $CHILD)"
  local status
  while :; do
    status=0
    wait "$CHILD" || status=$?
    # A trapped signal interrupts wait; wlbs is still there (or a zombie) then: wait again.
    kill -0 "$CHILD" 2>/dev/null || break
  done
  CHILD=""
  say "wlbs exited with status $status"
  return "$status"
}

main() {
  parse_args "$@"
  trap cleanup EXIT
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
  trap 'on_signal HUP 129' HUP
  check_privileges
  find_wlbs
  resolve_nics
  read_layout
  pick_cores
  reserve_hugepages
  bind_nics
  start_wlbs
}

main "$@"
