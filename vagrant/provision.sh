#!/bin/bash
# Vagrant provisioner of the stemcell server VM (Debian 12): builds stemcell from the
# checkout synced to /stemcell, the stem cell and the lab's Debian 12 image, and runs the
# example lab (examples/lab) as the systemd service on the private network's interface.
#   provision.sh SERVER_IP
set -euo pipefail
SERVER_IP=${1:?usage: provision.sh SERVER_IP}
SRC=/stemcell
SITE=/etc/stemcell

# The interface that holds SERVER_IP: stemcell answers DHCP there and nowhere else.
IFACE=$(ip -o -4 addr show | awk -v ip="$SERVER_IP" '{ split($4, a, "/"); if (a[1] == ip) print $2 }' | head -n 1)
[ -n "$IFACE" ] || { echo "provision: no interface holds $SERVER_IP" >&2; exit 1; }

cd "$SRC"
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
install -m755 target/release/stemcell /usr/bin/stemcell

mkdir -p "$SITE"
cp -r examples/lab/os examples/lab/puppet examples/lab/inventory.yaml kickstarts "$SITE/"
install -m600 examples/lab/admin.token "$SITE/admin.token"
stemcell image build --out "$SITE/stemcell" --cache /var/cache/stemcell
SOURCE_DATE_EPOCH=1735689600 stemcell os build debian-12 --spec "$SITE/os/debian-12.yaml" --out /var/lib/stemcell-images

# The lab's config, moved to this VM's network: its interface and address (the private
# network's host side is .254, so the machines' router is stemcell itself).
sed -e "s#^interface: .*#interface: $IFACE#" \
	-e "s#198\.18\.0\.1\b#$SERVER_IP#g" \
	-e "s#^  kernel: .*#  kernel: stemcell/vmlinuz#" \
	-e "s#^  initrd: .*#  initrd: stemcell/initrd.img#" \
	-e "s#^kickstarts: .*#kickstarts: kickstarts#" \
	-e "s#^state_dir: .*#state_dir: /var/lib/stemcell#" \
	-e "s#^images: [^ ]*#images: /var/lib/stemcell-images#" \
	examples/lab/stemcell.yaml >"$SITE/stemcell.yaml"
sed -i "s#198\.18\.0\.1\b#$SERVER_IP#g" "$SITE/inventory.yaml"
echo "user: stemcell                     # binds as root, then runs as this user" >>"$SITE/stemcell.yaml"
stemcell check --config "$SITE/stemcell.yaml"

install -m644 contrib/stemcell.service /etc/systemd/system/stemcell.service
install -m644 contrib/stemcell.sysusers.conf /usr/lib/sysusers.d/stemcell.conf
systemd-sysusers
systemctl daemon-reload
systemctl enable --now stemcell
echo "stemcell serves on $IFACE ($SERVER_IP): http://$SERVER_IP:8080/ ; now: vagrant up web01"
