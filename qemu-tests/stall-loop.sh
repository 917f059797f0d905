#!/bin/bash
# The node-stall loop (docs/testing.md, "Node stalls"): nested scenarios one at a time, first
# attempt only, the stall watch as configured; one line per run in $OUT (time, watch, scenario,
# exit status, kicks, wall seconds, the scenario's own seconds). Failed or kicked runs keep
# their log and test-logs folder beside $OUT.
#
# usage: qemu-tests/stall-loop.sh ROUNDS "SCENARIO..." [WATCH]   (WATCH=0 turns the watch off)
# e.g.   qemu-tests/stall-loop.sh 20 "engine-boot engine-restore engine-serial engine-increments engine-failover"
set -u
cd "$(dirname "$0")/.."
rounds=$1; names=$2; watch=${3:-1}
out=${OUT:-target/stall-loop/results.tsv}
mkdir -p "$(dirname "$out")"
keep=$(dirname "$out")
for r in $(seq 1 "$rounds"); do
  for n in $names; do
    start=$(date +%s.%N)
    HAVMS_STALL_WATCH=$watch HAVMS_QEMU_ATTEMPTS=1 target/release/qemu-tests run \
      --artifacts "$PWD/target/havms" "$n" > "$keep/last.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    kicks=$(grep -c 'lost wakeup' "$keep/last.log")
    secs=$(grep -oE "^PASS $n \(([0-9.]+)s\)" "$keep/last.log" | grep -oE '[0-9.]+')
    printf "%s\t%s\t%s\t%s\t%s\t%.1f\t%s\n" "$(date +%H:%M:%S)" "$watch" "$n" "$rc" "$kicks" \
      "$(echo "$end - $start" | bc)" "$secs" >> "$out"
    if [ "$rc" -ne 0 ] || [ "$kicks" -ne 0 ]; then
      stamp=$(date +%H%M%S)
      cp "$keep/last.log" "$keep/keep-$stamp-$n.log"
      cp -r "target/havms/test-logs/$n" "$keep/keep-$stamp-$n.d" 2>/dev/null
    fi
  done
done
