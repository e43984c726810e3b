#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_python.sh: the debian image's worlds: the persistent Python session
# (state across runs, branches and snapshots; script semantics; time-out,
# output cap; child processes' output), one-off #! scripts, reseed=all and
# reseed=kernel, the root disk's writes (snapshot, branch, remount), and
# what a run leaves when its world dies under it.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "the Python session needs backend=vm"

# py DIR CODE, pyrun DIR CODE: wfs_exec and wfs_run of CODE, a Python
# block, in DIR's Python session.
py() {
	wfs_exec "$1" "#!python3
$2"
}

pyrun() {
	wfs_run "$1" "#!python3
$2"
}

wfs_mount
W=$MNT/w
expect_ok "mkdir w (debian)" mkdir "$W" || bail "cannot create a world"
expect_match "w/info names the debian image" '"image": *"debian"' "$(wfs_val "$W/info")"
expect_match "the golden state holds a started Python session" '"sessions": *\["sh", *"python3"\]' \
	"$(wfs_val "$W/info")"

# The issue's own check, as a new user types it.
expect_ok "import pandas, a DataFrame of 1000 rows" \
	sh -c 'printf "#!python3\nimport pandas as pd\ndf = pd.DataFrame({\"a\": range(1000)})\n" >"$1/exec"' _ "$W"
expect_eq "status 0" 0 "$(wfs_val "$W/status")"
expect_ok "mkdir w/v" mkdir "$W/v"
expect_eq "the verse has the parent's DataFrame" 1000 \
	"$(sh -c 'printf "#!python3\nprint(len(df))\n" >"$1/exec" && cat "$1/stdout"' _ "$W/v")"

# Names persist from run to run; `#!python` is the same session.
expect_ok "x = 41" py "$W" 'x = 41'
expect_eq "x + 1 in the next run" 42 "$(pyrun "$W" 'print(x + 1)')"
expect_eq "#!python is the same session" 41 \
	"$(printf '#!python\nprint(x)\n' >"$W/exec" && cat "$W/stdout")"
expect_eq "the sh session is another one" "unset" "$(wfs_run "$W" 'echo ${x:-unset}')"
expect_eq "__name__ is __main__, and the session's own names are not there" "__main__ False False" \
	"$(pyrun "$W" 'print(__name__, "execute" in dir(), "worldfs_session" in __import__("sys").modules)')"

# Verses: the parent's objects from before the branch, never a sibling's.
expect_ok "mkdir w/a w/b" mkdir "$W/a" "$W/b"
expect_ok "a changes x and df" py "$W/a" 'x = "a"; df = df.head(3)'
expect_eq "b still has the parent's x and df" "41 1000" "$(pyrun "$W/b" 'print(x, len(df))')"
expect_eq "w is not touched by a" "41 1000" "$(pyrun "$W" 'print(x, len(df))')"
expect_eq "a has its own" "a 3" "$(pyrun "$W/a" 'print(x, len(df))')"

# A snapshot's Python objects, in a verse branched from it.
expect_ok "snap = 'before'" py "$W" 'snap = "before"'
expect_ok "mkdir w/snapshot/s" mkdir "$W/snapshot/s"
expect_ok "snap = 'after'" py "$W" 'snap = "after"'
expect_ok "mkdir w/snapshot/s/sv" mkdir "$W/snapshot/s/sv"
expect_eq "the verse from the snapshot sees the snapshot's object" before "$(pyrun "$W/snapshot/s/sv" 'print(snap)')"
expect_eq "w goes on with its own" after "$(pyrun "$W" 'print(snap)')"

# Script semantics: traceback and status 1, sys.exit, the session lives on.
expect_ok "an uncaught exception closes without error" py "$W" 'print("before")
raise ValueError("boom")'
expect_eq "status of an uncaught exception" 1 "$(wfs_val "$W/status")"
expect_eq "stdout before it" before "$(wfs_val "$W/stdout")"
expect_match "stderr holds the traceback" 'Traceback \(most recent call last\)' "$(wfs_val "$W/stderr")"
expect_match "and the exception" 'ValueError: boom' "$(wfs_val "$W/stderr")"
expect_ok "a function defined in one run" py "$W" 'def f():
    return 1 / 0'
expect_ok "fails in the next" py "$W" 'f()'
expect_match "the traceback shows the line of the earlier run" 'return 1 / 0' "$(wfs_val "$W/stderr")"
expect_ok "a syntax error" py "$W" 'if then'
expect_eq "status of a syntax error" 1 "$(wfs_val "$W/status")"
expect_match "stderr says SyntaxError" 'SyntaxError' "$(wfs_val "$W/stderr")"
expect_ok "sys.exit(7)" py "$W" 'import sys; sys.exit(7)'
expect_eq "status of sys.exit(7)" 7 "$(wfs_val "$W/status")"
expect_ok "sys.exit()" py "$W" 'sys.exit()'
expect_eq "status of sys.exit()" 0 "$(wfs_val "$W/status")"
expect_ok "sys.exit('bye')" py "$W" 'sys.exit("bye")'
expect_eq "status of sys.exit('bye')" "1 bye" "$(wfs_val "$W/status") $(wfs_val "$W/stderr")"
expect_eq "the session survived all of them" 41 "$(pyrun "$W" 'print(x)')"
expect_eq "input() reads an empty stdin" "EOFError" \
	"$(pyrun "$W" 'try:
    input()
except EOFError:
    print("EOFError")')"

# Output of child processes is captured too, in order with flushed prints.
expect_eq "a subprocess's stdout" "py child" "$(pyrun "$W" 'import subprocess, os
print("py", flush=True)
subprocess.run(["echo", "child"])' | tr '\n' ' ' | sed 's/ $//')"
expect_ok "os.system writing to stderr" py "$W" 'os.system("echo from-child >&2")'
expect_eq "its stderr" from-child "$(wfs_val "$W/stderr")"
expect_eq "a run that replaced sys.stdout does not take the next run's output" next \
	"$(py "$W" 'import io; sys.stdout = io.StringIO()'; pyrun "$W" 'print("next")')"

# One-off scripts: #!/ABS/PATH [ARG], in the sh session's directory and
# environment.
expect_ok "sh: cd /tmp; export ONEOFF=yes" wfs_exec "$W" 'cd /tmp && export ONEOFF=yes'
expect_eq "#!/usr/bin/python3 runs a new interpreter" "/tmp yes False" \
	"$(printf '#!/usr/bin/python3\nimport os\nprint(os.getcwd(), os.environ.get("ONEOFF"), "x" in dir())\n' >"$W/exec" &&
		cat "$W/stdout")"
expect_eq "#!/bin/bash -e stops at the first failure" "1 one" \
	"$(printf '#!/bin/bash -e\necho one\nfalse\necho two\n' >"$W/exec"; echo "$(wfs_val "$W/status") $(wfs_val "$W/stdout")")"
expect_ok "#!/no/such/interpreter" sh -c 'printf "#!/no/such/interpreter\n" >"$1/exec"' _ "$W"
expect_eq "status 127" 127 "$(wfs_val "$W/status")"

# info lists the sessions alive.
expect_match "info lists sh and python3" '"sessions": *\["sh", *"python3"\]' "$(wfs_val "$W/info")"

# Clone uniqueness: three siblings draw three different numbers.
expect_ok "import random, numpy" py "$W" 'import random, numpy'
expect_ok "mkdir w/r1 w/r2 w/r3" mkdir "$W/r1" "$W/r2" "$W/r3"
draws=$(for v in r1 r2 r3; do pyrun "$W/$v" 'print(random.random(), numpy.random.rand())'; done)
expect_eq "reseed=all: three verses, three different random.random()" 3 \
	"$(printf '%s\n' "$draws" | cut -d' ' -f1 | sort -u | wc -l)"
expect_eq "reseed=all: three different numpy.random.rand()" 3 \
	"$(printf '%s\n' "$draws" | cut -d' ' -f2 | sort -u | wc -l)"
expect_eq "the kernel's RNG differs too" 3 \
	"$(for v in r1 r2 r3; do wfs_run "$W/$v" 'od -An -tx8 -N8 /dev/urandom'; done | sort -u | wc -l)"

# The root disk: writes live in guest memory, captured with it.
expect_ok "write a file under /srv" wfs_exec "$W" 'echo kept >/srv/file && mkdir -p /opt/app'
expect_ok "mkdir w/snapshot/disk" mkdir "$W/snapshot/disk"
expect_ok "rm it in w" wfs_exec "$W" 'rm /srv/file'
expect_ok "mkdir w/snapshot/disk/d" mkdir "$W/snapshot/disk/d"
expect_eq "the verse from the snapshot has the file" kept "$(wfs_run "$W/snapshot/disk/d" 'cat /srv/file')"
expect_ok "mkdir w/d2 (branched after the rm)" mkdir "$W/d2"
expect_eq "a verse branched later does not" gone "$(wfs_run "$W/d2" 'cat /srv/file 2>/dev/null || echo gone')"
expect_ok "d writes its own" wfs_exec "$W/snapshot/disk/d" 'echo d >/srv/file'
expect_eq "w does not see d's file" gone "$(wfs_run "$W" 'cat /srv/file 2>/dev/null || echo gone')"
expect_eq "the root is an overlay of half the memory" overlay "$(wfs_run "$W" 'stat -f -c %T / 2>/dev/null | sed s/overlayfs/overlay/')"
wfs_umount

# A clean unmount suspends everything; the next mount resumes it: the
# Python objects and the root disk's writes are back.
wfs_mount exec_timeout=3,output_max=2000
expect_eq "after a remount: the verse's Python names" "a 3" "$(pyrun "$W/a" 'print(x, len(df))')"
expect_eq "after a remount: d's file on the root disk" d "$(wfs_run "$W/snapshot/disk/d" 'cat /srv/file')"

# The limits of this mount: output_max=2000, exec_timeout=3.
expect_ok "print 5000 bytes" py "$W" 'print("y" * 5000)'
expect_match "stdout is cut at output_max" 'output truncated at 2000 bytes' "$(wfs_val "$W/stdout")"
expect_errno ETIMEDOUT py "$W" 'import time
time.sleep(30)'
expect_eq "status of a timed-out run" 124 "$(wfs_val "$W/status")"
expect_match "stderr: KeyboardInterrupt" 'KeyboardInterrupt' "$(wfs_val "$W/stderr")"
expect_match "stderr: the time-out" 'exec_timeout' "$(wfs_val "$W/stderr")"
expect_eq "the names survive a time-out" 41 "$(pyrun "$W" 'print(x)')"
# An interpreter that does not come back within 2 s is restarted.
t0=$(wfs_now)
expect_errno ETIMEDOUT py "$W" 'import time
while True:
    try:
        time.sleep(0.2)
    except KeyboardInterrupt:
        pass'
expect_ok "... within exec_timeout + about 2 s ($(($(wfs_now) - t0)) s)" test $(($(wfs_now) - t0)) -le 12
expect_eq "status 124" 124 "$(wfs_val "$W/status")"
expect_match "stderr says the session restarted and lost its names" 'session restarted.*names are lost' \
	"$(wfs_val "$W/stderr")"
expect_eq "a fresh session: the names are gone" False "$(pyrun "$W" 'print("x" in dir())')"
expect_eq "a fresh session works, with numpy" 6 "$(pyrun "$W" 'import numpy as np; print(int(np.arange(4).sum()))')"

# A world that dies during a run: status 255 and a note, never the last
# run's outputs; the world reads failed.
expect_ok "echo before" wfs_exec "$W/b" 'echo before'
qb=$(wfs_json_num "$W/b/info" pid)
(sleep 1; kill -STOP "$qb") &
stopper=$!
expect_errno EIO wfs_exec "$W/b" 'sleep 2; echo after'
wait "$stopper"
expect_eq "status of the run the world died in" 255 "$(wfs_val "$W/b/status")"
expect_eq "its stdout is its own (empty)" "" "$(wfs_val "$W/b/stdout")"
expect_match "its stderr says what happened" 'world died during this run' "$(wfs_val "$W/b/stderr")"
expect_eq "b reads failed" failed "$(wfs_val "$W/b/state")"
kill -CONT "$qb" 2>/dev/null
expect_errno EIO wfs_exec "$W/b" 'true'
expect_match "b's info says why it failed" '"failure": *"sandbox died during a run' "$(wfs_val "$W/b/info")"
wfs_umount

# reseed=kernel: common random numbers across sibling verses.
wfs_new_state
wfs_mount reseed=kernel
W=$MNT/k
expect_ok "mkdir k (reseed=kernel)" mkdir "$W"
expect_ok "import random, numpy" py "$W" 'import random, numpy'
expect_ok "mkdir k/r1 k/r2 k/r3" mkdir "$W/r1" "$W/r2" "$W/r3"
draws=$(for v in r1 r2 r3; do pyrun "$W/$v" 'print(random.random(), numpy.random.rand())'; done)
expect_eq "reseed=kernel: three verses draw the same random.random() and numpy.random.rand()" 1 \
	"$(printf '%s\n' "$draws" | sort -u | wc -l)"
expect_eq "the kernel's RNG still differs" 3 \
	"$(for v in r1 r2 r3; do wfs_run "$W/$v" 'od -An -tx8 -N8 /dev/urandom'; done | sort -u | wc -l)"
expect_ok "mkdir k2 (a new world)" mkdir "$MNT/k2"
expect_eq "new worlds are never alike, even under reseed=kernel" 2 \
	"$(for w in "$W" "$MNT/k2"; do pyrun "$w" 'import random; print(random.random())'; done | sort -u | wc -l)"

# The man page's EXAMPLES run as written (but for the mount and unmount
# lines, and with this mount point for /mnt/w), every "# -> value" checked.
awk '/^\.SH EXAMPLES/ { e = 1 } e && x && /^\.EE/ { exit } x { print } e && /^\.EX/ { x = 1 }' \
	"$WORLDFS_SRC/man/worldfs.1" | sed -e 's/\\-/-/g' -e 's/\\(->/->/g' -e 's/\\e/\\/g' >"$wfs_tmp/example.txt"
{
	echo '__check() { __got=$(eval "$2" 2>&1 | tr "\n" " " | sed "s/ *$//")'
	echo '  if [ "$__got" = "$1" ]; then echo "checked: $2"; else echo "MISMATCH: $2: got [$__got], want [$1]"; fi; }'
	awk -v mnt="$MNT" '
		function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
		NR == 1 || /fusermount3/ { next }
		{ gsub("/mnt/w", mnt) }
		match($0, / +# -> /) { print "__check " q(substr($0, RSTART + RLENGTH)) " " q(substr($0, 1, RSTART - 1)); next }
		{ print }' "$wfs_tmp/example.txt"
} >"$wfs_tmp/example.sh"
arrows=$(grep -c ' # -> ' "$wfs_tmp/example.txt")
expect_ok "the man page has an example with checked lines ($arrows)" test "$arrows" -ge 8
(cd "$MNT" && sh "$wfs_tmp/example.sh") >"$wfs_tmp/example.out" 2>&1
expect_eq "the man page's example: every checked line prints what the page says" \
	"$arrows checked, 0 mismatched" \
	"$(grep -c '^checked: ' "$wfs_tmp/example.out") checked, $(grep -c '^MISMATCH' "$wfs_tmp/example.out") mismatched" ||
	wfs_diag "$(cat "$wfs_tmp/example.out")"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
