#!/usr/bin/env bash
# Installs what wlbs needs on Debian 12 and reserves hugepages. Idempotent: run it again
# whenever; it says what it did and what was already there.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (apt-get, hugepages, hugetlbfs mount)" >&2
  exit 1
fi

# DPDK 22.11 runtime + dev files + testpmd (dpdk), libclang for bindgen, the lab's tools
# (iproute2, ethtool, bridge), tcpdump and tshark (tests check that both decode our heartbeats
# as MS NLB), python3 for the lab's HTTP servers and curl as the lab's client.
packages=(
  dpdk dpdk-dev libdpdk-dev
  libclang-dev clang pkg-config
  iproute2 ethtool procps psmisc
  python3 curl
  tcpdump tshark
  prometheus # for promtool: the tests check /metrics with `promtool check metrics`
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture: no (the tests run as root).
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "installed ${#missing[@]} package(s)"
else
  say "packages already installed (${#packages[@]})"
fi

# Hugepages: at least 1 GiB of 2 MiB pages (512). virtio_user/vhost need them; the rest of
# the tests can also run with --no-huge.
want=${WLBS_HUGEPAGES:-1024}
have=$(cat /proc/sys/vm/nr_hugepages)
if [ "$have" -lt "$want" ]; then
  echo "$want" > /proc/sys/vm/nr_hugepages || true
  now=$(cat /proc/sys/vm/nr_hugepages)
  say "hugepages: $have -> $now pages of 2 MiB (wanted $want)"
  if [ "$now" -lt 512 ]; then
    echo "setup: could only reserve $now hugepages (need at least 512 = 1 GiB); free memory and rerun" >&2
    exit 1
  fi
else
  say "hugepages: $have pages of 2 MiB already reserved"
fi

if ! grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs nodev /dev/hugepages
  say "mounted hugetlbfs on /dev/hugepages"
else
  say "hugetlbfs already mounted on /dev/hugepages"
fi

mkdir -p /var/run/dpdk
say "done"
