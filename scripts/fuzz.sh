#!/usr/bin/env bash
# Fuzzes every parser of outside bytes in Rill (the cargo-fuzz targets in
# fuzz/fuzz_targets/: control messages, wire framing, frames, ring
# contents, segment files, the segment index, rilld.toml, stream.toml).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGETs to all of them
# (`scripts/fuzz.sh 0 --list` lists them). For each target: first the
# saved crash inputs in fuzz/regressions/<target>/ are run once (each must
# pass), then the fuzzer runs for SECONDS_PER_TARGET on the corpus in
# fuzz/corpus/<target>/ (committed seeds are seed-*; what the fuzzer adds
# there is ignored by git). One fuzzer process at a time, single-threaded
# (libFuzzer's default mode; -jobs/-workers would only add a supervising
# process). Prints per target the runs, the CPU seconds and the verdict;
# exits 1 if any target crashed (panic, overflow, out-of-bounds access,
# leak, out of memory, or a timeout of 10 s on one input): the input is
# saved under fuzz/artifacts/<target>/ and its stack printed.
#
# CI smoke run: `scripts/fuzz.sh 10`: about 2 minutes for the 10 targets
# once built. The first build (every dependency instrumented, rilld's
# included) takes 6 minutes on 2 busy cores (about 410 CPU-seconds), and
# installing cargo-fuzz on a fresh machine one more.
#
# Needs the nightly toolchain (rustup) and cargo-fuzz, which is installed
# (`cargo install cargo-fuzz --locked`) if missing. Builds into
# $CARGO_TARGET_DIR, default /tmp/fuzz-target (never the workspace's
# target/). Extra libFuzzer flags: FUZZ_FLAGS="-seed=1 ...".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/fuzz-target}"
SECONDS_PER_TARGET="${1:-60}"
shift || true
case "$SECONDS_PER_TARGET" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

ALL=(protocol_request protocol_response wire_recv frame_parse ring_read store_segment store_recover store_index config_rilld stream_meta)
if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${ALL[@]}"
  exit 0
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  [ -f "$FUZZ/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (have: ${ALL[*]})" >&2; exit 2; }
done

# Largest input per target: enough for its format, small enough to fuzz
# fast (protocol messages, frames and configuration files are small; a
# segment or stream directory needs a few batches).
max_len() {
  case "$1" in
    store_segment|store_recover|store_index) echo 16384 ;;
    protocol_request|protocol_response|wire_recv) echo 8192 ;;
    stream_meta) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

# --- toolchain -------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/rustup" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (about a minute)" >&2
  # Its own target dir, so the build does not wait on ours.
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/cargo-fuzz-install" cargo install cargo-fuzz --locked
fi

# --- build -----------------------------------------------------------------
cd "$FUZZ"
build_start=$SECONDS
if [ ${#TARGETS[@]} -eq ${#ALL[@]} ]; then
  cargo +nightly fuzz build
else
  for t in "${TARGETS[@]}"; do cargo +nightly fuzz build "$t"; done
fi
echo "fuzz.sh: build took $((SECONDS - build_start)) s"
BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# --- run -------------------------------------------------------------------
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0:detect_leaks=1}"
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  corpus="$FUZZ/corpus/$t"
  artifacts="$FUZZ/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$LOGS/$t.log"
  verdict="ok"

  # Saved crash inputs must all pass now.
  regressions=()
  if [ -d "$FUZZ/regressions/$t" ]; then
    while IFS= read -r -d '' f; do regressions+=("$f"); done < <(find "$FUZZ/regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
  fi
  if [ ${#regressions[@]} -gt 0 ]; then
    if ! "$BIN/$t" -timeout=10 -rss_limit_mb=2048 "${regressions[@]}" >"$log" 2>&1; then
      echo "=== $t: a saved regression input fails again:" >&2
      grep -E "Running:|panicked|ERROR|SUMMARY|^ +#[0-9]+ " "$log" | head -40 >&2
      summary+=("$(printf '%-18s %10s %8s  %s' "$t" "-" "-" "REGRESSION FAILS (${#regressions[@]} inputs in fuzz/regressions/$t)")")
      failed=1
      continue
    fi
  fi

  dict=()
  [ -f "$FUZZ/dict/$t.dict" ] && dict=(-dict="$FUZZ/dict/$t.dict")
  TIMEFORMAT='%U %S'
  rc=0
  # shellcheck disable=SC2086
  { time "$BIN/$t" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "${dict[@]}" ${FUZZ_FLAGS:-} >"$log" 2>&1 || rc=$?; } 2>"$LOGS/$t.time"
  read -r user sys <"$LOGS/$t.time" || { user=0; sys=0; }
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$runs" ]; then
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  if [ "$rc" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    verdict="CRASH (exit $rc): ${artifact:-see log}"
    failed=1
    echo "=== $t crashed; the end of its log:" >&2
    tail -60 "$log" >&2
  fi
  summary+=("$(printf '%-18s %10s %8s  %s' "$t" "${runs:-?}" "$cpu" "$verdict")")
  echo "${summary[-1]}"
done

echo
printf '%-18s %10s %8s  %s\n' target runs cpu_s result
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: crashes found (inputs under fuzz/artifacts/; minimise with: cargo +nightly fuzz tmin TARGET INPUT)" >&2
  exit 1
fi
echo "fuzz.sh: no crash in ${#TARGETS[@]} target(s)"
