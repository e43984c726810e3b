#!/bin/sh
# build-image.sh OUTDIR AGENT: make the guest image, OUTDIR/vmlinux (the
# PVH ELF inside Debian's kernel package) and OUTDIR/initrd.cpio.gz
# (busybox, the virtio modules, AGENT as /init).
#
# The kernel package is fetched with apt-get download into a cache and
# unpacked there, never installed.  The image is rebuilt only when one of
# its inputs changes: kernel package version, agent, busybox, this script.
set -eu

say() { printf 'worldfs-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ $# -eq 2 ] || { echo "usage: $0 OUTDIR AGENT_BINARY" >&2; exit 2; }
outdir=$1
agent=$2
busybox=${BUSYBOX:-/bin/busybox}
modules="virtio_ring virtio virtio_mmio virtio_console virtio_blk"

[ -f "$agent" ] || die "$agent: no such agent binary"
[ -f "$busybox" ] || die "$busybox: not found (apt-get install busybox-static)"
# A dynamic busybox would need a libc the initramfs does not have; only
# dynamic ELF files name an .interp section.
if LC_ALL=C grep -qa '\.interp' "$busybox"; then
	die "$busybox is dynamically linked (apt-get install busybox-static)"
fi
for tool in apt-get apt-cache dpkg-deb tar xz gzip sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool: command not found"
done
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
	cache=${XDG_CACHE_HOME:-$HOME/.cache}/worldfs
fi
mkdir -p "$cache/debs" "$cache/kernel" "$outdir" || die "$cache: cannot create the cache"
# Two builds at once (meson, a user) must not unpack into each other.
if command -v flock >/dev/null 2>&1; then
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

# Unpack only what the image needs: the kernel and the virtio modules.
kdir="$cache/kernel/${pkg}_$ver"
if [ ! -f "$kdir/.done" ]; then
	say "unpacking $pkg ($ver)"
	tmp=$(mktemp -d "$cache/kernel/.unpack.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	dpkg-deb --fsys-tarfile "$deb" |
		tar -x -C "$tmp/" --wildcards './boot/vmlinuz-*' \
			'./lib/modules/*/kernel/drivers/*/virtio*' 2>/dev/null || true
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

sum() { sha256sum "$1" | cut -d' ' -f1; }
stamp="kernel=${pkg}_$ver agent=$(sum "$agent") busybox=$(sum "$busybox") script=$(sum "$0")"
if [ -f "$outdir/.stamp" ] && [ "$(cat "$outdir/.stamp")" = "$stamp" ] &&
   [ -f "$outdir/vmlinux" ] && [ -f "$outdir/initrd.cpio.gz" ]; then
	say "image up to date ($pkg $ver)"
	exit 0
fi

say "building initrd.cpio.gz"
root=$(mktemp -d "$outdir/.initrd.XXXXXX")
trap 'rm -rf "$root" "$outdir/.vmlinux.tmp" "$outdir/.initrd.tmp"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" \
	"$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/root" \
	"$root/etc" "$root/lib/modules" "$root/tmp" "$root/var/tmp"
chmod 755 "$root"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$agent" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
for f in "$kdir"/modules/*.ko; do
	[ -f "$f" ] && cp "$f" "$root/lib/modules/"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1\tlocalhost world\n::1\tlocalhost\n' >"$root/etc/hosts"
(cd "$root" && find . | LC_ALL=C sort | $cpio -o -H newc -R 0:0) |
	gzip -9n >"$outdir/.initrd.tmp" || die "cannot write the initramfs"
cp "$kdir/vmlinux" "$outdir/.vmlinux.tmp"
mv "$outdir/.vmlinux.tmp" "$outdir/vmlinux"
mv "$outdir/.initrd.tmp" "$outdir/initrd.cpio.gz"
printf '%s\n' "$stamp" >"$outdir/.stamp"
say "image ready in $outdir ($pkg $ver)"
