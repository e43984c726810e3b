#!/bin/sh
# run.sh TEST.sh: run one mount test against backend=morph, pointed at a
# local stand-in for the Morph Cloud API (standin.py): start the stand-in,
# export WORLDFS_OPTS, MORPH_API_KEY and WFS_MORPH_URL/WFS_MORPH_CTL (for
# tests that talk to the stand-in), run the test, stop the stand-in by its
# pid.  Exit status: the test's (77: skipped).
set -u
[ $# -eq 1 ] || { echo "usage: run.sh TEST.sh" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
python=$(command -v python3) || { echo "run.sh: python3 is missing (install python3)" >&2; exit 1; }

# Below /var/tmp, not /tmp: instances get a private /tmp (see standin.py).
root=$(mktemp -d /var/tmp/worldfs-morph.XXXXXX) || exit 1
pid=
cleanup() {
	rc=$?
	trap - EXIT
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -s "$root/standin.log" ]; then
		echo "# --- stand-in log (last 30 lines)"
		tail -n 30 "$root/standin.log" | sed 's/^/#   /'
	fi
	rm -rf "$root"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A key made up for this run: the tests check that it never leaks.
MORPH_API_KEY=wfs-test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export MORPH_API_KEY
"$python" "$here/standin.py" serve --root "$root/cloud" --port-file "$root/port" \
	>/dev/null 2>"$root/standin.log" &
pid=$!
i=0
while [ ! -s "$root/port" ]; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
		echo "run.sh: the stand-in did not start:" >&2
		cat "$root/standin.log" >&2
		exit 1
	fi
	sleep 0.1
done
port=$(cat "$root/port")
WFS_MORPH_URL=http://127.0.0.1:$port
WFS_MORPH_CTL=$here/standin.py
WORLDFS_OPTS="backend=morph,morph_url=$WFS_MORPH_URL${WORLDFS_OPTS:+,$WORLDFS_OPTS}"
export WFS_MORPH_URL WFS_MORPH_CTL WORLDFS_OPTS
echo "# morph stand-in on $WFS_MORPH_URL (pid $pid, root $root)"
sh "$1"
