# demo-lib.sh: what contrib/demo.sh and contrib/demo-sh.sh share: steps,
# checks, and file operations that report every failure.  Sourced; expects
# M (the mount point) to be set.

n=0

die() {
	printf '\ndemo: FAILED at step %d: %s\n' "$n" "$*" >&2
	exit 1
}

step() {
	n=$((n + 1))
	printf '\n==> %d. %s\n' "$n" "$*"
}

say() {
	printf '    %s\n' "$*"
}

now_ns() {
	date +%s%N
}

ms_since() {
	echo $((($(now_ns) - $1) / 1000000))
}

# get FILE: print the value of a file, or fail the demo.
get() {
	cat -- "$1" || die "cannot read ${1#"$M"/}"
}

# show FILE...: print "path  value" for one-line files.
show() {
	for f; do
		v=$(get "$f") || exit 1
		printf '    %-34s %s\n' "${f#"$M"/}" "$v"
	done
}

# put FILE VALUE: write a value; cat reports errors of write(2) and close(2).
put() {
	printf '%s\n' "$2" | cat > "$1" || die "echo $2 > ${1#"$M"/} failed"
}

# expect WHAT GOT WANT
expect() {
	[ "$2" = "$3" ] || die "$1: got '$2', expected '$3'"
}

# run DIR CODE: run CODE in the world at DIR (its sh session, or the one
# its first line names), print its stdout indented, and fail unless it
# exited 0.
run() {
	printf '%s\n' "$2" | cat > "$1/exec" ||
		die "exec in ${1#"$M"/}: close(2) failed (ETIMEDOUT: run too long; EIO: world died)"
	st=$(get "$1/status") || exit 1
	sed 's/^/    | /' "$1/stdout"
	[ "$st" = 0 ] || die "exec in ${1#"$M"/} exited $st: $(cat "$1/stderr")"
}

# ledger_sum DIR: the sum of all balances in DIR/balance.
ledger_sum() {
	sum=0
	for f in "$1"/balance/*; do
		[ -e "$f" ] || continue
		x=$(get "$f") || exit 1
		sum=$((sum + x))
	done
	echo "$sum"
}

# ledger DIR: "owner=amount ..." of DIR/balance, sorted by owner.
ledger() {
	out=
	for f in "$1"/balance/*; do
		[ -e "$f" ] || continue
		x=$(get "$f") || exit 1
		out="$out${out:+ }${f##*/}=$x"
	done
	echo "$out"
}


# exec_parallel DIR: run the code `code_for VERSE` prints in DIR/VERSE, for
# every verse of $VERSES at once, and wait for all of them.
exec_parallel() {
	t=$(now_ns)
	for v in $VERSES; do
		code=$(code_for "$v") || exit 1
		say "$v: $(printf '%s' "$code" | sed '/^#!/d' | tr '\n' ' ')"
		sh -c 'printf "%s\n" "$2" | cat > "$1/exec"' sh "$1/$v" "$code" &
		eval "pid_$v=\$!"
	done
	pid=
	for v in $VERSES; do
		eval "pid=\$pid_$v"
		wait "$pid" || die "exec in ${1#"$M"/}/$v failed (close(2) error above)"
	done
	say "all three runs returned after $(ms_since "$t") ms"
}

# expected_wev DIR: the step that adds up the ledgers of the verses below
# DIR that the resolution will collapse (nash, chaos) into expect_wev.
expected_wev() {
	step "expected WEV: the balances of the verses that will collapse"
	expect_wev=0
	for v in nash chaos; do
		s=$(ledger_sum "$1/$v") || exit 1
		say "$v: $(ledger "$1/$v") -> $s"
		expect_wev=$((expect_wev + s))
	done
	say "expected WEV = $expect_wev"
}

# records: the steps that show the registry's records.
records() {
	for f in branches resolutions metrics; do
		step ".worldfs/$f"
		sed 's/^/    /' "$M/.worldfs/$f" || die "cannot read .worldfs/$f"
	done
}

# branch_verses DIR: one push_down of $VERSES in DIR, timed, and check
# the trit cycle -1 0 1.
branch_verses() {
	t=$(now_ns)
	# shellcheck disable=SC2086 # the names, one word each
	echo $VERSES | cat > "$1/push_down" || die "push_down of $VERSES in $1 failed"
	say "echo \"$VERSES\" > push_down returned after $(ms_since "$t") ms: one instant, one pause of the parent"
	for v in $VERSES; do
		[ -d "$1/$v" ] || die "push_down made no $v"
	done
	show "$1/push_down"
	show "$1/nash/trit" "$1/optimal/trit" "$1/chaos/trit"
	expect "trit of nash" "$(get "$1/nash/trit")" -1
	expect "trit of optimal" "$(get "$1/optimal/trit")" 0
	expect "trit of chaos" "$(get "$1/chaos/trit")" 1
}
