#!/bin/sh
# The long fuzz run: at least 1,000,000 generated inputs across the fuzz tests, niced so it can run beside
# other work. Usage: tests/fuzz_long.sh [total-inputs] (default 1000000); log in $FUZZ_LOG (/tmp/fuzz_long.log).
# Tests run one at a time, so the log says how many inputs have passed so far.
set -u
cd "$(dirname "$0")/.."
total=${1:-1000000}
log=${FUZZ_LOG:-/tmp/fuzz_long.log}
ids=$(python -m pytest -q --collect-only -p no:cacheprovider tests/test_fuzz.py tests/test_fuzz_network.py 2>/dev/null | grep '::')
tests=$(echo "$ids" | wc -l)
per_test=$(( (total + tests - 1) / tests ))
echo "$(date -u +%FT%TZ) fuzz_long: $tests tests x $per_test examples = $(( tests * per_test )) inputs" >>"$log"
done_inputs=0
failed=0
for id in $ids; do
    if FUZZ_EXAMPLES=$per_test nice -n 19 python -m pytest "$id" -q -p no:cacheprovider >>"$log" 2>&1; then
        done_inputs=$(( done_inputs + per_test ))
        echo "$(date -u +%FT%TZ) fuzz_long: passed $id; inputs so far: $done_inputs" >>"$log"
    else
        failed=$(( failed + 1 ))
        echo "$(date -u +%FT%TZ) fuzz_long: FAILED $id" >>"$log"
    fi
done
echo "$(date -u +%FT%TZ) fuzz_long: done, $done_inputs inputs passed, $failed tests failed" >>"$log"
[ "$failed" -eq 0 ]
