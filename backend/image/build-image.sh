#!/bin/sh
# build-image.sh: build a named worldfs guest image into a directory.
#
#   sh backend/image/build-image.sh NAME [--out DIR] [--packages "PKG ..."]
#        [--preload "MODULE ..."] [--mem MIB] [--agent FILE] [--session FILE]
#
# NAME is one of
#   busybox  the kernel (the PVH ELF inside Debian's kernel package) and an
#            initramfs with busybox, the agent and the kernel modules it
#            loads; sh sessions only; default memory 128 MiB.
#   debian   the same, plus root.img: a read-only squashfs root filesystem
#            made with mmdebstrap from the host's own Debian apt sources
#            (python3, numpy, pandas and the basic tools, plus --packages);
#            the agent mounts it under an overlay held in guest memory.
#            Default memory 512 MiB; the golden state imports --preload
#            (default "numpy pandas") in its Python session.
#
# DIR (default: build/backend/image/NAME in the source tree) receives
# vmlinux, initrd.cpio.gz, root.img (debian) and manifest (key=value lines:
# name, mem_mib, digest of every input, root, python_preload, ...).  Mount
# it with `worldfs -o image=DIR`.
#
# Everything is cached by its inputs under /var/cache/worldfs (root) or
# $XDG_CACHE_HOME/worldfs: the kernel package, Debian's .deb files, and
# each root filesystem, keyed by the package list, the apt sources and
# their Release files and this script.  A second build with the same
# inputs takes seconds.  Progress goes to stderr.
set -eu

say() { printf 'worldfs-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() {
	echo "usage: $0 busybox|debian [--out DIR] [--packages \"PKG ...\"] [--preload \"MODULE ...\"]" >&2
	echo "       [--mem MIB] [--agent FILE] [--session FILE]" >&2
	exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] || usage
name=$1
shift
case $name in
busybox) mem=128 ;;
debian) mem=512 ;;
-h | --help) usage ;;
*) echo "$0: $name: unknown image (busybox or debian)" >&2; usage ;;
esac
outdir=$src/build/backend/image/$name
agent=$src/build/backend/worldfs-agent
session=$here/../agent/worldfs_session.py
extra=
preload="numpy pandas"
while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || usage
	case $1 in
	--out) outdir=$2 ;;
	--packages) extra=$2 ;;
	--preload) preload=$2 ;;
	--mem) mem=$2 ;;
	--agent) agent=$2 ;;
	--session) session=$2 ;;
	*) usage ;;
	esac
	shift 2
done
case $mem in
'' | *[!0-9]*) die "--mem $mem: expected MiB, a number" ;;
esac
[ "$mem" -ge 64 ] || die "--mem $mem: at least 64 MiB"
for p in $extra; do
	case $p in
	-* | *[!a-z0-9.+:=-]*) die "--packages: $p is not a Debian package name" ;;
	esac
done
for m in $preload; do
	case $m in
	[!A-Za-z_]* | *[!A-Za-z0-9_.]*) die "--preload: $m is not a Python module name" ;;
	esac
done
[ "$name" = debian ] || { [ -z "$extra" ] || die "--packages: only the debian image has packages"; preload=; }

busybox=${BUSYBOX:-/bin/busybox}
modules="virtio_ring virtio virtio_mmio virtio_console virtio_blk squashfs overlay"

[ -f "$agent" ] || die "$agent: no agent binary (build it first: ninja -C build, or give --agent)"
[ -f "$session" ] || die "$session: the Python session program is missing (give --session)"
[ -f "$busybox" ] || die "$busybox: not found (apt-get install busybox-static)"
# A dynamic busybox would need a libc the initramfs does not have; only
# dynamic ELF files name an .interp section.
if LC_ALL=C grep -qa '\.interp' "$busybox"; then
	die "$busybox is dynamically linked (apt-get install busybox-static)"
fi
for tool in apt-get apt-cache dpkg-deb tar xz gzip sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool: command not found"
done
if [ "$name" = debian ]; then
	for tool in mmdebstrap mmtarfilter tar2sqfs; do
		command -v "$tool" >/dev/null 2>&1 ||
			die "$tool: command not found (apt-get install mmdebstrap squashfs-tools-ng)"
	done
fi
if command -v cpio >/dev/null 2>&1; then
	cpio="cpio --quiet"
else
	cpio="$busybox cpio"
fi

is_root=false
[ "$(id -u)" = 0 ] && is_root=true
if $is_root; then
	cache=${WORLDFS_CACHE:-/var/cache/worldfs}
else
	cache=${WORLDFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/worldfs}
fi
mkdir -p "$cache/debs" "$cache/kernel" "$cache/roots" "$cache/apt" "$outdir" ||
	die "$cache: cannot create the cache"
have_flock=false
command -v flock >/dev/null 2>&1 && have_flock=true

sum() { sha256sum "$1" | cut -d' ' -f1; }
text_sum() { sha256sum | cut -d' ' -f1; }

# ---- 1. the kernel -------------------------------------------------------------
# Two builds at once (meson builds both images, a user) must not unpack
# into each other; the lock covers only the kernel, not a root build.
if $have_flock; then
	exec 9>"$cache/lock"
	flock 9
fi

resolve_kernel() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -n 1
}

# apt-cache takes about a second a call here: remember its answer for as
# long as the package lists stay the same.
lists_key() {
	ls -ln --time-style=+%s /var/lib/apt/lists/ 2>/dev/null | cksum | tr ' ' -
}

say "[1/4] kernel"
key=$(lists_key)
pkg=
ver=
if [ -f "$cache/resolved" ]; then
	read -r k p v <"$cache/resolved" || true
	[ "$k" = "$key" ] && pkg=$p && ver=$v
fi
if [ -z "$pkg" ]; then
	pkg=$(resolve_kernel)
	if [ -z "$pkg" ] && $is_root; then
		say "apt lists missing; running apt-get update"
		apt-get update -qq >&2 || say "warning: apt-get update failed"
		key=$(lists_key)
		pkg=$(resolve_kernel)
	fi
	if [ -n "$pkg" ]; then
		ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
			sed -n 's/^Version: //p' | head -n 1)
	fi
	[ -n "$pkg" ] && [ -n "$ver" ] && printf '%s %s %s\n' "$key" "$pkg" "$ver" >"$cache/resolved"
fi
deb="$cache/debs/${pkg}_$ver.deb"
if [ -n "$pkg" ] && [ -n "$ver" ] && [ ! -f "$deb" ]; then
	say "fetching $pkg ($ver)"
	tmp=$(mktemp -d "$cache/debs/.fetch.XXXXXX")
	opts=
	# apt's sandbox user cannot write into root's cache.
	$is_root && opts="-o APT::Sandbox::User=root"
	if (cd "$tmp" && apt-get download -q $opts "$pkg=$ver" >&2); then
		mv "$tmp"/*.deb "$deb"
	else
		say "warning: apt-get download $pkg=$ver failed"
	fi
	rm -rf "$tmp"
fi
if [ -z "$pkg" ] || [ -z "$ver" ] || [ ! -f "$deb" ]; then
	# Offline: fall back to the newest kernel fetched before.
	deb=$(ls -t "$cache"/debs/linux-image-*.deb 2>/dev/null | head -n 1 || true)
	[ -n "$deb" ] || die "cannot resolve the kernel: 'apt-cache depends linux-image-amd64' names no package and $cache/debs has none (run apt-get update as root)"
	base=$(basename "$deb" .deb)
	pkg=${base%%_*}
	ver=${base#*_}
	say "warning: using the cached $pkg ($ver)"
fi

# Unpack only what the image needs: the kernel and the modules the agent
# loads.  The list of modules is part of the unpacked dir's name.
kdir="$cache/kernel/${pkg}_$ver-$(printf '%s' "$modules" | text_sum | cut -c1-12)"
if [ ! -f "$kdir/.done" ]; then
	say "unpacking $pkg ($ver)"
	tmp=$(mktemp -d "$cache/kernel/.unpack.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	dpkg-deb --fsys-tarfile "$deb" |
		tar -x -C "$tmp/" --wildcards './boot/vmlinuz-*' './lib/modules/*' 2>/dev/null || true
	vmlinuz=$(ls "$tmp"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
	[ -n "$vmlinuz" ] || die "$deb: no /boot/vmlinuz-* in the package"
	mkdir -p "$tmp/out/modules"

	# The PVH entry is in the ELF kernel; the bzImage wraps it xz-compressed.
	say "extracting vmlinux from $(basename "$vmlinuz")"
	found=false
	for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
		tail -c +$((off + 1)) "$vmlinuz" |
			xz -dc --single-stream >"$tmp/out/vmlinux" 2>/dev/null || continue
		if [ "$(head -c 4 "$tmp/out/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
			found=true
			break
		fi
	done
	$found || die "$vmlinuz: no xz-compressed ELF kernel inside"

	for m in $modules; do
		f=$(find "$tmp/lib/modules" -name "$m.ko*" 2>/dev/null | head -n 1)
		case $f in
		'') say "note: $m is not a module in $pkg (built in?)" ;;
		*.ko) cp "$f" "$tmp/out/modules/$m.ko" ;;
		*.ko.xz) xz -dc "$f" >"$tmp/out/modules/$m.ko" ;;
		*.ko.zst) zstd -qdc "$f" >"$tmp/out/modules/$m.ko" ||
			die "$f: cannot decompress (apt-get install zstd)" ;;
		*.ko.gz) gzip -dc "$f" >"$tmp/out/modules/$m.ko" ;;
		*) die "$f: unknown module compression" ;;
		esac
	done
	rm -rf "$kdir"
	mv "$tmp/out" "$kdir"
	touch "$kdir/.done"
	rm -rf "$tmp"
	trap - EXIT
fi
$have_flock && exec 9>&-

# ---- 2. the root filesystem (debian) ----------------------------------------
# The host's Debian archives as apt lines, from apt's own view of its
# sources (apt-cache policy), so that mirrors, proxies and snapshots the
# host uses are used here too.
debian_sources() {
	apt-cache policy 2>/dev/null | awk '
		/^ *[0-9]+ [a-z+]+:\/\/[^ ]+ [^ ]+\/[^ ]+ / { uri = $2; split($3, s, "/"); want = 1; next }
		want && /^ *release / { if ($0 ~ /[ ,]o=Debian(,|$)/) print "deb " uri " " s[1] " " s[2]; want = 0 }' |
		sort -u
}

root_key=
if [ "$name" = debian ]; then
	say "[2/4] root filesystem"
	sources=$(debian_sources)
	[ -n "$sources" ] || die "the host's apt sources name no Debian archive (apt-cache policy; run apt-get update)"
	suite=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
	[ -n "$suite" ] || suite=bookworm
	packages="python3 python3-numpy python3-pandas procps coreutils findutils grep sed gawk less ca-certificates $extra"
	packages=$(printf '%s\n' $packages | LC_ALL=C sort -u | tr '\n' ' ' | sed 's/ $//')
	# What the archive holds changes with its Release files: hash them
	# with the list of packages, the sources and this script.
	releases=$(cat /var/lib/apt/lists/*Release 2>/dev/null | text_sum)
	root_key=$(printf 'root-1\n%s\n%s\n%s\n%s\n%s\n' "$suite" "$packages" "$sources" "$releases" "$(sum "$0")" |
		text_sum | cut -c1-24)
	root_img="$cache/roots/$root_key.img"
	if $have_flock; then
		exec 8>"$cache/root.lock"
		flock 8
	fi
	if [ -f "$root_img" ]; then
		say "root filesystem up to date ($root_key)"
	else
		say "building a Debian $suite root with mmdebstrap: $packages"
		say "from: $(printf '%s' "$sources" | tr '\n' ';')"
		tmp=$(mktemp -d "$cache/roots/.build.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		mode=auto
		$is_root && mode=root
		# The .debs stay in $cache/apt between builds (sync-in/out).
		# No apt in the guest (nothing to fetch from there), no docs,
		# man pages or translations.
		# shellcheck disable=SC2086 # the mirror lines are one argument each below
		set -- --mode="$mode" --variant=essential --include="$(printf '%s' "$packages" | tr ' ' ',')" \
			--skip=essential/unlink \
			--dpkgopt='path-exclude=/usr/share/man/*' \
			--dpkgopt='path-exclude=/usr/share/locale/*' \
			--dpkgopt='path-exclude=/usr/share/doc/*' \
			--dpkgopt='path-include=/usr/share/doc/*/copyright' \
			--dpkgopt='path-exclude=/usr/share/info/*' \
			--setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
			--setup-hook="sync-in '$cache/apt' /var/cache/apt/archives/" \
			--customize-hook="sync-out /var/cache/apt/archives '$cache/apt'" \
			--customize-hook='echo world >"$1/etc/hostname"' \
			--customize-hook='printf "127.0.0.1\tlocalhost world\n::1\tlocalhost\n" >"$1/etc/hosts"' \
			"$suite" "$tmp/root.tar"
		old_ifs=$IFS
		IFS='
'
		for line in $sources; do
			set -- "$@" "$line"
		done
		IFS=$old_ifs
		# Without our lock's descriptor: its hooks pass data on the
		# lowest free ones, which sh must be able to name (one digit).
		mmdebstrap "$@" 8>&- >&2 || die "mmdebstrap failed (see above)"
		say "compressing the root filesystem (squashfs, zstd)"
		# Extended attributes tar2sqfs cannot store are dropped.
		mmtarfilter --pax-exclude='*' <"$tmp/root.tar" |
			tar2sqfs --quiet --no-skip --force --compressor zstd --comp-extra level=3 \
				--block-size 131072 "$tmp/root.img" >&2 ||
			die "tar2sqfs failed"
		mv "$tmp/root.img" "$root_img"
		rm -rf "$tmp"
		trap - EXIT
		# Keep the three newest roots; older ones only fill the disk.
		ls -t "$cache"/roots/*.img 2>/dev/null | tail -n +4 | while read -r old; do
			rm -f "$old"
		done
	fi
	$have_flock && exec 8>&-
else
	say "[2/4] root filesystem: none (busybox in the initramfs)"
fi

# ---- 3. the initramfs ---------------------------------------------------------
stamp="image-2 name=$name mem=$mem kernel=${pkg}_$ver agent=$(sum "$agent") session=$(sum "$session") busybox=$(sum "$busybox") script=$(sum "$0") root=$root_key preload=$preload"
digest=$(printf '%s\n' "$stamp" | text_sum)
if [ -f "$outdir/manifest" ] && grep -qx "digest=$digest" "$outdir/manifest" &&
	[ -f "$outdir/vmlinux" ] && [ -f "$outdir/initrd.cpio.gz" ] &&
	{ [ -z "$root_key" ] || [ -f "$outdir/root.img" ]; }; then
	say "[3/4] initramfs up to date"
	say "[4/4] image $name up to date in $outdir ($pkg $ver)"
	exit 0
fi

say "[3/4] initramfs"
root=$(mktemp -d "$outdir/.initrd.XXXXXX")
trap 'rm -rf "$root" "$outdir"/.*.tmp' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" \
	"$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/root" \
	"$root/etc" "$root/lib/modules" "$root/lib/worldfs" "$root/tmp" "$root/var/tmp"
chmod 755 "$root"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$agent" "$root/init"
cp "$session" "$root/lib/worldfs/worldfs_session.py"
chmod 755 "$root/init" "$root/bin/busybox"
for f in "$kdir"/modules/*.ko; do
	[ -f "$f" ] && cp "$f" "$root/lib/modules/"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1\tlocalhost world\n::1\tlocalhost\n' >"$root/etc/hosts"
(cd "$root" && find . | LC_ALL=C sort | $cpio -o -H newc -R 0:0) |
	gzip -9n >"$outdir/.initrd.tmp" || die "cannot write the initramfs"

# ---- 4. the image directory ---------------------------------------------------
say "[4/4] image directory $outdir"
# Files are replaced by rename, never rewritten: a worldfs that pinned the
# old ones (hard links in its state directory) keeps them intact.  The
# manifest goes first and comes back last, so that a dir caught half-way
# has none and is never taken for the image it names.
cp "$kdir/vmlinux" "$outdir/.vmlinux.tmp"
if [ -n "$root_key" ] && ! [ "$outdir/root.img" -ef "$root_img" ]; then
	ln -f "$root_img" "$outdir/.root.img.tmp" 2>/dev/null || cp "$root_img" "$outdir/.root.img.tmp"
fi
{
	echo "name=$name"
	echo "mem_mib=$mem"
	echo "digest=$digest"
	echo "kernel=${pkg}_$ver"
	if [ -n "$root_key" ]; then
		echo "root=root.img"
		echo "suite=$suite"
		echo "packages=$packages"
		echo "python_preload=$preload"
	fi
} >"$outdir/.manifest.tmp"
rm -f "$outdir/manifest"
mv "$outdir/.vmlinux.tmp" "$outdir/vmlinux"
mv "$outdir/.initrd.tmp" "$outdir/initrd.cpio.gz"
if [ -z "$root_key" ]; then
	rm -f "$outdir/root.img"
elif [ -e "$outdir/.root.img.tmp" ]; then
	mv "$outdir/.root.img.tmp" "$outdir/root.img"
fi
mv "$outdir/.manifest.tmp" "$outdir/manifest"
rm -f "$outdir/.stamp"
size=$(du -sk --apparent-size "$outdir" | cut -f1)
say "image $name ready in $outdir ($pkg $ver, $((size / 1024)) MiB)"
