#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_branch.sh: verses branched from the live state and from snapshots:
# trit cycle, gf3, isolation, inheritance, the branches log.
. "$(dirname "$0")/lib.sh"

wfs_mount
W=$MNT/w
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "exec: pre-branch state" wfs_exec "$W" 'V=pre; echo pre >/tmp/g'
expect_ok "w/balance/alice 10" wfs_put "$W/balance/alice" 10

# Live branches: trits -1, 0, +1 and gf3.
expect_ok "mkdir w/a" mkdir "$W/a"
expect_eq "a/trit" -1 "$(wfs_val "$W/a/trit")"
expect_eq "gf3 with a" -1 "$(wfs_val "$W/gf3")"
expect_ok "mkdir w/b" mkdir "$W/b"
expect_eq "b/trit" 0 "$(wfs_val "$W/b/trit")"
expect_eq "gf3 with a, b" -1 "$(wfs_val "$W/gf3")"
expect_ok "mkdir w/c" mkdir "$W/c"
expect_eq "c/trit" 1 "$(wfs_val "$W/c/trit")"
expect_eq "gf3 with a, b, c" 0 "$(wfs_val "$W/gf3")"
expect_eq "verse state" "running running running" \
	"$(wfs_vals "$W/a/state" "$W/b/state" "$W/c/state")"
expect_match "a/info is a verse with w as parent" '"entity_type": *"verse"' "$(wfs_val "$W/a/info")"
expect_eq "ls w shows the verses beside the table" "a b c" \
	"$(ls "$W" | grep -Ev '^(exec|stdout|stderr|status|state|info|trit|prob|gf3|balance|push_down|resolve|wev|snapshot|fs|diff)$' | tr '\n' ' ' | sed 's/ $//')"

# Probabilities: exact decimal sums.
expect_ok "a/prob 0.45" wfs_put "$W/a/prob" 0.45
expect_ok "b/prob 0.35" wfs_put "$W/b/prob" 0.35
expect_ok "c/prob 0.2 (sum exactly 1)" wfs_put "$W/c/prob" 0.2
expect_errno EINVAL wfs_put "$W/c/prob" 0.200000001

# Each verse starts from the pre-branch state ...
expect_eq "a sees the pre-branch state" "pre pre" "$(wfs_run "$W/a" 'echo "$V $(cat /tmp/g)"')"
expect_eq "b sees the pre-branch state" "pre pre" "$(wfs_run "$W/b" 'echo "$V $(cat /tmp/g)"')"
# ... and never sees another's later writes.
expect_ok "a writes" wfs_exec "$W/a" 'V=a; echo a >/tmp/g'
expect_eq "b does not see a's writes" "pre pre" "$(wfs_run "$W/b" 'echo "$V $(cat /tmp/g)"')"
expect_eq "w does not see a's writes" "pre pre" "$(wfs_run "$W" 'echo "$V $(cat /tmp/g)"')"
expect_ok "w writes" wfs_exec "$W" 'V=w2; echo w2 >/tmp/g'
expect_eq "a does not see the parent's later writes" "a a" "$(wfs_run "$W/a" 'echo "$V $(cat /tmp/g)"')"
expect_eq "c does not see the parent's later writes" "pre pre" "$(wfs_run "$W/c" 'echo "$V $(cat /tmp/g)"')"
expect_eq "each verse has its own stdout" "a a|pre pre|w2" \
	"$(wfs_val "$W/a/stdout")|$(wfs_val "$W/c/stdout")|$(wfs_run "$W" 'echo $V')"

# Copy-on-write memory: a verse holds only the guest pages it touched (no
# huge pages, no read-ahead around them), so a verse that ran a little costs
# a few MiB of its RAM file, not most of its 128 MiB.
if [ "${WFS_BACKEND:-vm}" = vm ] && grep -q '"ram": *"cow"' "$W/a/info"; then
	qa=$(wfs_json_num "$W/a/info" pid)
	ram_kib=$(awk '/\.ram$/ { m = 1; next } /^[0-9a-f]+-[0-9a-f]+ / { m = 0 }
		m && /^Rss:/ { print $2 }' "/proc/$qa/smaps" 2>/dev/null)
	hg=$(awk '/\.ram$/ { m = 1; next } m && /^VmFlags:/ { print / hg/ ? "hg" : "none"; m = 0 }' \
		"/proc/$qa/smaps" 2>/dev/null)
	expect_eq "a verse's guest RAM is not in huge pages" none "$hg"
	expect_ok "a verse holds under 16 MiB of its guest RAM (${ram_kib:-?} KiB)" \
		test "${ram_kib:-999999}" -lt 16384
fi

# Balances are inherited and then independent.
expect_eq "a inherits alice" 10 "$(wfs_val "$W/a/balance/alice")"
expect_ok "a/balance/alice 20" wfs_put "$W/a/balance/alice" 20
expect_ok "b/balance/bob 5" wfs_put "$W/b/balance/bob" 5
expect_eq "w/balance after verse writes" "alice=10" \
	"$(cd "$W/balance" && for o in *; do printf '%s=%s ' "$o" "$(cat "$o")"; done | sed 's/ $//')"
expect_eq "b keeps its own alice" 10 "$(wfs_val "$W/b/balance/alice")"
expect_errno ENOENT cat "$W/a/balance/bob"

# A snapshot, and a verse from it.
expect_ok "exec: state at snapshot time" wfs_exec "$W" 'V=snap; echo snap >/tmp/g'
expect_ok "mkdir w/snapshot/s1" mkdir "$W/snapshot/s1"
S=$W/snapshot/s1
expect_eq "snapshot dir mode" 700 "$(stat -c %a "$S")"
expect_eq "ls snapshot/s1" "balance gf3 info push_down resolve wev" "$(ls "$S" | tr '\n' ' ' | sed 's/ $//')"
expect_match "snapshot info has size_bytes" '"size_bytes": *[0-9]' "$(wfs_val "$S/info")"
expect_match "snapshot info has snapshot_time_ms" '"snapshot_time_ms": *[0-9]' "$(wfs_val "$S/info")"
expect_eq "snapshot keeps the balances" 10 "$(wfs_val "$S/balance/alice")"
expect_errno EACCES wfs_put "$S/balance/alice" 11
expect_eq "snapshot balances are read-only" 10 "$(wfs_val "$S/balance/alice")"
expect_eq "w keeps running after a snapshot" running "$(wfs_val "$W/state")"
expect_ok "exec: w changes after the snapshot" wfs_exec "$W" 'V=after; echo after >/tmp/g'
expect_ok "w/balance/alice 99 after the snapshot" wfs_put "$W/balance/alice" 99
expect_ok "mkdir w/snapshot/s1/v" mkdir "$S/v"
expect_eq "v sees the snapshot's state, not later changes" "snap snap" \
	"$(wfs_run "$S/v" 'echo "$V $(cat /tmp/g)"')"
expect_eq "v inherits the snapshot's balances" 10 "$(wfs_val "$S/v/balance/alice")"
expect_eq "v/trit: first verse of s1" -1 "$(wfs_val "$S/v/trit")"
expect_eq "s1/gf3" -1 "$(wfs_val "$S/gf3")"
expect_eq "w/gf3 does not count snapshot verses" 0 "$(wfs_val "$W/gf3")"
expect_eq "w sees its own later state" "after after" "$(wfs_run "$W" 'echo "$V $(cat /tmp/g)"')"
expect_errno EEXIST mkdir "$S"
expect_errno ENOENT mkdir "$W/snapshot/nosuch/v"
expect_errno ENOTEMPTY rmdir "$S"

# Two snapshots do not share later state.
expect_ok "mkdir w/snapshot/s2" mkdir "$W/snapshot/s2"
expect_eq "snapshots listed" "s1 s2" "$(ls "$W/snapshot" | tr '\n' ' ' | sed 's/ $//')"
expect_ok "rmdir a snapshot without verses" rmdir "$W/snapshot/s2"

# The logs.
branches=$(cat "$MNT/.worldfs/branches")
expect_eq ".worldfs/branches has one row per branch" 4 "$(printf '%s\n' "$branches" | grep -c '^{')"
expect_eq "fork branches" 3 "$(printf '%s\n' "$branches" | grep -c '"branch_type": *"fork"')"
expect_eq "snapshot branches" 1 "$(printf '%s\n' "$branches" | grep -c '"branch_type": *"snapshot"')"
expect_eq "rows carry snapshot_time_ms and gf3_sum" 4 \
	"$(printf '%s\n' "$branches" | grep '"snapshot_time_ms": *[0-9]' | grep -c '"gf3_sum": *-\{0,1\}[0-9]')"
expect_match "the third live branch records gf3_sum 0" '"gf3_sum": *0' "$(printf '%s\n' "$branches" | sed -n 3p)"
entities=$(cat "$MNT/.worldfs/entities")
expect_eq ".worldfs/entities: w, a, b, c, s1, v" 6 "$(printf '%s\n' "$entities" | grep -c '^{')"
expect_match ".worldfs/metrics counts branches" '"branches": *4' "$(cat "$MNT/.worldfs/metrics")"

expect_errno ENOTEMPTY rmdir "$W"
for v in "$S/v" "$W/a" "$W/b" "$W/c"; do
	expect_ok "rmdir ${v#"$MNT"/}" rmdir "$v"
done
expect_ok "rmdir w/snapshot/s1" rmdir "$S"
expect_ok "rmdir w" rmdir "$W"

# push_down: a set of verses from one instant of P, in one step, all or none.
P=$MNT/p
expect_ok "mkdir p" mkdir "$P"
expect_ok "p writes a file" wfs_exec "$P" 'echo before > /tmp/f; n=0'
expect_ok "push_down nash optimal chaos" wfs_put "$P/push_down" 'nash optimal:0.5 chaos:0.25'
expect_eq "the three verses are there" "chaos nash optimal" \
	"$(ls -d "$P"/*/ | xargs -n 1 basename | grep -v -x -e balance -e snapshot -e fs | tr '\n' ' ' | sed 's/ $//')"
expect_eq "their trits" "-1 0 1" "$(cat "$P/nash/trit" "$P/optimal/trit" "$P/chaos/trit" | tr '\n' ' ' | sed 's/ $//')"
expect_eq "their probabilities" "0 0.5 0.25" "$(cat "$P/nash/prob" "$P/optimal/prob" "$P/chaos/prob" | tr '\n' ' ' | sed 's/ $//')"
expect_eq "the set is balanced" 0 "$(wfs_val "$P/gf3")"
expect_eq "push_down reads the names" "nash optimal chaos" "$(wfs_val "$P/push_down")"
expect_eq "one registry row with all three children and gf3_sum 0" 'push_down|3|0' \
	"$(sqlite3 "$STATE/worldfs.db" "select branch_type, json_array_length(child_entity_ids), gf3_sum from world_branches where branch_type='push_down'")"
for v in nash optimal chaos; do
	expect_eq "$v starts from p's instant" "before 0" "$(wfs_run "$P/$v" 'echo $(cat /tmp/f) $n')"
	wfs_exec "$P/$v" "echo $v > /tmp/f"
done
expect_eq "verses are isolated" "nash optimal chaos" \
	"$(for v in nash optimal chaos; do wfs_run "$P/$v" 'cat /tmp/f'; done | tr '\n' ' ' | sed 's/ $//')"
expect_eq "p is untouched" before "$(wfs_run "$P" 'cat /tmp/f')"
# All or none: nothing of a refused set is made or recorded.
expect_errno EEXIST wfs_put "$P/push_down" 'x nash'
expect_errno EINVAL wfs_put "$P/push_down" 'x y:0.9'
expect_errno EINVAL wfs_put "$P/push_down" 'x x'
expect_errno ENOENT ls -d "$P/x"
expect_eq "still one push_down row" 1 \
	"$(sqlite3 "$STATE/worldfs.db" "select count(*) from world_branches where branch_type='push_down'")"
expect_eq "push_down still reads the last set" "nash optimal chaos" "$(wfs_val "$P/push_down")"
# From a snapshot.
expect_ok "mkdir p/snapshot/s" mkdir "$P/snapshot/s"
expect_ok "push_down from the snapshot" wfs_put "$P/snapshot/s/push_down" 'u v w'
expect_eq "its verses start from the snapshot" "before before before" \
	"$(for v in u v w; do wfs_run "$P/snapshot/s/$v" 'cat /tmp/f'; done | tr '\n' ' ' | sed 's/ $//')"
expect_eq "its set is balanced" 0 "$(wfs_val "$P/snapshot/s/gf3")"
expect_ok "a push_down set resolves as usual" wfs_put "$P/resolve" optimal
expect_eq "the losers collapsed" "collapsed won collapsed" \
	"$(cat "$P/nash/state" "$P/optimal/state" "$P/chaos/state" | tr '\n' ' ' | sed 's/ $//')"
for v in u v w; do
	expect_ok "rmdir p/snapshot/s/$v" rmdir "$P/snapshot/s/$v"
done
for v in nash optimal chaos snapshot/s; do
	expect_ok "rmdir p/$v" rmdir "$P/$v"
done
expect_ok "rmdir p" rmdir "$P"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
