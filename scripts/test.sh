#!/usr/bin/env bash
# Every test of wlbs, from a fresh Debian 12 machine: installs what is needed (setup.sh), then
# formatting and lints, the unit/property tests and the DPDK integration tests (cargo test
# --workspace; each DPDK test runs wlbs as its own child process with its own --file-prefix),
# then the virtual lab end to end in each cluster MAC mode. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

scripts/setup.sh

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo build (the wlbs binary the integration tests run)"
cargo build --workspace -q
cargo build --release -q -p wlbs-control

step "cargo test --workspace"
cargo test --workspace 2>&1 | tee /tmp/wlbs-cargo-test.log
cargo_passed=$(awk '/^test result:/ { p += $4 } END { print p + 0 }' /tmp/wlbs-cargo-test.log)

step "virtual lab (scripts/lab.sh), unicast mode"
scripts/lab.sh
step "virtual lab, multicast mode"
scripts/lab.sh --no-build --mode multicast
step "virtual lab, igmp mode"
scripts/lab.sh --no-build --mode igmp

step "leftovers"
left=$(ip netns list | grep -c '^wlbs-' || true)
dpdk_left=$(find /var/run/dpdk -maxdepth 1 -mindepth 1 -name 'wlbs-*' 2>/dev/null | wc -l)
if [ "$left" -ne 0 ] || [ "$dpdk_left" -ne 0 ]; then
  echo "test: leftovers: $left wlbs network namespaces, $dpdk_left /var/run/dpdk/wlbs-* folders" >&2
  exit 1
fi
echo "no leftovers"
# One closing line for CI: the cargo tests plus the three lab runs (any failure exited above).
echo "test: $((cargo_passed + 3)) passed, 0 failed"
