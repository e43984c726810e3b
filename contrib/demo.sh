#!/bin/sh
# demo.sh MOUNTPOINT: the World Runtime example as its authors wrote it, in
# Python, driven through a mounted worldfs with file operations only; every
# step is checked, none unmounts.
#
#   cp universe.csv universe/fs/srv/   (the input, in through the guest's files)
#   world.execute_code("import pandas as pd; data = load_universe()")
#   snapshot "pre-event" -> branch nash, optimal, chaos from it
#   -> strategy = 'selfish' | 'cooperative' | 'random'; evolve()  (in parallel)
#   -> balances from each result -> what each verse changed (cat VERSE/diff)
#   -> resolve optimal -> WEV -> the records
#
# Needs an image with Python (the default, debian); the sh version of the
# scenario, for any image, is contrib/demo-sh.sh.

# The code sent to the guest is in single quotes on purpose.
# shellcheck disable=SC2016

set -u
LC_ALL=C
export LC_ALL

usage() {
	echo "usage: sh contrib/demo.sh MOUNTPOINT   (a mounted worldfs, image=debian)" >&2
	exit 2
}
[ $# -eq 1 ] || usage
M=${1%/}
U=$M/universe
S=$U/snapshot/pre-event
VERSES="nash optimal chaos"
# shellcheck source=contrib/demo-lib.sh
. "$(dirname "$0")/demo-lib.sh"

# py DIR CODE: run CODE in the Python session of the world at DIR.
py() {
	run "$1" "#!python3
$2"
}

# strategy_of VERSE
strategy_of() {
	case $1 in
	nash) echo selfish ;;
	optimal) echo cooperative ;;
	chaos) echo random ;;
	esac
}

# --------------------------------------------------------------------------

step "check that $M is a worldfs mount"
[ -r "$M/.worldfs/version" ] || die "$M/.worldfs/version: not readable; mount worldfs on $M first"
show "$M/.worldfs/version"
[ ! -e "$U" ] || die "$U exists already: rmdir its verses and it, or use a fresh mount"

step "create the world 'universe' (mkdir)"
t=$(now_ns)
mkdir "$U" || die "mkdir $U failed"
say "mkdir returned after $(ms_since "$t") ms"
show "$U/state" "$U/trit" "$U/prob"
printf '#!python3\nimport sys\n' | cat >"$U/exec" 2>/dev/null
if [ "$(get "$U/status")" = 127 ]; then
	die "this world has no python3 ($(get "$U/stderr")): mount with image=debian, or run contrib/demo-sh.sh"
fi

step "copy the universe's input in: cp universe.csv universe/fs/srv/"
# 100,000 agents, each held by an owner, with a balance and a trust score.
csv=$(mktemp "${TMPDIR:-/tmp}/worldfs-demo-universe.XXXXXX") || die "mktemp failed"
awk 'BEGIN {
	srand(7); split("alice bob carol", owner, " ")
	print "agent,owner,balance,trust"
	for (i = 0; i < 100000; i++)
		printf "%d,%s,%d,%.6f\n", i, owner[1 + int(rand() * 3)], 10 + int(rand() * 90), rand()
}' >"$csv"
t=$(now_ns)
cp "$csv" "$U/fs/srv/universe.csv" || die "cp into $U/fs/srv/ failed"
say "$(wc -c <"$csv") bytes copied in $(ms_since "$t") ms"
rm -f "$csv"
show "$U/diff"
expect "diff of universe" "$(get "$U/diff")" "$(printf 'A\t/srv/universe.csv')"

step "load the universe in its Python session: import pandas as pd; data = load_universe()"
t=$(now_ns)
py "$U" 'import json
import numpy as np
import pandas as pd

def load_universe(path="/srv/universe.csv"):
    """The agents the host copied in through fs/."""
    return pd.read_csv(path)

def evolve(rounds=12):
    """Play the global `strategy` on the global `data`; then print the
    balance of each owner, one owner=amount line each."""
    global data
    d = data.copy()
    for _ in range(rounds):
        if strategy == "selfish":        # everyone keeps all, and pays friction
            d["balance"] = (d.balance * 0.97).round().astype(int)
        elif strategy == "cooperative":  # trusted agents pool, and gain
            d["balance"] = (d.balance * np.where(d.trust > 0.3, 1.04, 0.99)).round().astype(int)
        elif strategy == "random":       # anything goes
            d["balance"] = (d.balance * np.random.uniform(0.7, 1.3, len(d))).round().astype(int)
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
    data = d
    balances = {o: int(a) for o, a in data.groupby("owner").balance.sum().items()}
    with open("/srv/result.json", "w") as f:
        json.dump({"strategy": strategy, "balances": balances}, f)
    for owner, amount in balances.items():
        print(f"{owner}={amount}")

data = load_universe()
print(f"{len(data)} agents, pandas {pd.__version__}")
print(data.groupby("owner").balance.sum().to_string())'
say "ran after $(ms_since "$t") ms"
say "the session keeps it:"
py "$U" 'print(type(data).__name__, len(data), callable(evolve))'
expect "session state" "$(get "$U/stdout")" "DataFrame 100000 True"

step "set the owners' balances from the universe's data"
py "$U" 'for owner, amount in data.groupby("owner").balance.sum().items():
    print(f"{owner}={amount}")'
for kv in $(get "$U/stdout"); do
	put "$U/balance/${kv%%=*}" "${kv#*=}"
done
show "$U/balance/alice" "$U/balance/bob" "$U/balance/carol"
start_ledger=$(ledger "$U")

step "snapshot it at the decision point: mkdir universe/snapshot/pre-event"
t=$(now_ns)
mkdir "$S" || die "mkdir $S failed"
say "mkdir returned after $(ms_since "$t") ms"
show "$S/info"
expect "ledger of pre-event" "$(ledger "$S")" "$start_ledger"

step "push down the verses nash, optimal, chaos from the snapshot (echo ... > push_down)"
branch_verses "$S"
show "$S/gf3"
expect "gf3" "$(get "$S/gf3")" 0
say "each verse starts with the snapshot's ledger and its Python objects:"
for v in $VERSES; do
	expect "ledger of $v" "$(ledger "$S/$v")" "$start_ledger"
	py "$S/$v" 'print(len(data), int(data.balance.sum()))'
done

step "set the probabilities 0.45 / 0.35 / 0.20"
put "$S/nash/prob" 0.45
put "$S/optimal/prob" 0.35
put "$S/chaos/prob" 0.20
show "$S/nash/prob" "$S/optimal/prob" "$S/chaos/prob"

step "evolve each verse with its own strategy, in parallel"
code_for() {
	printf '#!python3\nstrategy = %s; evolve()\n' "'$(strategy_of "$1")'"
}
exec_parallel "$S"
for v in $VERSES; do
	expect "status of $v" "$(get "$S/$v/status")" 0
	for kv in $(get "$S/$v/stdout"); do
		case $kv in
		alice=[0-9]* | bob=[0-9]* | carol=[0-9]*) put "$S/$v/balance/${kv%%=*}" "${kv#*=}" ;;
		*) die "$v printed '$kv', not owner=amount: $(get "$S/$v/stderr")" ;;
		esac
	done
	say "$v: $(ledger "$S/$v")"
done
[ "$(ledger_sum "$S/optimal")" -gt "$(ledger_sum "$S/nash")" ] ||
	die "cooperation ($(ledger_sum "$S/optimal")) did not beat selfishness ($(ledger_sum "$S/nash"))"
say "cooperative (optimal) ends with $(ledger_sum "$S/optimal"), selfish (nash) with $(ledger_sum "$S/nash")"

step "what each verse changed since the push-down (cat VERSE/diff), and its result (cat VERSE/fs/srv/result.json)"
# (show uses $v: this loop has a name of its own)
for verse in $VERSES; do
	say "$verse:"
	show "$S/$verse/diff"
	expect "diff of $verse" "$(get "$S/$verse/diff")" "$(printf 'A\t/srv/result.json')"
	show "$S/$verse/fs/srv/result.json"
	case $(get "$S/$verse/fs/srv/result.json") in
	*"\"strategy\": \"$(strategy_of "$verse")\""*) ;;
	*) die "$verse's result.json does not hold its own strategy" ;;
	esac
done

step "isolation: each verse evolved only its own data"
for v in $VERSES; do
	py "$S/$v" 'print(strategy, int(data.balance.sum()))'
	expect "data of $v" "$(get "$S/$v/stdout")" "$(strategy_of "$v") $(ledger_sum "$S/$v")"
done
say "in universe (never evolved):"
py "$U" 'print("strategy" in dir(), int(data.balance.sum()))'
expect "universe's data" "$(get "$U/stdout")" "False $(ledger_sum "$U")"

expected_wev "$S"

step "resolve with the oracle's outcome: echo optimal > universe/snapshot/pre-event/resolve"
t=$(now_ns)
put "$S/resolve" optimal
say "resolved after $(ms_since "$t") ms"
for v in $VERSES; do
	say "$v: state=$(get "$S/$v/state") trit=$(get "$S/$v/trit") prob=$(get "$S/$v/prob") $(ledger "$S/$v")"
done
expect "state of nash" "$(get "$S/nash/state")" collapsed
expect "state of optimal" "$(get "$S/optimal/state")" won
expect "state of chaos" "$(get "$S/chaos/state")" collapsed

step "WEV (cat universe/snapshot/pre-event/wev)"
show "$S/wev"
expect "WEV" "$(get "$S/wev")" "$expect_wev"
say "WEV = $expect_wev = the balances of nash + chaos"
say "the snapshot's ledger is optimal's now (the pull-up); universe keeps its own:"
expect "ledger of pre-event" "$(ledger "$S")" "$(ledger "$S/optimal")"
expect "ledger of universe" "$(ledger "$U")" "$start_ledger"
say "pre-event: $(ledger "$S")"
say "universe:  $(ledger "$U")"

records

printf '\ndemo: all %d steps passed; universe is left in place under %s\n' "$n" "$M"
