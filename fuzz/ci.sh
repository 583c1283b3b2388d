#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, starting from the committed seeds
# (fuzz/seeds/<target>/: inputs that reached new code, kept as regression
# inputs). Fails on the first crash, panic, leak, timeout or out-of-memory.
#
#   fuzz/ci.sh              # each target FUZZ_SECONDS (default 30) seconds
#   FUZZ_SECONDS=600 fuzz/ci.sh mqtt_decode amqp_frame
#
# Uses the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the
# sanitizer flags. Installs cargo-fuzz from crates.io if it is missing.
# New interesting inputs land in fuzz/corpus/<target>/ (git-ignored); copy
# the ones worth keeping into fuzz/seeds/<target>/ (`cargo fuzz cmin` first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

SECONDS_EACH=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> cargo fuzz build (${targets[*]})"
for t in "${targets[@]}"; do
    cargo fuzz build -O "$t"
done

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "==> fuzz $t for ${SECONDS_EACH}s"
    # -rss_limit_mb: an input that makes a decoder allocate what the input
    # cannot hold shows up as out-of-memory, a failure like a crash.
    if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="${SECONDS_EACH}" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 2>"corpus/$t.log"; then
        grep -E '^stat::number_of_executed_units|^Done' "corpus/$t.log" | tr '\n' ' '
        echo
    else
        failed+=("$t")
        tail -n 40 "corpus/$t.log"
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]} (reproducers in fuzz/artifacts/<target>/)"
    exit 1
fi
echo "fuzz: ok: ${#targets[@]} targets, ${SECONDS_EACH}s each"
