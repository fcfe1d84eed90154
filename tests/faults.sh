#!/usr/bin/env bash
# The fault suite: every test that README.md's "What we test" table names against a row of
# the reliability checklist, run as one command.
#
#   tests/faults.sh            quick mode: the iteration counts `.ci/run` runs with the
#                              rest of the suite (69 tests)
#   tests/faults.sh --soak     the checklist's counts (LIFEBOAT_SOAK=1): 1,000 agent kills
#                              for A1, 200 power cuts for A2, 100 controller kills for A4,
#                              partitions of 2 and 10 minutes for A10; hours
#   tests/faults.sh --list     the tests, without running them
#
# Extra arguments go to `cargo nextest run` (e.g. `--test-threads 1`). One row alone, at
# any count: `LIFEBOAT_A1_ITERATIONS=50 cargo nextest run -p lifeboat-tests a1_`. Each test
# prints its row's figure on standard error; they are gathered in target/faults-figures.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=quick
case "${1:-}" in
    --soak) mode=soak; shift ;;
    --list) mode=list; shift ;;
esac

# The table's test paths (`file::test`, `module::tests::test`), each matched by its last
# segment at the end of a test's name.
tests=$(sed -n '/^## What we test/,/^Not yet/p' README.md |
    grep -o '`[a-z_0-9]*::[a-z_0-9:]*`' | tr -d '`' | sort -u)
filter=""
for t in $tests; do
    filter+="${filter:+ | }test(/(^|::)${t##*::}\$/)"
done

# Every name in the table must be a test that exists: the table is the suite's index.
listed=$(cargo nextest list --workspace -E "$filter" --message-format oneline 2>/dev/null |
    awk '{print $2}')
missing=0
for t in $tests; do
    if ! grep -qE "(^|::)${t##*::}\$" <<<"$listed"; then
        echo "README.md names $t, which is not a test of the workspace" >&2
        missing=1
    fi
done
[ "$missing" = 0 ] || exit 1

if [ "$mode" = list ]; then
    echo "$listed"
    exit 0
fi

cargo build --workspace --bins
if [ "$mode" = soak ]; then
    export LIFEBOAT_SOAK=1
fi
mkdir -p target
# `final`: each passing test's output once, at the end, so its figure lines can be kept.
cargo nextest run --workspace --no-fail-fast -E "$filter" --success-output final \
    --failure-output final "$@" 2>&1 | tee target/faults.log
status=${PIPESTATUS[0]}
grep -E '^\s*[ABCD][0-9]+[ (:,]' target/faults.log | sed 's/^\s*//' | awk '!seen[$0]++' >target/faults-figures.txt || true
echo "fault suite ($mode): $(wc -l <target/faults-figures.txt) figures in target/faults-figures.txt" >&2
exit "$status"
