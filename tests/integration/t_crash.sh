#!/bin/sh
# shellcheck source=tests/integration/lib.sh
# t_crash.sh: worldfs killed at every step that matters (the fault points
# of backend/util/fault.h: WORLDFS_FAULT=NAME makes worldfs _exit(99)
# there).  After each crash the mount comes back with the same state
# directory, and: every operation acknowledged before is there, the one
# cut short is absent or complete (never half-made), the registry passes
# PRAGMA integrity_check, and after a last clean unmount no QEMU and no
# file of an unknown entity is left.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "the fault points of the freeze, suspend and pool are backend=vm's"
command -v sqlite3 >/dev/null 2>&1 || wfs_skip "sqlite3 is missing"

# crash POINT DESC CMD...: mount with the fault point armed, run
# $crash_before if set, then CMD (it fails: the mount dies under it),
# check worldfs died at the point, clear the dead mount, mount again.
crash_before=
crash() {
	crash_point=$1
	crash_desc=$2
	shift 2
	WORLDFS_FAULT=$crash_point
	export WORLDFS_FAULT
	wfs_mount
	unset WORLDFS_FAULT
	[ -z "$crash_before" ] || "$crash_before" || not_ok "$crash_point: $crash_before"
	"$@" >/dev/null 2>&1
	if wfs_wait_exit 60; then
		expect_eq "$crash_point: worldfs died at the fault point ($crash_desc)" 99 "$(cat "$wfs_tmp/worldfs.rc" 2>/dev/null)"
	else
		not_ok "$crash_point: worldfs died at the fault point ($crash_desc)" "still running after 60 s"
		kill -9 "$wfs_pid" 2>/dev/null
		wfs_wait_exit 10
	fi
	wfs_pid=
	fusermount3 -u -z "$MNT" 2>/dev/null
	wfs_is_mounted && bail "$MNT still mounted after fusermount3 -u -z"
	wfs_mount
	expect_eq "$crash_point: the registry is intact" ok "$(sqlite3 "$STATE/worldfs.db" 'PRAGMA integrity_check')"
	expect_eq "$crash_point: w still runs" w-ok "$(wfs_run "$W" 'echo w-ok')"
}

# the names below DIR, sorted, on one line
names() { ls "$1" | sort | tr '\n' ' ' | sed 's/ $//'; }

W=$MNT/w
wfs_mount
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "mkdir w/a w/b" mkdir "$W/a" "$W/b"
wfs_put "$W/a/balance/alice" 7
wfs_put "$W/b/balance/bob" 5
expect_ok "snapshot w/snapshot/s0" mkdir "$W/snapshot/s0"
gf3_ab=$(wfs_val "$W/gf3")
wfs_umount

crash create-commit "a world booted, not yet in the registry" mkdir "$MNT/x"
expect_eq "create-commit: x was not made" "" "$(ls "$MNT" | grep -x x)"
wfs_umount

crash branch-commit "a verse started, not yet in the registry" mkdir "$W/c"
expect_eq "branch-commit: c was not made; a and b are" "a b" "$(ls "$W" | grep -x '[abc]' | tr '\n' ' ' | sed 's/ $//')"
expect_eq "branch-commit: w's gf3 counts a and b only" "$gf3_ab" "$(wfs_val "$W/gf3")"
wfs_umount

crash snapshot-commit "a snapshot taken, not yet in the registry" mkdir "$W/snapshot/s1"
expect_eq "snapshot-commit: s1 was not made" s0 "$(names "$W/snapshot")"
wfs_umount

crash freeze "a snapshot's state written, not renamed in place" mkdir "$W/snapshot/s2"
expect_eq "freeze: s2 was not made" s0 "$(names "$W/snapshot")"
expect_ok "freeze: a snapshot works again" mkdir "$W/snapshot/s3"
wfs_umount

# The warm pool fills while a world is up: wake w and wait for a member,
# so that the branch takes one.
pool_ready() {
	wfs_exec "$W" true || return 1
	for i in $(seq 150); do
		n=0
		for q in $(wfs_qemu_pids); do
			tr '\0' ' ' <"/proc/$q/cmdline" 2>/dev/null | grep -q '/\.pool-' && n=$((n + 1))
		done
		[ "$n" -ge 1 ] && sleep 1 && return 0
		sleep 0.2
	done
	return 1
}
crash_before=pool_ready
crash pool-take "a pool member being taken for a branch" mkdir "$W/d"
crash_before=
expect_eq "pool-take: d was not made" "" "$(ls "$W" | grep -x d)"
expect_eq "pool-take: a branch works again" d-ok "$(mkdir "$W/d" && wfs_run "$W/d" 'echo d-ok')"
expect_ok "rmdir w/d" rmdir "$W/d"
wfs_umount

crash resolve-commit "a resolution decided, not committed" sh -c 'echo a >"$1"' _ "$W/resolve"
expect_eq "resolve-commit: nothing resolved" "running running 0" \
	"$(wfs_vals "$W/a/state" "$W/b/state" "$W/wev")"
wfs_umount

crash resolve-drop "a resolution committed, the losers' sandboxes not yet stopped" sh -c 'echo a >"$1"' _ "$W/resolve"
expect_eq "resolve-drop: the resolution is there" "won collapsed 5 a" \
	"$(wfs_vals "$W/a/state" "$W/b/state" "$W/wev" "$W/resolve")"
expect_eq "resolve-drop: the winner runs" a-ok "$(wfs_run "$W/a" 'echo a-ok')"
wfs_umount

crash remove-drop "a verse deleted from the registry, its sandbox not yet" rmdir "$W/b"
expect_eq "remove-drop: b is gone" "" "$(ls "$W" | grep -x b)"
wfs_umount

# A crash in the middle of the suspend at unmount: the world comes back.
wfs_mount
expect_eq "w runs before the unmount" pre "$(wfs_run "$W" 'echo pre; echo kept >/tmp/kept')"
wfs_umount
WORLDFS_FAULT=suspend
export WORLDFS_FAULT
wfs_mount
unset WORLDFS_FAULT
expect_eq "suspend: w runs" mid "$(wfs_run "$W" 'echo mid')"
fusermount3 -u "$MNT"
wfs_wait_exit 60
expect_eq "suspend: worldfs died in the suspend at unmount" 99 "$(cat "$wfs_tmp/worldfs.rc" 2>/dev/null)"
wfs_pid=
fusermount3 -u -z "$MNT" 2>/dev/null
wfs_mount
expect_eq "suspend: w comes back with its files" kept "$(wfs_run "$W" 'cat /tmp/kept')"
expect_eq "suspend: the registry is intact" ok "$(sqlite3 "$STATE/worldfs.db" 'PRAGMA integrity_check')"

# kill -9 at random moments of a workload, WFS_KILL_ROUNDS times (20 by
# default; the closing note's 100 were run by hand).  The workload writes
# down each operation once it was acknowledged (and a removal before it
# starts, since its end may be cut off); after each remount every one of
# them is there, and whatever exists runs.
workload() {
	i=$1
	while :; do
		k=$MNT/k$i
		mkdir "$k" 2>/dev/null && echo "create k$i" >>"$ack" || return
		wfs_exec "$k" "echo $i >/tmp/i" 2>/dev/null && echo "exec k$i" >>"$ack" || return
		mkdir "$k/v" 2>/dev/null && echo "branch k$i" >>"$ack" || return
		mkdir "$k/snapshot/s" 2>/dev/null && echo "snapshot k$i" >>"$ack" || return
		wfs_put "$k/resolve" v 2>/dev/null && echo "resolve k$i" >>"$ack" || return
		old=k$((i - 2))
		if [ -d "$MNT/$old" ]; then
			echo "removing $old" >>"$ack"
			rmdir "$MNT/$old/v" 2>/dev/null
			rmdir "$MNT/$old" 2>/dev/null && echo "remove $old" >>"$ack" || return
		fi
		i=$((i + 1))
	done
}
verify() {
	lost=
	while read -r op k; do
		grep -qx "removing $k" "$ack" && present=maybe || present=yes
		case $op:$present in
		remove:*) [ -e "$MNT/$k" ] && lost="$lost $op:$k" ;;
		create:yes | exec:yes) [ -d "$MNT/$k" ] || lost="$lost $op:$k" ;;
		branch:yes) [ -d "$MNT/$k/v" ] || lost="$lost $op:$k" ;;
		snapshot:yes) [ -d "$MNT/$k/snapshot/s" ] || lost="$lost $op:$k" ;;
		resolve:yes) [ "$(cat "$MNT/$k/v/state" 2>/dev/null)" = won ] || lost="$lost $op:$k" ;;
		esac
	done <"$ack"
	echo "$lost"
}
ack=$wfs_tmp/acknowledged
: >"$ack"
rounds=${WFS_KILL_ROUNDS:-20}
next=0
round=0
lost_all=
broken=
while [ $round -lt "$rounds" ]; do
	round=$((round + 1))
	workload "$next" &
	job=$!
	sleep "$(awk -v r="$round" 'BEGIN { srand(r); printf "%.2f", 0.5 + rand() * 3 }')"
	kill -9 "$wfs_pid"
	wfs_wait_exit 10 || bail "worldfs survived kill -9"
	wfs_pid=
	wait "$job" 2>/dev/null
	fusermount3 -u -z "$MNT" 2>/dev/null
	wfs_mount
	lost_all="$lost_all$(verify)"
	[ "$(sqlite3 "$STATE/worldfs.db" 'PRAGMA integrity_check')" = ok ] || broken="$broken $round"
	for k in "$MNT"/k*; do
		[ -d "$k" ] || continue
		[ "$(wfs_run "$k" 'echo up' 2>/dev/null)" = up ] || broken="$broken $round:${k##*/}"
	done
	next=$(($(ls "$MNT" | sed -n 's/^k//p' | sort -n | tail -n 1) + 1))
	# What a cut iteration did not remove goes now (written down like the
	# workload's removals), so that the live worlds stay few.
	for k in "$MNT"/k*; do
		[ -d "$k" ] && [ "${k##*/k}" -lt $((next - 2)) ] || continue
		echo "removing ${k##*/}" >>"$ack"
		rmdir "$k/v" 2>/dev/null
		rmdir "$k" && echo "remove ${k##*/}" >>"$ack"
	done
done
expect_eq "kill -9 x $rounds: no acknowledged operation lost ($(wc -l <"$ack") acknowledged)" "" "$lost_all"
expect_eq "kill -9 x $rounds: the registry intact and every world there runs" "" "$broken"
for k in "$MNT"/k*; do
	[ -d "$k" ] || continue
	rmdir "$k/v" 2>/dev/null
	rmdir "$k" || not_ok "rmdir ${k##*/}"
done
wfs_umount

# Nothing left over: after a clean unmount no QEMU runs, and STATE/vm
# holds only what the registry knows (and the backend's own dirs).
wfs_mount
expect_ok "rmdir w/a" rmdir "$W/a"
wfs_umount
expect_no_qemu "no qemu left after the last unmount" 20
known=$(sqlite3 "$STATE/worldfs.db" 'SELECT entity_id FROM world_runtime_entities' | tr '\n' ' ')
left=
for d in "$STATE"/vm/* "$STATE"/vm/snapshots/*; do
	[ -d "$d" ] || continue
	n=${d##*/}
	case " empty images golden ram snapshots $known " in
	*" $n "*) ;;
	*) left="$left $n" ;;
	esac
done
expect_eq "no directory of an unknown entity under STATE/vm" "" "$left"
