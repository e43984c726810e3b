#!/bin/sh
# shellcheck source=tests/integration/lib.sh
# t_hostile.sh: a guest that breaks the protocol (the agent's test mode,
# WORLDFS_TEST_HOSTILE: see hostile_run in backend/agent/agent.c).  After
# each fault the victim reads failed with a reason and its run has its own
# status 255 and note, within the run's deadline; the mount answers,
# another world runs, and the victim can be removed at once.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "the hostile guest is a mode of backend=vm's agent"
WORLDFS_TEST_HOSTILE=1
export WORLDFS_TEST_HOSTILE

wfs_mount exec_timeout=3
W=$MNT/w
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "mkdir bystander" mkdir "$MNT/bystander"

# fast: answered at once, wrongly; slow: not answered (the run's deadline,
# exec_timeout 3 s + 10 s of grace, ends it).
for case in badstatus:fast bigout:fast oversize:fast garbage:slow mute:slow stall:slow; do
	mode=${case%%:*}
	V=$W/$mode
	expect_ok "mkdir w/$mode" mkdir "$V"
	t0=$(wfs_now)
	expect_errno EIO wfs_exec "$V" "#!worldfs-hostile $mode"
	took=$(($(wfs_now) - t0))
	limit=8
	[ "${case#*:}" = slow ] && limit=25
	expect_ok "$mode: the run ended within ${limit} s (took ${took} s)" test "$took" -le "$limit"
	expect_eq "$mode: the victim is failed" failed "$(wfs_val "$V/state")"
	expect_match "$mode: info says why" '"failure": *"[^"]+' "$(cat "$V/info")"
	expect_eq "$mode: its run's status" 255 "$(wfs_val "$V/status")"
	expect_match "$mode: its run's stderr says so" 'died during this run' "$(cat "$V/stderr")"
	expect_ok "$mode: the mount answers" ls "$MNT" "$W"
	expect_eq "$mode: another world runs" hi "$(wfs_run "$MNT/bystander" 'echo hi')"
	expect_eq "$mode: the parent runs" "$mode" "$(wfs_run "$W" "echo $mode")"
	expect_ok "$mode: rmdir the victim" rmdir "$V"
done

# A guest that floods its console fills no disk: its console.log and the
# one rotated before it stay within 2 x 512 KiB (and the pipe's 64 KiB).
expect_ok "mkdir w/flood" mkdir "$W/flood"
id=$(sed -n 's/.*"entity_id": *"\([^"]*\)".*/\1/p' "$W/flood/info")
expect_ok "flood the console" wfs_exec "$W/flood" 'cat /dev/zero >/dev/console 2>/dev/null & flood=$!'
sleep 12
bytes=$(cat "$STATE/vm/$id"/console.log* 2>/dev/null | wc -c)
expect_ok "the console takes at most 1088 KiB on disk ($bytes bytes)" test "$bytes" -le $((1088 * 1024))
expect_ok "... and was rotated (the flood got through)" test -e "$STATE/vm/$id/console.log.1"
expect_eq "the flooding world still runs" alive "$(wfs_run "$W/flood" 'kill $flood; echo alive')"
expect_ok "rmdir w/flood" rmdir "$W/flood"

# rmdir does not wait out a hung run (mute: exec_timeout 3 s + 10 s of
# grace): it ends the run at once, and the run's writer gets an error.
expect_ok "mkdir w/hung" mkdir "$W/hung"
(wfs_exec "$W/hung" "#!worldfs-hostile mute"; echo $? >"$wfs_tmp/hung.rc") &
hung=$!
sleep 2
t0=$(wfs_now)
expect_ok "rmdir w/hung while its run hangs" rmdir "$W/hung"
took=$(($(wfs_now) - t0))
expect_ok "... within 5 s (took ${took} s), not at the run's deadline" test "$took" -le 5
wait "$hung"
expect_ok "... and the run's writer got an error" test "$(cat "$wfs_tmp/hung.rc")" -ne 0
expect_eq "the bystander still runs" hi "$(wfs_run "$MNT/bystander" 'echo hi')"

# As root, QEMU is confined once started: an unprivileged user (qemu_user:
# worldfs, else nobody), an empty directory for its root, QEMU's seccomp
# filter, and no file open but its own world's.
if [ "$(id -u)" = 0 ]; then
	pid=$(wfs_json_num "$W/info" pid)
	by=$(sed -n 's/.*"entity_id": *"\([^"]*\)".*/\1/p' "$MNT/bystander/info")
	want=$(id -u worldfs 2>/dev/null || id -u nobody)
	expect_eq "w's QEMU runs as uid $want" "$want $want" \
		"$(awk '/^Uid:/ { print $2, $4 }' "/proc/$pid/status" 2>&1)"
	expect_eq "... with no supplementary group of root's" "" \
		"$(awk '/^Groups:/ { for (i = 2; i <= NF; i++) if ($i == 0) print $i }' "/proc/$pid/status")"
	expect_eq "... its root is the empty STATE/vm/empty" "$(readlink -f "$STATE/vm/empty") 555 0 0" \
		"$(readlink "/proc/$pid/root") $(stat -c '%a %u' "$STATE/vm/empty") $(ls -A "$STATE/vm/empty" | wc -l)"
	expect_eq "... under seccomp" 2 "$(awk '/^Seccomp:/ { print $2 }' "/proc/$pid/status")"
	expect_eq "... holding neither the registry, the log nor the bystander's files" "" \
		"$(for f in /proc/"$pid"/fd/*; do readlink "$f"; done | grep -e worldfs.db -e worldfs.log -e "$by")"
	expect_ok "... and it branches, snapshots and runs so" sh -c \
		"mkdir '$W/c' && mkdir '$W/snapshot/s' && echo 'echo ok' >'$W/c/exec' && grep -qx ok '$W/c/stdout'"
	expect_ok "rmdir w/c" rmdir "$W/c"
	expect_ok "rmdir w/snapshot/s" rmdir "$W/snapshot/s"
fi

expect_ok "rmdir w" rmdir "$W"
expect_ok "rmdir bystander" rmdir "$MNT/bystander"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20

# qemu_user names a user that exists and is not root.
if [ "$(id -u)" = 0 ]; then
	MNT2=$(mktemp -d)
	bad=$("$WORLDFS" -o "state=$wfs_tmp/badu,qemu_user=no-such-user-wfs" "$MNT2" 2>&1)
	expect_eq "qemu_user=no-such-user fails the mount" "1 qemu_user=no-such-user-wfs: no such user" \
		"$? $(printf '%s\n' "$bad" | grep -o 'qemu_user=.*')"
	mountpoint -q "$MNT2" && fusermount3 -u "$MNT2"
	rmdir "$MNT2"
fi

# A small disk: a new world is refused with ENOSPC while the state
# directory's filesystem would keep less than the guest's memory and a
# margin free (256 MiB), and nothing is left half-made; with room again,
# it works.
SMALL=$wfs_tmp/small
wfs_small_fs "$SMALL" 300 || bail "cannot mount a tmpfs on $SMALL"
STATE=$SMALL/state
wfs_mount
expect_errno ENOSPC mkdir "$MNT/tight"
expect_eq "nothing half-made" "" "$(ls "$MNT")"
expect_match "the log says why" 'free, below the .* MiB a 128 MiB guest needs' "$(cat "$wfs_log")"
expect_ok "make room (the tmpfs grows)" mount -o remount,size=2g "$SMALL"
expect_ok "mkdir tight, with room" mkdir "$MNT/tight"
expect_eq "it runs" ok "$(wfs_run "$MNT/tight" 'echo ok')"
expect_ok "rmdir tight" rmdir "$MNT/tight"
wfs_umount
