#!/bin/sh
# Runs once at boot inside tests/package.rs's container (a clean Debian 12 booted with
# systemd-nspawn): installs stemcell's package as an operator would on a running system,
# reports what systemd and the server say, removes and purges it, and powers off. The
# report is /pkgtest.out, one "== what: value" line per fact.
exec >/pkgtest.out 2>&1
echo "== dpkg -i"
dpkg -i /root/stemcell.deb
echo "== dpkg rc: $?"
echo "== enabled: $(systemctl is-enabled stemcell.service)"
i=0
until curl -sf http://127.0.0.1:8080/api/v1/status >/root/status.json; do
	i=$((i + 1))
	[ $i -gt 60 ] && break
	sleep 1
done
echo "== active: $(systemctl is-active stemcell.service)"
echo "== status: $(cat /root/status.json)"
echo "== user: $(stat -c %U "/proc/$(systemctl show -p MainPID --value stemcell.service)")"
echo "== state dir: $(stat -c '%U %a' /var/lib/stemcell)"
echo "== check: $(stemcell check --config /etc/stemcell/stemcell.yaml 2>/dev/null)"
journalctl -u stemcell --no-pager | tail -n 20
dpkg -r stemcell >/dev/null
echo "== after remove: $(systemctl is-active stemcell.service) $(test -e /var/lib/stemcell && echo state-kept)"
dpkg -P stemcell >/dev/null
echo "== after purge: $(test -e /var/lib/stemcell && echo state-kept || echo state-gone) $(test -e /etc/stemcell/stemcell.yaml && echo config-kept || echo config-gone)"
echo "== end"
systemctl poweroff
