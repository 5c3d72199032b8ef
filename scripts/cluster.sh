#!/usr/bin/env bash
# Several relay nodes sharing per-mailbox limits through Redis (issue 9): runs tests/cluster.rs,
# whose tests start their own redis-server (no persistence, a free port) and two real smarthost
# processes each. Installs redis-server when it is missing (apt). Run from anywhere:
#   bash scripts/cluster.sh
# No system Redis service is used or needed.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: installing it (apt-get install redis-server)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends redis-server </dev/null >/dev/null
fi
redis-server --version

# One test at a time: each starts two relays and a Redis of its own.
cargo test --test cluster -- --ignored --test-threads=1
