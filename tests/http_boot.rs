//! The HTTP half of booting, against the real binary, driven with curl.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WEB: &str = "52:54:00:00:00:01";
const INVENTORY: &str = "defaults:
  unknown: ignore
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
  broken:
    template: broken.sh.j2
machines:
  52-54-00-00-00-01:
    hostname: web01
    role: web
  \"52:54:00:00:00:02\":
    hostname: bad01
    role: broken
";

fn boot(s: &Server, mac: &str) -> String {
    let r = curl(&[], &s.url(&format!("/boot/{mac}.ipxe")));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn a_machine_installs_once_then_boots_from_disk_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let mut s = Server::start(dir.path());

    // Pending: the stem cell with this MAC's BOOTIF, the server URL and a token.
    let script = boot(&s, "52-54-00-00-00-01");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    // The kernel and initrd from this server, tagged with the MAC (for the machine's events).
    let port = s.addr.split(':').nth(1).unwrap();
    for want in [
        format!("kernel http://127.0.0.1:{port}/stemcell/vmlinuz?mac=52:54:00:00:00:01 "),
        format!("initrd --name initrd.img http://127.0.0.1:{port}/stemcell/initrd.img?mac=52:54:00:00:00:01 "),
    ] {
        assert!(
            script.lines().any(|l| l.starts_with(&want)),
            "no line starting {want:?} in\n{script}"
        );
    }
    assert_eq!(
        cmdline_value(&script, "BOOTIF").as_deref(),
        Some("01-52-54-00-00-00-01")
    );
    assert_eq!(
        cmdline_value(&script, "stemcell.url").as_deref(),
        Some("http://127.0.0.1:".to_string() + s.addr.split(':').nth(1).unwrap()).as_deref()
    );
    assert!(script.contains("console=ttyS0"), "{script}");
    let token = cmdline_value(&script, "stemcell.token").expect("a token on the command line");
    assert_eq!(token.len(), 32);
    // Asking again keeps the same token (a retried boot must not invalidate a running install).
    assert_eq!(
        cmdline_value(&boot(&s, WEB), "stemcell.token").as_deref(),
        Some(token.as_str())
    );

    // The install script: without, with a wrong, and with the right token.
    assert_eq!(curl(&[], &s.url(&format!("/install/{WEB}"))).status, 403);
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{WEB}?token=0000"))).status,
        403
    );
    let wrong = "f".repeat(32);
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{WEB}?token={wrong}"))).status,
        403
    );
    let r = curl(&[], &s.url(&format!("/install/{WEB}?token={token}")));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("echo host=web01 role=web disk=/dev/vda"),
        "{}",
        r.text()
    );
    assert!(
        r.text()
            .contains(&format!("/install/{WEB}/done?token={token}")),
        "{}",
        r.text()
    );

    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert_eq!(m["state"], "installing");

    // Log lines become events; done flips the machine to installed.
    let r = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            "partitioning /dev/vda\nwriting files\n",
        ],
        &s.url(&format!("/install/{WEB}/log?token={token}")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        curl(
            &["-X", "POST"],
            &s.url(&format!("/install/{WEB}/done?token=bad"))
        )
        .status,
        403
    );
    let r = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{WEB}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let script = boot(&s, WEB);
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    assert!(!script.contains("stemcell.token"), "{script}");
    // The old token is dead: the install script is refused now.
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{WEB}?token={token}"))).status,
        403
    );

    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert_eq!(m["state"], "installed");
    let events: Vec<String> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    let joined = events.join("\n");
    for want in [
        "boot: boot script: install as role web",
        "install: install script served",
        "log: partitioning /dev/vda",
        "log: writing files",
        "done: install done",
        "boot: boot script: installed, boot from local disk",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }

    // SIGKILL and restart: nothing acknowledged is lost.
    s.kill();
    let s = Server::start(dir.path());
    assert!(
        boot(&s, WEB).contains("sanboot"),
        "installed state must survive a restart"
    );
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert!(has_event(&m, "message", "partitioning /dev/vda"));

    // Re-arm needs the admin token; then the next boot reinstalls with a new token.
    let rearm = s.url(&format!("/api/v1/machines/{WEB}/reinstall"));
    assert_eq!(curl(&["-X", "POST"], &rearm).status, 401);
    assert_eq!(
        curl(&["-X", "POST", "-H", "Authorization: Bearer nope"], &rearm).status,
        401
    );
    let r = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer test-admin-token-0123456789",
        ],
        &rearm,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let script = boot(&s, WEB);
    let token2 = cmdline_value(&script, "stemcell.token").expect("re-armed machines install again");
    assert_ne!(token2, token);
}

#[test]
fn unknown_machines_follow_the_inventory_policy() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let script = boot(&s, "aa:bb:cc:dd:ee:ff");
    assert!(
        script.contains("is not in the inventory") && script.contains("exit 1"),
        "{script}"
    );
    assert!(!script.contains("kernel "), "{script}");
    assert_eq!(curl(&[], &s.url("/boot/not-a-mac.ipxe")).status, 400);
    assert_eq!(
        curl(&[], &s.url("/install/aa:bb:cc:dd:ee:ff?token=x")).status,
        404
    );
    assert_eq!(
        curl(
            &["-X", "POST"],
            &s.url("/install/aa:bb:cc:dd:ee:ff/done?token=x")
        )
        .status,
        403
    );

    // Under `unknown: ignore` nobody reports hardware.
    assert_eq!(
        curl(
            &["--data-binary", "cpus=2\n"],
            &s.url("/discover/aa:bb:cc:dd:ee:ff?token=x")
        )
        .status,
        403
    );
    // Switch the policy to discover while serving.
    std::fs::write(
        dir.path().join("inventory.yaml"),
        INVENTORY.replace("unknown: ignore", "unknown: discover"),
    )
    .unwrap();
    let t0 = Instant::now();
    let script = loop {
        let s2 = boot(&s, "aa:bb:cc:dd:ee:ff");
        if s2.contains("kernel ") || t0.elapsed() > Duration::from_secs(3) {
            break s2;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(script.contains("stemcell.mode=discover"), "{script}");
    // Its report must carry the discovery token its boot script named: nobody else can
    // invent machines with a POST.
    let dtoken = cmdline_value(&script, "stemcell.token").expect("a discovery token");
    let facts = ["--data-binary", "cpus=2\n"];
    let url = |t: &str| s.url(&format!("/discover/aa:bb:cc:dd:ee:ff{t}"));
    assert_eq!(curl(&facts, &url("")).status, 403);
    assert_eq!(curl(&facts, &url("?token=0000")).status, 403);
    assert_eq!(
        curl(
            &facts,
            &s.url(&format!("/discover/aa:bb:cc:dd:ee:fe?token={dtoken}"))
        )
        .status,
        403,
        "a token is for its own MAC only"
    );
    assert_eq!(curl(&facts, &url(&format!("?token={dtoken}"))).status, 200);
    let list = json(&curl(&[], &s.url("/api/v1/machines")));
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == "aa:bb:cc:dd:ee:ff")
        .expect("discovered machine listed");
    assert_eq!(row["state"], "discovered");
    assert_eq!(row["listed"], false);
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == WEB)
        .unwrap();
    for key in ["mac", "hostname", "role", "state", "ip"] {
        assert!(web.get(key).is_some(), "{key} missing in {web}");
    }
}

#[test]
fn kernel_and_assets_stream_with_range_etag_and_head() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let kernel = std::fs::read(dir.path().join("stemcell/vmlinuz")).unwrap();

    let r = curl(&[], &s.url(&format!("/stemcell/vmlinuz?mac={WEB}")));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, kernel);
    let etag = r.header("etag").expect("ETag");
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.header("accept-ranges").as_deref(), Some("bytes"));

    let r = curl(&["-r", "1000-1999"], &s.url("/stemcell/vmlinuz"));
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &kernel[1000..2000]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 1000-1999/1000000")
    );
    let r = curl(&["-r", "-10"], &s.url("/stemcell/vmlinuz"));
    assert_eq!(r.body, &kernel[kernel.len() - 10..]);
    let r = curl(&["-r", "2000000-"], &s.url("/stemcell/vmlinuz"));
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes */1000000")
    );

    let r = curl(
        &["-H", &format!("If-None-Match: {etag}")],
        &s.url("/stemcell/vmlinuz"),
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    // If-Range with a stale validator: the whole file, not a fragment of a changed one.
    let r = curl(
        &["-r", "0-9", "-H", "If-Range: \"stale\""],
        &s.url("/stemcell/vmlinuz"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), kernel.len());

    // A rebuilt stem cell is served at once (the in-memory copy follows the file).
    let rebuilt: Vec<u8> = (0..500_000u32).map(|i| (i % 13) as u8).collect();
    let tmp = dir.path().join("stemcell/vmlinuz.new");
    std::fs::write(&tmp, &rebuilt).unwrap();
    std::fs::rename(&tmp, dir.path().join("stemcell/vmlinuz")).unwrap();
    let r = curl(&[], &s.url("/stemcell/vmlinuz"));
    assert_eq!(r.body, rebuilt);
    assert_ne!(r.header("etag").unwrap(), etag);
    std::fs::write(dir.path().join("stemcell/vmlinuz"), &kernel).unwrap();

    let r = curl(&["-I"], &s.url("/stemcell/vmlinuz"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("1000000"));
    assert_eq!(curl(&[], &s.url("/stemcell/other")).status, 404);

    assert_eq!(curl(&[], &s.url("/assets/sub/file.txt")).text(), "asset");
    for hostile in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/sub/%2e%2e/%2e%2e/secret.txt",
        "/assets/..%2fsecret.txt",
    ] {
        let r = curl(&["--path-as-is"], &s.url(hostile));
        assert_ne!(r.status, 200, "{hostile} must not escape the assets folder");
        assert_ne!(r.text(), "secret");
    }
    // No redirects anywhere: firmware does not follow them. Not even for the paths web
    // servers like to redirect: a folder without its slash, a trailing or doubled slash.
    for path in [
        "/stemcell/vmlinuz",
        "/stemcell",
        "/stemcell/",
        "/stemcell/vmlinuz/",
        "//stemcell/vmlinuz",
        "/assets",
        "/assets/sub",
        "/assets/sub/",
        "/assets//sub/file.txt",
        "/assets/sub/file.txt/",
        "/boot/52:54:00:00:00:01.ipxe/",
        "/tftp",
    ] {
        let r = curl(&["--path-as-is"], &s.url(path));
        assert!(
            !(300..400).contains(&r.status) && r.header("location").is_none(),
            "{path}: a redirect (HTTP {}, Location {:?})",
            r.status,
            r.header("location")
        );
    }
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert!(has_event(&m, "message", "fetched stem-cell vmlinuz"), "{m}");
}

/// UEFI HTTP boot's loader without TFTP: the `loaders` folder at `/tftp/`, with the HEAD
/// EDK2 sends first (a 405 there ends its HTTP boot) and a Content-Length; jailed; and a
/// loader that is not there stops `check` with what is missing and where it was looked for.
#[test]
fn the_http_boot_loader_is_served_from_loaders_without_tftp() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let cfg = dir.path().join("stemcell.yaml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    assert!(!base.contains("tftp"), "the lab config has no TFTP: {base}");
    std::fs::write(&cfg, format!("{base}loaders: efi\n")).unwrap();
    std::fs::create_dir(dir.path().join("efi")).unwrap();
    let loader: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.path().join("efi/snponly.efi"), &loader).unwrap();
    let s = Server::start(dir.path());

    let r = curl(&["-I"], &s.url("/tftp/snponly.efi"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("200000"));
    let r = curl(&[], &s.url("/tftp/snponly.efi"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, loader);
    assert_eq!(curl(&[], &s.url("/tftp/ipxe.efi")).status, 404);
    for hostile in ["/tftp/../secret.txt", "/tftp/%2e%2e/secret.txt"] {
        let r = curl(&["--path-as-is"], &s.url(hostile));
        assert_ne!(
            r.status, 200,
            "{hostile} must not escape the loaders folder"
        );
    }
    drop(s);

    // DHCP on (proxy mode, an interface named) and the loader missing: `check` says so.
    let proxy = base.replace(
        "dhcp:\n  mode: off\n",
        "interface: lo\ndhcp:\n  mode: proxy\n",
    );
    assert_ne!(proxy, base);
    std::fs::write(&cfg, format!("{proxy}loaders: nowhere\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "dhcp.boot_files.uefi_http: snponly.efi cannot be served over HTTP from loaders"
        ) && text.contains("nowhere"),
        "{text}"
    );
    // Found: `check` passes (without the lab's deliberately broken machine).
    std::fs::write(&cfg, format!("{proxy}loaders: efi\n")).unwrap();
    let inventory = INVENTORY.split("  \"52:54:00:00:00:02\"").next().unwrap();
    std::fs::write(dir.path().join("inventory.yaml"), inventory).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failing_template_is_a_500_and_an_event_never_half_a_script() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let bad = "52:54:00:00:00:02";
    let token = cmdline_value(&boot(&s, bad), "stemcell.token").unwrap();
    let r = curl(&[], &s.url(&format!("/install/{bad}?token={token}")));
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("#!/bin/sh"), "{}", r.text());
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{bad}"))));
    assert_eq!(m["state"], "failed");
    let ev = m["events"].as_array().unwrap();
    assert!(
        ev.iter().any(|e| e["kind"] == "error"
            && e["message"].as_str().unwrap().contains("broken.sh.j2")
            && e["message"].as_str().unwrap().contains("no_such_variable")),
        "{m}"
    );
    assert!(s.log_text().contains("install template failed"));
    // A failed machine is not sent back into the installer.
    let script = boot(&s, bad);
    assert!(
        script.contains("failed") && !script.contains("kernel "),
        "{script}"
    );
}

#[test]
fn inventory_edits_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let inv = dir.path().join("inventory.yaml");
    let new_mac = "52:54:00:00:00:03";
    assert!(boot(&s, new_mac).contains("not in the inventory"));

    // An invalid edit: the old inventory keeps serving and the error is reported with its place.
    std::fs::write(
        &inv,
        INVENTORY.replace("    role: web\n", "    role: wbe\n"),
    )
    .unwrap();
    assert!(
        s.wait_log("inventory edit is invalid", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    let st = json(&curl(&[], &s.url("/api/v1/status")));
    let err = st["inventory"]["error"]
        .as_str()
        .expect("current error reported");
    assert!(
        err.contains("inventory.yaml:12:11: machine 52:54:00:00:00:01: unknown role \"wbe\""),
        "{err}"
    );
    assert!(
        boot(&s, WEB).contains("stemcell.token"),
        "the last good inventory still serves"
    );

    // A valid edit, written the way editors do (new file, then rename over the old one).
    let tmp = dir.path().join(".inventory.yaml.swp");
    std::fs::write(
        &tmp,
        format!("{INVENTORY}  {new_mac}:\n    hostname: web03\n    role: web\n"),
    )
    .unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, &inv).unwrap();
    loop {
        let script = boot(&s, new_mac);
        if script.contains("installing web03") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a valid edit must be served within a second; got\n{script}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = json(&curl(&[], &s.url("/api/v1/status")));
    assert!(st["inventory"]["error"].is_null(), "{st}");
    assert_eq!(st["inventory"]["machines"], 3);
}

#[test]
fn an_installer_that_never_calls_back_stops_after_installer_boots() {
    // A recipe that never posts done (a distribution's installer that reboots into the
    // network again) must not reinstall forever: after `installer_boots` boots of its
    // installer kernel without done or failed, the install stops with the reason, and the
    // machine waits for a re-arm. Both for the stem cell and for a role's own kernel.
    let dir = tempfile::tempdir().unwrap();
    lab(
        dir.path(),
        &format!(
            "{INVENTORY}  \"52:54:00:00:00:03\":\n    hostname: di01\n    role: installer\n"
        )
        .replace(
            "roles:\n",
            "roles:\n  installer:\n    template: web.sh.j2\n    kernel: sub/linux\n    initrd: sub/initrd.gz\n    cmdline: auto=true url={{ install_url }}\n",
        ),
    );
    std::fs::write(dir.path().join("assets/sub/linux"), b"d-i kernel").unwrap();
    std::fs::write(dir.path().join("assets/sub/initrd.gz"), b"d-i initrd").unwrap();
    let cfg = dir.path().join("stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text + "installer_boots: 2\n").unwrap();
    let s = Server::start(dir.path());
    let admin = "Authorization: Bearer test-admin-token-0123456789";

    for (mac, kernel) in [
        (WEB, format!("/stemcell/vmlinuz?mac={WEB}")),
        (
            "52:54:00:00:00:03",
            "/assets/sub/linux?mac=52:54:00:00:00:03".to_string(),
        ),
    ] {
        for n in 1..=2 {
            let script = boot(&s, mac);
            assert!(script.contains(&kernel), "boot {n} of {mac}:\n{script}");
            // A HEAD or a resumed range is not a boot; a whole GET is.
            assert_eq!(curl(&["-I"], &s.url(&kernel)).status, 200);
            assert_eq!(curl(&["-r", "0-3"], &s.url(&kernel)).status, 206);
            let k = curl(&[], &s.url(&kernel));
            assert_eq!(k.status, 200, "boot {n} of {mac}: {}", k.text());
            let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{mac}"))));
            assert_eq!(m["state"], "pending", "{m}");
        }
        // The third boot of the installer: refused, and the install is stopped.
        let script = boot(&s, mac);
        assert!(script.contains(&kernel), "{script}");
        let k = curl(&[], &s.url(&kernel));
        assert_eq!(k.status, 409, "{}", k.text());
        assert!(k.text().contains("re-arm"), "{}", k.text());
        let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{mac}"))));
        assert_eq!(m["state"], "failed", "{m}");
        assert_eq!(m["reason"], m["last_event"]["message"], "{m}");
        assert!(
            m["reason"].as_str().unwrap().contains(
                "booted 2 times since the machine was armed and never reported done or failed"
            ),
            "{m}"
        );
        // Its boot script now waits instead of installing (iPXE retries into this).
        let waiting = boot(&s, mac);
        assert!(!waiting.contains(&kernel), "{waiting}");
        // A re-arm starts the count again.
        let r = curl(
            &["-X", "POST", "-H", admin],
            &s.url(&format!("/api/v1/machines/{mac}/reinstall")),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(boot(&s, mac).contains(&kernel));
        assert_eq!(curl(&[], &s.url(&kernel)).status, 200);
    }
    // A machine that reports done is never counted: WEB, re-armed above, installs and then
    // boots from its disk whatever fetches its kernel.
    let script = boot(&s, WEB);
    let token = cmdline_value(&script, "stemcell.token").unwrap();
    let done = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{WEB}/done?token={token}")),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    for _ in 0..3 {
        assert_eq!(
            curl(&[], &s.url(&format!("/stemcell/vmlinuz?mac={WEB}"))).status,
            200
        );
    }
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert_eq!(m["state"], "installed", "{m}");
}

/// A machine with two NICs is one machine: it netboots from its second NIC and gets the
/// listed machine's install (BOOTIF names that NIC, `stemcell.mac` the machine), its token,
/// state and events are the machine's, the API answers for either MAC, and the install
/// script carries the inventory's bond for the installed system.
#[test]
fn a_machine_with_two_nics_boots_from_either_as_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    lab(
        dir.path(),
        "defaults:\n  unknown: discover\n  vars: { disk: /dev/vda }\nroles:\n  web:\n    template: net.sh.j2\nmachines:\n  52-54-00-00-00-01:\n    hostname: web01\n    role: web\n    interfaces: { eno1: 52:54:00:00:00:01, eno2: 52:54:00:00:00:02 }\n    network:\n      bond0: { bond: [eno1, eno2], mode: 802.3ad, dhcp: true }\n      mgmt: { vlan: 10, link: bond0, address: 198.18.10.5/24, gateway: 198.18.10.1 }\n",
    );
    std::fs::write(
        dir.path().join("kickstarts/net.sh.j2"),
        "#!/bin/sh\n# boot_nic={{ boot_nic }} nics={% for n in nics %}{{ n.name }}={{ n.mac }} {% endfor %}\n{% for f in network.networkd %}cat >\"/T/{{ f.path }}\" <<'EOF'\n{{ f.text }}EOF\n{% endfor %}",
    )
    .unwrap();
    let s = Server::start(dir.path());
    let script = boot(&s, "52:54:00:00:00:02");
    assert_eq!(
        cmdline_value(&script, "BOOTIF").as_deref(),
        Some("01-52-54-00-00-00-02"),
        "{script}"
    );
    assert_eq!(
        cmdline_value(&script, "stemcell.mac").as_deref(),
        Some("52:54:00:00:00:01")
    );
    let token = cmdline_value(&script, "stemcell.token").unwrap();
    // The same token whichever NIC asks: one machine, one install.
    assert_eq!(
        cmdline_value(&boot(&s, WEB), "stemcell.token").as_deref(),
        Some(token.as_str())
    );
    let m = json(&curl(&[], &s.url("/api/v1/machines/52-54-00-00-00-02")));
    assert_eq!(m["mac"], WEB, "{m}");
    assert_eq!(m["hostname"], "web01");
    assert_eq!(
        m["facts"]["boot_nic"], WEB,
        "the last boot was from eno1: {m}"
    );
    assert_eq!(m["nics"][1]["name"], "eno2");
    assert!(
        has_event(
            &m,
            "message",
            "boot script: install as role web (netbooted from its NIC 52:54:00:00:00:02)"
        ),
        "{m}"
    );
    let all = json(&curl(&[], &s.url("/api/v1/machines")));
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "one machine, not two: {all}"
    );
    // The install script, fetched by the key MAC or the second NIC's, with the bond.
    for mac in [WEB, "52:54:00:00:00:02"] {
        let r = curl(&[], &s.url(&format!("/install/{mac}?token={token}")));
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.text();
        for want in [
            "nics=eno1=52:54:00:00:00:01 eno2=52:54:00:00:00:02",
            "/T/etc/systemd/network/20-stemcell-bond0.netdev",
            "Mode=802.3ad",
            "MACAddress=52:54:00:00:00:01",
            "PermanentMACAddress=52:54:00:00:00:02\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nBond=bond0",
            "[Match]\nName=mgmt\n\n[Network]\nAddress=198.18.10.5/24\nGateway=198.18.10.1",
            "VLAN=mgmt",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
    }
    // The page names both NICs and the one it booted from.
    boot(&s, "52:54:00:00:00:02");
    let page = curl(&[], &s.url("/machines/52:54:00:00:00:01")).text();
    assert!(
        page.contains("NIC eno2") && page.contains("52:54:00:00:00:02 (netbooted from this NIC)"),
        "{page}"
    );
}

/// One raw HTTP/1.1 response read from `r`: status, lower-cased head and body (by
/// `Content-Length`; `head_only` for a HEAD). `None` when the connection closed first.
fn read_reply(
    r: &mut std::io::BufReader<std::net::TcpStream>,
    head_only: bool,
) -> Option<(u16, String, Vec<u8>)> {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    r.read_exact(&mut body).ok()?;
    Some((status, head, body))
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
        .collect()
}

/// The plain listener sends files with sendfile(2) (src/http/fast.rs) and hands other
/// requests to hyper on the same connection: curl and wget get every byte, Range and
/// HEAD answer as before, one connection carries several files (iPXE fetches the kernel
/// then the initrd), pipelined requests come back in order, and a client that leaves in
/// the middle of a file or a file that shrinks while it is sent ends that connection only.
#[test]
fn files_go_out_zero_copy_on_kept_alive_and_pipelined_connections() {
    use std::io::{BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let big = pattern(3_000_001, 7);
    std::fs::write(dir.path().join("assets/big.bin"), &big).unwrap();
    let initrd = pattern(700_000, 3);
    std::fs::write(dir.path().join("stemcell/initrd.img"), &initrd).unwrap();
    let kernel = std::fs::read(dir.path().join("stemcell/vmlinuz")).unwrap();
    let s = Server::start(dir.path());

    // curl: whole files, byte for byte; Range; HEAD.
    let r = curl(&[], &s.url("/assets/big.bin"));
    assert_eq!(r.status, 200);
    assert!(r.body == big, "the asset differs ({} bytes)", r.body.len());
    assert_eq!(r.header("content-length").as_deref(), Some("3000001"));
    assert!(r.header("etag").is_some() && r.header("last-modified").is_some());
    assert!(r.header("date").is_some());
    let r = curl(&["-r", "1000000-2000004"], &s.url("/assets/big.bin"));
    assert_eq!(r.status, 206);
    assert!(r.body == big[1_000_000..=2_000_004]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 1000000-2000004/3000001")
    );
    let r = curl(&["-r", "-5"], &s.url("/stemcell/initrd.img"));
    assert_eq!((r.status, &r.body[..]), (206, &initrd[initrd.len() - 5..]));
    let r = curl(&["-I"], &s.url("/assets/big.bin"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("3000001"));
    // (curl -I writes the head as its output: a HEAD's empty body is checked below.)

    // curl: the kernel then the initrd on one connection.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "%{num_connects} %{http_code}\\n",
        ])
        .arg("-o")
        .arg(tmp.path().join("k"))
        .arg(s.url(&format!("/stemcell/vmlinuz?mac={WEB}")))
        .arg("-o")
        .arg(tmp.path().join("i"))
        .arg(s.url("/stemcell/initrd.img"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "1 200\n0 200\n",
        "two files, one connection: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(tmp.path().join("k")).unwrap() == kernel);
    assert!(std::fs::read(tmp.path().join("i")).unwrap() == initrd);

    // wget, the other client installers and people use.
    let out = std::process::Command::new("wget")
        .args(["-q", "-T", "20", "-O"])
        .arg(tmp.path().join("w"))
        .arg(s.url("/assets/big.bin"))
        .status()
        .expect("wget must be installed (apt-get install wget)");
    assert!(out.success());
    assert!(std::fs::read(tmp.path().join("w")).unwrap() == big);

    // Pipelined in one write: files (sendfile), a route hyper serves (the connection is
    // handed over with the bytes already read), then files through hyper.
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reqs = String::new();
    for path in [
        "/stemcell/vmlinuz",
        "/assets/sub/file.txt",
        "/healthz",
        "/stemcell/initrd.img",
        "/assets/big.bin",
    ] {
        reqs.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    reqs.push_str("HEAD /stemcell/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n");
    c.write_all(reqs.as_bytes()).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut next = |head_only| read_reply(&mut r, head_only).expect("a reply");
    assert!(next(false).2 == kernel);
    assert_eq!(next(false).2, b"asset");
    assert_eq!(next(false).2, b"ok\n");
    assert!(next(false).2 == initrd);
    assert!(next(false).2 == big);
    let (status, head, body) = next(true);
    assert_eq!(status, 200);
    assert!(head.contains("content-length: 1000000\r\n") && body.is_empty());

    // Fast-path keep-alive: one connection, requests one after another, a 404 between.
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for (path, want) in [
        ("/stemcell/initrd.img", 200),
        ("/assets/nothing-here", 404),
        ("/stemcell/vmlinuz", 200),
    ] {
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(
            read_reply(&mut r, false).expect("a reply").0,
            want,
            "{path}"
        );
    }
    // Connection: close is honoured.
    c.write_all(b"GET /assets/sub/file.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (_, head, body) = read_reply(&mut r, false).unwrap();
    assert!(
        head.contains("connection: close") && body == b"asset",
        "{head}"
    );
    assert!(
        read_reply(&mut r, false).is_none(),
        "the connection must close"
    );

    // A client that leaves in the middle of a file: the server carries on.
    for _ in 0..3 {
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"GET /assets/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut some = [0u8; 10_000];
        c.read_exact(&mut some).unwrap();
        drop(c);
    }
    let r = curl(&[], &s.url("/assets/big.bin"));
    assert!(r.status == 200 && r.body == big);

    // A file that shrinks while it is sent: the connection ends early with the file's own
    // bytes (never other bytes, never a hang), the next request is served whole.
    let huge = pattern(64 << 20, 11);
    let path = dir.path().join("assets/shrinks.bin");
    std::fs::write(&path, &huge).unwrap();
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /assets/shrinks.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        head.push(b[0] as char);
    }
    assert!(head.contains("content-length: 67108864"), "{head}");
    let mut got = vec![0u8; 1 << 20];
    r.read_exact(&mut got).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    r.read_to_end(&mut got)
        .expect("the connection must end, not hang");
    assert!(
        got.len() < huge.len(),
        "{} bytes sent of a file cut to 2 MiB",
        got.len()
    );
    assert!(
        got[..] == huge[..got.len()],
        "the bytes sent must be the file's own"
    );
    assert!(
        s.wait_log("shrank", Duration::from_secs(10)),
        "{}",
        s.log_text()
    );
    let r = curl(&[], &s.url("/assets/shrinks.bin"));
    assert!(r.status == 200 && r.body[..] == huge[..2 << 20]);
}
