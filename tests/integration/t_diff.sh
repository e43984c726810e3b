#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_diff.sh: W/diff, what changed in a world's files since it was made or
# branched: empty for a new world and a new verse; each kind of change
# (add, modify, modify keeping size and mtime, delete, chmod, rename = D +
# A, a directory removed with what it held) by runs and through fs/; a
# file rewritten as it was is no change; the sessions' own files never
# show; a verse's changes are not its parent's; push_down verses and a
# verse of a snapshot diff against their own instant; a symlink escape is
# one added path; diff survives a remount; none for snapshots and
# collapsed verses; another uid is kept out.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "W/diff needs the vm backend's agent (morph has no diff)"

debian=true
case ${WORLDFS_OPTS:-} in *image=busybox*) debian=false ;; esac

wfs_mount
W=$MNT/w
expect_ok "mkdir w" mkdir "$W"
expect_eq "a new world has changed nothing" "" "$(cat "$W/diff")"
expect_eq "diff says size 0 (computed when read, as /proc)" "0 regular empty file" "$(stat -c '%s %F' "$W/diff")"
expect_ok "a run in the shell session" wfs_exec "$W" 'X=1; cd /tmp'
if $debian; then
	expect_ok "a run in the Python session" wfs_exec "$W" "$(printf '#!python3\ny = 2\n')"
fi
expect_eq "the sessions' own files are no change" "" "$(cat "$W/diff")"

expect_ok "w makes /data" wfs_exec "$W" \
	'mkdir /data && cd /data && echo a > a && echo b > b && echo m > mode && echo old > old && echo same > same && echo t > kept'
expect_eq "w's diff lists each added path" \
	"$(printf 'A\t/data\nA\t/data/a\nA\t/data/b\nA\t/data/kept\nA\t/data/mode\nA\t/data/old\nA\t/data/same')" \
	"$(cat "$W/diff")"

expect_ok "branch v" mkdir "$W/v"
expect_eq "a new verse has changed nothing" "" "$(cat "$W/v/diff")"
expect_ok "v changes each kind of thing" wfs_exec "$W/v" '
	cd /data && echo A > a && rm b && chmod 600 mode && mv old new && echo same > same &&
	touch -r kept /tmp/ref && echo T > kept && touch -r /tmp/ref kept && rm /tmp/ref'
printf 'from the host\n' >"$wfs_tmp/in.txt"
expect_ok "cp a file in through fs/" cp "$wfs_tmp/in.txt" "$W/v/fs/data/in"
expect_ok "mkdir through fs/" mkdir "$W/v/fs/data/sub"
expect_ok "ln -s / through fs/" ln -s / "$W/v/fs/data/root"
expect_eq "v's diff: M for content (kept: same size and mtime), D, M for mode, rename as D + A" \
	"$(printf 'M\t/data/a\nD\t/data/b\nA\t/data/in\nM\t/data/kept\nM\t/data/mode\nA\t/data/new\nD\t/data/old\nA\t/data/root\nA\t/data/sub')" \
	"$(cat "$W/v/diff")"
expect_eq "w's diff has none of v's changes" \
	"$(printf 'A\t/data\nA\t/data/a\nA\t/data/b\nA\t/data/kept\nA\t/data/mode\nA\t/data/old\nA\t/data/same')" \
	"$(cat "$W/diff")"

if $debian; then
	# The root disk's files: a change copies one up, a removal whites it out.
	gone=$(cd "$W/v/fs" && find usr/share/doc/bash | sort | sed 's|^|D\t/|')
	expect_ok "v removes a directory of the root disk and edits a file of it" \
		wfs_exec "$W/v" 'rm -r /usr/share/doc/bash && echo "# edited" >> /etc/issue && touch -r /etc/hostname /etc/hostname'
	expect_eq "they are M and D for each path; a file copied up unchanged is none" \
		"$(printf 'M\t/etc/issue\n%s' "$gone")" "$(grep -e /usr/ -e /etc/ "$W/v/diff")"
fi

# push_down: every verse against the same instant.
expect_ok "v marks its instant" wfs_exec "$W/v" 'echo before > /data/pd'
expect_ok "push_down p q" wfs_put "$W/v/push_down" "p q"
expect_eq "p starts with nothing changed" "" "$(cat "$W/v/p/diff")"
expect_ok "p and q change different files" sh -c "echo p > '$W/v/p/fs/data/p' && rm '$W/v/q/fs/data/pd'"
expect_eq "p's diff is p's" "$(printf 'A\t/data/p')" "$(cat "$W/v/p/diff")"
expect_eq "q's diff is q's" "$(printf 'D\t/data/pd')" "$(cat "$W/v/q/diff")"

# A verse of a snapshot diffs against the snapshot's instant.
expect_ok "snapshot w" mkdir "$W/snapshot/s"
expect_eq "a snapshot has no diff" "" "$(ls "$W/snapshot/s" | grep -x diff)"
expect_ok "w changes after the snapshot" wfs_exec "$W" 'echo later > /data/later'
expect_ok "branch from the snapshot" mkdir "$W/snapshot/s/sv"
expect_eq "the snapshot's verse has changed nothing" "" "$(cat "$W/snapshot/s/sv/diff")"
expect_match "w's diff has its later file" "$(printf 'A\t/data/later')" "$(cat "$W/diff")"

# Other users are kept out (w is 0700, diff 0400, both w's owner's).
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
	expect_match "another uid gets EACCES" 'Permission denied' \
		"$(setpriv --reuid=65534 --regid=65534 --clear-groups cat "$W/diff" 2>&1)"
fi
expect_errno EACCES sh -c "echo x > '$W/diff'"

# The verses were suspended at the unmount; diff resumes them, and their
# base came along.
vdiff=$(cat "$W/v/diff")
wfs_umount
wfs_mount
expect_eq "after a remount v's diff is the same" "$vdiff" "$(cat "$W/v/diff")"

# Resolving keeps p; q is collapsed and has no files to compare.
expect_ok "resolve p" wfs_put "$W/v/resolve" p
expect_eq "a collapsed verse has no diff" "" "$(ls "$W/v/q" | grep -x diff)"
expect_errno ENOENT cat "$W/v/q/diff"
expect_eq "the winner keeps its diff" "$(printf 'A\t/data/p')" "$(cat "$W/v/p/diff")"

for v in v/p v/q v snapshot/s/sv snapshot/s; do
	expect_ok "rmdir w/$v" rmdir "$W/$v"
done
expect_ok "rmdir w" rmdir "$W"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
