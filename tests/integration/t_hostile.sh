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

expect_ok "rmdir w" rmdir "$W"
expect_ok "rmdir bystander" rmdir "$MNT/bystander"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20

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
