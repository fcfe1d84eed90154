#!/usr/bin/env bash
# B2 as a timed soak: every fuzz target (or those named) run for SECONDS each, from the
# corpus kept in fuzz/corpus/TARGET, then that corpus minimized again (`cargo fuzz cmin`)
# so what the run found is kept in the repository and replayed on every test run
# (`refusals::b2_every_kept_fuzz_input_is_refused_or_parsed_soundly`).
#
#   cargo install cargo-fuzz --locked
#   fuzz/soak.sh 600                   # ten minutes per target
#   fuzz/soak.sh 3600 tree_parse       # one target for an hour
#
# Prints per target: executions, executions per second, coverage (libFuzzer's `cov` and
# `ft`), kept inputs before and after, and the crashes found (their inputs are left in
# fuzz/artifacts/TARGET; the script then exits 1).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/soak.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
    targets=(codec_decode envelope_parse pack_index pack_salvage tree_parse)
fi
cargo fuzz build -s none
crashed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "corpus/$t" -type f | wc -l)
    log=$(mktemp)
    # -rss_limit_mb and -timeout: the checklist's limits (2 GiB, 10 s per input).
    # New inputs go to the first directory; regressions/ (inputs that once broke the
    # target, kept by hand) is read as seeds and never minimized away.
    seeds=()
    [ -d "regressions/$t" ] && seeds=("regressions/$t")
    if ! cargo fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        crashed=1
        echo "$t: CRASH, input kept in fuzz/artifacts/$t:" >&2
        grep -E 'ERROR|panicked|Test unit written' "$log" | head -5 >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    cargo fuzz cmin -s none "$t" "corpus/$t" >/dev/null 2>&1
    after=$(find "corpus/$t" -type f | wc -l)
    echo "B2 $t: ${seconds} s, ${execs:-?} executions (${rate:-?}/s), ${cov:-no coverage line}, kept inputs $before -> $after (minimized)"
    rm -f "$log"
done
exit "$crashed"
