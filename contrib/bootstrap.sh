#!/bin/sh
# bootstrap.sh: from a Debian 12 host to a built worldfs (packages, meson,
# ninja, guest image), then optionally the demo or the full test run.
#
#   sh contrib/bootstrap.sh [build|demo|test]      (as root; default: build)
#
# Safe to re-run: it installs only missing packages, configures only an
# unconfigured build dir, and ninja rebuilds only what changed.
#   build  packages + build/ (worldfs, agent, guest images: debian and busybox)
#   demo   build, then mount worldfs on a temp dir and run contrib/demo.sh
#   test   build, then the unit, mount and morph suites in build/ and again
#          in build-asan/ (AddressSanitizer + UBSan), and the unit suite in
#          build-tsan/ (ThreadSanitizer); ends with "N passed, N failed"
#          (morph: the mount tests with backend=morph against a local stand-in
#          for the Morph Cloud API, tests/morph/standin.py); then the libFuzzer
#          targets (tests/fuzz) in build-fuzz/ (clang), 60 s each, and
#          the 10-minute soak (contrib/soak) in build/
set -eu

PACKAGES="qemu-system-x86 qemu-utils busybox-static kmod libfuse3-dev fuse3 meson
ninja-build pkg-config libcmocka-dev libsqlite3-dev libjansson-dev
libcurl4-openssl-dev sqlite3 cpio xz-utils gcc libc6-dev xfsprogs python3
mmdebstrap squashfs-tools-ng libtsan2 clang libclang-rt-14-dev curl ca-certificates"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

mode=${1:-build}
case $mode in
build | demo | test) ;;
*) echo "usage: sh contrib/bootstrap.sh [build|demo|test]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and mounts)"
cd "$(dirname "$0")/.."
src=$(pwd)
exec </dev/null

# ---- packages ----------------------------------------------------------------
missing=
for p in $PACKAGES; do
	case $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) in
	*" ok installed") ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -n "$missing" ]; then
	say "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086 # one word per package
	apt-get install -y -q --no-install-recommends $missing
else
	say "packages: all present"
fi

# ---- just --------------------------------------------------------------------
# The World Runtime's commands are `just world-runtime-*` (contrib/justfile),
# and Debian 12 has no just.  The npm registry's rust-just ships the
# binary (package rust-just-linux-x64): fetched from there, checked
# against the SHA-512 pinned here, installed as /usr/local/bin/just.
JUST_VERSION=1.57.0
JUST_SHA512=1d605d5b347174312087fecb6461891c5d27b441933862b7dc03473983ea5e2597f365b3b6f55c79ab02b3ea07391d1b6675a54c3a2e1fad4427e003d3731fc4
if command -v just >/dev/null 2>&1; then
	say "just: $(command -v just)"
elif [ "$(dpkg --print-architecture)" = amd64 ]; then
	say "installing just $JUST_VERSION from the npm registry (rust-just)"
	jtmp=$(mktemp -d)
	curl -fsSL --retry 3 -o "$jtmp/just.tgz" \
		"https://registry.npmjs.org/rust-just-linux-x64/-/rust-just-linux-x64-$JUST_VERSION.tgz" ||
		die "cannot download rust-just-linux-x64 $JUST_VERSION"
	echo "$JUST_SHA512  $jtmp/just.tgz" | sha512sum -c --quiet - || die "rust-just: checksum mismatch"
	tar -xzf "$jtmp/just.tgz" -C "$jtmp" package/bin/just
	install -m 0755 "$jtmp/package/bin/just" /usr/local/bin/just
	rm -rf "$jtmp"
else
	say "no just for $(dpkg --print-architecture) here: install it to use contrib/justfile"
fi

# ---- the user QEMU runs as ---------------------------------------------------
# worldfs started as root drops every QEMU to this user once it is started
# (qemu_user= in worldfs(1)); without it QEMU would run as nobody.
if ! id -u worldfs >/dev/null 2>&1; then
	say "adding the system user worldfs (QEMU runs as it)"
	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin worldfs
fi

# ---- build -------------------------------------------------------------------
# configure DIR [MESON-OPTION...]: meson setup, only when DIR is not yet a
# usable build dir (ninja re-runs meson by itself when meson.build changes).
configure() {
	dir=$1
	shift
	if [ -f "$dir/meson-private/coredata.dat" ] && [ -f "$dir/build.ninja" ]; then
		return 0
	elif [ -f "$dir/meson-private/coredata.dat" ]; then
		say "meson setup --reconfigure $dir $*"
		meson setup --reconfigure "$dir" "$@"
	else
		say "meson setup $dir $*"
		meson setup "$dir" "$@"
	fi
}

configure build
say "ninja -C build (worldfs, agent, guest images)"
ninja -C build
[ -x build/fs/worldfs ] || die "build/fs/worldfs was not built"

# ---- demo --------------------------------------------------------------------
# mounted DIR: something is mounted there, even a dead FUSE mount.
mounted() {
	awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# alive PID: the process exists and is not a zombie.
alive() {
	[ -r "/proc/$1/stat" ] || return 1
	case $(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) in
	Z | X | '') return 1 ;;
	esac
	return 0
}

demo() {
	tmp=$(mktemp -d /tmp/worldfs-demo.XXXXXX)
	mnt=$tmp/mnt
	state=$tmp/state
	mkdir "$mnt" "$state"
	pid=
	trap demo_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
	say "mounting build/fs/worldfs -o state=$state $mnt (log: $tmp/worldfs.log)"
	build/fs/worldfs -f -o "state=$state" "$mnt" </dev/null >"$tmp/worldfs.log" 2>&1 &
	pid=$!
	deadline=$(($(date +%s) + 60))
	while ! mountpoint -q "$mnt"; do
		if ! alive "$pid"; then
			tail -n 20 "$tmp/worldfs.log" >&2
			die "worldfs exited before mounting $mnt"
		fi
		[ "$(date +%s)" -lt "$deadline" ] || die "worldfs did not mount $mnt within 60 s"
		sleep 0.1
	done
	say "running contrib/demo.sh $mnt"
	demo_status=0
	sh contrib/demo.sh "$mnt" || demo_status=$?
	say "demo exited with status $demo_status"
	exit "$demo_status"
}

# Unmount, wait for worldfs, remove the temp dirs; keeps the exit status.
demo_cleanup() {
	rc=$?
	trap - EXIT
	set +e
	cd /
	if mounted "$mnt"; then
		fusermount3 -u "$mnt" || { sleep 1; fusermount3 -u -z "$mnt"; }
	fi
	if [ -n "$pid" ]; then
		deadline=$(($(date +%s) + 120))
		while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do
			sleep 0.2
		done
		if alive "$pid"; then
			say "worldfs (pid $pid) did not exit after unmount; killing it"
			kill -9 "$pid"
		fi
		wait "$pid"
		wrc=$?
		[ "$wrc" -eq 0 ] || { say "worldfs exited with status $wrc; log:"; tail -n 20 "$tmp/worldfs.log"; }
	fi
	# The VMs of this demo (their command lines name our state dir).
	for p in /proc/[0-9]*; do
		case $(cat "$p/comm" 2>/dev/null) in qemu*) ;; *) continue ;; esac
		if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$state/"; then
			say "killing leftover qemu ${p#/proc/}"
			kill -9 "${p#/proc/}"
		fi
	done
	if mounted "$mnt"; then
		say "$mnt is still mounted; leaving $tmp"
	else
		rm -rf --one-file-system "$tmp"
	fi
	exit "$rc"
}

# ---- test --------------------------------------------------------------------
passed=0
failed=0
failures=

# suite DIR SUITE [MESON-TEST-OPTION...]: run one suite and add its results
# to the totals.  Skips count as failures here: CI must not skip silently.
suite() {
	dir=$1
	name=$2
	shift 2
	log=$dir/meson-logs/$name.json
	rm -f "$log"
	say "meson test -C $dir --suite $name $*"
	meson test -C "$dir" --suite "$name" --print-errorlogs --logbase "$name" "$@" || true
	if [ ! -s "$log" ]; then
		say "$dir: suite $name ran no tests"
		failed=$((failed + 1))
		failures="$failures $dir/$name"
		return 0
	fi
	counts=$(python3 - "$log" <<'EOF'
import json, sys
ok, bad = 0, []
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    t = json.loads(line)
    if t["result"] in ("OK", "EXPECTEDFAIL"):
        ok += 1
    else:
        bad.append("%s(%s)" % (t["name"].split(" / ")[-1], t["result"]))
print(ok, len(bad), " ".join(bad))
EOF
)
	# shellcheck disable=SC2086 # "OK FAILED NAMES..." split on purpose
	set -- $counts
	passed=$((passed + $1))
	failed=$((failed + $2))
	shift 2
	for t; do
		failures="$failures $dir/$name/$t"
	done
}

run_tests() {
	suite build unit
	suite build mount
	suite build mount-busybox
	suite build mount-copy
	suite build morph

	# The same again with AddressSanitizer and UBSan.  UBSan errors are
	# fatal; leaks fail unit tests and a worldfs that leaks by exit (the
	# mount tests check its exit status after every unmount).
	export ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:print_summary=1
	export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=0:print_stacktrace=1:print_summary=1
	if configure build-asan -Db_sanitize=address,undefined -Db_lundef=false &&
		say "ninja -C build-asan" && ninja -C build-asan; then
		suite build-asan unit --timeout-multiplier 3
		suite build-asan mount --timeout-multiplier 2
		suite build-asan mount-busybox --timeout-multiplier 2
		suite build-asan morph --timeout-multiplier 2
	else
		say "build-asan did not build: its suites count as failed"
		failed=$((failed + 4))
		failures="$failures build-asan/unit build-asan/mount build-asan/mount-busybox build-asan/morph"
	fi

	# The unit suite again with GCC's ThreadSanitizer (libtsan2): the race
	# test drives every runtime operation from several threads at once.
	# A race fails its test (exit 66).  The unit suite only: it takes
	# seconds, where the mount suites would take many times their half hour.
	export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1
	if configure build-tsan -Db_sanitize=thread -Db_lundef=false &&
		say "ninja -C build-tsan" && ninja -C build-tsan; then
		suite build-tsan unit --timeout-multiplier 3
	else
		say "build-tsan did not build: its suite counts as failed"
		failed=$((failed + 1))
		failures="$failures build-tsan/unit"
	fi

	# The libFuzzer targets, built with clang (libclang-rt-14-dev holds
	# libFuzzer): each runs from its seeds for 60 s, and a crash, leak,
	# undefined behaviour or broken invariant fails it (the input is kept
	# in build-fuzz/tests/fuzz/NAME/artifacts/).  Only the targets are
	# built, not worldfs or the guest images again.
	if (CC=clang && export CC && configure build-fuzz -Dfuzz=true) &&
		say "ninja -C build-fuzz fuzzers" && ninja -C build-fuzz fuzzers; then
		suite build-fuzz fuzz
	else
		say "build-fuzz did not build: its suite counts as failed"
		failed=$((failed + 1))
		failures="$failures build-fuzz/fuzz"
	fi

	# Last, 10 minutes of create/branch/exec/snapshot/resolve/rmdir on
	# busybox (contrib/soak): every result checked, and worldfs's RSS and
	# fds, the QEMUs and the disk use back where they started.
	suite build soak

	[ -z "$failures" ] || say "failed:$failures"
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}

case $mode in
build) say "built: $src/build/fs/worldfs" ;;
demo) demo ;;
test) run_tests ;;
esac
