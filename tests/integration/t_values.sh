#!/bin/sh
# shellcheck source=tests/integration/lib.sh disable=SC2016 # world code is single-quoted on purpose
# t_values.sh: the value files (trit, prob, balance/OWNER, gf3, wev,
# resolve), the name rules, and the errors of the table in SPEC.md.
. "$(dirname "$0")/lib.sh"

wfs_mount
W=$MNT/w
expect_ok "mkdir w" mkdir "$W" || bail "cannot create a world"

long64=$(printf 'n%.0s' $(seq 64))
long65=$(printf 'n%.0s' $(seq 65))
eacute=$(printf '\303\251')

# Defaults.
expect_eq "a world's trit is 0" 0 "$(wfs_val "$W/trit")"
expect_eq "a world's prob is 1" 1 "$(wfs_val "$W/prob")"
expect_eq "gf3 without children" 0 "$(wfs_val "$W/gf3")"
expect_eq "wev before any resolution" 0 "$(wfs_val "$W/wev")"
expect_eq "resolve before any resolution is empty" "" "$(wfs_val "$W/resolve")"
expect_eq "balance/ is empty" "" "$(ls -A "$W/balance")"

# trit
for v in -1 1 0; do
	expect_ok "write trit $v" wfs_put "$W/trit" "$v"
	expect_eq "read trit $v" "$v" "$(wfs_val "$W/trit")"
done
expect_ok "write trit +1" wfs_put "$W/trit" +1
expect_eq "trit +1 reads 1" 1 "$(wfs_val "$W/trit")"
expect_ok "write trit without a newline" sh -c 'printf %s -1 >"$1"' _ "$W/trit"
expect_eq "trit -1 (no newline)" -1 "$(wfs_val "$W/trit")"
expect_ok "truncating open: echo 0 > trit" sh -c 'echo 0 >"$1"' _ "$W/trit"
expect_eq "trit after echo 0 >" 0 "$(wfs_val "$W/trit")"
expect_eq "trit file is one value and a newline" "$(printf '0\n' | od -c)" "$(od -c <"$W/trit")"
for v in 2 -2 abc 0.5 "1 1"; do
	expect_errno EINVAL wfs_put "$W/trit" "$v"
done
expect_eq "trit unchanged by rejected writes" 0 "$(wfs_val "$W/trit")"

# prob
for v in 0.5 0 1 0.123456789; do
	expect_ok "write prob $v" wfs_put "$W/prob" "$v"
	expect_eq "read prob $v" "$v" "$(wfs_val "$W/prob")"
done
expect_ok "write prob 0.450" wfs_put "$W/prob" 0.450
expect_eq "prob is printed shortest" 0.45 "$(wfs_val "$W/prob")"
for v in 1.5 -0.1 x 1.0000000001 ""; do
	expect_errno EINVAL wfs_put "$W/prob" "$v"
done
expect_eq "prob unchanged by rejected writes" 0.45 "$(wfs_val "$W/prob")"

# balance/OWNER
expect_ok "create balance/alice" wfs_put "$W/balance/alice" 100
expect_eq "balance/alice" 100 "$(wfs_val "$W/balance/alice")"
expect_eq "ls balance" alice "$(ls "$W/balance")"
expect_eq "balance file mode" 600 "$(stat -c %a "$W/balance/alice")"
expect_ok "set balance/alice" wfs_put "$W/balance/alice" 250
expect_eq "balance/alice after set" 250 "$(wfs_val "$W/balance/alice")"
expect_ok "balance 2^63-1" wfs_put "$W/balance/max" 9223372036854775807
expect_eq "balance 2^63-1 reads back" 9223372036854775807 "$(wfs_val "$W/balance/max")"
for v in -3 ten 1.5 9223372036854775808 ""; do
	expect_errno EINVAL wfs_put "$W/balance/alice" "$v"
done
expect_eq "balance unchanged by rejected writes" 250 "$(wfs_val "$W/balance/alice")"
# A value written in pieces is applied whole, once its line ends or the
# file closes, never a prefix of it (dd bs=1: one byte a write).
expect_ok "trit -1 written a byte at a time" sh -c 'printf -- "-1\n" | dd bs=1 of="$1" status=none' _ "$W/trit"
expect_eq "trit -1 from single bytes" -1 "$(wfs_val "$W/trit")"
expect_ok "prob 0.25 a byte at a time, no newline" sh -c 'printf 0.25 | dd bs=1 of="$1" status=none' _ "$W/prob"
expect_eq "prob 0.25 from single bytes" 0.25 "$(wfs_val "$W/prob")"
expect_ok "balance 77 in two writes" sh -c 'exec 3>"$1"; printf 7 >&3; printf "7\n" >&3' _ "$W/balance/alice"
expect_eq "balance 77, not 7" 77 "$(wfs_val "$W/balance/alice")"
# A value is one short line: a flood is refused at once (EINVAL), not
# gathered and parsed again on every write.
expect_errno EINVAL sh -c 'head -c 50000000 /dev/zero | tr "\0" 1 >"$1"' _ "$W/balance/alice"
expect_eq "balance unchanged by the flood" 77 "$(wfs_val "$W/balance/alice")"
wfs_put "$W/balance/alice" 250
wfs_put "$W/prob" 1
wfs_put "$W/trit" 0
expect_errno EINVAL wfs_put "$W/balance/bob" -3
expect_eq "a rejected first write leaves no owner behind" "alice max" "$(ls "$W/balance" | tr '\n' ' ' | sed 's/ $//')"
expect_ok "owner name of 64 characters" wfs_put "$W/balance/$long64" 1
for n in "$long65" .x "a b" "$eacute" trit balance snapshot exec; do
	expect_errno EINVAL wfs_put "$W/balance/$n" 1
done
expect_eq "no owner created by bad names" "alice max $long64" "$(ls "$W/balance" | sort | tr '\n' ' ' | sed 's/ $//')"
expect_errno ENOENT cat "$W/balance/nobody"
expect_errno ENOENT rm "$W/balance/nobody"
expect_ok "rm balance/max" rm "$W/balance/max"
expect_ok "rm balance/$long64" rm "$W/balance/$long64"
expect_errno ENOENT cat "$W/balance/max"
expect_eq "ls balance after rm" alice "$(ls "$W/balance")"

# Names of worlds and verses; existing names.
for n in "$long65" .x "a b" "$eacute" trit exec; do
	expect_errno EINVAL mkdir "$MNT/$n"
done
for n in "$long65" .x "a b" "$eacute"; do
	expect_errno EINVAL mkdir "$W/$n"
	expect_errno EINVAL mkdir "$W/snapshot/$n"
done
expect_eq "bad names created nothing at the root" w "$(ls -A "$MNT" | grep -v '^\.worldfs$')"
# A name is logged as one line, whatever it holds: no forged log lines.
forged=$(printf 'x\nworldfs: forged')
expect_errno EINVAL mkdir "$MNT/$forged"
expect_eq "a newline in a name forges no log line" 0 "$(grep -c '^worldfs: forged' "$wfs_log")"
expect_eq "... nor in the state's log" 0 "$(grep -c 'Z worldfs: forged' "$STATE/worldfs.log")"
expect_errno EEXIST mkdir "$W"
expect_errno EEXIST mkdir "$MNT/.worldfs"
for n in trit exec balance snapshot wev; do
	expect_errno EEXIST mkdir "$W/$n"
done

# Fixed files and dirs: read-only files, mkdir and rmdir where not allowed.
for f in state status gf3 wev info; do
	expect_errno EACCES wfs_put "$W/$f" 0
done
expect_errno EPERM mkdir "$W/balance/d"
expect_errno EPERM mkdir "$MNT/.worldfs/d"
expect_errno EPERM rmdir "$W/balance"
expect_errno EPERM rmdir "$W/snapshot"

# Verses: probabilities of live siblings sum to at most 1.
expect_ok "mkdir w/a" mkdir "$W/a"
expect_ok "mkdir w/b" mkdir "$W/b"
expect_eq "a new verse's prob is 0" 0 "$(wfs_val "$W/a/prob")"
expect_eq "a verse inherits balances" 250 "$(wfs_val "$W/a/balance/alice")"
expect_ok "a/prob 0.6" wfs_put "$W/a/prob" 0.6
expect_errno EINVAL wfs_put "$W/b/prob" 0.5
expect_eq "b/prob unchanged" 0 "$(wfs_val "$W/b/prob")"
expect_ok "b/prob 0.4 (sum exactly 1)" wfs_put "$W/b/prob" 0.4
expect_errno EINVAL wfs_put "$W/a/prob" 0.600000001
expect_eq "a/prob unchanged" 0.6 "$(wfs_val "$W/a/prob")"
expect_ok "a/prob lowered to 0.1" wfs_put "$W/a/prob" 0.1
expect_ok "the parent's prob is not a sibling's" wfs_put "$W/prob" 1
expect_eq "gf3 of -1 and 0" -1 "$(wfs_val "$W/gf3")"
expect_errno EEXIST mkdir "$W/a"

expect_errno ENOTEMPTY rmdir "$W"
expect_ok "rmdir w/a" rmdir "$W/a"
expect_ok "rmdir w/b" rmdir "$W/b"
expect_ok "rmdir w" rmdir "$W"
expect_errno ENOENT cat "$W/trit"
wfs_umount
