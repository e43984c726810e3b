#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_resolve.sh: resolution (pull-up) of live siblings, at a world and at a
# snapshot: states, WEV, the winner's ledger, errors, rmdir rules.
#
# The scenario:  w holds alice=100 bob=50; it is snapshotted as s.
#   s/p, s/q  inherit alice=100 bob=50; p sets alice=1.
#             resolve s -> p:  s/wev = q = 150; s's ledger = p's.
#   w/a  alice=70  bob=50  carol=30   (sets alice, adds carol)
#   w/b  alice=120 bob=10             (sum 130); w/b/x is b's child
#   w/c  alice=100 bob=5              (sum 105)
#             resolve w -> a:  w/wev = b + c = 235 (x, a copy inside b,
#             does not count); w's ledger = a's.
. "$(dirname "$0")/lib.sh"

# ledger DIR: "owner=amount ..." of DIR/balance, sorted.
ledger() {
	(cd "$1/balance" && for o in $(ls | sort); do printf '%s=%s ' "$o" "$(cat "$o")"; done) | sed 's/ $//'
}

wfs_mount
W=$MNT/w
S=$W/snapshot/s
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"
expect_ok "w/balance/alice 100" wfs_put "$W/balance/alice" 100
expect_ok "w/balance/bob 50" wfs_put "$W/balance/bob" 50
expect_ok "exec in w" wfs_exec "$W" 'echo from-w'
expect_ok "mkdir w/snapshot/s" mkdir "$S"

# Snapshot-level verses.
expect_errno EINVAL wfs_put "$S/resolve" p
expect_ok "mkdir s/p" mkdir "$S/p"
expect_ok "mkdir s/q" mkdir "$S/q"
expect_eq "p inherits the snapshot's ledger" "alice=100 bob=50" "$(ledger "$S/p")"
expect_ok "p/balance/alice 1" wfs_put "$S/p/balance/alice" 1
expect_errno ENOTEMPTY rmdir "$S"

# Live verses.
for v in a b c; do
	expect_ok "mkdir w/$v" mkdir "$W/$v"
	expect_eq "$v inherits w's ledger" "alice=100 bob=50" "$(ledger "$W/$v")"
done
expect_ok "a/balance/alice 70" wfs_put "$W/a/balance/alice" 70
expect_ok "a/balance/carol 30" wfs_put "$W/a/balance/carol" 30
expect_ok "b/balance/alice 120" wfs_put "$W/b/balance/alice" 120
expect_ok "b/balance/bob 10" wfs_put "$W/b/balance/bob" 10
expect_ok "c/balance/bob 5" wfs_put "$W/c/balance/bob" 5
expect_ok "exec in b" wfs_exec "$W/b" 'B=kept; echo last-of-b'

# Resolve at the snapshot; w and its verses are untouched.
expect_errno ENOENT wfs_put "$S/resolve" nosuch
expect_eq "nothing changed after an unknown outcome" "running running 0" \
	"$(wfs_vals "$S/p/state" "$S/q/state" "$S/wev")"
expect_errno ENOENT wfs_put "$S/resolve" a
expect_ok "resolve s -> p" wfs_put "$S/resolve" p
expect_eq "p won" won "$(wfs_val "$S/p/state")"
expect_eq "q collapsed" collapsed "$(wfs_val "$S/q/state")"
expect_eq "s/wev = q's balances" 150 "$(wfs_val "$S/wev")"
expect_eq "s/resolve reads the winner" p "$(wfs_val "$S/resolve")"
expect_eq "p's ledger pulled up into s" "alice=1 bob=50" "$(ledger "$S")"
expect_eq "w's ledger untouched by s's resolution" "alice=100 bob=50" "$(ledger "$W")"
expect_eq "w's verses untouched by s's resolution" "running running running 0" \
	"$(wfs_vals "$W/a/state" "$W/b/state" "$W/c/state" "$W/wev")"

# A grandchild inside b, then resolve at w.
expect_ok "mkdir w/b/x" mkdir "$W/b/x"
expect_eq "x inherits b's ledger" "alice=120 bob=10" "$(ledger "$W/b/x")"
expect_errno ENOTEMPTY rmdir "$W/b"
expect_errno ENOTEMPTY rmdir "$W"
expect_errno ENOENT wfs_put "$W/resolve" nosuch
expect_errno ENOENT wfs_put "$W/resolve" x
# "ab" written a byte at a time names no verse: "a", its prefix, must
# not win on the first byte.
expect_errno ENOENT sh -c 'printf "ab\n" | dd bs=1 of="$1" status=none' _ "$W/resolve"
expect_eq "nothing changed after unknown outcomes" "running running running 0" \
	"$(wfs_vals "$W/a/state" "$W/b/state" "$W/c/state" "$W/wev")"
expect_ok "resolve w -> a" wfs_put "$W/resolve" a
expect_eq "a won" won "$(wfs_val "$W/a/state")"
expect_eq "b collapsed" collapsed "$(wfs_val "$W/b/state")"
expect_eq "c collapsed" collapsed "$(wfs_val "$W/c/state")"
expect_eq "b's subtree collapsed" collapsed "$(wfs_val "$W/b/x/state")"
expect_eq "WEV = balances of the collapsed siblings (130 + 105)" 235 "$(wfs_val "$W/wev")"
expect_eq "w/resolve reads the winner" a "$(wfs_val "$W/resolve")"
expect_eq "a's ledger pulled up into w" "alice=70 bob=50 carol=30" "$(ledger "$W")"
expect_eq "w itself still running" running "$(wfs_val "$W/state")"
expect_eq "the snapshot's resolution untouched" "won collapsed 150" \
	"$(wfs_vals "$S/p/state" "$S/q/state" "$S/wev")"

# Collapsed verses: readable, not executable.
expect_eq "collapsed b keeps its last output" last-of-b "$(wfs_val "$W/b/stdout")"
expect_eq "collapsed b keeps its ledger" "alice=120 bob=10" "$(ledger "$W/b")"
expect_errno EROFS wfs_exec "$W/b" 'echo no'
expect_errno EROFS wfs_exec "$W/b/x" 'echo no'
expect_errno EROFS wfs_exec "$S/q" 'echo no'
expect_eq "the winner keeps running" "won a" "$(wfs_run "$W/a" 'echo won a')"
expect_eq "w keeps running" from-w-again "$(wfs_run "$W" 'echo from-w-again')"

# No live children left: EINVAL, nothing changes.
expect_errno EINVAL wfs_put "$W/resolve" a
expect_eq "wev unchanged after the rejected resolve" 235 "$(wfs_val "$W/wev")"

# .worldfs/resolutions: one row per resolution.
res=$(cat "$MNT/.worldfs/resolutions")
expect_eq ".worldfs/resolutions rows" 2 "$(printf '%s\n' "$res" | grep -c '^{')"
row=$(printf '%s\n' "$res" | grep '"winning_verse": *"a"')
expect_match "w's row: WEV 235" '"wev_extracted": *235[^0-9]' "$row"
expect_match "w's row: participating verses" '"verses": *\[[^]]*"a"[^]]*\]' "$row"
expect_match "w's row lists b and c" '"b".*"c"|"c".*"b"' "$(printf '%s\n' "$row" | sed 's/.*"verses": *\[\([^]]*\)\].*/\1/')"
expect_match "w's row: pull_up_time_ms" '"pull_up_time_ms": *[0-9]' "$row"
expect_match "s's row: WEV 150" '"wev_extracted": *150[^0-9]' "$(printf '%s\n' "$res" | grep '"winning_verse": *"p"')"

# rmdir: collapsed and won verses can go; then everything else.
expect_ok "rmdir collapsed w/b (with its collapsed child)" rmdir "$W/b"
expect_errno ENOENT cat "$W/b/state"
expect_ok "rmdir won w/a" rmdir "$W/a"
expect_ok "rmdir collapsed w/c" rmdir "$W/c"
expect_ok "rmdir collapsed s/q" rmdir "$S/q"
expect_ok "rmdir won s/p" rmdir "$S/p"
expect_ok "rmdir s" rmdir "$S"
expect_ok "rmdir w" rmdir "$W"
expect_no_qemu "no qemu left after rmdir of everything" 20
wfs_umount
