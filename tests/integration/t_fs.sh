#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_fs.sh: W/fs/, the guest's own files, as files: cp in and out, what a
# run wrote seen at once, ls/find/tar/mv/rm/mkdir/chmod/touch, errors as
# the guest's errno, isolation across verses, snapshots, symlinks that
# never leave the world, other users kept out, a large file round trip
# with worldfs's memory flat, and fs/ after a remount.
. "$(dirname "$0")/lib.sh"

[ "$WFS_BACKEND" = vm ] || wfs_skip "W/fs/ needs the vm backend's agent (morph: ENOTSUP)"

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$wfs_pid/status"; }

wfs_mount
W=$MNT/w
expect_ok "mkdir w" mkdir "$W"
expect_eq "w/fs is a directory of w's owner" "directory $(id -u)" "$(stat -c '%F %u' "$W/fs")"
expect_match "ls w/fs shows the guest's root" '(^| )etc( |$)' "$(ls "$W/fs" | tr '\n' ' ')"
# Its kernel's pseudo-filesystems are no files of the world: a tar or
# find over fs/ must not read /proc/kcore or /dev/zero.
expect_eq "no proc, sys or dev in fs/" "" "$(ls "$W/fs" | grep -x -e proc -e sys -e dev)"
expect_errno ENOENT cat "$W/fs/proc/version"
expect_errno ENOENT ls "$W/fs/dev/"

# In and out.
printf 'alpha\nbeta\n' >"$wfs_tmp/in.txt"
expect_ok "cp a file in" cp "$wfs_tmp/in.txt" "$W/fs/tmp/in.txt"
expect_eq "the next run reads it" "2 alpha" "$(wfs_run "$W" 'echo $(wc -l < /tmp/in.txt) $(head -n 1 /tmp/in.txt)')"
expect_ok "a run writes a file" wfs_exec "$W" 'mkdir -p /tmp/out; echo result > /tmp/out/r.txt'
expect_eq "cat reads what the run wrote" result "$(cat "$W/fs/tmp/out/r.txt")"
expect_ok "the run changes it" wfs_exec "$W" 'echo again > /tmp/out/r.txt'
expect_eq "cat sees the change at once" again "$(cat "$W/fs/tmp/out/r.txt")"
expect_eq "ls -l gives the owner and size" "$(id -u) 6" "$(stat -c '%u %s' "$W/fs/tmp/out/r.txt")"
expect_ok "mkdir" mkdir "$W/fs/tmp/d"
expect_ok "mv" mv "$W/fs/tmp/in.txt" "$W/fs/tmp/d/moved.txt"
expect_eq "the guest sees the move" "moved" "$(wfs_run "$W" 'ls /tmp/d | sed s/.txt//; test ! -e /tmp/in.txt')"
expect_ok "chmod" chmod 600 "$W/fs/tmp/d/moved.txt"
expect_eq "the guest sees the mode" 600 "$(wfs_run "$W" 'stat -c %a /tmp/d/moved.txt')"
expect_ok "touch -d" touch -d '2020-01-02 03:04:05 UTC' "$W/fs/tmp/d/moved.txt"
expect_eq "the guest sees the time" 1577934245 "$(wfs_run "$W" 'stat -c %Y /tmp/d/moved.txt')"
expect_eq "find lists the tree" "$W/fs/tmp/d/moved.txt" "$(find "$W/fs/tmp/d" -type f)"
expect_ok "tar over fs/" sh -c "tar -C '$W/fs/tmp' -cf '$wfs_tmp/t.tar' d out"
expect_eq "the archive holds the files" "d/moved.txt out/r.txt" \
	"$(tar -tf "$wfs_tmp/t.tar" | grep -v '/$' | sort | tr '\n' ' ' | sed 's/ $//')"
expect_ok "rm" rm "$W/fs/tmp/d/moved.txt"
expect_ok "rmdir" rmdir "$W/fs/tmp/d"
# Errors are the guest's errno.
expect_errno ENOENT cat "$W/fs/tmp/nope"
expect_errno EEXIST mkdir "$W/fs/tmp"
expect_errno ENOTEMPTY rmdir "$W/fs/etc"
expect_errno ENOTDIR ls "$W/fs/tmp/out/r.txt/x"

# Symlinks read as symlinks; one pointing outside fs/ is shown inside it.
expect_ok "ln -s / in the guest" wfs_exec "$W" 'ln -s / /tmp/root; ln -s /etc/hostname /tmp/hn; ln -s ../../../.. /tmp/up'
expect_eq "an absolute target reads relative to fs/" ".." "$(readlink "$W/fs/tmp/root")"
expect_eq "so does one deeper" "../etc/hostname" "$(readlink "$W/fs/tmp/hn")"
expect_eq "one climbing above the root stops at fs/" ".." "$(readlink "$W/fs/tmp/up")"
expect_eq "following it lists the guest's root, not the host's" "$(ls "$W/fs")" "$(ls "$W/fs/tmp/root/")"
expect_eq "the link through .. too" "$(ls "$W/fs")" "$(ls "$W/fs/tmp/up/")"
expect_ok "ln -s through the mount" ln -s /tmp/out/r.txt "$W/fs/tmp/lnk"
expect_eq "the guest has the link as written" /tmp/out/r.txt "$(wfs_run "$W" 'readlink /tmp/lnk')"
expect_eq "and it reads through" again "$(cat "$W/fs/tmp/lnk")"

# Verses: their own files, from the instant of the branch.
expect_ok "w writes before the branch" wfs_exec "$W" 'echo parent > /tmp/p.txt'
expect_ok "push_down a b" wfs_put "$W/push_down" 'a b'
expect_eq "a sees w's file" parent "$(cat "$W/a/fs/tmp/p.txt")"
expect_ok "a writes its own" sh -c "echo mine > '$W/a/fs/tmp/p.txt'"
expect_eq "an open with O_TRUNC truncates" mine "$(cat "$W/a/fs/tmp/p.txt")"
expect_eq "b does not see a's" parent "$(cat "$W/b/fs/tmp/p.txt")"
expect_eq "w does not see a's" parent "$(cat "$W/fs/tmp/p.txt")"
expect_ok "snapshot w" mkdir "$W/snapshot/s"
expect_errno ENOENT ls "$W/snapshot/s/fs"
expect_ok "w changes after the snapshot" sh -c "echo later > '$W/fs/tmp/p.txt'"
expect_ok "branch from the snapshot" mkdir "$W/snapshot/s/v"
expect_eq "it sees the snapshot's files" parent "$(cat "$W/snapshot/s/v/fs/tmp/p.txt")"
expect_ok "resolve a" wfs_put "$W/resolve" a
expect_errno ENOENT ls "$W/b/fs"
expect_eq "a collapsed verse lists no fs" "" "$(ls "$W/b" | grep -x fs)"

# Other users are kept out (w is 0700 and fs/ is w's owner's).
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
	expect_match "another uid gets EACCES" 'Permission denied' \
		"$(setpriv --reuid=65534 --regid=65534 --clear-groups ls "$W/fs" 2>&1)"
fi

# A large file round trip, streamed: worldfs's memory stays flat.
mib=16
case ${WORLDFS_OPTS:-} in *image=busybox*) ;; *) mib=200 ;; esac
head -c $((mib << 20)) /dev/urandom >"$wfs_tmp/big"
want=$(sha256sum <"$wfs_tmp/big" | cut -d' ' -f1)
rss0=$(rss_kb)
expect_ok "cp $mib MiB in" cp "$wfs_tmp/big" "$W/a/fs/tmp/big"
expect_eq "the guest's checksum" "$want" "$(wfs_run "$W/a" 'sha256sum /tmp/big | cut -d" " -f1')"
expect_eq "read back, the same" "$want" "$(sha256sum <"$W/a/fs/tmp/big" | cut -d' ' -f1)"
rss1=$(rss_kb)
# (AddressSanitizer keeps freed memory in quarantine: no RSS figure there.)
if grep -q libasan "/proc/$wfs_pid/maps" 2>/dev/null; then
	ok "worldfs RSS: not measured under AddressSanitizer ($rss0 -> $rss1 kB)"
else
	expect_ok "worldfs RSS flat: $rss0 -> $rss1 kB" test $((rss1 - rss0)) -lt 16384
fi
expect_ok "rm it" rm "$W/a/fs/tmp/big"

# A world that dies in the middle of a transfer: EIO, and failed with the
# reason in info, as for a run.
expect_ok "mkdir x" mkdir "$MNT/x"
qp=$(wfs_json_num "$MNT/x/info" pid)
head -c $((48 << 20)) /dev/zero >"$wfs_tmp/zero"
(cp "$wfs_tmp/zero" "$MNT/x/fs/tmp/z" 2>"$wfs_tmp/cp.err"; echo $? >"$wfs_tmp/cp.rc") &
cp_pid=$!
i=0
while [ "$(stat -c %s "$MNT/x/fs/tmp/z" 2>/dev/null || echo 0)" = 0 ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
if [ -n "$qp" ] && kill -0 "$cp_pid" 2>/dev/null; then
	kill -9 "$qp"
	wait "$cp_pid"
	expect_match "cp fails with EIO" 'Input/output error' "$(cat "$wfs_tmp/cp.err")"
	expect_eq "x is failed" failed "$(cat "$MNT/x/state")"
	expect_match "info says why" 'during a file operation in fs/' "$(cat "$MNT/x/info")"
	expect_eq "a failed world has no fs/ left" "" "$(ls "$MNT/x" | grep -x fs)"
else
	wait "$cp_pid"
	not_ok "the transfer was over before its QEMU (pid '$qp') could be killed"
fi
expect_ok "rmdir x" rmdir "$MNT/x"
rm -f "$wfs_tmp/zero"

# After a remount (the worlds were suspended), fs/ resumes them.
wfs_umount
wfs_mount
expect_eq "after a remount w's files are there" later "$(cat "$W/fs/tmp/p.txt")"
expect_eq "and a's" mine "$(cat "$W/a/fs/tmp/p.txt")"
for v in snapshot/s/v snapshot/s a b; do
	expect_ok "rmdir w/$v" rmdir "$W/$v"
done
expect_ok "rmdir w" rmdir "$W"
wfs_umount
expect_no_qemu "no qemu left after unmount" 20
