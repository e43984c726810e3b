#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_basic.sh: one world's files, exec and its session, and the run limits
# (output_max, exec_timeout).
. "$(dirname "$0")/lib.sh"

wfs_mount

# .worldfs/
expect_ok "worldfs --version exits 0" "$WORLDFS" --version
expect_match "worldfs --version" '^worldfs [0-9]+\.[0-9]+\.[0-9]+$' "$("$WORLDFS" --version 2>/dev/null | head -n 1)"
expect_match ".worldfs/version" "^worldfs [0-9]+\\.[0-9]+\\.[0-9]+ backend=$WFS_BACKEND\$" "$(wfs_val "$MNT/.worldfs/version")"
expect_eq ".worldfs/version names this binary's version" "$("$WORLDFS" --version 2>/dev/null | head -n 1) backend=$WFS_BACKEND" \
	"$(wfs_val "$MNT/.worldfs/version")"
expect_eq ".worldfs entries" "branches entities metrics resolutions version" \
	"$(ls "$MNT/.worldfs" | sort | tr '\n' ' ' | sed 's/ $//')"
expect_eq ".worldfs modes" "555 444 444 444 444 444" \
	"$(stat -c %a "$MNT/.worldfs" "$MNT/.worldfs/branches" "$MNT/.worldfs/entities" \
		"$MNT/.worldfs/metrics" "$MNT/.worldfs/resolutions" "$MNT/.worldfs/version" | tr '\n' ' ' | sed 's/ $//')"
expect_eq "mount root mode (any user may create worlds; sticky)" 1777 "$(stat -c %a "$MNT")"

# One worldfs per state directory: a second mount of the same state fails.
MNT2=$(mktemp -d)
second=$("$WORLDFS" -o "state=$STATE${WORLDFS_OPTS:+,$WORLDFS_OPTS}" "$MNT2" 2>&1)
second_rc=$?
if mountpoint -q "$MNT2"; then
	fusermount3 -u "$MNT2"
fi
rmdir "$MNT2"
expect_eq "a second mount of the same state= fails" 1 "$second_rc"
expect_match "and says the state is in use" 'in use by another worldfs' "$second"

# Bad options fail the mount and say why.
MNT2=$(mktemp -d)
bad=$("$WORLDFS" -o "state=$wfs_tmp/bad1,reseed=sometimes" "$MNT2" 2>&1)
expect_eq "reseed=sometimes fails the mount" "1 reseed=sometimes: expected all or kernel" \
	"$? $(printf '%s\n' "$bad" | grep -o 'reseed=.*')"
if [ "$WFS_BACKEND" = vm ]; then
	bad=$("$WORLDFS" -o "state=$wfs_tmp/bad2,image=no-such-image" "$MNT2" 2>&1)
	expect_eq "image=no-such-image fails the mount" 1 "$?"
	expect_match "and names the image and how to build one" 'image=no-such-image: .*build-image.sh' "$bad"
fi
# A state directory other users can write is refused: it would hold
# every user's outputs, and they could plant files in it.
mkdir -m 0777 "$wfs_tmp/open"
chmod 0777 "$wfs_tmp/open"
bad=$("$WORLDFS" -o "state=$wfs_tmp/open" "$MNT2" 2>&1)
expect_eq "a state= directory others can write fails the mount" 1 "$?"
expect_match "and says so" 'writable by other users' "$bad"
# A comma in state= would break the QEMU option strings naming files in it.
bad=$("$WORLDFS" -o "state=$wfs_tmp/a\\,b" "$MNT2" 2>&1)
expect_eq "a state= path with a comma fails the mount" 1 "$?"
expect_match "and says so" 'a comma in the path is not supported' "$bad"
mountpoint -q "$MNT2" && fusermount3 -u "$MNT2"
rmdir "$MNT2"

# A world.
W=$MNT/w
expect_ok "mkdir w (boot a world)" mkdir "$W"
expect_eq "w is a directory, mode 0700, owned by its creator" "directory 700 $(id -u) $(id -g)" \
	"$(stat -c '%F %a %u %g' "$W")"
expect_eq "w/state" running "$(wfs_val "$W/state")"
expect_match "w/info has boot_time_ms" '"boot_time_ms": *[0-9]' "$(wfs_val "$W/info")"
expect_match "w/info is one JSON object" '^\{.*"entity_type": *"world".*\}$' "$(wfs_val "$W/info")"

# The files of a world directory: exactly the table, with its modes.
expected_table='balance directory 700
diff regular 400 (vm)
exec regular 600
fs directory 700 (vm)
gf3 regular 400
info regular 400
prob regular 600
push_down regular 600
resolve regular 600
snapshot directory 700
state regular 400
status regular 400
stderr regular 400
stdout regular 400
trit regular 600
wev regular 400'
# fs/ and diff are there where the backend has the guest file protocol (vm).
if [ "$WFS_BACKEND" = vm ]; then
	expected_table=$(printf '%s\n' "$expected_table" | sed 's/ (vm)$//')
else
	expected_table=$(printf '%s\n' "$expected_table" | grep -v ' (vm)$')
fi
observed_table=$(cd "$W" && for f in $(ls -A | sort); do
	printf '%s %s %s\n' "$f" "$(stat -c %F "$f" | sed 's/ .*//')" "$(stat -c %a "$f")"
done)
expect_eq "ls -A w: the files of the table, with their modes" "$expected_table" "$observed_table"
expect_match "ls -l w works" '^-rw------- .* exec$' "$(ls -l "$W")"

# Before the first run: empty outputs.
expect_eq "status before the first run is empty" 0 "$(stat -c %s "$W/status")"
expect_eq "stdout before the first run is empty" 0 "$(stat -c %s "$W/stdout")"

# exec / stdout / stderr / status; a non-zero status is not a close error.
expect_ok "exec: a run with status 3 closes without error" \
	wfs_exec "$W" 'echo hello; echo oops >&2; (exit 3)'
expect_eq "stdout" hello "$(wfs_val "$W/stdout")"
expect_eq "stderr" oops "$(wfs_val "$W/stderr")"
expect_eq "status" 3 "$(wfs_val "$W/status")"
expect_ok "exec: true" wfs_exec "$W" 'true'
expect_eq "status after true" 0 "$(wfs_val "$W/status")"
expect_eq "stdout after a silent run is empty" 0 "$(stat -c %s "$W/stdout")"

# Several writes on one descriptor make one run.
expect_ok "exec in several writes" sh -c '{ printf "echo "; printf "one "; printf "run\n"; } >"$1/exec"' _ "$W"
expect_eq "stdout of a run written in pieces" "one run" "$(wfs_val "$W/stdout")"

# Reading exec on the writing descriptor returns that run's stdout.  The
# shell's `>&3` dups and closes fd 3 (a flush: the run starts there), so
# this is also "read after a flush-triggered run on the same fd".
via_fd=$(sh -c 'exec 3<>"$1/exec"; printf "echo via-fd\n" >&3; cat <&3' _ "$W" 2>&1)
expect_eq "read of exec on the writing fd (after a flush) returns that run's stdout" via-fd "$via_fd"
expect_eq "stdout after the read-triggered run" via-fd "$(wfs_val "$W/stdout")"
expect_eq "a fresh exec fd reads empty" "" "$(cat "$W/exec")"

# st_size is exact for every file (but diff, which the guest computes
# when it is read: size 0, as a file of /proc).
for f in "$W"/* "$MNT"/.worldfs/*; do
	[ -f "$f" ] && [ "${f##*/}" != diff ] || continue
	expect_eq "st_size of ${f#"$MNT"/} matches its content" "$(wc -c <"$f")" "$(stat -c %s "$f")"
done

# Session persistence: variables, functions, cwd, files, background processes.
expect_ok "exec: set up session state" wfs_exec "$W" '
X=42
greet() { echo "hi $1"; }
mkdir -p /tmp/wfs-t && cd /tmp/wfs-t && echo data >file
sleep 600 >/dev/null 2>&1 </dev/null &
BG=$!'
expect_eq "variables, functions, cwd and files persist" "42 hi you /tmp/wfs-t data" \
	"$(wfs_run "$W" 'echo "$X $(greet you) $(pwd) $(cat file)"')"
expect_eq "a background process survives into the next run" alive \
	"$(wfs_run "$W" 'kill -0 "$BG" && echo alive')"

# A background job that keeps the run's stdout: the run still ends at once,
# and what the job writes later is not in the next run's output.
t0=$(wfs_now)
expect_eq "a run ends while its background job holds stdout" early \
	"$(wfs_run "$W" '(sleep 2; echo late) & echo early')"
expect_ok "... without waiting for the job" test $(($(wfs_now) - t0)) -lt 2
expect_eq "the next run's stdout is its own" next "$(wfs_run "$W" 'echo next')"
sleep 3
expect_eq "a run after the job wrote is not given its output" after "$(wfs_run "$W" 'echo after')"

# Writes to read-only files, and an oversized exec.
expect_errno EACCES wfs_put "$W/state" collapsed
expect_errno EACCES wfs_put "$W/stdout" x
expect_errno EFBIG sh -c 'head -c 16777217 /dev/zero | tr "\0" " " >"$1/exec"' _ "$W"
expect_eq "session intact after the oversized exec" 42 "$(wfs_run "$W" 'echo $X')"

# A syntax error ends the run where it stands (script semantics), with
# status 2 and the shell's message; the session lives on.
expect_ok "exec with a syntax error" wfs_exec "$W" 'Y=ran
echo first
if then fi'
expect_eq "status of a syntax error" 2 "$(wfs_val "$W/status")"
expect_eq "the lines before it ran" first "$(wfs_val "$W/stdout")"
# (busybox sh says "syntax error", dash "Syntax error")
expect_match "stderr names the syntax error" '[Ss]yntax error' "$(wfs_val "$W/stderr")"
expect_eq "session intact after a syntax error" "42 ran" "$(wfs_run "$W" 'echo $X $Y')"

# The first line: "#!/ABS/PATH [ARG]" runs a one-off script of that
# interpreter, in the session's directory and environment; "#!python3"
# the Python session, where the image has one.
expect_ok "exec: cd /tmp; export ONEOFF" wfs_exec "$W" 'cd /tmp; export ONEOFF=yes'
expect_ok "exec: #!/bin/sh -e" wfs_exec "$W" '#!/bin/sh -e
echo "one $(pwd) $ONEOFF"
false
echo two'
expect_eq "a one-off script: its interpreter, its argument, the session's cwd and environment" \
	"1|one /tmp yes" "$(wfs_val "$W/status")|$(wfs_val "$W/stdout")"
expect_eq "a one-off script leaves the session alone" 42 "$(wfs_run "$W" 'echo $X')"
expect_ok "exec: #!python3" wfs_exec "$W" '#!python3
print(6 * 7)'
case $WFS_BACKEND,${WORLDFS_OPTS:-} in
vm,*image=busybox*)
	expect_eq "#!python3 in the busybox image: status 127" 127 "$(wfs_val "$W/status")"
	expect_match "and stderr says there is no python3" 'python3: not found' "$(wfs_val "$W/stderr")" ;;
vm,*)
	expect_eq "#!python3 runs in the Python session" "0 42" "$(wfs_val "$W/status") $(wfs_val "$W/stdout")" ;;
morph,*)
	expect_eq "#!python3 with backend=morph: status 127" 127 "$(wfs_val "$W/status")"
	expect_match "and stderr says why" 'no persistent Python session' "$(wfs_val "$W/stderr")" ;;
esac

# `exit` ends the session; a fresh one starts.
expect_ok "exec: exit 5" wfs_exec "$W" 'exit 5'
expect_eq "status of exit 5" 5 "$(wfs_val "$W/status")"
expect_match "stderr says the session restarted" '\[worldfs: session restarted' "$(wfs_val "$W/stderr")"
expect_eq "a fresh session after exit" "unset" "$(wfs_run "$W" 'echo ${X:-unset}')"

expect_ok "rmdir w" rmdir "$W"
expect_eq "mount root is empty again" "" "$(ls "$MNT")"
wfs_umount

# ---- limits: output_max and exec_timeout ----------------------------------
wfs_new_state
wfs_mount output_max=1000,exec_timeout=2
W=$MNT/w
expect_ok "mkdir w" mkdir "$W"

expect_ok "exec: 5500 bytes of stdout" wfs_exec "$W" '
i=0; while [ $i -lt 500 ]; do echo 0123456789; i=$((i + 1)); done'
out_size=$(stat -c %s "$W/stdout")
expect_match "stdout is cut near output_max=1000 (size $out_size)" '^1[0-9]{3}$' "$out_size"
expect_eq "stdout starts with the first 1000 bytes of the output" \
	"$(i=0; while [ $i -lt 100 ]; do echo 0123456789; i=$((i + 1)); done | head -c 1000)" \
	"$(head -c 1000 "$W/stdout")"
expect_match "the truncation marker follows" 'output truncated at 1000 bytes' "$(tail -c +1001 "$W/stdout")"
expect_eq "st_size of truncated stdout matches content" "$(wc -c <"$W/stdout")" "$out_size"

expect_ok "exec: set a variable" wfs_exec "$W" 'KEEP=survives'
t0=$(wfs_now)
expect_errno ETIMEDOUT wfs_exec "$W" 'sleep 30'
elapsed=$(($(wfs_now) - t0))
expect_match "the timed-out run was cut after about 2 s (took $elapsed s)" '^([0-9]|1[0-5])$' "$elapsed"
expect_eq "status of a timed-out run" 124 "$(wfs_val "$W/status")"
expect_match "stderr says the run was killed" 'exec_timeout' "$(wfs_val "$W/stderr")"
expect_eq "session survives the time-out" survives "$(wfs_run "$W" 'echo $KEEP')"
expect_eq "state after the time-out" running "$(wfs_val "$W/state")"

wfs_umount
expect_no_qemu "no qemu left after unmount" 20
