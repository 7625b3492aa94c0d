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
# One target per core at a time (FUZZ_JOBS): each libFuzzer run is one thread, and the
# whole set is bounded by seconds-per-target x targets / jobs.
jobs="${FUZZ_JOBS:-$(nproc)}"
mkdir -p fuzz/artifacts
run_one() {
  local t="$1" log="fuzz/artifacts/$1.log"
  mkdir -p "fuzz/corpus/$t"
  # fuzz/regressions/<target>/ (committed): inputs that once crashed, run first every time.
  local dirs=("fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  if cargo fuzz run --fuzz-dir fuzz -s none "$t" "${dirs[@]}" -- -max_total_time="$secs" -max_len=4096 \
       -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    echo "$t: ok, $runs inputs in ${secs}s" >"fuzz/artifacts/$t.result"
  else
    echo "$t: CRASH (see $log and fuzz/artifacts/$t/)" >"fuzz/artifacts/$t.result"
  fi
}
running=0
for t in "${targets[@]}"; do
  rm -f "fuzz/artifacts/$t.result"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
status=0
for t in "${targets[@]}"; do
  line=$(cat "fuzz/artifacts/$t.result" 2>/dev/null || echo "$t: CRASH (no result; see fuzz/artifacts/$t.log)")
  echo "fuzz: $line"
  case "$line" in
    *CRASH*) status=1; tail -40 "fuzz/artifacts/$t.log" >&2 ;;
  esac
done
exit $status
