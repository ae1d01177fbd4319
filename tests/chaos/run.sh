#!/usr/bin/env bash
# Long rill-chaos runs: tests/chaos/run.sh [seconds] [seed] [extra rill-chaos options...]
#   seconds  how long to inject faults (default 3600)
#   seed     default: drawn from the clock (printed, to replay the run)
# Builds rilld, rill-powerfs and rill-chaos (release), runs one rill-chaos
# as root, and exits with its status (0: no violation, 1: violations,
# 2: the run could not be carried out). Its stderr is also kept in
# /var/tmp/rill-chaos-<seed>.log; the run's files (ack logs, event logs,
# fault history, rilld's log) stay in /var/tmp/rill-chaos-<seed>-<pid>/
# when it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${1:-3600}"
seed="${2:-$(( $(date +%s%N) % 1000000007 ))}"
shift $(( $# < 2 ? $# : 2 ))

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: rill-chaos mounts rill-powerfs (FUSE) and needs root" >&2
    exit 2
fi

cargo build --release -p rill-chaos -p rill-daemon -p rill-powerfs
log="/var/tmp/rill-chaos-${seed}.log"
echo "run.sh: seed ${seed}, ${seconds}s of faults; stderr also in ${log}" >&2
status=0
./target/release/rill-chaos --seed "${seed}" --duration "${seconds}s" "$@" 2> >(tee "${log}" >&2) || status=$?
echo "run.sh: exit status ${status} (replay: tests/chaos/run.sh ${seconds} ${seed} $*)" >&2
exit "${status}"
