#!/bin/bash
# Builds stemcell's Debian package from this checkout, with dpkg-deb (no debhelper needed):
#
#   bash scripts/build-deb.sh [BINARY]    # default: cargo build --release
#
# into <target>/debian/stemcell_VERSION_ARCH.deb: /usr/bin/stemcell, the systemd unit and
# sysusers file from contrib/, the install templates in /usr/share/stemcell/kickstarts, the
# operator docs in /usr/share/doc/stemcell/docs, and /etc/stemcell/{stemcell,inventory}.yaml as
# conffiles (HTTP only until the operator names an interface: contrib/deb/stemcell.yaml).
# The postinst creates the account and enables the service, and starts it once
# `stemcell check` passes. tests/package.rs installs it on a clean Debian 12 and starts it.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${1:-}
if [ -z "$BIN" ]; then
	cargo build --release --locked
	BIN=$TARGET/release/stemcell
fi
[ -x "$BIN" ] || { echo "build-deb: no binary at $BIN" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
ARCH=$(dpkg --print-architecture)
OUT=$TARGET/debian
P=$OUT/stemcell_${VERSION}_$ARCH
rm -rf "$P"
mkdir -p "$P/DEBIAN" "$P/usr/bin" "$P/lib/systemd/system" "$P/usr/lib/sysusers.d" \
	"$P/etc/stemcell" "$P/usr/share/stemcell" "$P/usr/share/doc/stemcell/docs"
install -m755 "$BIN" "$P/usr/bin/stemcell"
strip --strip-debug "$P/usr/bin/stemcell"
install -m644 contrib/stemcell.service "$P/lib/systemd/system/stemcell.service"
install -m644 contrib/stemcell.sysusers.conf "$P/usr/lib/sysusers.d/stemcell.conf"
install -m644 contrib/deb/stemcell.yaml contrib/deb/inventory.yaml "$P/etc/stemcell/"
cp -r kickstarts "$P/usr/share/stemcell/"
install -m644 README.md SECURITY.md "$P/usr/share/doc/stemcell/"
install -m644 docs/*.md "$P/usr/share/doc/stemcell/docs/"
for s in postinst prerm postrm; do install -m755 "contrib/deb/$s" "$P/DEBIAN/$s"; done
printf '/etc/stemcell/stemcell.yaml\n/etc/stemcell/inventory.yaml\n' >"$P/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$P" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" contrib/deb/control >"$P/DEBIAN/control"
find "$P" -type d -exec chmod 755 {} +
dpkg-deb --root-owner-group -Zxz --build "$P" "$P.deb" >/dev/null
rm -rf "$P"
echo "$P.deb"
