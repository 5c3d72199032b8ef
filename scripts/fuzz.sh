#!/usr/bin/env bash
# Short fuzz run for CI: builds every cargo-fuzz target in fuzz/ and runs each for FUZZ_SECONDS
# (default 30) from the committed corpus (fuzz/corpus/<target>). New inputs go to a temporary
# directory, so the committed corpus is not changed. Fails on the first crash, leak, timeout or
# out-of-memory; the input that caused it is left in fuzz/artifacts/<target>/.
#
# Needs a nightly toolchain (sanitizers): FUZZ_TOOLCHAIN, default `nightly`.
# Usage: scripts/fuzz.sh [target...]   (default: every target)
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo "+$toolchain" fuzz list)
fi

cargo "+$toolchain" fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
    echo "fuzz.sh: $target for ${seconds}s"
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    if ! cargo "+$toolchain" fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
        echo "fuzz.sh: $target FAILED (input in fuzz/artifacts/$target/)" >&2
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each without a crash"
