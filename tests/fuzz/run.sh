#!/bin/sh
# run.sh: one libFuzzer target for a bounded time, from its seed corpus.
#
#   sh run.sh FUZZER NAME SRCDIR WORKDIR SECONDS
#
# The seeds, SRCDIR/corpus/NAME, are copied into WORKDIR/corpus, where
# libFuzzer also keeps what it finds (the source tree is only read); a
# crash, leak, sanitizer report or broken invariant is saved under
# WORKDIR/artifacts/ and the exit status is not 0.  SRCDIR/NAME.dict, if
# there is one, is libFuzzer's dictionary.  FUZZ_SECONDS overrides SECONDS,
# for a longer run by hand (with meson test --timeout-multiplier 0).
# Reproduce a find with: FUZZER WORKDIR/artifacts/crash-...
set -eu

[ $# -eq 5 ] || { echo "usage: sh run.sh FUZZER NAME SRCDIR WORKDIR SECONDS" >&2; exit 2; }
fuzzer=$1
seeds=$3/corpus/$2
dict=$3/$2.dict
work=$4
seconds=${FUZZ_SECONDS:-$5}

mkdir -p "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/"
# A find exits 1, not libFuzzer's 77, which meson takes for a skipped test.
set -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 \
	-print_final_stats=1 -artifact_prefix="$work/artifacts/"
[ ! -f "$dict" ] || set -- "$@" -dict="$dict"
echo "run.sh: $fuzzer $* $work/corpus"
exec "$fuzzer" "$@" "$work/corpus"
