#!/usr/bin/env bash
# Run crimg's checks and tests: what CI runs (.ci/run) and what a developer
# runs. Installs the programs the tests drive (gcc, binutils, gdb, python3,
# a JDK, and the real programs of the program tests: Go, redis, ruby, node,
# tmux, vim, less, top, curl; numpy for the benchmark) when they are missing
# and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

need=()
# command:package, one per program a test runs.
programs=(
    cc:gcc readelf:binutils gdb:gdb python3:python3 setpriv:util-linux setsid:util-linux
    javac:default-jdk-headless tmux:tmux go:golang-go redis-server:redis-server
    redis-cli:redis-tools ruby:ruby node:nodejs vim:vim less:less top:procps ps:procps curl:curl
)
for cmd in "${programs[@]}"; do
    command -v "${cmd%%:*}" >/dev/null || need+=("${cmd##*:}")
done
# numpy, for the benchmark's numpy workload (the distribution's package goes
# to /usr/bin/python3, which the benchmark also tries).
python3 -c 'import numpy' 2>/dev/null || /usr/bin/python3 -c 'import numpy' 2>/dev/null ||
    need+=(python3-numpy)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "test.sh: missing ${need[*]}; tests that need them will fail (run as root to install)" >&2
    fi
fi

# CI runs as root: there a test that needs root and finds none fails
# instead of skipping (see tests/src/privilege.rs).
if [ -n "${CI:-}" ]; then
    export CRIMG_TESTS_REQUIRE_ROOT=1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests drive the binaries (crdump, crimg, crimg-loader): build them first.
cargo build --workspace --locked
# The tests' temporary files go in one directory of this run, removed at
# its end, as /tmp would be (sticky, open to all: some tests run as
# nobody): a workload's mapped file has to outlive the test that killed
# the workload, and is left behind otherwise.
run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/crimg-run-XXXXXX")
chmod 1777 "$run_tmp"
# A mount a test could not remove is let go lazily first, so that nothing
# under the directory is left behind; the tests' exit status stays the
# script's (no errexit in here).
remove_run_tmp() {
    set +e
    findmnt -rno TARGET | grep "^$run_tmp/" | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$run_tmp"
}
trap remove_run_tmp EXIT
export TMPDIR=$run_tmp
cargo test --workspace --locked
