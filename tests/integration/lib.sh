# lib.sh: the harness every mount test sources.  It mounts worldfs on a
# private temp dir, cleans up exactly what it started (our worldfs pid, the
# qemu processes that use our state dir), and prints TAP-style results.
#
# Environment: WORLDFS (the binary, required), WORLDFS_SRC (source root),
# WORLDFS_OPTS (extra -o options for every mount), WFS_KEEP=1 (keep the
# temp dir for inspection); with backend=morph, WFS_MORPH_URL and
# WFS_MORPH_CTL (the API stand-in and its client; tests/morph/run.sh sets
# them).  Exit status: 0 all passed, 1 something failed, 77 skipped because
# FUSE is not usable here (the reason is printed).
#
# The tests drive worldfs through plain file operations only.

set -u
LC_ALL=C   # error messages are matched as text
export LC_ALL

wfs_n=0          # assertions so far
wfs_failed=0     # failed assertions
wfs_nmount=0     # mounts so far (one log file each)
wfs_pid=         # our worldfs, while it runs
wfs_fs_mounts=   # tmpfs mounts of wfs_small_fs, unmounted at exit
wfs_tmp=
wfs_name=${0##*/}

# The backend every mount uses (backend= in WORLDFS_OPTS): vm or morph.
# Tests that look at the sandboxes themselves (qemu pids, Morph instances)
# branch on it.
case ,${WORLDFS_OPTS:-}, in
*,backend=morph,*) WFS_BACKEND=morph ;;
*) WFS_BACKEND=vm ;;
esac

# ---- TAP-ish output --------------------------------------------------------

wfs_diag() {
	for wfs_l; do
		printf '%s\n' "$wfs_l" | sed 's/^/#   /'
	done
}

ok() {
	wfs_n=$((wfs_n + 1))
	printf 'ok %d - %s\n' "$wfs_n" "$1"
}

not_ok() {
	wfs_n=$((wfs_n + 1))
	wfs_failed=$((wfs_failed + 1))
	printf 'not ok %d - %s\n' "$wfs_n" "$1"
	shift
	wfs_diag "$@"
	# A dead worldfs fails everything after it: stop here, say why.
	if [ -n "$wfs_pid" ] && [ -e "$wfs_tmp/worldfs.rc" ] && [ -z "${wfs_bailing:-}" ]; then
		wfs_bailing=1
		bail "worldfs (pid $wfs_pid) died with status $(cat "$wfs_tmp/worldfs.rc") (its log follows)"
	fi
	return 1
}

# Stop the whole test: something it depends on did not work.
# bail DESC [DIAGNOSTIC...]
bail() {
	not_ok "$@"
	printf 'Bail out! %s\n' "$1"
	exit 1
}

# ---- assertions -------------------------------------------------------------

# expect_eq DESC EXPECTED ACTUAL
expect_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "expected: $(printf '%s' "$2" | head -c 2000)" \
			"observed: $(printf '%s' "$3" | head -c 2000)"
	fi
}

# expect_match DESC ERE ACTUAL
expect_match() {
	if printf '%s\n' "$3" | grep -Eq -- "$2"; then
		ok "$1"
	else
		not_ok "$1" "expected to match: $2" "observed: $(printf '%s' "$3" | head -c 2000)"
	fi
}

# expect_ok DESC CMD [ARG...]: CMD succeeds.
expect_ok() {
	wfs_desc=$1
	shift
	if "$@" >"$wfs_tmp/cmd.out" 2>"$wfs_tmp/cmd.err"; then
		ok "$wfs_desc"
	else
		not_ok "$wfs_desc" "command failed (status $?): $*" "$(head -c 2000 "$wfs_tmp/cmd.err")"
	fi
}

# The text strerror(3) gives for an errno name, as coreutils prints it.
wfs_strerror() {
	case $1 in
	EINVAL) echo 'Invalid argument' ;;
	EEXIST) echo 'File exists' ;;
	ENOENT) echo 'No such file or directory' ;;
	ENOTEMPTY) echo 'Directory not empty' ;;
	EROFS) echo 'Read-only file system' ;;
	ETIMEDOUT) echo 'Connection timed out' ;;
	EIO) echo 'Input/output error' ;;
	EACCES) echo 'Permission denied' ;;
	EBUSY) echo 'Device or resource busy' ;;
	EPERM) echo 'Operation not permitted' ;;
	EFBIG) echo 'File too large' ;;
	EDQUOT) echo 'Disk quota exceeded' ;;
	ENOSPC) echo 'No space left on device' ;;
	ENOTDIR) echo 'Not a directory' ;;
	EISDIR) echo 'Is a directory' ;;
	*) echo "unknown errno name $1" >&2; return 1 ;;
	esac
}

# expect_errno ERRNO-NAME CMD [ARG...]: CMD fails, and the message it
# prints names that error.  CMD is a file operation (mkdir, rmdir, rm, cat,
# ls, or wfs_put/wfs_exec below, which report errors of write and close).
expect_errno() {
	wfs_want=$1
	shift
	wfs_text=$(wfs_strerror "$wfs_want") || return 1
	if "$@" >"$wfs_tmp/cmd.out" 2>"$wfs_tmp/cmd.err"; then
		not_ok "$* -> $wfs_want" "succeeded, expected $wfs_want ($wfs_text)"
	elif grep -qF -- "$wfs_text" "$wfs_tmp/cmd.err"; then
		ok "$* -> $wfs_want"
	else
		not_ok "$* -> $wfs_want" "failed, but not with $wfs_want ($wfs_text):" \
			"$(head -c 2000 "$wfs_tmp/cmd.err")"
	fi
}

# ---- file operations with honest error reports -------------------------------

# wfs_put FILE VALUE: write "VALUE\n" with a truncating open, like
# `echo VALUE > FILE`, but through coreutils printf, which reports the
# errno of a failed write(2) or close(2) (the shell's builtin echo does not).
wfs_put() {
	env printf '%s\n' "$2" >"$1"
}

# wfs_exec DIR CODE: run CODE in the world DIR (write DIR/exec, close).
# Returns the status of close(2), not the status of the run.
wfs_exec() {
	env printf '%s\n' "$2" >"$1/exec"
}

# wfs_run DIR CODE: run CODE and print its stdout; non-zero when the run
# could not be done (close failed), with the reason on stderr.
wfs_run() {
	wfs_exec "$1" "$2" && cat "$1/stdout"
}

# wfs_val FILE: the content of a value file (trailing newline stripped), or
# "<error: ...>" so that a comparison fails visibly.
wfs_val() {
	cat "$1" 2>"$wfs_tmp/val.err" || echo "<error: $(cat "$wfs_tmp/val.err")>"
}

# wfs_vals FILE...: the values of several files, on one line.
wfs_vals() {
	wfs_sep=
	for wfs_f; do
		printf '%s%s' "$wfs_sep" "$(wfs_val "$wfs_f")"
		wfs_sep=' '
	done
	echo
}

# wfs_json_num FILE KEY: a number-valued key of a one-line JSON object.
wfs_json_num() {
	sed -n "s/.*\"$2\": *\\(-\\{0,1\\}[0-9][0-9.]*\\).*/\\1/p" "$1" | head -n 1
}

# wfs_qemu_pids: pids of qemu processes whose command line names our temp dir.
wfs_qemu_pids() {
	[ -n "$wfs_tmp" ] || return 0
	for wfs_p in /proc/[0-9]*; do
		case $(cat "$wfs_p/comm" 2>/dev/null) in
		qemu*) ;;
		*) continue ;;
		esac
		if tr '\0' ' ' <"$wfs_p/cmdline" 2>/dev/null | grep -qF -- "$wfs_tmp/"; then
			echo "${wfs_p#/proc/}"
		fi
	done
}

# wfs_morph METHOD PATH [JSON]: one request to the Morph API stand-in, with
# the key from MORPH_API_KEY; prints the reply; fails unless it is a 2xx.
wfs_morph() {
	python3 "${WFS_MORPH_CTL:?not run by tests/morph/run.sh}" ctl "${WFS_MORPH_URL:?}" "$@"
}

# ---- mount / unmount -------------------------------------------------------

wfs_now() { date +%s; }

# wfs_is_mounted: something is mounted on $MNT, even a dead FUSE mount
# (where mountpoint(1) fails with ENOTCONN).
wfs_is_mounted() {
	awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# wfs_alive: our worldfs has not exited yet.
wfs_alive() {
	[ -n "$wfs_pid" ] && [ ! -e "$wfs_tmp/worldfs.rc" ]
}

# wfs_mount [OPTS]: start "$WORLDFS -f -o state=$STATE[,OPTS] $MNT" in the
# background and wait (60 s at most) until it is mounted.  STATE persists
# across mounts in one test; wfs_new_state starts afresh.
wfs_mount() {
	wfs_nmount=$((wfs_nmount + 1))
	wfs_log=$wfs_tmp/worldfs.$wfs_nmount.log
	wfs_opts=state=$STATE
	[ -n "${WORLDFS_OPTS:-}" ] && wfs_opts=$wfs_opts,$WORLDFS_OPTS
	[ -n "${1:-}" ] && wfs_opts=$wfs_opts,$1
	rm -f "$wfs_tmp/worldfs.rc" "$wfs_tmp/worldfs.pid"
	mkdir -p "$MNT" "$STATE"
	printf '# mount %d: %s -f -o %s %s\n' "$wfs_nmount" "$WORLDFS" "$wfs_opts" "$MNT"
	# The subshell records worldfs's own pid (so that we only ever signal
	# that process) and its exit status once it ends.
	(
		"$WORLDFS" -f -o "$wfs_opts" "$MNT" </dev/null >>"$wfs_log" 2>&1 &
		echo $! >"$wfs_tmp/worldfs.pid.new"
		mv "$wfs_tmp/worldfs.pid.new" "$wfs_tmp/worldfs.pid"
		wait $!
		echo $? >"$wfs_tmp/worldfs.rc.new"
		mv "$wfs_tmp/worldfs.rc.new" "$wfs_tmp/worldfs.rc"
	) 2>/dev/null &
	wfs_deadline=$(($(wfs_now) + 60))
	while [ ! -s "$wfs_tmp/worldfs.pid" ]; do
		sleep 0.05
	done
	wfs_pid=$(cat "$wfs_tmp/worldfs.pid")
	while ! mountpoint -q "$MNT"; do
		if [ -e "$wfs_tmp/worldfs.rc" ]; then
			bail "worldfs exited with status $(cat "$wfs_tmp/worldfs.rc") before mounting (its log follows)"
		fi
		if [ "$(wfs_now)" -ge "$wfs_deadline" ]; then
			bail "worldfs did not mount $MNT within 60 s"
		fi
		sleep 0.1
	done
	ok "mount $wfs_nmount (-o $wfs_opts)"
}

# wfs_wait_exit SECONDS: wait for our worldfs to exit; 1 on time-out.
wfs_wait_exit() {
	wfs_deadline=$(($(wfs_now) + $1))
	while wfs_alive; do
		[ "$(wfs_now)" -ge "$wfs_deadline" ] && return 1
		sleep 0.1
	done
	return 0
}

# wfs_umount: clean unmount; asserts that worldfs exits by itself, with
# status 0 (a sanitizer build exits non-zero on leaks or errors).
wfs_umount() {
	wfs_i=0
	until fusermount3 -u "$MNT" 2>"$wfs_tmp/umount.err"; do
		wfs_i=$((wfs_i + 1))
		if [ $wfs_i -ge 20 ]; then
			not_ok "fusermount3 -u $MNT" "$(cat "$wfs_tmp/umount.err")"
			break
		fi
		sleep 0.5
	done
	if ! wfs_wait_exit 120; then
		not_ok "worldfs (pid $wfs_pid) exits after unmount" "still running after 120 s; killing it"
		kill -9 "$wfs_pid" 2>/dev/null
		wfs_wait_exit 10
	fi
	wfs_pid=
	if [ -e "$wfs_tmp/worldfs.rc" ]; then
		expect_eq "worldfs exit status after clean unmount (sanitizer builds: no leaks)" \
			0 "$(cat "$wfs_tmp/worldfs.rc")" ||
			wfs_diag "worldfs log (last 40 lines):" "$(tail -n 40 "$wfs_log")"
	fi
}

# wfs_small_fs DIR MIB: a tmpfs of MIB MiB on DIR (a small disk), unmounted
# when the test ends whatever happens.
wfs_small_fs() {
	mkdir -p "$1" && mount -t tmpfs -o "size=${2}m,mode=0700" worldfs-test "$1" || return 1
	wfs_fs_mounts="$wfs_fs_mounts $1"
}

# wfs_wait_recovered: wait (up to 120 s) until the mount's background pass
# over the sandboxes of its registry has ended ("recovered" in its log):
# until then a world whose sandbox is gone still reads running.
wfs_wait_recovered() {
	wfs_deadline=$(($(wfs_now) + 120))
	until grep -q 'worldfs: recovered ' "$wfs_log"; do
		[ "$(wfs_now)" -ge "$wfs_deadline" ] && { not_ok "the mount's recovery pass ended within 120 s"; return 1; }
		sleep 0.1
	done
}

# wfs_kill9: kill -9 our worldfs (a crash), then clear the dead mount.
wfs_kill9() {
	kill -9 "$wfs_pid"
	wfs_wait_exit 10 || bail "worldfs (pid $wfs_pid) survived kill -9"
	wfs_pid=
	fusermount3 -u -z "$MNT" 2>/dev/null
	wfs_is_mounted && bail "$MNT still mounted after fusermount3 -u -z"
	ok "kill -9 worldfs and clear the dead mount"
}

# wfs_new_state: a fresh, empty state dir for the next mount.
wfs_new_state() {
	wfs_nstate=$((${wfs_nstate:-0} + 1))
	STATE=$wfs_tmp/state$wfs_nstate
}

# wfs_wait_no_qemu SECONDS: wait until none of our qemu processes is left.
wfs_wait_no_qemu() {
	wfs_deadline=$(($(wfs_now) + $1))
	while [ -n "$(wfs_qemu_pids)" ]; do
		[ "$(wfs_now)" -ge "$wfs_deadline" ] && return 1
		sleep 0.2
	done
	return 0
}

# expect_no_qemu DESC SECONDS: none of our qemu processes is left (waits
# up to SECONDS); names the leftovers otherwise.
expect_no_qemu() {
	if wfs_wait_no_qemu "$2"; then
		ok "$1"
	else
		wfs_left=
		for wfs_q in $(wfs_qemu_pids); do
			wfs_left="$wfs_left pid $wfs_q: $(tr '\0' ' ' <"/proc/$wfs_q/cmdline" | sed 's/.*-name \([^ ]*\).*/-name \1/')"
		done
		not_ok "$1" "qemu still running after $2 s:$wfs_left"
	fi
}

# Runs on every exit: never leave a mount, a worldfs or a VM behind.  Only
# processes we started are signalled, by pid.
wfs_cleanup() {
	wfs_rc=$?
	trap - EXIT
	set +e
	cd /
	if [ -n "$wfs_tmp" ] && [ -d "$wfs_tmp" ]; then
		if wfs_is_mounted; then
			fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT" 2>/dev/null
		fi
		if wfs_alive; then
			wfs_wait_exit 30 || kill -9 "$wfs_pid" 2>/dev/null
			wfs_wait_exit 5
		fi
		for wfs_q in $(wfs_qemu_pids); do
			kill -9 "$wfs_q" 2>/dev/null
		done
		# Filesystems a test mounted for itself (wfs_small_fs).
		for wfs_m in $wfs_fs_mounts; do
			umount "$wfs_m" 2>/dev/null || umount -l "$wfs_m" 2>/dev/null
		done
		if [ "$wfs_failed" -gt 0 ] || [ "$wfs_rc" -ne 0 ]; then
			for wfs_f in "$wfs_tmp"/worldfs.*.log; do
				[ -s "$wfs_f" ] || continue
				echo "# --- $wfs_f (last 30 lines)"
				tail -n 30 "$wfs_f" | sed 's/^/#   /'
			done
		fi
		if wfs_is_mounted; then
			echo "# $MNT is still mounted; not removing $wfs_tmp"
		elif [ "${WFS_KEEP:-0}" = 1 ]; then
			echo "# kept $wfs_tmp"
		else
			rm -rf --one-file-system "$wfs_tmp"
		fi
	fi
	if [ "$wfs_rc" -eq 77 ]; then
		exit 77
	fi
	echo "1..$wfs_n"
	if [ "$wfs_failed" -gt 0 ]; then
		echo "# $wfs_name: $wfs_failed of $wfs_n failed"
		exit 1
	fi
	if [ "$wfs_rc" -ne 0 ]; then
		exit "$wfs_rc"
	fi
	echo "# $wfs_name: all $wfs_n passed"
	exit 0
}

wfs_skip() {
	echo "1..0 # SKIP $wfs_name: $*"
	echo "$wfs_name: skipped: $*" >&2
	exit 77
}

# ---- setup -----------------------------------------------------------------

[ -n "${WORLDFS:-}" ] || { echo "$wfs_name: WORLDFS is not set (the worldfs binary)" >&2; exit 1; }
[ -x "$WORLDFS" ] || { echo "$wfs_name: $WORLDFS: not an executable" >&2; exit 1; }

# Skip (77) only when FUSE itself is missing; anything else is a failure.
if ! grep -qw fuse /proc/filesystems 2>/dev/null; then
	modprobe fuse 2>/dev/null
	grep -qw fuse /proc/filesystems 2>/dev/null || wfs_skip "the kernel has no FUSE support (/proc/filesystems lacks fuse)"
fi
[ -c /dev/fuse ] || wfs_skip "/dev/fuse is missing"
if ! { : <>/dev/fuse; } 2>/dev/null; then
	wfs_skip "/dev/fuse cannot be opened for reading and writing by uid $(id -u)"
fi
command -v fusermount3 >/dev/null 2>&1 || wfs_skip "fusermount3 is missing (install fuse3)"
command -v mountpoint >/dev/null 2>&1 || { echo "$wfs_name: mountpoint(1) missing" >&2; exit 1; }

trap wfs_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

wfs_tmp=$(mktemp -d /tmp/worldfs-test.XXXXXX) || exit 1
chmod 0755 "$wfs_tmp"   # other uids must reach the mount point (t_tree)
MNT=$wfs_tmp/mnt
wfs_new_state
echo "# $wfs_name: $WORLDFS, temp dir $wfs_tmp"
