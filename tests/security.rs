//! SECURITY.md's protections, against real peers: the install token bound to the address
//! its machine leased (dhclient takes the lease, curl asks from that address and another),
//! TLS for the API and page (a certificate made by `openssl req`, curl --cacert and
//! `openssl s_client`), authentication for the read side, and per-install secrets.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const MAC: &str = "52:54:00:00:00:0b";
const INVENTORY: &str = "defaults:
  unknown: ignore
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
machines:
  \"52:54:00:00:00:0b\":
    hostname: web11
    role: web
";

/// Take (or renew) a lease for `sc1` in `cli` with dhclient; the leased address.
fn dhclient(cli: &Netns, dir: &Path, tag: &str) -> String {
    let lease_file = dir.join("lease");
    let out = cli.exec(&[
        "timeout",
        "30",
        "dhclient",
        "-4",
        "-1",
        "-lf",
        lease_file.to_str().unwrap(),
        "-pf",
        dir.join(format!("pid-{tag}")).to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(out.status.success(), "dhclient: {out:?}");
    let lease = std::fs::read_to_string(&lease_file).unwrap();
    lease
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fixed-address "))
        .map(|a| a.trim_end_matches(';').to_string())
        .next_back()
        .unwrap_or_else(|| panic!("no address in the lease: {lease}"))
}

/// curl inside `ns` from source address `from`: status and body.
fn curl_from(ns: &Netns, from: &str, method: &str, url: &str) -> (String, String) {
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--interface",
        from,
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

/// Authoritative mode: the install token works only from the address its machine leased.
/// From another address the install script and every callback are 403 with the reason, and
/// the machine's events say so; with the lease released, not even its old address may use
/// it; the lease taken again, the install carries on.
#[test]
fn the_install_token_works_only_from_the_leased_address() {
    if !(require("dhclient (isc-dhcp-client)", have_tool("dhclient"))
        && require("curl", have_tool("curl")))
    {
        return;
    }
    let (Some(srv), Some(cli)) = (Netns::new("lsrv"), Netns::new("lcli")) else {
        return;
    };
    for cmd in [
        format!("ip link add sc0 type veth peer name sc1 netns {}", cli.name),
        "ip addr add 198.18.93.1/24 dev sc0".into(),
        "ip link set sc0 up".into(),
    ] {
        let out = srv.exec(&cmd.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
    for cmd in [
        format!("ip link set sc1 address {MAC}"),
        "ip link set sc1 up".into(),
    ] {
        let out = cli.exec(&cmd.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    lab(dir, INVENTORY);
    std::fs::write(
        dir.join("stemcell.yaml"),
        "interface: sc0
server_ip: 198.18.93.1
dhcp:
  mode: authoritative
  subnets:
    - subnet: 198.18.93.0/24
      pool: [198.18.93.100, 198.18.93.150]
      router: 198.18.93.1
http:
  listen: 198.18.93.1:8080
stemcell:
  kernel: stemcell/vmlinuz
  initrd: stemcell/initrd.img
inventory: inventory.yaml
kickstarts: kickstarts
state_dir: state
admin_token_file: admin.token
",
    )
    .unwrap();
    let s = Server::start_in(Some(&srv), dir);
    let url = |p: &str| format!("http://198.18.93.1:8080{p}");

    let w = dir.join("dhclient");
    std::fs::create_dir_all(&w).unwrap();
    let leased = dhclient(&cli, &w, "1");
    let other = "198.18.93.200";
    for a in [leased.as_str(), other] {
        let out = cli.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", "sc1"]);
        assert!(out.status.success(), "{out:?}");
    }
    // The boot script (and with it the token) is anyone's to fetch: iPXE cannot log in.
    let (code, script) = curl_from(&cli, other, "GET", &url(&format!("/boot/{MAC}.ipxe")));
    assert_eq!(code, "200", "{script}");
    let token = cmdline_value(&script, "stemcell.token").expect("an install token");

    let install = url(&format!("/install/{MAC}?token={token}"));
    let (code, body) = curl_from(&cli, other, "GET", &install);
    assert_eq!(code, "403", "{body}\nlog:\n{}", s.log_text());
    assert!(
        body.contains(&format!("came from {other}")) && body.contains(&leased),
        "the reason names both addresses: {body}"
    );
    for action in ["log", "done", "failed"] {
        let (code, body) = curl_from(
            &cli,
            other,
            "POST",
            &url(&format!("/install/{MAC}/{action}?token={token}")),
        );
        assert_eq!(code, "403", "{action} from another address: {body}");
    }
    let (code, body) = curl_from(&cli, &leased, "GET", &install);
    assert_eq!(code, "200", "from the leased address: {body}");
    assert!(body.contains("host=web11"), "{body}");
    let (code, body) = curl_from(
        &cli,
        &leased,
        "POST",
        &url(&format!("/install/{MAC}/log?token={token}")),
    );
    assert_eq!(code, "200", "{body}");

    // Released: the old address no longer holds a lease, so nothing works from it.
    let out = cli.exec(&[
        "dhclient",
        "-4",
        "-r",
        "-lf",
        w.join("lease").to_str().unwrap(),
        "-pf",
        w.join("pid-r").to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(out.status.success(), "dhclient -r: {out:?}");
    let done = url(&format!("/install/{MAC}/done?token={token}"));
    let mut refused = (String::new(), String::new());
    for _ in 0..50 {
        refused = curl_from(&cli, &leased, "POST", &done);
        if refused.0 == "403" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refused.0, "403", "{}", refused.1);
    assert!(refused.1.contains("holds no lease"), "{}", refused.1);

    // The events say why each was refused.
    let api = url(&format!("/api/v1/machines/{MAC}"));
    let (code, body) = curl_from(&cli, &leased, "GET", &api);
    assert_eq!(code, "200", "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let events = m["events"].to_string();
    assert!(
        events.contains(&format!(
            "install script refused: the request came from {other}"
        )),
        "{events}"
    );
    assert!(events.contains("install done refused"), "{events}");

    // Leased again (the same address), the install finishes.
    let again = dhclient(&cli, &w, "2");
    assert_eq!(again, leased, "the same address again");
    let (code, body) = curl_from(&cli, &leased, "POST", &done);
    assert_eq!(code, "200", "{body}\nlog:\n{}", s.log_text());
    let (_, body) = curl_from(&cli, &leased, "GET", &api);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["state"], "installed", "{m}");
}
