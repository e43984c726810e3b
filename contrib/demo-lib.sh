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

