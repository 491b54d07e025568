#!/usr/bin/env bash
# Build crimg in release mode, install it under PREFIX (default /usr/local)
# and register the loader with binfmt_misc so task images run directly.
#   sudo tools/install.sh            # build, install, register
#   PREFIX=/opt/crimg tools/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PREFIX=${PREFIX:-/usr/local}

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (it writes $PREFIX and registers a binfmt_misc entry)" >&2
    exit 1
fi
if ! command -v cc >/dev/null; then
    apt-get update -qq && apt-get install -y -qq gcc
fi

cargo build --release --workspace --locked
install -d "$PREFIX/bin" "$PREFIX/lib/crimg"
install -m 0755 target/release/crdump target/release/crimg target/release/crrestore-tree "$PREFIX/bin/"
install -m 0755 target/release/crimg-loader "$PREFIX/lib/crimg/"
"$PREFIX/bin/crimg" binfmt install --loader "$PREFIX/lib/crimg/crimg-loader"
echo "installed crdump, crimg and crrestore-tree in $PREFIX/bin, the loader in $PREFIX/lib/crimg"
