#!/bin/bash
# Builds bpfipt_<version>_<arch>.deb into target/debian/ from a release build:
#   libbpfipt.so (in /usr/lib/<triplet>/bpfipt), bpfiptd and bpfipt (/usr/sbin), the systemd
#   unit of the host namespace's daemon, and `iptables-bpf` (+ -save, -restore, ip6 twins):
#   an alternative for /usr/sbin/iptables next to iptables-legacy and iptables-nft
#   (`update-alternatives --set iptables /usr/sbin/iptables-bpf`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --workspace >&2
# The build is where cargo puts it (CARGO_TARGET_DIR when set).
rel=${CARGO_TARGET_DIR:-target}/release
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
libdir=/usr/lib/$triplet/bpfipt
out=target/debian
pkg=$out/bpfipt_${version}_$arch
rm -rf "$pkg"
install -d "$pkg/DEBIAN" "$pkg$libdir" "$pkg/usr/sbin" "$pkg/lib/systemd/system" "$pkg/usr/share/doc/bpfipt"
install -m 0644 "$rel/libbpfipt.so" "$pkg$libdir/"
install -m 0755 "$rel/bpfiptd" "$rel/bpfipt" "$pkg/usr/sbin/"
install -m 0644 packaging/bpfiptd.service "$pkg/lib/systemd/system/"
install -m 0644 README.md "$pkg/usr/share/doc/bpfipt/"
for fam in iptables ip6tables; do
    for suffix in "" -save -restore; do
        sed -e "s|@TOOL@|$fam$suffix|" -e "s|@LIBDIR@|$libdir|" packaging/iptables-bpf.in > "$pkg/usr/sbin/$fam-bpf$suffix"
        chmod 0755 "$pkg/usr/sbin/$fam-bpf$suffix"
    done
done
sed '/#DEBHELPER#/d' packaging/debian/postinst > "$pkg/DEBIAN/postinst"
install -m 0755 packaging/debian/prerm "$pkg/DEBIAN/prerm"
chmod 0755 "$pkg/DEBIAN/postinst"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: bpfipt
Version: $version
Architecture: $arch
Maintainer: bpfipt developers <bpfipt@localhost>
Depends: iptables (>= 1.8), libc6 (>= 2.34)
Section: net
Priority: optional
Description: iptables rules enforced by eBPF, under the unmodified iptables tools
 libbpfipt.so answers the kernel's ip_tables socket options for iptables-legacy,
 ip6tables-legacy and every libiptc program; bpfiptd keeps each network
 namespace's tables and enforces them with eBPF programs.
CONTROL
dpkg-deb --root-owner-group --build "$pkg" >&2
echo "$pkg.deb"
