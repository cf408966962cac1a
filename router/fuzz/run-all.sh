#!/usr/bin/env bash
# Builds every fuzz target and runs each for ${FUZZ_SECONDS:-20} seconds,
# starting from the committed seeds (seeds/<target>/) plus whatever corpus
# earlier runs left in corpus/<target>/ (git-ignored). CI runs this for a
# short smoke test; run it by hand with a larger FUZZ_SECONDS for real
# fuzzing. A crash leaves its input in artifacts/<target>/ and fails the run
# after every target has had its turn.
#
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. FUZZ_SANITIZER picks the sanitizer
# (address, the cargo-fuzz default, or none for more executions per second:
# the sans-IO core under test has no unsafe code).
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

# The harness's own tests first: they check that the committed seeds match
# the current encoders and that the router seeds reach gossip handling.
cargo test --manifest-path "$fuzz_dir/Cargo.toml" --lib

# cargo fuzz looks for fuzz/ in the current directory.
cd "$fuzz_dir/.."
mapfile -t targets < <(cargo fuzz list)
echo "fuzz targets: ${targets[*]}"
cargo fuzz build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    echo "=== fuzzing $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t"
    # The first corpus directory receives new inputs; the seeds stay as committed.
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz targets that crashed: ${failed[*]}; inputs are in $fuzz_dir/artifacts/<target>/" >&2
    echo "reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact> (from router/)" >&2
    exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds}s without a crash"
