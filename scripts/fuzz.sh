#!/usr/bin/env bash
# Bounded fuzzing of every cargo-fuzz target in fuzz/ (libFuzzer). Non-zero on a crash;
# the crashing input is left in fuzz/artifacts/<target>/ (turn it into a regression test,
# or keep it in fuzz/regressions/<target>/, which every run replays first).
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]   (default 30 s, every target)
# cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the stable toolchain build it.
# No sanitizer: the code under test is safe Rust; panics and debug assertions (overflow
# checks are on) are what the targets look for, and ASan would double the build time.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
cargo fuzz build --fuzz-dir fuzz -s none
summary=()
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  # fuzz/regressions/<target>/ (committed): inputs that once crashed, run first every time.
  dirs=("fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  if cargo fuzz run --fuzz-dir fuzz -s none "$t" "${dirs[@]}" -- -max_total_time="$secs" -max_len=4096 \
       -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    summary+=("$t: ok, $runs inputs in ${secs}s")
  else
    status=1
    summary+=("$t: CRASH (see $log and fuzz/artifacts/$t/)")
    tail -40 "$log" >&2
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
