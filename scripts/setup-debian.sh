#!/bin/bash
# Install what stemcell's build, tests and lab need on Debian 12, as root. Idempotent.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config curl wget ca-certificates iproute2 procps psmisc
  isc-dhcp-client udhcpc tftp-hpa atftp dnsmasq-base isc-dhcp-relay
  qemu-system-x86 ipxe ipxe-qemu ovmf busybox-static cpio zstd xz-utils
  chromium chromium-driver fonts-dejavu-core
  shellcheck mmdebstrap uidmap jq kea-admin tcpdump
  systemd util-linux openssl
  vagrant vagrant-libvirt debconf-utils debian-installer-12-netboot-amd64 python3-venv
  openipmi ipmitool systemd-container kmod
)

# Secure Boot and the GRUB loader (issue 14): Debian's signed shim and network GRUB that
# stemcell serves to machines whose loader is grub; ovmf (above) has the Secure Boot
# firmware (OVMF_CODE_4M.ms.fd, OVMF_VARS_4M.ms.fd). shim-signed's postinst only runs
# grub-install on a host booted through UEFI with an EFI/<distributor> folder; elsewhere it
# installs the files and nothing else.
PACKAGES+=(shim-signed grub-efi-amd64-signed)

# cloud-init only for its schema check (tests/installers.rs): never for this host's boot.
if [ ! -e /etc/cloud/cloud-init.disabled ]; then
  mkdir -p /etc/cloud
  touch /etc/cloud/cloud-init.disabled
fi
PACKAGES+=(cloud-init)

# `stemcell image build` puts device firmware (firmware-bnx2x, firmware-misc-nonfree, ...)
# into the stem cell: those packages are in Debian's non-free-firmware component, which a
# minimal or cloud install's sources do not list. Add it (only that component, next to the
# host's own sources) unless some source already has it.
FIRMWARE_SOURCES=/etc/apt/sources.list.d/stemcell-non-free-firmware.sources
if ! grep -rqs --include='*.list' --include='*.sources' -e 'non-free-firmware' \
    /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "setup: enabling Debian's non-free-firmware component ($FIRMWARE_SOURCES)"
  cat > "$FIRMWARE_SOURCES" <<'EOF'
# Added by stemcell's scripts/setup-debian.sh: the device firmware packages the stem cell
# carries (stemcell image build) come from this component.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

# Several servers sharing machine state and leases in PostgreSQL (issue 15,
# `store.postgres`): tests/postgres.rs and tests/postgres_state.rs run private clusters of
# their own with Debian's server binaries (/usr/lib/postgresql/N/bin, as the postgres
# user; a socket folder of the test's, no TCP); the bench runs Kea and stemcell against
# one server.
PACKAGES+=(postgresql)

# ARM64 (issue 14, `stemcell image build --arch arm64` and tests/netns/pxe.sh's arm64
# scenario): QEMU's aarch64 machine and its UEFI firmware (AAVMF); the stem cell's arm64
# packages and GRUB's signed arm64 network loader are fetched with `apt-get download
# PKG:arm64`, so dpkg must know the architecture (nothing arm64 is installed on this host).
PACKAGES+=(qemu-system-arm qemu-efi-aarch64)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding the arm64 architecture to dpkg (for apt-get download PKG:arm64)"
  dpkg --add-architecture arm64
fi
ARM64_LISTS_MISSING=
[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_binary-arm64_Packages*' 2>/dev/null | head -1)" ] || ARM64_LISTS_MISSING=1

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
# `stemcell image build` fetches Debian's kernel with apt-get download: the package lists
# must exist and be fresh (a stale list names a kernel version the archive has dropped).
# (Again at once when the non-free-firmware component has no list yet.)
if ((${#missing[@]})) || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -720 2>/dev/null | head -1)" ] ||
    [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_non-free-firmware_*Packages*' 2>/dev/null | head -1)" ] ||
    [ -n "$ARM64_LISTS_MISSING" ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq || echo "setup: apt-get update failed; going on with the lists there are" >&2
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# lldpd only as the discovery test's switch (tests/netns/discover.sh, inside its own
# namespace): never as this host's service, which would announce the host on its real
# network. policy-rc.d keeps the package from starting it; systemd's unit is disabled.
if ! dpkg-query -W -f='${Status}' lldpd 2>/dev/null | grep -q "install ok installed"; then
  echo "setup: installing lldpd (not as a service)"
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy=1
  fi
  rc=0
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends lldpd >/dev/null || rc=$?
  [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || exit "$rc"
fi
if [ -d /run/systemd/system ] && systemctl is-enabled -q lldpd.service 2>/dev/null; then
  systemctl disable -q --now lldpd.service
fi

# Debian's own cluster, started (only on its Unix socket and localhost, as packaged).
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q ' down '; then
  pg_lsclusters -h | awk '$4 == "down" { print $1, $2 }' | while read -r v c; do
    pg_ctlcluster "$v" "$c" start || echo "setup: cannot start PostgreSQL cluster $v/$c" >&2
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "setup: installing the Rust toolchain with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  }
fi

# Python tools the tests run, from PyPI, in a venv of their own (Debian's python3 refuses
# system-wide pip installs): pykickstart's ksvalidator for the Rocky recipe.
VENV=/opt/stemcell-test-venv
if [ ! -x "$VENV/bin/ksvalidator" ]; then
  echo "setup: installing pykickstart into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check pykickstart
fi

# sushy-tools' Redfish emulator for tests/power.rs, from PyPI in its own venv (Debian 12's
# python3 refuses system-wide pip installs, PEP 668).
if [ ! -x /opt/sushy-tools/bin/sushy-emulator ]; then
  echo "setup: installing sushy-tools in /opt/sushy-tools"
  /usr/bin/python3 -m venv /opt/sushy-tools
  /opt/sushy-tools/bin/pip install -q --disable-pip-version-check sushy-tools
fi
