#!/bin/sh
# demo-sh.sh MOUNTPOINT: the World Runtime scenario in the sh session, for
# any image (the busybox one too), driven through a mounted worldfs with
# file operations only; every step is checked, none unmounts.  The Python
# version, as the World Runtime's authors wrote it, is contrib/demo.sh.
#
# create universe -> load a market into its session -> balances -> snapshot
# -> push down into nash/optimal/chaos -> one strategy per verse in parallel
# -> isolation -> resolve optimal -> WEV checked -> pull-up -> registry.

# The code sent to the guest is in single quotes on purpose.
# shellcheck disable=SC2016

set -u
LC_ALL=C
export LC_ALL

usage() {
	echo "usage: sh contrib/demo-sh.sh MOUNTPOINT   (a mounted worldfs)" >&2
	exit 2
}
[ $# -eq 1 ] || usage
M=${1%/}
U=$M/universe
VERSES="nash optimal chaos"
# shellcheck source=contrib/demo-lib.sh
. "$(dirname "$0")/demo-lib.sh"

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

step "copy the market in through the guest's files (mkdir, printf > universe/fs/tmp/universe/market)"
mkdir "$U/fs/tmp/universe" || die "mkdir $U/fs/tmp/universe failed"
printf 'price=100\nsupply=1000\n' >"$U/fs/tmp/universe/market" || die "writing $U/fs/tmp/universe/market failed"
say "universe/diff:"
get "$U/diff" | sed 's/^/    | /'
expect "diff of universe" "$(get "$U/diff")" "$(printf 'A\t/tmp/universe\nA\t/tmp/universe/market')"

step "load a universe into its session (exec: variables, a function, the market's file)"
run "$U" 'cd /tmp/universe
PRICE=100
SUPPLY=1000
# settle VERSE: record and print the payoff a strategy left in A and B
settle() {
	echo "$1 alice=$A bob=$B price=$PRICE" > "ledger-$1"
	echo "payoff alice=$A bob=$B"
}
echo "market in $(pwd):"
cat market'
say "the session keeps it:"
run "$U" 'command -v settle >/dev/null && f=yes || f=no
echo "PRICE=$PRICE cwd=$(pwd) settle()=$f"'
expect "session state" "$(get "$U/stdout")" "PRICE=100 cwd=/tmp/universe settle()=yes"

step "set the owners' balances"
put "$U/balance/alice" 100
put "$U/balance/bob" 50
show "$U/balance/alice" "$U/balance/bob"

step "snapshot it as 'genesis' (mkdir snapshot/genesis)"
t=$(now_ns)
mkdir "$U/snapshot/genesis" || die "mkdir $U/snapshot/genesis failed"
say "mkdir returned after $(ms_since "$t") ms"
show "$U/snapshot/genesis/info" "$U/snapshot/genesis/balance/alice" "$U/snapshot/genesis/balance/bob"

step "push down into the verses nash, optimal, chaos (echo ... > push_down)"
branch_verses "$U"
say "each verse starts with the parent's ledger:"
for v in $VERSES; do
	expect "ledger of $v" "$(ledger "$U/$v")" "alice=100 bob=50"
	say "$v: $(ledger "$U/$v")"
done

step "set the probabilities 0.45 / 0.35 / 0.20"
put "$U/nash/prob" 0.45
put "$U/optimal/prob" 0.35
put "$U/chaos/prob" 0.20
show "$U/nash/prob" "$U/optimal/prob" "$U/chaos/prob"
say "a write that would make them sum above 1 is refused:"
err=$({ printf '0.5\n' | cat > "$U/chaos/prob"; } 2>&1) &&
	die "prob 0.5 for chaos was accepted although the sum would be 1.3"
case $err in
*"Invalid argument"*) say "echo 0.5 > chaos/prob: Invalid argument (EINVAL)" ;;
*) die "echo 0.5 > chaos/prob failed, but not with EINVAL: $err" ;;
esac
expect "prob of chaos" "$(get "$U/chaos/prob")" 0.2

step "gf3 of universe (sum of the trits mod 3)"
show "$U/gf3"
expect "gf3" "$(get "$U/gf3")" 0

step "run a different strategy in each verse, in parallel"
# Each strategy starts from the verse's balances and uses PRICE and settle()
# that the verse inherited from the universe's session.
code_for() {
	case $1 in
	nash) rule='A=$((A + PRICE / 10)); B=$((B + PRICE / 10))' ;;
	optimal) rule='A=$((A + PRICE / 4)); B=$((B + PRICE / 5))' ;;
	chaos) rule='A=$((A / 2)); B=$((B * 2))' ;;
	esac
	a=$(get "$U/$1/balance/alice") || exit 1
	b=$(get "$U/$1/balance/bob") || exit 1
	echo "A=$a B=$b; $rule; settle $1"
}
exec_parallel "$U"
for v in $VERSES; do
	expect "status of $v" "$(get "$U/$v/status")" 0
	out=$(get "$U/$v/stdout") || exit 1
	a=$(printf '%s\n' "$out" | sed -n 's/^payoff alice=\([0-9][0-9]*\) bob=[0-9][0-9]*$/\1/p')
	b=$(printf '%s\n' "$out" | sed -n 's/^payoff alice=[0-9][0-9]* bob=\([0-9][0-9]*\)$/\1/p')
	if [ -z "$a" ] || [ -z "$b" ]; then
		die "universe/$v/stdout has no payoff line: $out"
	fi
	put "$U/$v/balance/alice" "$a"
	put "$U/$v/balance/bob" "$b"
	say "$v: $out -> balance/alice=$a balance/bob=$b"
done
expect "ledger of nash" "$(ledger "$U/nash")" "alice=110 bob=60"
expect "ledger of optimal" "$(ledger "$U/optimal")" "alice=125 bob=70"
expect "ledger of chaos" "$(ledger "$U/chaos")" "alice=50 bob=100"
expect "ledger of universe" "$(ledger "$U")" "alice=100 bob=50"
say "universe keeps its own ledger: $(ledger "$U")"

step "what each verse changed since the push-down (cat VERSE/diff)"
# (show uses $v: this loop has a name of its own)
for verse in $VERSES; do
	show "$U/$verse/diff"
	expect "diff of $verse" "$(get "$U/$verse/diff")" "$(printf 'A\t/tmp/universe/ledger-%s' "$verse")"
	show "$U/$verse/fs/tmp/universe/ledger-$verse"
done

step "isolation: each verse sees only the file it wrote itself"
probe='for f in ledger-nash ledger-optimal ledger-chaos; do
	[ -e "$f" ] && printf "%s " "$f"
done
echo "(PRICE=$PRICE)"'
for v in $VERSES; do
	say "in $v:"
	run "$U/$v" "$probe"
	expect "files seen in $v" "$(get "$U/$v/stdout")" "ledger-$v (PRICE=100)"
done
say "in universe:"
run "$U" "$probe"
expect "files seen in universe" "$(get "$U/stdout")" "(PRICE=100)"

expected_wev "$U"

step "resolve with outcome optimal (echo optimal > universe/resolve)"
t=$(now_ns)
put "$U/resolve" optimal
say "resolved after $(ms_since "$t") ms"
show "$U/resolve"
expect "resolve" "$(get "$U/resolve")" optimal

step "state of each verse"
for v in $VERSES; do
	say "$v: state=$(get "$U/$v/state") trit=$(get "$U/$v/trit") prob=$(get "$U/$v/prob") $(ledger "$U/$v")"
	say "    last stdout: $(get "$U/$v/stdout")"
done
expect "state of nash" "$(get "$U/nash/state")" collapsed
expect "state of optimal" "$(get "$U/optimal/state")" won
expect "state of chaos" "$(get "$U/chaos/state")" collapsed
say "a collapsed verse refuses new code:"
err=$({ printf 'true\n' | cat > "$U/nash/exec"; } 2>&1) &&
	die "exec in collapsed verse nash was accepted"
case $err in
*"Read-only file system"*) say "echo true > nash/exec: Read-only file system (EROFS)" ;;
*) die "exec in collapsed nash failed, but not with EROFS: $err" ;;
esac

step "WEV (cat universe/wev)"
show "$U/wev"
expect "WEV" "$(get "$U/wev")" "$expect_wev"
say "WEV = $expect_wev = the balances of nash + chaos"

step "the parent's balances after the pull-up"
show "$U/balance/alice" "$U/balance/bob"
expect "ledger of universe" "$(ledger "$U")" "$(ledger "$U/optimal")"
say "universe now holds optimal's ledger; the snapshot keeps the old one:"
expect "ledger of genesis" "$(ledger "$U/snapshot/genesis")" "alice=100 bob=50"
say "snapshot/genesis: $(ledger "$U/snapshot/genesis")"

records

printf '\ndemo: all %d steps passed; universe is left in place under %s\n' "$n" "$M"
