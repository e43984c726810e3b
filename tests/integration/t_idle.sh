#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_idle.sh: idle_suspend.  A world with no run (nor branch, nor snapshot)
# for idle_suspend seconds and no file open is suspended to disk and its
# QEMU stops; info says so and since when (reading it is no use: the test
# polls it); the next use resumes it with its session; a run in progress
# or an open file keeps it up.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "suspending idle worlds is timed here for backend=vm"

# wait_status DIR STATUS SECONDS: until DIR/info's sandbox status is STATUS.
wait_status() {
	i=0
	while [ $i -lt $(($3 * 4)) ]; do
		grep -q "\"status\": *\"$2\"" "$1/info" 2>/dev/null && return 0
		sleep 0.25
		i=$((i + 1))
	done
	return 1
}

wfs_mount idle_suspend=2
W=$MNT/w
expect_ok "mkdir w" mkdir "$W"
expect_ok "w sets a name in its session" wfs_exec "$W" 'x=41; echo data > /tmp/kept'
expect_ok "push_down a b" wfs_put "$W/push_down" 'a b'
expect_ok "w is suspended once idle" wait_status "$W" suspended 20
expect_match "info says since when" '"suspended_at": *"20[0-9-]+T' "$(cat "$W/info")"
expect_ok "so are its verses" wait_status "$W/a" suspended 20
expect_ok "and b" wait_status "$W/b" suspended 20
# The pool empties 5 s after the last world went down.
expect_no_qemu "no QEMU runs while all are suspended" 20
expect_eq "w's state is still running" running "$(wfs_val "$W/state")"
expect_eq "the next run resumes w with its session and files" "42 data" \
	"$(wfs_run "$W" 'echo $((x + 1)) $(cat /tmp/kept)')"
expect_ok "w is up again" wait_status "$W" up 1
expect_eq "a verse resumes on its first use" "data" "$(wfs_run "$W/a" 'cat /tmp/kept')"
metrics=$(cat "$MNT/.worldfs/metrics")
expect_match "suspends are timed in the metrics" '"suspend": *\{"n": *[1-9]' "$metrics"
expect_match "and resumes" '"resume": *\{"n": *[1-9]' "$metrics"

# A run in progress keeps a world up, and so does an open file.
(wfs_exec "$W/b" 'sleep 5') &
run=$!
sleep 3.5
expect_ok "b stays up while it runs" wait_status "$W/b" up 1
wait "$run"
expect_ok "a runs" wfs_exec "$W/a" true
exec 3<"$W/a/state"
sleep 3.5
expect_ok "a stays up while a file of it is open" wait_status "$W/a" up 1
exec 3<&-
expect_ok "and sleeps once it is closed" wait_status "$W/a" suspended 20

# Suspended worlds outlive an unmount.
wfs_umount
wfs_mount idle_suspend=0
expect_eq "after a remount w resumes with its session" 42 "$(wfs_run "$W" 'echo $((x + 1))')"
for v in a b; do
	expect_ok "rmdir w/$v" rmdir "$W/$v"
done
expect_ok "rmdir w" rmdir "$W"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
