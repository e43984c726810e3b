#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_morph_faults.sh: backend=morph against a Morph API that fails (the
# stand-in's injected faults): retries are bounded and logged, what cannot
# be done fails with EIO, a repeated exec runs once, the registry stays
# whole, no half-made world is left on the service, and the API key is in
# nothing worldfs writes.  Also what only morph does: resuming an instance
# paused behind its back, and code sent in pieces or with non-UTF-8 bytes.
# Run by tests/morph/run.sh (suite morph).
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = morph ] || bail "t_morph_faults.sh needs backend=morph: run it with tests/morph/run.sh"

# faults RULE...: what the stand-in does to the next matching requests.
faults() {
	wfs_fault_list=
	for wfs_rule; do
		wfs_fault_list=${wfs_fault_list:+$wfs_fault_list,}$wfs_rule
	done
	wfs_morph POST /_faults "{\"faults\": [$wfs_fault_list]}" >/dev/null || bail "cannot set faults on the stand-in"
}
no_faults() {
	wfs_morph DELETE /_faults >/dev/null || bail "cannot clear the stand-in's faults"
}

# cloud WHAT: a count from the stand-in's state: instances, snapshots, or
# "requests METHOD REGEX" (requests so far whose path matches).
cloud() {
	wfs_morph GET /_state | python3 -c '
import json, re, sys
s = json.load(sys.stdin)
what = sys.argv[1:]
if what[0] == "requests":
    print(sum(1 for r in s["requests"] if r["method"] == what[1] and re.search(what[2], r["path"])))
else:
    print(len(s[what[0]]))' "$@"
}

# log_count TEXT: lines of this mount's log that contain TEXT.
log_count() {
	grep -cF -- "$1" "$wfs_log"
}

wfs_mount exec_timeout=1
W=$MNT/w
expect_ok "mkdir w (no faults)" mkdir "$W" || bail "cannot create a world"
expect_ok "exec in w" wfs_exec "$W" 'K=kept; echo ok'
expect_ok "w/balance/alice 5" wfs_put "$W/balance/alice" 5

# ---- 5xx and 429 are retried, with back-off, and logged -----------------
inst0=$(cloud instances)
posts0=$(cloud requests POST '^/instance$')
faults '{"kind": "status", "status": 500, "method": "POST", "path": "^/instance$", "count": 2}'
expect_ok "mkdir x while POST /instance answers 500 twice" mkdir "$MNT/x"
expect_eq "three tries of POST /instance" 3 $(($(cloud requests POST '^/instance$') - posts0))
expect_eq "each retry is logged" 2 "$(log_count 'HTTP 500: {"detail": "injected fault"}; retry')"
expect_match "the log says which retry and how long it waits" 'retry 2 of 4 in 500 ms' "$(cat "$wfs_log")"
expect_eq "one instance more on the service" $((inst0 + 1)) "$(cloud instances)"

faults '{"kind": "status", "status": 429, "retry_after": 2, "path": "/exec$", "count": 1}'
t0=$(wfs_now)
expect_eq "exec while the service answers 429 with Retry-After: 2 once" kept "$(wfs_run "$W" 'echo $K')"
expect_match "the retry waited as Retry-After asked" '^[2-9]$' $(($(wfs_now) - t0))
expect_match "the 429 retry is logged with its wait" 'HTTP 429.*retry 1 of 4 in 2000 ms' "$(cat "$wfs_log")"

# ---- a lost or garbled reply to exec: repeated, but the code runs once ----
faults '{"kind": "drop", "path": "/exec$", "count": 1}'
expect_ok "exec while the connection drops once" wfs_exec "$W" 'echo run >>runs; echo after-drop'
expect_eq "stdout after the dropped connection" after-drop "$(wfs_val "$W/stdout")"
faults '{"kind": "badjson", "path": "/exec$", "count": 1}'
expect_ok "exec while the reply is not JSON once" wfs_exec "$W" 'echo run >>runs; echo after-badjson'
expect_eq "stdout after the garbled reply (the first run's output)" after-badjson "$(wfs_val "$W/stdout")"
faults '{"kind": "slow", "delay": 16, "path": "/exec$", "count": 1}'
t0=$(wfs_now)
expect_ok "exec while the reply comes after worldfs's request time-out" \
	wfs_exec "$W" 'echo run >>runs; echo after-slow'
expect_match "worldfs gave up on the slow reply after exec_timeout + grace (11 s) ($(($(wfs_now) - t0)) s)" \
	'^1[0-5]$' $(($(wfs_now) - t0))
expect_eq "stdout after the slow reply" after-slow "$(wfs_val "$W/stdout")"
expect_match "the time-out is logged" '/exec: .*(timed out|[Tt]imeout).*retry 1 of 4' "$(cat "$wfs_log")"
expect_eq "the code of those three runs ran three times, not more" 3 "$(wfs_run "$W" 'wc -l <runs | tr -d " "')"

# ---- failures that do not go away: EIO, nothing half-made -----------------
no_faults
inst0=$(cloud instances)
snap0=$(cloud snapshots)
posts0=$(cloud requests POST '^/instance$')
faults '{"kind": "status", "status": 503, "method": "POST", "path": "^/instance$", "count": 20}'
expect_errno EIO mkdir "$MNT/y"
expect_eq "POST /instance tried 5 times, no more" 5 $(($(cloud requests POST '^/instance$') - posts0))
expect_match "the log says it gave up" 'POST /instance[?]snapshot_id=[^:]*: HTTP 503.*gave up after 5 tries' "$(cat "$wfs_log")"
expect_eq "no y in the tree" absent "$([ -e "$MNT/y" ] && echo present || echo absent)"

faults '{"kind": "badjson", "method": "POST", "path": "^/instance$", "count": 1}'
expect_errno EIO mkdir "$MNT/y"
expect_match "the log says the reply was not JSON" 'POST /instance.*not JSON' "$(cat "$wfs_log")"
expect_match "the instance the garbled reply hid was found and deleted" 'deleted instance .* left by a failed start' \
	"$(cat "$wfs_log")"
faults '{"kind": "drop", "method": "POST", "path": "^/instance$", "count": 1}'
expect_errno EIO mkdir "$MNT/y"

# A branch whose child never gets ready: the child and its snapshot go.
faults '{"kind": "status", "status": 500, "method": "GET", "path": "^/instance/[^/]+$", "count": 20}'
expect_errno EIO mkdir "$W/v"
no_faults
expect_eq "no v in the tree" absent "$([ -e "$W/v" ] && echo present || echo absent)"
expect_eq "no instance left over by the failed creates and branch" "$inst0" "$(cloud instances)"
expect_eq "no snapshot left over by the failed branch" "$snap0" "$(cloud snapshots)"

# An exec that cannot reach the world: EIO, and the world reads failed.
faults '{"kind": "status", "status": 500, "path": "/exec$", "count": 20}'
expect_errno EIO wfs_exec "$MNT/x" 'echo no'
no_faults
expect_eq "x reads failed" failed "$(wfs_val "$MNT/x/state")"
expect_match "x's info gives the reason" '"failure": *"sandbox died during a run' "$(wfs_val "$MNT/x/info")"

# ---- the service refuses: the errno from the status table ----------------
faults '{"kind": "status", "status": 409, "method": "POST", "path": "/snapshot$", "count": 1}'
expect_errno EBUSY mkdir "$W/snapshot/busy"
expect_eq "a 409 is not retried" 1 "$(log_count 'snapshot?digest=')"
faults '{"kind": "status", "status": 404, "method": "POST", "path": "/snapshot$", "count": 1}'
expect_errno ENOENT mkdir "$W/snapshot/gone"
faults '{"kind": "status", "status": 422, "method": "POST", "path": "/snapshot$", "count": 1}'
expect_errno EINVAL mkdir "$W/snapshot/bad"
no_faults
expect_eq "no snapshot in the tree" "" "$(ls "$W/snapshot")"

# ---- an instance paused behind worldfs's back is resumed ----------------
w_inst=$(sed -n 's/.*"instance_id": *"\([^"]*\)".*/\1/p' "$W/info")
expect_ok "pause w's instance on the service" wfs_morph POST "/instance/$w_inst/pause"
expect_eq "exec in w after that" kept "$(wfs_run "$W" 'echo $K')"
expect_match "the resume is logged" "instance $w_inst was paused: resuming it" "$(cat "$wfs_log")"

# ---- code that does not fit in one request, or in JSON as it is ----------
big=$wfs_tmp/big.sh
i=0
while [ $i -lt 3000 ]; do
	printf '# padding %d: \\ \\0 %% \047" ..........................................................................\n' $i
	i=$((i + 1))
done >"$big"
printf '%s\n' 'bigf() { echo big-fn; }' 'B=big; echo done' >>"$big"
expect_ok "exec of $(wc -c <"$big") bytes of code (uploaded in pieces)" sh -c 'cat "$1" >"$2/exec"' _ "$big" "$W"
expect_eq "its stdout" "done" "$(wfs_val "$W/stdout")"
expect_eq "its variables and functions persist" "big-fn big" "$(wfs_run "$W" 'echo "$(bigf) $B"')"
expect_ok "exec of code with bytes that are not UTF-8" \
	sh -c 'printf "printf %%s \"\\377\\303\" | od -An -tx1 | tr -d \" \"\n" >"$1/exec"' _ "$W"
expect_eq "the bytes reach the shell as they are" ffc3 "$(wfs_val "$W/stdout")"

# ---- the registry is whole ----------------------------------------------
expect_eq "w still runs, its session intact" kept "$(wfs_run "$W" 'echo $K')"
expect_eq "w's balance" 5 "$(wfs_val "$W/balance/alice")"
expect_eq "the tree" "w x" "$(ls "$MNT" | tr '\n' ' ' | sed 's/ $//')"
if command -v sqlite3 >/dev/null 2>&1; then
	expect_eq "registry integrity_check" ok "$(sqlite3 "$STATE/worldfs.db" 'PRAGMA integrity_check')"
fi
expect_ok "rmdir x (failed)" rmdir "$MNT/x"
wfs_umount
wfs_mount
expect_eq "after a remount: w's session" kept "$(wfs_run "$W" 'echo $K')"
expect_eq "after a remount: the tree" "w" "$(ls "$MNT" | tr '\n' ' ' | sed 's/ $//')"

# ---- the API key is nowhere ---------------------------------------------
key_files=$(cd "$wfs_tmp" && grep -rlF --exclude-dir=mnt -- "$MORPH_API_KEY" . 2>/dev/null)
expect_eq "the key is in no log, registry or state file" "" "$key_files"
expect_eq "the key is in no file of the mount" "" \
	"$(find "$MNT" -type f ! -name exec -exec grep -lF -- "$MORPH_API_KEY" {} + 2>/dev/null)"

# ---- a wrong key, and none -----------------------------------------------
wfs_umount
wfs_good_key=$MORPH_API_KEY
MORPH_API_KEY=wrong-$MORPH_API_KEY-x
wfs_new_state
wfs_mount
expect_errno EACCES mkdir "$MNT/z"
expect_match "a 401 is logged" 'HTTP 401' "$(cat "$wfs_log")"
wfs_umount
MORPH_API_KEY=$wfs_good_key
mkdir -p "$MNT"
timeout 30 env -u MORPH_API_KEY "$WORLDFS" -f -o "state=$STATE,$WORLDFS_OPTS" "$MNT" >"$wfs_tmp/nokey.out" 2>&1
expect_match "without MORPH_API_KEY the mount fails" '^[1-9]' "$?"
expect_match "and says why" 'MORPH_API_KEY is not set' "$(cat "$wfs_tmp/nokey.out")"
