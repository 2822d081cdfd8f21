//! Power control through real BMC emulators, each test inside its own network namespace on
//! 198.18.x addresses: OpenIPMI's `ipmi_sim` (with our lan.conf, .emu and a
//! `chassis_control` script that records every power and boot-device change), checked
//! against what `ipmitool` itself reports; sushy-tools' `sushy-emulator --fake` over HTTPS
//! with our own CA, checked by reading the system back; and BMCs that refuse, are not
//! there, or accept and never answer — clear errors, and the server keeps serving.
//!
//! Everything runs as an operator would: `stemcell serve` in the namespace, and the
//! `stemcell power` / `stemcell reinstall --power` commands and curl against it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    have_tool, is_root, lab, require, skip, stemcell_image, Netns, Server, Slot, BIN, SKIP_EXIT,
};

const TOKEN: &str = "test-admin-token-0123456789";
const PASSWORD: &str = "bmc-pw-Zq7";

/// The emulator processes of one test; the namespace's drop kills whatever is left.
struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sushy() -> Option<String> {
    if let Ok(p) = std::env::var("SUSHY_EMULATOR") {
        return Some(p);
    }
    ["/opt/sushy-tools/bin/sushy-emulator"]
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
        .or_else(|| have_tool("sushy-emulator").then(|| "sushy-emulator".to_string()))
}

fn ready_for_ipmi() -> bool {
    require("root (network namespaces)", is_root())
        && require("ipmitool (apt-get install ipmitool)", have_tool("ipmitool"))
        && require("ipmi_sim (apt-get install openipmi)", have_tool("ipmi_sim"))
        && require("curl", have_tool("curl"))
        && require("python3", have_tool("python3"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ipmi_sim` on `addr`:623 with user admin / [`PASSWORD`], its chassis driven by a script
/// that keeps power and boot device in files under `dir` and logs every call to
/// `dir/chassis.log`.
fn start_ipmi_sim(ns: &Netns, dir: &Path, addr: &str) -> Child {
    let script = dir.join("chassis.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# ipmi_sim's chassis_control: "$0 MC get PARAM..." or "$0 MC set PARAM VALUE...".
d={dir}
echo "$*" >> "$d/chassis.log"
shift
op=$1; shift
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$d/power" 2>/dev/null || echo 0)" ;;
      boot) echo "boot:$(cat "$d/boot" 2>/dev/null || echo default)" ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    case $1 in
      power) echo "$2" > "$d/power" ;;
      boot) echo "$2" > "$d/boot" ;;
    esac
    shift 2
  done ;;
esac
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    // ipmi_lan(5): one LAN channel on our address, an admin user, the chassis script.
    std::fs::write(
        dir.join("lan.conf"),
        format!(
            r#"name "stemcelltest"
set_working_mc 0x20
  startlan 1
    addr {addr} 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} 0x20"
  user 2 true "admin" "{PASSWORD}" admin 10 none md2 md5 straight
"#,
            script = script.display()
        ),
    )
    .unwrap();
    // The BMC itself: one management controller at 0x20.
    std::fs::write(
        dir.join("bmc.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("sim-state")).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ipmi_sim", "-n", "-c"])
        .arg(dir.join("lan.conf"))
        .arg("-f")
        .arg(dir.join("bmc.emu"))
        .arg("-s")
        .arg(dir.join("sim-state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ipmi_sim");
    // Ready when ipmitool gets an answer.
    for _ in 0..100 {
        if ipmitool(ns, addr, &["chassis", "power", "status"])
            .status
            .success()
        {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ipmi_sim on {addr} never answered ipmitool");
}

/// ipmitool itself, as an operator runs it, with the right password.
fn ipmitool(ns: &Netns, addr: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ipmitool", "-I", "lanplus", "-C", "3",
        ])
        .args(["-N", "1", "-R", "2", "-H", addr, "-U", "admin", "-E"])
        .args(args)
        .env("IPMI_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

/// A process in `ns` that binds UDP `addr:udp` and TCP `addr:tcp`, accepts TCP
/// connections (the kernel does) and never reads or answers anything.
fn start_silent(ns: &Netns, addr: &str, udp: u16, tcp: u16) -> Child {
    let code = format!(
        "import socket,sys,time\n\
         u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('{addr}',{udp}))\n\
         t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);t.bind(('{addr}',{tcp}));t.listen(64)\n\
         print('listening',flush=True)\n\
         time.sleep(3600)\n"
    );
    let mut c = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &code])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    c
}

fn add_addrs(ns: &Netns, addrs: &[&str]) {
    for a in addrs {
        let o = ns.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", "lo"]);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// The lab's config with a `power:` section, and `inventory`.
fn power_lab(dir: &Path, inventory: &str, power_config: &str) -> PathBuf {
    lab(dir, inventory);
    let cfg = dir.join("stemcell.yaml");
    let mut c = std::fs::read_to_string(&cfg).unwrap();
    c.push_str(power_config);
    std::fs::write(&cfg, c).unwrap();
    std::fs::write(dir.join("bmc.pass"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(dir.join("wrong.pass"), "not-the-password\n").unwrap();
    cfg
}

/// `stemcell ARGS --config CFG --server URL` in the namespace (the lab's config listens
/// on port 0, so the URL comes from the server's ready line).
fn stemcell(ns: &Netns, server: &Server, cfg: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN])
        .args(args)
        .arg("--config")
        .arg(cfg)
        .args(["--server", &server.url("")])
        .output()
        .unwrap()
}

fn curl_json(ns: &Netns, url: &str) -> serde_json::Value {
    let o = ns.exec(&["curl", "-sS", "--fail", "--max-time", "10", url]);
    assert!(o.status.success(), "{url}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{url}: {e}: {}", text(&o)))
}

fn events(ns: &Netns, server: &Server, mac: &str) -> Vec<String> {
    curl_json(ns, &server.url(&format!("/api/v1/machines/{mac}")))["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

fn chassis_sets(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("chassis.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" set "))
        .map(|l| l.trim_start_matches("0x20 ").to_string())
        .collect()
}

fn power_is(ns: &Netns, addr: &str) -> String {
    let o = ipmitool(ns, addr, &["chassis", "power", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

const IPMI_MAC: &str = "52:54:00:aa:00:01";

#[test]
fn ipmi_status_on_off_cycle_pxe_agree_with_ipmitool_and_the_chassis() {
    if !ready_for_ipmi() {
        return;
    }
    let Some(ns) = Netns::new("ipmi") else { return };
    add_addrs(&ns, &["198.18.60.2"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bmc = dir.join("bmc");
    std::fs::create_dir_all(&bmc).unwrap();
    let _sim = Kill(vec![start_ipmi_sim(&ns, &bmc, "198.18.60.2")]);
    let cfg = power_lab(
        dir,
        &format!(
            "defaults:\n  power: {{ driver: ipmi, username: admin, password_file: {pw} }}\nroles:\n  web: {{ template: web.sh.j2 }}\nmachines:\n  {IPMI_MAC}:\n    hostname: ipmi1\n    role: web\n    power: {{ address: 198.18.60.2 }}\n  52:54:00:aa:00:09:\n    hostname: nobmc\n    role: web\n",
            pw = dir.join("bmc.pass").display()
        ),
        "power:\n  timeout: 20s\n  refresh: 0\n",
    );
    let server = Server::start_in(Some(&ns), dir);
    let power = |action: &str| {
        let o = stemcell(&ns, &server, &cfg, &["power", IPMI_MAC, action]);
        assert!(o.status.success(), "power {action}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    // status: both say off.
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is off");
    assert_eq!(power("status"), format!("{IPMI_MAC}: off"));

    // on: the chassis was told to power on, and ipmitool agrees.
    let out = power("on");
    assert!(out.contains("powered on; power is on"), "{out}");
    assert_eq!(chassis_sets(&bmc), ["set power 1"]);
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is on");
    assert_eq!(power("status"), format!("{IPMI_MAC}: on"));

    // pxe: the boot device reaches the chassis, and ipmitool reads it back.
    let out = power("pxe");
    assert!(
        out.contains("next boot from the network, once (UEFI)"),
        "{out}"
    );
    assert_eq!(chassis_sets(&bmc), ["set power 1", "set boot pxe"]);
    let o = ipmitool(&ns, "198.18.60.2", &["chassis", "bootparam", "get", "5"]);
    assert!(
        text(&o).contains("Boot Device Selector : Force PXE"),
        "{}",
        text(&o)
    );

    // cycle of a machine that is on: off, then on again (ipmi_sim powers on after a
    // moment; wait for the chassis to see it).
    let out = power("cycle");
    assert!(out.contains("power cycled"), "{out}");
    let mut sets = Vec::new();
    for _ in 0..100 {
        sets = chassis_sets(&bmc);
        if sets.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sets,
        ["set power 1", "set boot pxe", "set power 0", "set power 1"]
    );
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is on");

    // off, then a cycle of a machine that is off powers it on (MAAS's --on-if-off).
    let out = power("off");
    assert!(out.contains("powered off; power is off"), "{out}");
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is off");
    let out = power("cycle");
    assert!(out.contains("was off: powered on"), "{out}");
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is on");
    assert_eq!(
        chassis_sets(&bmc)[4..],
        ["set power 0".to_string(), "set power 1".to_string()]
    );

    // Every action is an event that says who asked; status queries are not.
    let ev = events(&ns, &server, IPMI_MAC);
    for want in [
        "power on by the admin API: powered on; power is on",
        "power pxe by the admin API: next boot from the network, once (UEFI)",
        "power cycle by the admin API: power cycled",
        "power off by the admin API: powered off; power is off",
        "power cycle by the admin API: was off: powered on",
    ] {
        assert!(ev.iter().any(|e| e == want), "no event {want:?} in {ev:#?}");
    }
    assert!(!ev.iter().any(|e| e.contains("power status")), "{ev:#?}");
    // The API shows the last state seen.
    let m = curl_json(&ns, &server.url(&format!("/api/v1/machines/{IPMI_MAC}")));
    assert_eq!(m["has_bmc"], true);
    assert_eq!(m["power"]["state"], "on", "{m}");
    let o = stemcell(&ns, &server, &cfg, &["machine", IPMI_MAC]);
    assert!(
        text(&o).contains("\npower     on (seen at 20"),
        "{}",
        text(&o)
    );

    // The page: the power column, and the buttons for a logged-in admin.
    let index = text(&ns.exec(&["curl", "-sS", &server.url("/")]));
    assert!(
        index.contains("data-field=\"power\" title=\"\">on, "),
        "{index}"
    );
    let page = server.url(&format!("/machines/{IPMI_MAC}"));
    let logged_out = text(&ns.exec(&["curl", "-sS", &page]));
    assert!(!logged_out.contains("id=\"power-off\""), "{logged_out}");
    let login = text(&ns.exec(&[
        "curl",
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-d",
        &format!("token={TOKEN}"),
        &server.url("/login"),
    ]));
    let session = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {login}"))
        .to_string();
    let cookie = format!("Cookie: {session}");
    let html = text(&ns.exec(&["curl", "-sS", "-H", &cookie, &page]));
    assert!(html.contains("id=\"power-off\""), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|x| x.split('"').next())
        .unwrap()
        .to_string();
    let o = ns.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &cookie,
        "-d",
        &format!("csrf={csrf}"),
        &server.url(&format!("/machines/{IPMI_MAC}/power-off")),
    ]);
    assert_eq!(text(&o), "303");
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is off");
    assert!(
        events(&ns, &server, IPMI_MAC)
            .iter()
            .any(|e| e == "power off by an admin on the page: powered off; power is off"),
        "no page event"
    );
    let html = text(&ns.exec(&["curl", "-sS", "-H", &cookie, &page]));
    assert!(html.contains("id=\"power\" title=\"\">off, "), "{html}");
    // Without the CSRF token: refused, and nothing happens.
    let o = ns.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &cookie,
        "-d",
        "csrf=forged",
        &server.url(&format!("/machines/{IPMI_MAC}/power-on")),
    ]);
    assert_ne!(text(&o), "303");
    assert_eq!(power_is(&ns, "198.18.60.2"), "Chassis Power is off");
    assert_eq!(power("on"), format!("{IPMI_MAC}: powered on; power is on"));

    // reinstall --power: re-armed, next boot from the network, power-cycled.
    let before = chassis_sets(&bmc).len();
    let o = stemcell(&ns, &server, &cfg, &["reinstall", IPMI_MAC, "--power"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("re-armed; next boot from the network, once (UEFI); power cycled"),
        "{}",
        text(&o)
    );
    let ev = events(&ns, &server, IPMI_MAC);
    assert!(
        ev.iter()
            .any(|e| e == "re-armed: the next netboot reinstalls"),
        "{ev:#?}"
    );
    assert_eq!(
        chassis_sets(&bmc)[before..before + 2],
        ["set boot pxe".to_string(), "set power 0".to_string()]
    );

    // A machine without a BMC: a clear refusal.
    let o = stemcell(
        &ns,
        &server,
        &cfg,
        &["power", "52:54:00:aa:00:09", "status"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("52:54:00:aa:00:09 (nobmc) has no BMC: add a power: block"),
        "{}",
        text(&o)
    );
    // The password is nowhere an operator or a log reader looks.
    let api = ns.exec(&["curl", "-sS", &server.url("/api/v1/machines")]);
    let page = ns.exec(&["curl", "-sS", &server.url("/")]);
    for (what, t) in [
        ("log", server.log_text()),
        ("API", text(&api)),
        ("page", text(&page)),
        ("events", ev.join("\n")),
    ] {
        assert!(!t.contains(PASSWORD), "the BMC password is in the {what}");
    }
}

#[test]
fn rolling_rebuild_of_a_role_reports_each_machine_and_stops_at_the_failure_limit() {
    if !ready_for_ipmi() {
        return;
    }
    let Some(ns) = Netns::new("roll") else { return };
    add_addrs(&ns, &["198.18.61.2"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bmc = dir.join("bmc");
    std::fs::create_dir_all(&bmc).unwrap();
    let _sim = Kill(vec![start_ipmi_sim(&ns, &bmc, "198.18.61.2")]);
    // Three machines share the one emulated BMC; two more have the wrong password.
    let mut inv = format!(
        "defaults:\n  power: {{ driver: ipmi, username: admin, password_file: {pw}, address: 198.18.61.2 }}\nroles:\n  web: {{ template: web.sh.j2 }}\n  db: {{ template: web.sh.j2 }}\nmachines:\n",
        pw = dir.join("bmc.pass").display()
    );
    for i in 1..=3 {
        inv.push_str(&format!("  52:54:00:bb:00:0{i}: {{ role: web }}\n"));
    }
    for i in 4..=6 {
        let pw = if i == 6 { "bmc.pass" } else { "wrong.pass" };
        inv.push_str(&format!(
            "  52:54:00:bb:00:0{i}: {{ role: db, power: {{ password_file: {} }} }}\n",
            dir.join(pw).display()
        ));
    }
    let cfg = power_lab(dir, &inv, "power:\n  timeout: 20s\n  refresh: 0\n");
    let server = Server::start_in(Some(&ns), dir);

    let o = stemcell(
        &ns,
        &server,
        &cfg,
        &["reinstall", "--role", "web", "--power", "--parallel", "2"],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for i in 1..=3 {
        assert!(
            out.contains(&format!("52:54:00:bb:00:0{i}  ok      re-armed;")),
            "{out}"
        );
    }
    // db: the first machine fails on the credentials, and with --max-failures 1 (the
    // default) and one at a time the others are not started.
    let o = stemcell(
        &ns,
        &server,
        &cfg,
        &["reinstall", "--role", "db", "--power"],
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("52:54:00:bb:00:04  FAILED") && out.contains("refused the credentials"),
        "{out}"
    );
    assert!(
        out.contains("52:54:00:bb:00:05  skipped") && out.contains("52:54:00:bb:00:06  skipped"),
        "{out}"
    );
    assert!(
        out.contains("1 of 3 machines failed, 2 not started"),
        "{out}"
    );
    let ev = events(&ns, &server, "52:54:00:bb:00:04");
    assert!(
        ev.iter().any(|e| e.starts_with(
            "power pxe by the admin API: failed: BMC ipmi 198.18.61.2 refused the credentials"
        )),
        "{ev:#?}"
    );
}

#[test]
fn broken_bmcs_give_clear_errors_and_the_server_keeps_serving() {
    if !ready_for_ipmi() {
        return;
    }
    let Some(ns) = Netns::new("pwerr") else {
        return;
    };
    add_addrs(&ns, &["198.18.62.2", "198.18.62.3"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bmc = dir.join("bmc");
    std::fs::create_dir_all(&bmc).unwrap();
    let _procs = Kill(vec![
        start_ipmi_sim(&ns, &bmc, "198.18.62.2"),
        start_silent(&ns, "198.18.62.3", 623, 8443),
    ]);
    let pw = dir.join("bmc.pass");
    let cfg = power_lab(
        dir,
        &format!(
            "defaults:\n  power: {{ driver: ipmi, username: admin, password_file: {pw} }}\nroles:\n  web: {{ template: web.sh.j2 }}\nmachines:\n  52:54:00:cc:00:01: {{ hostname: badpw, role: web, power: {{ address: 198.18.62.2, password_file: {wrong} }} }}\n  52:54:00:cc:00:02: {{ hostname: nobody, role: web, power: {{ address: 198.18.62.99 }} }}\n  52:54:00:cc:00:03: {{ hostname: silentudp, role: web, power: {{ address: 198.18.62.3 }} }}\n  52:54:00:cc:00:04: {{ hostname: silenttcp, role: web, power: {{ driver: redfish, address: 198.18.62.3, port: 8443, insecure: true }} }}\n  52:54:00:cc:00:05: {{ hostname: silenttcp2, role: web, power: {{ driver: redfish, address: 198.18.62.3, port: 8443, insecure: true }} }}\n  52:54:00:cc:00:06: {{ hostname: nopwfile, role: web, power: {{ address: 198.18.62.2, password_file: {missing} }} }}\n",
            pw = pw.display(),
            wrong = dir.join("wrong.pass").display(),
            missing = dir.join("missing.pass").display(),
        ),
        // Two BMC calls at once: the two hanging Redfish calls take both permits.
        "power:\n  timeout: 8s\n  max_calls: 2\n  refresh: 0\n",
    );
    let server = Server::start_in(Some(&ns), dir);
    let fails = |mac: &str, want: &str| {
        let o = stemcell(&ns, &server, &cfg, &["power", mac, "status"]);
        println!("{mac}: {}", text(&o).trim());
        assert!(!o.status.success(), "{mac}: {}", text(&o));
        assert!(
            text(&o).contains(want),
            "{mac}: wanted {want:?} in {}",
            text(&o)
        );
    };

    // Two calls to a TCP port that accepts and never answers hold both permits; meanwhile
    // the API and the page answer.
    let hanging: Vec<_> = ["52:54:00:cc:00:04", "52:54:00:cc:00:05"]
        .into_iter()
        .map(|mac| {
            let (name, cfg, url) = (ns.name.clone(), cfg.clone(), server.url(""));
            std::thread::spawn(move || {
                Command::new("ip")
                    .args([
                        "netns", "exec", &name, BIN, "power", mac, "status", "--config",
                    ])
                    .arg(cfg)
                    .args(["--server", &url])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    // Both are with the BMC once the silent server holds their connections.
    for _ in 0..100 {
        let o = ns.exec(&[
            "ss",
            "-Htn",
            "state",
            "established",
            "dst",
            "198.18.62.3:8443",
        ]);
        if String::from_utf8_lossy(&o.stdout).lines().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = curl_json(&ns, &server.url("/api/v1/machines"));
    assert_eq!(list.as_array().unwrap().len(), 6);
    let page = ns.exec(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        &server.url("/"),
    ]);
    assert!(page.status.success(), "{}", text(&page));
    if hanging.iter().any(|h| h.is_finished()) {
        let outs: Vec<String> = hanging
            .into_iter()
            .map(|h| text(&h.join().unwrap()))
            .collect();
        panic!("the API answered only after the hanging power calls ended: {outs:#?}");
    }
    for h in hanging {
        let o = h.join().unwrap();
        println!("hanging TCP: {}", text(&o).trim());
        assert!(!o.status.success());
        assert!(
            text(&o).contains("BMC redfish 198.18.62.3:8443 did not answer within"),
            "{}",
            text(&o)
        );
    }

    // Wrong password.
    fails(
        "52:54:00:cc:00:01",
        "BMC ipmi 198.18.62.2 refused the credentials (wrong username or password)",
    );
    // Nothing at that address.
    fails("52:54:00:cc:00:02", "BMC ipmi 198.18.62.99");
    // A UDP port that takes the datagrams and never answers.
    fails("52:54:00:cc:00:03", "BMC ipmi 198.18.62.3");
    // The password file is not there.
    fails(
        "52:54:00:cc:00:06",
        &format!(
            "cannot read the BMC password file {}",
            dir.join("missing.pass").display()
        ),
    );
    for (mac, kinds) in [
        (
            "52:54:00:cc:00:02",
            ["is unreachable", "did not answer within 8 s"],
        ),
        (
            "52:54:00:cc:00:03",
            ["is unreachable", "did not answer within 8 s"],
        ),
    ] {
        let o = stemcell(&ns, &server, &cfg, &["power", mac, "status"]);
        println!("{mac}: {}", text(&o).trim());
        assert!(
            kinds.iter().any(|k| text(&o).contains(k)),
            "{mac}: {}",
            text(&o)
        );
    }
    // Failures are events too, and the server is still fine.
    let ev = events(&ns, &server, "52:54:00:cc:00:01");
    assert!(
        ev.iter().any(|e| e.starts_with(
            "power status by the admin API: failed: BMC ipmi 198.18.62.2 refused the credentials"
        )),
        "{ev:#?}"
    );
    let ok = ns.exec(&["curl", "-sS", "--fail", &server.url("/healthz")]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");
    // The API refuses without the token and with a bad body.
    let o = ns.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-d",
        "{\"action\":\"on\"}",
        &server.url("/api/v1/machines/52:54:00:cc:00:01/power"),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "401");
    let o = ns.exec(&[
        "curl",
        "-sS",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "-d",
        "{\"action\":\"reboot\"}",
        &server.url("/api/v1/machines/52:54:00:cc:00:01/power"),
    ]);
    assert!(
        text(&o).contains("unknown power action \"reboot\"") && text(&o).ends_with("400"),
        "{}",
        text(&o)
    );
}

/// A CA and a certificate for `ip` signed by it (openssl, as a site's PKI would).
fn make_tls(dir: &Path, ip: &str) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test BMC CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={ip}"),
        "-keyout",
        "bmc.key",
        "-out",
        "bmc.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "bmc.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "bmc.pem",
    ]);
}

#[test]
fn redfish_over_https_with_our_ca_reaches_sushy_emulator() {
    if !require("root (network namespaces)", is_root())
        || !require("openssl", have_tool("openssl"))
        || !require("curl", have_tool("curl"))
    {
        return;
    }
    let Some(sushy) = sushy() else {
        skip("sushy-emulator (scripts/setup-debian.sh installs it in /opt/sushy-tools)");
        return;
    };
    let Some(ns) = Netns::new("rf") else { return };
    add_addrs(&ns, &["198.18.63.4"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_tls(dir, "198.18.63.4");
    // HTTP Basic auth against an Apache-style user file (bcrypt, the only digest sushy
    // takes), hashed with the bcrypt module sushy-tools itself brings; cost 4, as sushy
    // checks every request and the default cost makes each take a quarter of a second.
    let python = Path::new(&sushy).with_file_name("python3");
    let python = if python.is_file() {
        python
    } else {
        PathBuf::from("python3")
    };
    let hash = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import bcrypt;print(bcrypt.hashpw(b'{PASSWORD}',bcrypt.gensalt(4)).decode())"
            ),
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "bcrypt: {}", text(&hash));
    std::fs::write(
        dir.join("htpasswd"),
        format!("admin:{}\n", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .unwrap();
    std::fs::write(
        dir.join("sushy.conf"),
        format!(
            "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
            dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let emulator = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            &sushy,
            "--config",
            dir.join("sushy.conf").to_str().unwrap(),
            "--fake",
            "-i",
            "198.18.63.4",
            "-p",
            "8443",
        ])
        .arg("--ssl-certificate")
        .arg(dir.join("bmc.pem"))
        .arg("--ssl-key")
        .arg(dir.join("bmc.key"))
        // Its fake systems live in an SQLite file under the temp folder: one per test.
        .env("TMPDIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _procs = Kill(vec![emulator]);
    let ca = dir.join("ca.pem");
    let user = format!("admin:{PASSWORD}");
    let get = |path: &str| -> serde_json::Value {
        let o = ns.exec(&[
            "curl",
            "-sS",
            "--fail",
            "-u",
            &user,
            "--cacert",
            ca.to_str().unwrap(),
            "--max-time",
            "10",
            &format!("https://198.18.63.4:8443{path}"),
        ]);
        assert!(o.status.success(), "{path}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut members = serde_json::Value::Null;
    for _ in 0..100 {
        let o = ns.exec(&[
            "curl",
            "-sS",
            "--fail",
            "-u",
            &format!("admin:{PASSWORD}"),
            "--cacert",
            ca.to_str().unwrap(),
            "--max-time",
            "2",
            "https://198.18.63.4:8443/redfish/v1/Systems",
        ]);
        if o.status.success() {
            members = serde_json::from_slice(&o.stdout).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let system = members["Members"][0]["@odata.id"]
        .as_str()
        .unwrap_or_else(|| panic!("sushy-emulator never served its systems: {members}"))
        .to_string();

    let mac = "52:54:00:dd:00:01";
    let cfg = power_lab(
        dir,
        &format!(
            "roles:\n  web: {{ template: web.sh.j2 }}\nmachines:\n  {mac}:\n    role: web\n    power: {{ driver: redfish, address: 198.18.63.4, port: 8443, username: admin, password_file: {pw}, ca_file: {ca} }}\n  52:54:00:dd:00:02:\n    role: web\n    power: {{ driver: redfish, address: 198.18.63.4, port: 8443, username: admin, password_file: {pw}, ca_file: {other} }}\n  52:54:00:dd:00:03:\n    role: web\n    power: {{ driver: redfish, address: 198.18.63.4, port: 8443, username: admin, password_file: {wrong}, ca_file: {ca} }}\n",
            wrong = dir.join("wrong.pass").display(),
            pw = dir.join("bmc.pass").display(),
            ca = ca.display(),
            other = dir.join("bmc.pem").display(),
        ),
        // sushy-emulator's fake driver applies a power change 1 to 11 s after it is asked.
        "power:\n  timeout: 30s\n  refresh: 1s\n",
    );
    let server = Server::start_in(Some(&ns), dir);
    let power = |action: &str| {
        let o = stemcell(&ns, &server, &cfg, &["power", mac, action]);
        assert!(o.status.success(), "power {action}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    let was = get(&system)["PowerState"].as_str().unwrap().to_lowercase();
    assert_eq!(power("status"), format!("{mac}: {was}"));
    let out = power("on");
    assert!(out.contains("powered on; power is on"), "{out}");
    assert_eq!(get(&system)["PowerState"], "On");
    let out = power("off");
    assert!(out.contains("powered off; power is off"), "{out}");
    assert_eq!(get(&system)["PowerState"], "Off");
    let out = power("cycle");
    assert!(out.contains("was off: powered on"), "{out}");
    assert_eq!(get(&system)["PowerState"], "On");

    // The background poll fills in the power state for the API.
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        seen = curl_json(&ns, &server.url(&format!("/api/v1/machines/{mac}")))["power"].clone();
        if seen["state"] == "on" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen["state"], "on", "{seen}");

    // The PATCH arrived: the system now boots from the network. (sushy-emulator keeps
    // every override as Continuous; a real BMC keeps ours, Once.)
    assert_eq!(get(&system)["Boot"]["BootSourceOverrideTarget"], "Hdd");
    let out = power("pxe");
    assert!(out.contains("next boot from the network, once"), "{out}");
    let boot = &get(&system)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI", "{boot}");

    // A BMC whose certificate the configured CA did not sign is refused.
    let o = stemcell(
        &ns,
        &server,
        &cfg,
        &["power", "52:54:00:dd:00:02", "status"],
    );
    println!("wrong CA: {}", text(&o).trim());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("BMC redfish 198.18.63.4:8443: its TLS certificate is not trusted")
            && text(&o).contains("UnknownIssuer"),
        "{}",
        text(&o)
    );

    // The wrong password: the BMC's 401, said as such.
    let o = stemcell(
        &ns,
        &server,
        &cfg,
        &["power", "52:54:00:dd:00:03", "status"],
    );
    println!("wrong password: {}", text(&o).trim());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("BMC redfish 198.18.63.4:8443 refused the credentials (wrong username or password): GET /redfish/v1/Systems: HTTP 401"),
        "{}",
        text(&o)
    );

    // A cycle of a machine that is on: a ForceRestart (sushy-emulator's fake driver then
    // reports an unfinished state, so this comes last).
    let out = power("cycle");
    assert!(out.contains("power cycled"), "{out}");
}

/// End to end (tests/netns/power.sh): a QEMU machine owned by ipmi_sim's chassis script is
/// installed by `stemcell reinstall --power` from power-off, and reinstalled the same way
/// while it runs its installed system; nobody touches QEMU. About 5 minutes with TCG.
#[test]
fn reinstall_power_installs_and_reinstalls_a_qemu_machine_through_its_bmc() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns/power.sh");
    let pre = Command::new("bash")
        .arg(&script)
        .env("PXE_PREFLIGHT", "1")
        .output()
        .unwrap();
    if pre.status.code() == Some(SKIP_EXIT) {
        skip(&format!("the BMC end-to-end test: {}", text(&pre).trim()));
        return;
    }
    assert!(pre.status.success(), "preflight: {}", text(&pre));
    let image =
        stemcell_image().unwrap_or_else(|e| panic!("the stem-cell image build failed:\n{e}"));
    let _slot = Slot::take("PXE_PARALLEL");
    let out = Command::new("bash")
        .arg(&script)
        .arg(BIN)
        .env("STEMCELL_IMAGE", image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/netns/power.sh failed ({}):\n{}",
        out.status,
        text(&out)
    );
    println!("{}", text(&out));
}
