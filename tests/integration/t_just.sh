#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_just.sh: every recipe of contrib/justfile (the World Runtime's
# commands, `just world-runtime-*`) against a mount.  A recipe this test
# does not run fails it, so a new one comes with its check.
. "$(dirname "$0")/lib.sh"

command -v just >/dev/null 2>&1 || bail "just is missing (sh contrib/bootstrap.sh installs it)"
J="$WORLDFS_SRC/contrib/justfile"
# rj RECIPE [ARG...]: run a recipe on our mount (noting it as run: the
# calls are in subshells).
rj() {
	echo "$1" >>"$wfs_tmp/ran"
	WORLDFS_MNT=$MNT just -f "$J" "$@"
}

wfs_mount
expect_eq "the recipes" "default world-runtime-branch world-runtime-branches world-runtime-create world-runtime-entities world-runtime-exec world-runtime-metrics world-runtime-pull-up world-runtime-push-down world-runtime-resolutions world-runtime-snapshot" \
	"$(just -f "$J" --summary)"
expect_match "default lists them" 'world-runtime-push-down WORLD' "$(rj default)"
expect_match "create universe" '^universe: running' "$(rj world-runtime-create universe)"
expect_eq "exec prints stdout and exits with the status" "42 3" \
	"$( (rj world-runtime-exec universe 'echo $((6 * 7)); exit 3'; echo "$?") | tr '\n' ' ' | sed 's/ $//')"
expect_ok "a balance" wfs_put "$MNT/universe/balance/alice" 100
expect_match "snapshot" '"size_bytes"' "$(rj world-runtime-snapshot universe s0)"
out=$(rj world-runtime-push-down universe)
expect_match "push-down: nash" 'universe/nash: trit -1, prob 0.45' "$out"
expect_match "push-down: chaos" 'universe/chaos: trit 1, prob 0.2' "$out"
expect_match "push-down: balanced" 'universe: gf3 0' "$out"
expect_eq "push-down is one push_down row with three children" 'push_down|3|0' \
	"$(sqlite3 "$STATE/worldfs.db" "select branch_type, json_array_length(child_entity_ids), gf3_sum from world_branches")"
expect_match "branch from the live state" '^universe/extra: trit -1, state running' \
	"$(rj world-runtime-branch universe extra)"
expect_match "branch from a snapshot" '^universe/snapshot/s0/v: trit -1, state running' \
	"$(rj world-runtime-branch universe v s0)"
expect_ok "optimal earns" wfs_put "$MNT/universe/optimal/balance/alice" 130
out=$(rj world-runtime-pull-up universe optimal)
expect_match "pull-up: the winner" 'universe/optimal: won' "$out"
expect_match "pull-up: a loser" 'universe/nash: collapsed' "$out"
expect_match "pull-up: WEV of nash, chaos and extra (100 each)" 'universe: wev 300' "$out"
expect_match "pull-up: the winner's balance moved up" 'universe: balance alice 130' "$out"
expect_match "metrics: push-down and the two branches are push_downs" '"push_down": *\{"n": *3' \
	"$(rj world-runtime-metrics)"
expect_eq "entities: universe, 4 verses, s0, v" 7 "$(rj world-runtime-entities | grep -c '^{')"
expect_match "branches" '"branch_type": *"push_down"' "$(rj world-runtime-branches)"
expect_match "resolutions" '"winning_verse": *"optimal"' "$(rj world-runtime-resolutions)"
missing=
for r in $(just -f "$J" --summary); do
	case " $(tr '\n' ' ' <"$wfs_tmp/ran") " in
	*" $r "*) ;;
	*) missing="$missing $r" ;;
	esac
done
expect_eq "every recipe was run" "" "$missing"

for v in nash optimal chaos extra snapshot/s0/v snapshot/s0; do
	expect_ok "rmdir universe/$v" rmdir "$MNT/universe/$v"
done
expect_ok "rmdir universe" rmdir "$MNT/universe"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
