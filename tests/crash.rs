//! Crash safety of the journals: a damaged last record recovers with a warning and is set
//! aside, damage in the middle refuses to start, a full state disk refuses new leases
//! without losing anything, and SIGKILL under DHCP and HTTP load loses nothing that a
//! client was told.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const MAC: &str = "52:54:00:00:00:01";
const INVENTORY: &str = "defaults:
  unknown: ignore
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
machines:
  \"52:54:00:00:00:01\":
    hostname: web01
    role: web
";

/// Install MAC (token, script, done) on a running server; returns the machine's state.
fn install(s: &Server) -> String {
    let script = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe"))).text();
    let token = cmdline_value(&script, "stemcell.token").expect("an install token");
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{MAC}?token={token}"))).status,
        200
    );
    let r = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    json(&curl(&[], &s.url(&format!("/api/v1/machines/{MAC}"))))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sigkill(s: &mut Server) {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait_exit(&mut s.child, Duration::from_secs(10)), Some(-1));
}

/// A crash mid-write leaves a torn last record: the real binary starts anyway, logs the
/// file, the offset and what was wrong, keeps every record before it, and keeps the torn
/// bytes in a `.corrupt-` file beside the journal.
#[test]
fn a_torn_last_journal_record_is_set_aside_and_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let mut s = Server::start(dir.path());
    assert_eq!(install(&s), "installed");
    sigkill(&mut s);
    let path = dir.path().join("state/machines.journal");
    let good = std::fs::read(&path).unwrap();
    let torn = b"{\"record\":{\"mac\":\"52:54:00:00:00:01\",\"state\":\"pend";
    let mut bytes = good.clone();
    bytes.extend_from_slice(torn);
    std::fs::write(&path, &bytes).unwrap();

    let s = Server::start(dir.path());
    let log = s.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("journal ends in a damaged record"))
        .unwrap_or_else(|| panic!("no recovery warning; log:\n{log}"));
    assert!(warning.contains("machines.journal"), "{warning}");
    assert!(
        warning.contains(&format!("offset={}", good.len())),
        "{warning}"
    );
    assert!(warning.contains("torn record"), "{warning}");
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{MAC}"))));
    assert_eq!(m["state"], "installed", "the last good record is kept");
    let aside: Vec<Vec<u8>> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("machines.journal.corrupt-")
        })
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(aside, vec![torn.to_vec()], "the torn bytes are kept aside");
    assert!(std::fs::read(&path).unwrap().starts_with(&good));
}

/// A damaged record with good records after it is not a crash artefact: dropping it would
/// lose acknowledged state, so the server refuses to start (exit 69) and names the file
/// and the byte offset; the journal is left as it was.
#[test]
fn a_damaged_record_in_the_middle_of_a_journal_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let mut s = Server::start(dir.path());
    assert_eq!(install(&s), "installed");
    sigkill(&mut s);
    let path = dir.path().join("state/machines.journal");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.find('\n').unwrap() + 1;
    assert!(text[first..].lines().count() >= 1, "{text}");
    let damaged = format!("{}{{\"record\":garbage\n{}", &text[..first], &text[first..]);
    std::fs::write(&path, &damaged).unwrap();

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("stemcell.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr:\n{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("record at byte {first} (line 2) is damaged")),
        "{err}"
    );
    assert!(err.contains("refusing to start"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
}

// ---- DHCP in namespaces: a server namespace and a client namespace joined by a veth pair --

/// Machines the inventory lists for the DHCP tests (installs stream in over HTTP).
const LISTED: usize = 300;

fn listed_mac(i: usize) -> String {
    format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256)
}

struct Pair {
    srv: Netns,
    cli: Netns,
    dir: tempfile::TempDir,
}

/// Namespaces `srv` (s0 198.18.0.1/16, stemcell authoritative for 198.18.0.0/16 with a 1 h
/// lease) and `cli` (c0 198.18.0.2/16), and a lab folder with `LISTED` machines. `None`
/// (after a skip) where this cannot run.
fn pair(tag: &str, tools: &[&str]) -> Option<Pair> {
    if !require("root (network and mount namespaces)", is_root()) {
        return None;
    }
    for t in tools {
        if !require(
            &format!("{t} (scripts/setup-debian.sh installs it)"),
            have_tool(t),
        ) {
            return None;
        }
    }
    let srv = Netns::new(&format!("{tag}s"))?;
    let cli = Netns::new(&format!("{tag}c"))?;
    let cmd = format!("ip link add s0 type veth peer name c0 netns {}", cli.name);
    for (ns, c) in [
        (&srv, cmd.as_str()),
        (&srv, "ip addr add 198.18.0.1/16 dev s0"),
        (&srv, "ip link set s0 up"),
        (&cli, "ip addr add 198.18.0.2/16 dev c0"),
        (&cli, "ip link set c0 up"),
    ] {
        let out = ns.exec(&c.split(' ').collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut inv = String::from(
        "defaults:\n  unknown: ignore\n  vars: { disk: /dev/vda }\nroles:\n  web:\n    template: web.sh.j2\nmachines:\n",
    );
    for i in 0..LISTED {
        inv.push_str(&format!(
            "  \"{}\":\n    hostname: web{i}\n    role: web\n",
            listed_mac(i)
        ));
    }
    lab(dir.path(), &inv);
    let config = std::fs::read_to_string(dir.path().join("stemcell.yaml")).unwrap();
    let config = config.replace(
        "server_ip: 127.0.0.1\ndhcp:\n  mode: off\nhttp:\n  listen: 127.0.0.1:0\n",
        "interface: s0\nserver_ip: 198.18.0.1\ndhcp:\n  mode: authoritative\n  subnets:\n    - subnet: 198.18.0.0/16\n      pool: [198.18.1.0, 198.18.255.250]\n      router: 198.18.0.1\n      lease_time: 1h\n  install_token_from_lease: false\nhttp:\n  listen: 198.18.0.1:8080\n",
    );
    // The install flows here are driven with curl from the server's own namespace, not
    // from each machine's leased address: the lease binding of the install token (tested
    // in tests/security.rs) is off, so that they exercise the journals, not the binding.
    assert!(config.contains("authoritative"), "{config}");
    std::fs::write(dir.path().join("stemcell.yaml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    Some(Pair { srv, cli, dir })
}

/// curl inside a namespace: (status, body); status 0 when no answer came.
fn ns_curl(ns: &Netns, args: &[&str], url: &str) -> (u16, String) {
    curl_in(&ns.name, args, url)
}

/// [`ns_curl`] by the namespace's name (for a thread that does not own it).
fn curl_in(ns: &str, args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("ip netns exec curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const URL: &str = "http://198.18.0.1:8080";

/// The last record of every address in a lease journal: ip -> (mac, state, expires). A
/// line still being written (no newline yet) is not read.
fn lease_journal(text: &str) -> std::collections::HashMap<String, (String, String, u64)> {
    let mut m = std::collections::HashMap::new();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for (n, l) in complete.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("lease journal line {} is damaged ({e}): {l}", n + 1));
        m.insert(
            v["ip"].as_str().unwrap().to_string(),
            (
                v["mac"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
                v["expires"].as_u64().unwrap_or(0),
            ),
        );
    }
    m
}

/// The last record of every machine in a machine journal: mac -> record.
fn machine_journal(text: &str) -> std::collections::HashMap<String, serde_json::Value> {
    let mut m = std::collections::HashMap::new();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for (n, l) in complete.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("machine journal line {} is damaged ({e}): {l}", n + 1));
        if let Some(r) = v.get("record") {
            m.insert(r["mac"].as_str().unwrap().to_string(), r.clone());
        } else if let Some(f) = v.get("forget") {
            m.remove(f["mac"].as_str().unwrap());
        }
    }
    m
}

/// udhcpc as `mac` on c0 (one try of three DISCOVERs): the address it was given and for
/// how long, if any.
fn udhcpc(p: &Pair, mac: &str) -> Option<(String, u64)> {
    for c in [
        "ip link set c0 down".to_string(),
        format!("ip link set c0 address {mac}"),
        "ip link set c0 up".to_string(),
    ] {
        let out = p.cli.exec(&c.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{c}");
    }
    let script = p.dir.path().join("udhcpc.sh");
    let leased = p.dir.path().join("udhcpc.out");
    let _ = std::fs::remove_file(&leased);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $lease\" >>'{}'\nexit 0\n",
            leased.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let out = p.cli.exec(&[
        "udhcpc", "-i", "c0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s", &script,
    ]);
    let ip = std::fs::read_to_string(&leased).ok();
    match (out.status.success(), ip) {
        (true, Some(got)) => {
            let (ip, lease) = got.trim().split_once(' ').expect("ip and lease");
            Some((ip.to_string(), lease.parse().expect("a lease time")))
        }
        (false, None) => None,
        (ok, ip) => panic!(
            "udhcpc exit {ok} with address {ip:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn metric(p: &Pair, line_start: &str) -> f64 {
    let (code, text) = ns_curl(&p.srv, &[], &format!("{URL}/metrics"));
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
}

/// The state directory on a 256 kB tmpfs (in a mount namespace of the server's own) fills
/// up: new leases get no ACK (logged, counted in /metrics), a renewal that cannot be
/// written is ACKed with the lease end already on disk, an install cannot be finished
/// (503) and its log lines wait in memory; once space returns every held line lands, leases
/// are granted again, and a restart of the real binary on what was stored replays it all.
#[test]
fn a_full_state_disk_refuses_new_leases_loses_nothing_and_recovers() {
    let Some(p) = pair("full", &["udhcpc", "curl", "unshare", "nsenter"]) else {
        return;
    };
    let (mac_a, mac_b) = ("52:54:00:aa:00:0a", "52:54:00:aa:00:0b");
    let (m1, m2) = (listed_mac(1), listed_mac(2));
    // Seed: A holds 198.18.1.10; the journal ends exactly on a page, so that once the disk
    // is full the very next lease line has nowhere to go (tmpfs allocates whole pages).
    let seed = p.dir.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut j = format!(
        "{{\"ip\":\"198.18.1.10\",\"mac\":\"{mac_a}\",\"state\":\"bound\",\"expires\":{}}}\n",
        now + 3600
    );
    let pad = 4096 - j.len() - 1;
    j.push_str(&" ".repeat(pad));
    j.push('\n');
    std::fs::write(seed.join("leases.journal"), &j).unwrap();
    let state = p.dir.path().join("state");
    let mount = format!(
        "mount -t tmpfs -o size=256k,mode=0755 stemcell-state \"$0\" && cp '{}/leases.journal' \"$0\"/ && exec \"$@\"",
        seed.display()
    );
    let state_s = state.display().to_string();
    let mut s = Server::start_via(
        Some(&p.srv),
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
            &state_s,
        ],
        p.dir.path(),
    );
    let pid = s.child.id().to_string();
    // The server's view of its state directory (the tmpfs), from outside its namespace.
    let view = std::path::PathBuf::from(format!("/proc/{pid}/root{state_s}"));
    assert!(view.join("leases.journal").exists());

    // Before: m1 installs; m2 is armed (its token is durable).
    let (code, script) = ns_curl(&p.srv, &[], &format!("{URL}/boot/{m1}.ipxe"));
    assert_eq!(code, 200);
    let t1 = cmdline_value(&script, "stemcell.token").unwrap();
    assert_eq!(
        ns_curl(&p.srv, &[], &format!("{URL}/install/{m1}?token={t1}")).0,
        200
    );
    assert_eq!(
        ns_curl(
            &p.srv,
            &["-X", "POST"],
            &format!("{URL}/install/{m1}/done?token={t1}")
        )
        .0,
        200
    );
    let (code, script) = ns_curl(&p.srv, &[], &format!("{URL}/boot/{m2}.ipxe"));
    assert_eq!(code, 200);
    let t2 = cmdline_value(&script, "stemcell.token").unwrap();

    // Fill the file system.
    let fill = format!("cat /dev/zero >'{state_s}/fill'");
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "sh", "-c", &fill])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "the tmpfs is full: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before_full = std::fs::read(view.join("leases.journal")).unwrap();

    // A new client gets no lease; the existing one is ACKed with no more than the lease
    // end already on disk.
    assert_eq!(udhcpc(&p, mac_b), None, "no ACK without a durable lease");
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (ip, lease) = udhcpc(&p, mac_a).expect("a renewal is ACKed with the time on disk");
    assert_eq!(ip, "198.18.1.10");
    assert!(
        lease <= now + 3600 - asked && lease + 60 > now + 3600 - asked,
        "told {lease} s; on disk until {} s after the request",
        now + 3600 - asked
    );
    assert!(s
        .log_text()
        .contains("ACK with the lease time already on disk"));
    assert!(
        metric(
            &p,
            "stemcell_dhcp_datagrams_total{what=\"ack_on_disk_time\"} "
        ) >= 1.0
    );
    assert!(
        s.log_text().contains("lease not durable; ACK not sent"),
        "{}",
        s.log_text()
    );
    assert!(
        s.log_text().contains("journal write failed"),
        "{}",
        s.log_text()
    );
    assert!(metric(&p, "stemcell_dhcp_datagrams_total{what=\"journal_error\"} ") >= 2.0);
    assert!(
        metric(
            &p,
            "stemcell_journal_write_errors_total{journal=\"leases\"} "
        ) >= 1.0
    );
    assert!(metric(&p, "stemcell_journal_backlog_bytes{journal=\"leases\"} ") > 0.0);
    assert_eq!(
        std::fs::read(view.join("leases.journal")).unwrap(),
        before_full,
        "a failed write leaves no torn line behind"
    );
    // HTTP: log lines are taken (held in memory), a durable change is refused with 503.
    let lines: String = (0..200)
        .map(|i| format!("full-disk log line {i} {}\n", "x".repeat(60)))
        .collect();
    let (code, body) = ns_curl(
        &p.srv,
        &["--data-binary", &lines],
        &format!("{URL}/install/{m2}/log?token={t2}"),
    );
    assert_eq!((code, body.trim()), (200, "200 lines"));
    let (code, body) = ns_curl(
        &p.srv,
        &["-X", "POST"],
        &format!("{URL}/install/{m2}/done?token={t2}"),
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("could not be saved"), "{body}");
    // A machine whose install would need a new token is not armed either.
    let m3 = listed_mac(3);
    let (code, body) = ns_curl(&p.srv, &[], &format!("{URL}/boot/{m3}.ipxe"));
    assert_eq!(code, 503, "{body}");
    assert!(metric(&p, "stemcell_journal_backlog_bytes{journal=\"machines\"} ") > 0.0);

    // Space returns: the backlog lands by itself, and everything works again.
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "rm", &format!("{state_s}/fill")])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        s.wait_log("journal writes work again", Duration::from_secs(20)),
        "{}",
        s.log_text()
    );
    let (code, body) = ns_curl(
        &p.srv,
        &["-X", "POST"],
        &format!("{URL}/install/{m2}/done?token={t2}"),
    );
    assert_eq!(code, 200, "{body}");
    let (ip_b, lease_b) = udhcpc(&p, mac_b).expect("a lease once space is back");
    let (ip_a, lease_a) = udhcpc(&p, mac_a).expect("a renewal once space is back");
    assert_eq!(ip_a, "198.18.1.10");
    assert_eq!((lease_a, lease_b), (3600, 3600), "full leases again");
    assert_ne!(ip_b, ip_a);
    assert_eq!(
        metric(&p, "stemcell_journal_backlog_bytes{journal=\"leases\"} "),
        0.0
    );
    assert_eq!(
        metric(&p, "stemcell_journal_backlog_bytes{journal=\"machines\"} "),
        0.0
    );

    // What is stored, read back by a new server (the tmpfs dies with the first one).
    let leases = std::fs::read(view.join("leases.journal")).unwrap();
    let machines = std::fs::read(view.join("machines.journal")).unwrap();
    let key = std::fs::read(view.join("discovery.key")).unwrap();
    sigkill(&mut s);
    std::fs::write(state.join("leases.journal"), &leases).unwrap();
    std::fs::write(state.join("machines.journal"), &machines).unwrap();
    std::fs::write(state.join("discovery.key"), &key).unwrap();
    let s = Server::start_in(Some(&p.srv), p.dir.path());
    assert!(!s.log_text().contains("damaged"), "{}", s.log_text());
    let l = lease_journal(&String::from_utf8_lossy(&leases));
    assert_eq!(l[&ip_a].0, mac_a);
    assert_eq!(l[&ip_b].0, mac_b);
    assert_eq!(
        (l[&ip_a].1.as_str(), l[&ip_b].1.as_str()),
        ("bound", "bound")
    );
    for (m, want) in [(&m1, "installed"), (&m2, "installed")] {
        let (code, body) = ns_curl(&p.srv, &[], &format!("{URL}/api/v1/machines/{m}"));
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["state"], want, "{m}: {body}");
    }
    let text = String::from_utf8_lossy(&machines);
    for i in 0..200 {
        assert!(
            text.contains(&format!("full-disk log line {i} ")),
            "log line {i} was lost"
        );
    }
}

// ---- SIGKILL under load ----------------------------------------------------------------

/// What the installer was told over HTTP (2xx) about one machine.
#[derive(Debug, Clone, Default)]
struct Told {
    token: String,
    /// 1 armed (boot script with its token), 2 install script served, 3 done accepted.
    stage: u8,
}

/// Installs stream in: for each listed machine, boot script, install script, a log batch
/// and done, each retried until it gets a 2xx (the server is killed now and then). Every
/// 2xx is recorded before the next step.
fn installer(
    srv: &str,
    stop: &std::sync::atomic::AtomicBool,
    told: &std::sync::Mutex<std::collections::HashMap<String, Told>>,
) {
    use std::sync::atomic::Ordering;
    'machines: for i in 0..LISTED {
        let mac = listed_mac(i);
        let mut token = String::new();
        for stage in 1..=4u8 {
            loop {
                if stop.load(Ordering::Relaxed) {
                    break 'machines;
                }
                let (code, body) = match stage {
                    1 => curl_in(srv, &[], &format!("{URL}/boot/{mac}.ipxe")),
                    2 => curl_in(srv, &[], &format!("{URL}/install/{mac}?token={token}")),
                    3 => curl_in(
                        srv,
                        &["--data-binary", "a log line\nanother\n"],
                        &format!("{URL}/install/{mac}/log?token={token}"),
                    ),
                    _ => curl_in(
                        srv,
                        &["-X", "POST"],
                        &format!("{URL}/install/{mac}/done?token={token}"),
                    ),
                };
                if (200..300).contains(&code) {
                    if stage == 1 {
                        token = cmdline_value(&body, "stemcell.token")
                            .unwrap_or_else(|| panic!("no token for {mac}: {body}"));
                    }
                    if stage != 3 {
                        let mut t = told.lock().unwrap();
                        let e = t.entry(mac.clone()).or_default();
                        e.token = token.clone();
                        e.stage = if stage == 4 { 3 } else { stage };
                    }
                    break;
                }
                assert!(
                    code == 0 || code >= 500,
                    "{mac} step {stage}: {code} {body}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The checker: what clients were told against what the journals hold now. Returns the
/// number of ACKs checked.
fn check_told(
    round: usize,
    state: &std::path::Path,
    pcap: &std::path::Path,
    told: &std::collections::HashMap<String, Told>,
) -> usize {
    // The capture first: any ACK in it was committed before it was sent, so it is in the
    // journal read after it.
    let acks = acks_in(&std::fs::read(pcap).unwrap_or_default());
    let leases = lease_journal(&std::fs::read_to_string(state.join("leases.journal")).unwrap());
    let machines =
        machine_journal(&std::fs::read_to_string(state.join("machines.journal")).unwrap());
    // Each client's latest ACK: its address, still its own, at least as long as it was told.
    let mut latest: std::collections::HashMap<&str, &Ack> = std::collections::HashMap::new();
    for a in &acks {
        if latest.get(a.mac.as_str()).is_none_or(|l| l.at <= a.at) {
            latest.insert(&a.mac, a);
        }
    }
    for a in latest.values() {
        let held = leases.get(&a.ip);
        assert!(
            held.is_some_and(|(mac, state, expires)| mac == &a.mac
                && state == "bound"
                && (*expires as f64) + 2.0 >= a.at + a.lease as f64),
            "after restart {round}: {} was ACKed {} for {} s at {:.3}, the journal says {held:?}",
            a.mac,
            a.ip,
            a.lease,
            a.at
        );
    }
    // No address told to two clients at once.
    let mut by_ip: std::collections::HashMap<&str, Vec<&Ack>> = std::collections::HashMap::new();
    for a in &acks {
        by_ip.entry(&a.ip).or_default().push(a);
    }
    for (ip, v) in by_ip.iter_mut() {
        v.sort_by(|a, b| a.at.total_cmp(&b.at));
        for w in v.windows(2) {
            assert!(
                w[0].mac == w[1].mac || w[0].at + w[0].lease as f64 <= w[1].at,
                "after restart {round}: {ip} was ACKed to {} and then to {} within its lease",
                w[0].mac,
                w[1].mac
            );
        }
    }
    // No client holds two addresses in the journal.
    let mut bound: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (ip, (mac, state, _)) in &leases {
        if state == "bound" {
            if let Some(other) = bound.insert(mac, ip) {
                panic!("after restart {round}: {mac} holds {ip} and {other}");
            }
        }
    }
    // Machine states acknowledged over HTTP.
    for (mac, t) in told {
        let r = machines
            .get(mac)
            .unwrap_or_else(|| panic!("after restart {round}: {mac} has no record"));
        let state = r["state"].as_str().unwrap();
        let ok = match t.stage {
            1 => {
                matches!(state, "pending" | "installing" | "installed")
                    && (r["token"] == t.token.as_str() || r["spent_token"] == t.token.as_str())
            }
            2 => {
                matches!(state, "installing" | "installed")
                    && (r["token"] == t.token.as_str() || r["spent_token"] == t.token.as_str())
            }
            _ => state == "installed" && r["spent_token"] == t.token.as_str(),
        };
        assert!(
            ok,
            "after restart {round}: {mac} was told stage {} with token {}, the journal says {r}",
            t.stage, t.token
        );
    }
    acks.len()
}

/// SIGKILL at random moments, 20 times, while perfdhcp drives DORA from another namespace
/// and installs stream in over HTTP (every fourth time with both journals' last record torn
/// as well); after each restart every ACK seen on the wire is still
/// held by its MAC for at least what it was told, no address was ACKed to two MACs at once,
/// no MAC holds two, and every machine state acknowledged with a 2xx is in the journal.
#[test]
fn sigkill_under_dhcp_and_http_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let Some(p) = pair("kill", &["perfdhcp", "tcpdump", "curl"]) else {
        return;
    };
    let started = std::time::Instant::now();
    let state = p.dir.path().join("state");
    let pcap = p.dir.path().join("dhcp.pcap");
    let mut dump = tcpdump(&p.cli, "c0", &pcap);
    let mut s = Server::start_in(Some(&p.srv), p.dir.path());
    let perf_out = p.dir.path().join("perfdhcp.out");
    let mut perf = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.cli.name,
            "perfdhcp",
            "-4",
            "-r",
            "40",
            "-R",
            "500",
        ])
        .args(["-p", "600", "-l", "198.18.0.2", "198.18.0.1"])
        .stdout(std::fs::File::create(&perf_out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perfdhcp");
    let stop = Arc::new(AtomicBool::new(false));
    let told = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let worker = {
        let (stop, told, srv) = (stop.clone(), told.clone(), p.srv.name.clone());
        std::thread::spawn(move || installer(&srv, &stop, &told))
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("kill moments seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const KILLS: usize = 20;
    let mut checked = 0;
    let mut recovered = 0;
    for round in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(300 + rand() % 1200));
        sigkill(&mut s);
        // Every fourth crash also tore the record being written (as a power cut can): both
        // journals end in half a line, which the restart must set aside.
        let torn = round % 4 == 0;
        if torn {
            for (file, half) in [
                ("leases.journal", "{\"ip\":\"198.18.9.9\",\"mac\":\"52:54"),
                (
                    "machines.journal",
                    "{\"record\":{\"mac\":\"52:54:00:01:00:00\",\"st",
                ),
            ] {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(state.join(file))
                    .unwrap();
                std::io::Write::write_all(&mut f, half.as_bytes()).unwrap();
            }
        }
        s = Server::start_in(Some(&p.srv), p.dir.path());
        let warnings = s
            .log_text()
            .lines()
            .filter(|l| l.contains("journal ends in a damaged record"))
            .count();
        if torn {
            assert_eq!(
                warnings,
                2,
                "both torn tails are reported:\n{}",
                s.log_text()
            );
            recovered += 1;
        }
        let t = told.lock().unwrap().clone();
        checked = check_told(round, &state, &pcap, &t);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = perf.kill();
    let _ = perf.wait();
    worker.join().expect("the installer thread");
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    let t = told.lock().unwrap().clone();
    checked = checked.max(check_told(KILLS + 1, &state, &pcap, &t));
    let acks = acks_in(&std::fs::read(&pcap).unwrap());
    let macs: std::collections::HashSet<&str> = acks.iter().map(|a| a.mac.as_str()).collect();
    let done = t.values().filter(|t| t.stage == 3).count();
    println!(
        "{KILLS} SIGKILLs in {:.1?}: {checked} ACKs on the wire checked after each restart, {} leases (MACs), {} machines told something over HTTP ({done} installed), {recovered} restarts recovered torn tails in both journals",
        started.elapsed(),
        macs.len(),
        t.len()
    );
    assert!(checked >= 100, "too few ACKs to prove anything: {checked}");
    assert!(done >= 5, "too few installs to prove anything: {done}");

    // The checker is not vacuous: a journal missing one ACKed lease, or one installed
    // machine's records, fails it.
    println!("the checker's self-test: two panics are expected below");
    let leases = std::fs::read_to_string(state.join("leases.journal")).unwrap();
    let machines = std::fs::read_to_string(state.join("machines.journal")).unwrap();
    let lost_ip = format!("\"ip\":\"{}\"", acks.last().unwrap().ip);
    let lost_mac = t.iter().find(|(_, t)| t.stage == 3).unwrap().0.clone();
    let tampered = p.dir.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let keep = |text: &str, drop: &str| -> String {
        text.lines()
            .filter(|l| !l.contains(drop))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for (without_lease, without_machine) in [(true, false), (false, true)] {
        let l = if without_lease {
            keep(&leases, &lost_ip)
        } else {
            leases.clone()
        };
        let m = if without_machine {
            keep(&machines, &format!("{{\"record\":{{\"mac\":\"{lost_mac}\""))
        } else {
            machines.clone()
        };
        std::fs::write(tampered.join("leases.journal"), l).unwrap();
        std::fs::write(tampered.join("machines.journal"), m).unwrap();
        let caught = std::panic::catch_unwind(|| check_told(0, &tampered, &pcap, &t));
        assert!(
            caught.is_err(),
            "the checker missed a lost {}",
            if without_lease {
                "lease"
            } else {
                "machine record"
            }
        );
    }
}
