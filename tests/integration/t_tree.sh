#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_tree.sh: the tree as ordinary tools see it (tar, ls -lR, find, cat),
# operations a worldfs tree does not offer, and permissions between uids.
. "$(dirname "$0")/lib.sh"

wfs_mount allow_other,max_worlds=1
W=$MNT/w
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "exec in w" wfs_exec "$W" 'echo out-w; echo err-w >&2'
expect_ok "w/balance/alice 7" wfs_put "$W/balance/alice" 7
expect_ok "mkdir w/a" mkdir "$W/a"
expect_ok "exec in a" wfs_exec "$W/a" 'echo out-a'
expect_ok "mkdir w/snapshot/s" mkdir "$W/snapshot/s"
expect_ok "mkdir w/snapshot/s/v" mkdir "$W/snapshot/s/v"

# worldfs's own tree; each world's fs/ (its guest's whole tree, t_fs.sh)
# is left out, as worldfs(1) tells users to do.
# tar: every st_size must match what read() returns, or tar complains.
expect_ok "tar cf - MNT | tar tf -" sh -c '
	set -e
	tar cf "$2/tree.tar" --exclude="*/fs" -C "$1" .
	tar tf "$2/tree.tar" >"$2/tree.list"' _ "$MNT" "$wfs_tmp"
for p in ./.worldfs/version ./w/trit ./w/balance/alice ./w/a/stdout ./w/snapshot/s/info \
	./w/snapshot/s/balance/alice ./w/snapshot/s/v/state; do
	expect_eq "tar has $p" "$p" "$(grep -x -- "$p" "$wfs_tmp/tree.list")"
done
mkdir "$wfs_tmp/x"
expect_ok "tar xf" tar xf "$wfs_tmp/tree.tar" -C "$wfs_tmp/x"
expect_eq "w/stdout through tar" out-w "$(cat "$wfs_tmp/x/w/stdout")"
expect_eq "w/stderr through tar" err-w "$(cat "$wfs_tmp/x/w/stderr")"
expect_eq "a/trit through tar" -1 "$(cat "$wfs_tmp/x/w/a/trit")"
expect_eq "balance through tar" 7 "$(cat "$wfs_tmp/x/w/snapshot/s/balance/alice")"
rm -rf "$wfs_tmp/x" "$wfs_tmp/tree.tar"

expect_ok "ls -lR MNT" sh -c 'ls -lR --ignore=fs "$1" >/dev/null' _ "$MNT"
expect_ok "find MNT -type f | xargs cat" \
	sh -c 'find "$1" -path "*/fs" -prune -o -type f -print0 | xargs -0 cat >/dev/null' _ "$MNT"
expect_ok "find MNT -type d" sh -c 'find "$1" -path "*/fs" -prune -o -type d -print >/dev/null' _ "$MNT"
expect_ok "du -a MNT" sh -c 'du -a --exclude=fs "$1" >/dev/null' _ "$MNT"
expect_eq "find sees every world and verse" "$MNT/w $MNT/w/a $MNT/w/snapshot/s/v" \
	"$(find "$MNT" -path '*/fs' -prune -o -type f -name exec -print | sed 's|/exec$||' | sort | tr '\n' ' ' | sed 's/ $//')"

# What a world tree does not offer.
expect_errno EPERM mv "$W/a" "$W/b"
expect_errno EPERM ln -s x "$W/link"
expect_errno EPERM ln "$W/trit" "$W/trit2"
expect_errno EPERM mkfifo "$W/fifo"
expect_errno EPERM mknod "$W/blk" b 7 0
expect_eq "w is still running" running "$(wfs_val "$W/state")"

# Another uid (mounted with allow_other, default_permissions).
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
expect_ok "nobody can list the mount root" as_nobody ls "$MNT"
expect_ok "nobody can read .worldfs/version" as_nobody cat "$MNT/.worldfs/version"
expect_errno EACCES as_nobody ls "$W"
expect_errno EACCES as_nobody cat "$W/stdout"
expect_errno EACCES as_nobody sh -c 'echo "echo hi" >"$1"' _ "$W/exec"
expect_errno EACCES as_nobody mkdir "$W/intruder"
expect_errno EACCES as_nobody rmdir "$W/a"
expect_errno EACCES as_nobody cat "$W/a/balance/alice"
expect_errno EACCES as_nobody mkdir "$W/snapshot/s/intruder"
expect_eq "the world is unchanged" "out-w a" "$(wfs_val "$W/stdout") $(ls "$W" | grep -x a)"

# Each uid sees its own entities in .worldfs (root and the mounting user
# see all), and holds at most max_worlds live worlds and verses.
expect_ok "nobody makes a world of its own" as_nobody mkdir "$MNT/n"
expect_eq "owned by nobody" 65534 "$(stat -c %u "$MNT/n")"
expect_errno EDQUOT as_nobody mkdir "$MNT/n/v"
expect_errno EDQUOT as_nobody mkdir "$MNT/n2"
expect_eq "nobody's entities: its world only" "/n" \
	"$(as_nobody cat "$MNT/.worldfs/entities" | sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | tr '\n' ' ' | sed 's/ $//')"
expect_eq "nobody sees no branch of w" "" "$(as_nobody cat "$MNT/.worldfs/branches")"
expect_match "root sees w's branches" '"parent_entity_id"' "$(cat "$MNT/.worldfs/branches")"
expect_match "root sees nobody's world" '"path": *"/n"' "$(cat "$MNT/.worldfs/entities")"
expect_ok "the mounting user is not limited" mkdir "$W/c" "$W/d"
expect_ok "nobody removes its world" as_nobody rmdir "$MNT/n"
expect_ok "... and may make another" as_nobody mkdir "$MNT/n2"
# One user's runs waiting in line cannot take every FUSE thread (each
# holds one): beyond 64 of one uid a run is refused at once (EAGAIN), and
# the mount goes on answering everybody else.
: >"$wfs_tmp/refused"
chmod 0666 "$wfs_tmp/refused"
as_nobody sh -c 'env printf "sleep 15\n" >"$1/exec"' _ "$MNT/n2" &
writers=$!
sleep 1
i=0
while [ $i -lt 300 ]; do
	as_nobody sh -c 'env printf "true\n" >"$1/exec" 2>/dev/null || echo refused >>"$2"' _ "$MNT/n2" \
		"$wfs_tmp/refused" &
	writers="$writers $!"
	i=$((i + 1))
done
sleep 2
expect_ok "the mount answers while nobody has 300 runs in line" timeout 5 ls "$W"
expect_eq "and runs another user's code" busy "$(timeout 5 sh -c 'env printf "echo busy\n" >"$1/exec" && cat "$1/stdout"' _ "$W")"
# shellcheck disable=SC2086 # a list of pids
wait $writers
expect_ok "nobody's runs beyond 64 were refused ($(wc -l <"$wfs_tmp/refused"))" \
	test "$(wc -l <"$wfs_tmp/refused")" -ge 200
expect_match "the log says why" 'runs waiting or running, the most one user may' "$(cat "$wfs_log")"
expect_ok "rmdir n2" as_nobody rmdir "$MNT/n2"
expect_ok "rmdir w/c w/d" rmdir "$W/c" "$W/d"
# The state directory is the mounting user's alone.
expect_eq "state dir, registry and log are private" "700 600 600" \
	"$(stat -c %a "$STATE" "$STATE/worldfs.db" "$STATE/worldfs.log" | tr '\n' ' ' | sed 's/ $//')"

expect_ok "rmdir w/snapshot/s/v" rmdir "$W/snapshot/s/v"
expect_ok "rmdir w/a" rmdir "$W/a"
expect_ok "rmdir w (and its snapshot)" rmdir "$W"
wfs_umount
