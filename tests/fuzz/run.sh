#!/bin/sh
# run.sh: one libFuzzer target for a bounded time, from its seed corpus.
#
#   sh run.sh FUZZER SEEDS WORKDIR SECONDS [DICT]
#
# The seeds are copied into WORKDIR/corpus, where libFuzzer also keeps what
# it finds (the source tree is only read); a crash, leak, sanitizer report
# or broken invariant is saved under WORKDIR/artifacts/ and the exit
# status is not 0.  FUZZ_SECONDS overrides SECONDS, for a longer run by
# hand (with meson test --timeout-multiplier 0).  Reproduce a find with
# FUZZER WORKDIR/artifacts/crash-...
set -eu

[ $# -ge 4 ] || { echo "usage: sh run.sh FUZZER SEEDS WORKDIR SECONDS [DICT]" >&2; exit 2; }
fuzzer=$1
seeds=$2
work=$3
seconds=${FUZZ_SECONDS:-$4}
dict=${5:-}

mkdir -p "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/"
set -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix="$work/artifacts/"
[ -z "$dict" ] || set -- "$@" -dict="$dict"
echo "run.sh: $fuzzer $* $work/corpus"
exec "$fuzzer" "$@" "$work/corpus"
