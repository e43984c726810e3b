#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_recovery.sh: what survives a clean unmount (everything, sessions too),
# and a kill -9 of worldfs (running sandboxes are reattached; a world whose
# sandbox died meanwhile reads failed, with the reason in info).  The
# sandbox is a qemu process (vm) or a Morph instance on the stand-in (morph).
. "$(dirname "$0")/lib.sh"

# fingerprint: path and content of every value file, in a stable order.
# info, exec and the runtime-wide entities/metrics are left out: they say
# whether sandboxes are up, which is meant to differ across a remount; so
# is diff, which asks the guest (it would resume a suspended world), and
# is gone with fs/ when a world fails (the tree comparisons leave both out).
fingerprint() {
	(cd "$MNT" && find . -path '*/fs' -prune -o -type f ! -name info ! -name exec ! -name entities ! -name diff \
		! -name metrics -print | sort |
		while read -r f; do printf '%s: %s\n' "$f" "$(cat "$f" | tr '\n' '|')"; done)
}

# qemu_pid DIR: the pid of the VM behind a world, from its info
# ("pid" inside "sandbox"), or the qemu whose command line names its id.
qemu_pid() {
	qp=$(wfs_json_num "$1/info" pid)
	if [ -z "$qp" ]; then
		qid=$(sed -n 's/.*"entity_id": *"\([^"]*\)".*/\1/p' "$1/info")
		for q in $(wfs_qemu_pids); do
			tr '\0' ' ' <"/proc/$q/cmdline" | grep -qF -- "$qid/" && qp=$q
		done
	fi
	echo "$qp"
}

# sandbox_id DIR: what runs a world that is up: its qemu pid or its Morph
# instance id.  sandbox_alive ID: it still runs.  sandbox_kill ID: it dies
# behind worldfs's back.
sandbox_id() {
	if [ "$WFS_BACKEND" = morph ]; then
		sed -n 's/.*"instance_id": *"\([^"]*\)".*/\1/p' "$1/info"
	else
		qemu_pid "$1"
	fi
}
sandbox_alive() {
	if [ "$WFS_BACKEND" = morph ]; then
		wfs_morph GET "/instance/$1" >/dev/null
	else
		kill -0 "$1"
	fi
}
sandbox_kill() {
	if [ "$WFS_BACKEND" = morph ]; then
		wfs_morph DELETE "/instance/$1" >/dev/null
	else
		kill -9 "$1"
	fi
}
sandbox_re='^[0-9]+$'
[ "$WFS_BACKEND" = morph ] && sandbox_re='^[A-Za-z0-9_-]+$'

wfs_mount
W=$MNT/w
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "exec in w" wfs_exec "$W" 'R=before; echo persisted >/tmp/p; cd /tmp; echo out-w'
expect_ok "w/balance/alice 42" wfs_put "$W/balance/alice" 42
expect_ok "w/balance/bob 7" wfs_put "$W/balance/bob" 7
expect_ok "mkdir w/snapshot/s" mkdir "$W/snapshot/s"
expect_ok "exec in w after the snapshot" wfs_exec "$W" 'R2=after-snap'
for v in a b c; do
	expect_ok "mkdir w/$v" mkdir "$W/$v"
done
expect_ok "a/trit 1" wfs_put "$W/a/trit" 1
expect_ok "a/prob 0.25" wfs_put "$W/a/prob" 0.25
expect_ok "b/prob 0.5" wfs_put "$W/b/prob" 0.5
expect_ok "a/balance/alice 40" wfs_put "$W/a/balance/alice" 40
expect_ok "exec in a" wfs_exec "$W/a" 'RA=ina; echo out-a'
expect_ok "exec in b" wfs_exec "$W/b" 'echo err-b >&2; (exit 4)'
expect_ok "exec in c" wfs_exec "$W/c" 'RC=inc; echo out-c'
expect_ok "resolve w -> c" wfs_put "$W/resolve" c
expect_eq "b collapsed" collapsed "$(wfs_val "$W/b/state")"
# a collapsed too; keep one live verse for the rest: branch d from the snapshot.
expect_ok "mkdir w/snapshot/s/d" mkdir "$W/snapshot/s/d"
expect_ok "exec in d" wfs_exec "$W/snapshot/s/d" 'RD=ind'
before=$(fingerprint)
tree_before=$(cd "$MNT" && find . \( -path '*/fs' -o -path '*/diff' \) -prune -o -print | sort)

# ---- clean unmount and remount ------------------------------------------
wfs_umount
expect_no_qemu "no qemu left after a clean unmount" 30
wfs_mount
expect_eq "the tree is back" "$tree_before" "$(cd "$MNT" && find . \( -path '*/fs' -o -path '*/diff' \) -prune -o -print | sort)"
expect_eq "every value is back (trits, probs, balances, states, outputs, wev, logs)" \
	"$before" "$(fingerprint)"
expect_match "w's sandbox is suspended until first use" '"status": *"suspended"' "$(wfs_val "$W/info")"
expect_eq "w's state reads logically" running "$(wfs_val "$W/state")"
expect_eq "w's session is resumed (variables, files, cwd)" "before persisted /tmp after-snap" \
	"$(wfs_run "$W" 'echo "$R $(cat /tmp/p) $(pwd) $R2"')"
expect_match "w's sandbox is up after use" '"status": *"up"' "$(wfs_val "$W/info")"
expect_eq "the won verse's session is resumed" inc "$(wfs_run "$W/c" 'echo $RC')"
expect_eq "a snapshot verse's session is resumed" ind "$(wfs_run "$W/snapshot/s/d" 'echo $RD')"
expect_errno EROFS wfs_exec "$W/a" 'echo no'
expect_ok "mkdir w/snapshot/s/e (a snapshot from before the unmount)" mkdir "$W/snapshot/s/e"
expect_eq "e sees the snapshot's session" "before none" "$(wfs_run "$W/snapshot/s/e" 'echo "$R ${R2:-none}"')"

# ---- kill -9 worldfs; one sandbox dies while worldfs is down -------------
expect_ok "exec in w before the crash" wfs_exec "$W" 'K=prekill'
tree_before=$(cd "$MNT" && find . \( -path '*/fs' -o -path '*/diff' \) -prune -o -print | sort)
w_sb=$(sandbox_id "$W")
e_sb=$(sandbox_id "$W/snapshot/s/e")
expect_match "w's sandbox is known ($w_sb)" "$sandbox_re" "$w_sb"
expect_match "e's sandbox is known ($e_sb)" "$sandbox_re" "$e_sb"
wfs_kill9
expect_ok "w's sandbox survives the death of worldfs" sandbox_alive "$w_sb"
[ -n "$e_sb" ] && sandbox_kill "$e_sb"
wfs_mount
wfs_wait_recovered
expect_eq "the tree is back after kill -9" "$tree_before" "$(cd "$MNT" && find . \( -path '*/fs' -o -path '*/diff' \) -prune -o -print | sort)"
expect_eq "balances after kill -9" "42 7" "$(wfs_val "$W/balance/alice") $(wfs_val "$W/balance/bob")"
expect_eq "trit and prob after kill -9" "1 0.25" "$(wfs_val "$W/a/trit") $(wfs_val "$W/a/prob")"
expect_eq "resolution after kill -9" "c collapsed collapsed won" \
	"$(wfs_vals "$W/resolve" "$W/a/state" "$W/b/state" "$W/c/state")"
expect_eq "w is reattached: its session kept what it had before the crash" "prekill before" \
	"$(wfs_run "$W" 'echo "$K $R"')"
expect_eq "w runs in the same sandbox as before the crash" "$w_sb" "$(sandbox_id "$W")"
expect_eq "d is reattached" ind "$(wfs_run "$W/snapshot/s/d" 'echo $RD')"
# c (won) is left unused after this remount on purpose: the unmount below
# must still suspend or stop its surviving sandbox.
expect_eq "e, whose sandbox was killed, reads failed" failed "$(wfs_val "$W/snapshot/s/e/state")"
expect_match "e's info gives the reason" '"failure": *"[^"]+' "$(wfs_val "$W/snapshot/s/e/info")"
expect_errno EIO wfs_exec "$W/snapshot/s/e" 'echo no'
expect_ok "a failed verse can be removed" rmdir "$W/snapshot/s/e"

wfs_umount
expect_no_qemu "no qemu left after the final unmount" 30

# The golden state outlives its state directory: kept in WORLDFS_CACHE
# (here a private one), a fresh mount's first create clones it instead of
# booting; a cached copy whose contents were damaged is dropped, that
# create boots cold, and it is cached again.  (vm with branch=cow only.)
case "$WFS_BACKEND ${WORLDFS_OPTS:-}" in
vm*branch=copy*) ;;
vm*)
	WORLDFS_CACHE=$wfs_tmp/cache
	export WORLDFS_CACHE
	from() { sed -n 's/.*"start": *{"from": *"\([a-z]*\)".*/\1/p' "$1/info"; }
	wfs_new_state
	wfs_mount
	expect_ok "mkdir g1 on an empty cache" mkdir "$MNT/g1"
	expect_eq "g1 was booted" boot "$(from "$MNT/g1")"
	expect_eq "and its golden state cached" 1 "$(ls "$WORLDFS_CACHE/golden" | wc -l)"
	wfs_umount
	wfs_new_state
	wfs_mount
	expect_ok "mkdir g2 on a fresh state dir" mkdir "$MNT/g2"
	expect_eq "g2 is a clone of the cached golden state" golden "$(from "$MNT/g2")"
	expect_eq "g2 runs" 42 "$(wfs_run "$MNT/g2" 'echo $((6 * 7))')"
	wfs_umount
	python3 - "$WORLDFS_CACHE"/golden/*/ram <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    data = f.read()
    i = next(i for i in range(0, len(data), 4096) if any(data[i:i + 4096]))
    f.seek(i + 100)
    f.write(bytes([data[i + 100] ^ 0xff]))
PY
	wfs_new_state
	wfs_mount
	expect_ok "mkdir g3 with a damaged cache" mkdir "$MNT/g3"
	expect_eq "g3 was booted, not cloned from the damaged copy" boot "$(from "$MNT/g3")"
	expect_match "the log says why" 'do not match its manifest: dropped' "$(cat "$STATE/worldfs.log")"
	expect_eq "and the golden state is cached again" 1 "$(ls "$WORLDFS_CACHE"/golden/*/manifest | wc -l)"
	wfs_umount
	expect_no_qemu "no qemu left" 30
	unset WORLDFS_CACHE
	;;
esac
