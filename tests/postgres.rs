//! Several stemcell servers sharing leases in PostgreSQL (`store.postgres`): the real
//! binary in network namespaces, a private PostgreSQL cluster (tests/common/postgres.rs), ISC
//! dhclient, perfdhcp and isc-dhcp-relay as the peers, tcpdump for what was really sent.
//!
//! - two servers on one subnet: both answer, a lease one gave is renewed by the other after
//!   SIGKILL, new clients still get addresses;
//! - perfdhcp against both at once: no address ACKed to two MACs (on the wire), every ACK's
//!   lease in the database;
//! - two racks, each its own server and subnet behind its relay, one database;
//! - the database crashed and restarted under load: nothing ACKed is lost, and the server
//!   takes new leases again by itself.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::PgCluster as Pg;
use common::*;

const DB: &str = "stemcell";

/// Run a command line in a namespace; panic (with its output) if it fails.
fn sh(ns: &Netns, cmd: &str) {
    let out = ns.exec(&cmd.split(' ').collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{} in {}: {}",
        cmd,
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth from `hub`'s bridge `br0` to `ns`, named `dev` there, with `addr` (or none).
fn port(hub: &Netns, ns: &Netns, dev: &str, addr: Option<&str>, mac: Option<&str>) {
    sh(
        hub,
        &format!(
            "ip link add {dev}p type veth peer name {dev} netns {}",
            ns.name
        ),
    );
    sh(hub, &format!("ip link set {dev}p master br0"));
    sh(hub, &format!("ip link set {dev}p up"));
    if let Some(m) = mac {
        sh(ns, &format!("ip link set {dev} address {m}"));
    }
    if let Some(a) = addr {
        sh(ns, &format!("ip addr add {a} dev {dev}"));
    }
    sh(ns, &format!("ip link set {dev} up"));
}

/// A server folder: `interface`, `server_ip`, the subnets, HTTP on `ip:8080`, the database.
fn server_dir(root: &Path, name: &str, iface: &str, ip: &str, subnets: &str, pg: &Pg) -> PathBuf {
    let dir = root.join(name);
    lab(&dir, "defaults:\n  unknown: ignore\nmachines: {}\n");
    let config = std::fs::read_to_string(dir.join("stemcell.yaml")).unwrap();
    let config = config.replace(
        "server_ip: 127.0.0.1\ndhcp:\n  mode: off\nhttp:\n  listen: 127.0.0.1:0\n",
        &format!(
            "interface: {iface}\nserver_ip: {ip}\ndhcp:\n  mode: authoritative\n  subnets:\n{subnets}http:\n  listen: {ip}:8080\n"
        ),
    );
    assert!(config.contains("authoritative"), "{config}");
    std::fs::write(
        dir.join("stemcell.yaml"),
        format!("{config}{}", pg.store_yaml()),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    dir
}

const SUBNET0: &str = "    - subnet: 198.18.0.0/24\n      pool: [198.18.0.100, 198.18.0.250]\n      router: 198.18.0.1\n      lease_time: 10m\n";

/// dhclient's config and a hook that writes what it bound to `<dir>/<iface>.<reason>`.
fn dhclient_files(dir: &Path) {
    std::fs::write(
        dir.join("dhclient.conf"),
        "timeout 20;\ninitial-interval 1;\nbackoff-cutoff 2;\nrequest subnet-mask, routers, dhcp-lease-time, dhcp-server-identifier;\n",
    )
    .unwrap();
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nenv | grep -E '^(reason|new_)' | sort >{d}/.h.$$\nmv {d}/.h.$$ {d}/$interface.$reason\nexit 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
}

/// One dhclient exchange on `iface` in `ns` (lease file `<name>.leases`); the address and
/// the server that ACKed it, from the hook's file for `reason` (BOUND or REBOOT).
fn dhclient(ns: &Netns, dir: &Path, name: &str, iface: &str) -> (String, String, String) {
    for r in ["BOUND", "REBOOT"] {
        let _ = std::fs::remove_file(dir.join(format!("{iface}.{r}")));
    }
    let d = dir.display();
    let out = ns.exec(&[
        "timeout",
        "40",
        "dhclient",
        "-4",
        "-v",
        "-1",
        "-cf",
        &format!("{d}/dhclient.conf"),
        "-sf",
        &format!("{d}/hook.sh"),
        "-lf",
        &format!("{d}/{name}.leases"),
        "-pf",
        &format!("{d}/{name}.pid"),
        iface,
    ]);
    // The client keeps running once bound: stop it, keeping the lease (-x).
    ns.exec(&[
        "dhclient",
        "-4",
        "-x",
        "-pf",
        &format!("{d}/{name}.pid"),
        "-lf",
        &format!("{d}/{name}.leases"),
        "-sf",
        "/bin/true",
        iface,
    ]);
    ns.exec(&["ip", "addr", "flush", "dev", iface]);
    assert!(
        out.status.success(),
        "dhclient {name} on {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for reason in ["BOUND", "REBOOT"] {
        if let Ok(env) = std::fs::read_to_string(dir.join(format!("{iface}.{reason}"))) {
            let get = |k: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            return (
                get("new_ip_address"),
                get("new_dhcp_server_identifier"),
                reason.to_string(),
            );
        }
    }
    panic!(
        "dhclient {name} bound nothing:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// perfdhcp as broadcasting clients on `iface` in `ns`: `rate` exchanges a second for
/// `secs` seconds, MACs from a range of `macs` starting at `base`.
fn perfdhcp(
    ns: &Netns,
    iface: &str,
    rate: u32,
    macs: u32,
    secs: u32,
    base: &str,
    out: &Path,
) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "perfdhcp", "-4", "-l", iface])
        .args(["-r", &rate.to_string(), "-R", &macs.to_string()])
        .args(["-p", &secs.to_string(), "-b", &format!("mac={base}")])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("perfdhcp")
}

/// Every bound lease in the database: ip → (mac, expires, server).
fn db_leases(pg: &Pg) -> HashMap<String, (String, u64, String)> {
    pg.psql(
        DB,
        "SELECT host(ip), mac, expires, server FROM stemcell_lease4 WHERE state = 'bound'",
    )
    .lines()
    .filter_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.len() == 4).then(|| {
            (
                f[0].to_string(),
                (
                    f[1].to_string(),
                    f[2].parse().unwrap_or(0),
                    f[3].to_string(),
                ),
            )
        })
    })
    .collect()
}

/// Every ACK on the wire is held by its MAC in the database for at least what it said,
/// and no address was ACKed to two MACs. Returns how many ACKs were checked.
fn check_acks(acks: &[Ack], pg: &Pg) -> usize {
    let db = db_leases(pg);
    let mut holder: HashMap<&str, &str> = HashMap::new();
    for a in acks {
        if let Some(other) = holder.insert(a.ip.as_str(), a.mac.as_str()) {
            assert_eq!(
                other, a.mac,
                "{} was ACKed to {other} and then to {} (by {})",
                a.ip, a.mac, a.server
            );
        }
        let Some((mac, expires, _)) = db.get(&a.ip) else {
            panic!(
                "{} was ACKed to {} (by {}) but the database has no bound lease for it",
                a.ip, a.mac, a.server
            );
        };
        assert_eq!(
            mac, &a.mac,
            "{} ACKed to {} is {mac}'s in the database",
            a.ip, a.mac
        );
        // The ACK's clock is the capture's; allow a second of rounding.
        let told_until = a.at as u64 + a.lease;
        assert!(
            *expires + 1 >= told_until,
            "{} was told {} s at {:.1} (until {told_until}); the database keeps it until {expires}",
            a.mac,
            a.lease,
            a.at
        );
    }
    acks.len()
}

fn metric(ns: &Netns, ip: &str, prefix: &str) -> f64 {
    let out = ns.exec(&[
        "curl",
        "-sS",
        "-m",
        "5",
        &format!("http://{ip}:8080/metrics"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn tools_present(tools: &[&str]) -> bool {
    tools.iter().all(|t| {
        require(
            &format!("{t} (scripts/setup-debian.sh installs it)"),
            have_tool(t),
        )
    })
}

/// The shared subnet: a hub namespace with the bridge (198.18.0.1 on it, server A's), B on
/// a port of it at 198.18.0.2, and the clients' namespace.
struct Site {
    a: Netns,
    b: Netns,
    clients: Netns,
}

fn site(tag: &str) -> Option<Site> {
    let a = Netns::new(&format!("{tag}a"))?;
    let b = Netns::new(&format!("{tag}b"))?;
    let clients = Netns::new(&format!("{tag}c"))?;
    sh(&a, "ip link add br0 type bridge");
    sh(&a, "ip addr add 198.18.0.1/24 dev br0");
    sh(&a, "ip link set br0 up");
    port(&a, &b, "s0", Some("198.18.0.2/24"), None);
    Some(Site { a, b, clients })
}

#[test]
fn two_servers_on_one_subnet_share_leases_and_survive_sigkill() {
    if !tools_present(&["dhclient", "curl"]) {
        return;
    }
    let Some(pg) = Pg::start() else { return };
    let Some(s) = site("pgt") else { return };
    let root = tempfile::tempdir().unwrap();
    let w = root.path();
    dhclient_files(w);
    for (i, dev) in ["c0", "c1", "c2", "c3"].iter().enumerate() {
        port(
            &s.a,
            &s.clients,
            dev,
            None,
            Some(&format!("52:54:00:15:00:0{i}")),
        );
    }
    let dir_a = server_dir(w, "a", "br0", "198.18.0.1", SUBNET0, &pg);
    let dir_b = server_dir(w, "b", "s0", "198.18.0.2", SUBNET0, &pg);

    // A alone first: c0's lease is A's.
    let mut a = Server::start_in(Some(&s.a), &dir_a);
    assert!(
        a.log_text().contains("database schema migrated"),
        "{}",
        a.log_text()
    );
    let (ip0, sid0, _) = dhclient(&s.clients, w, "c0", "c0");
    assert_eq!(sid0, "198.18.0.1", "only A runs");
    let db = db_leases(&pg);
    assert_eq!(
        db.get(&ip0).map(|l| l.0.as_str()),
        Some("52:54:00:15:00:00"),
        "c0's lease {ip0} is in the database: {db:?}"
    );

    // B starts on the same database: it loads c0's lease; both now answer.
    let b = Server::start_in(Some(&s.b), &dir_b);
    assert!(
        b.log_text().contains("lease database loaded") && b.log_text().contains("leases=1"),
        "B loaded the one lease:\n{}",
        b.log_text()
    );
    let (ip1, sid1, _) = dhclient(&s.clients, w, "c1", "c1");
    let (ip2, sid2, _) = dhclient(&s.clients, w, "c2", "c2");
    let ips: HashSet<&str> = [ip0.as_str(), ip1.as_str(), ip2.as_str()].into();
    assert_eq!(
        ips.len(),
        3,
        "three clients, three addresses: {ip0} {ip1} {ip2}"
    );
    println!("c0 {ip0} from {sid0}; c1 {ip1} from {sid1}; c2 {ip2} from {sid2}");
    let db = db_leases(&pg);
    for (ip, mac) in [(&ip1, "52:54:00:15:00:01"), (&ip2, "52:54:00:15:00:02")] {
        assert_eq!(db.get(ip).map(|l| l.0.as_str()), Some(mac), "{db:?}");
    }

    // SIGKILL A. c0 (A's lease) reboots and asks for its address: B, which never gave it,
    // ACKs it from the database; a new client gets a fresh address from B.
    a.kill();
    let (again, sid, reason) = dhclient(&s.clients, w, "c0", "c0");
    assert_eq!(
        (again.as_str(), sid.as_str(), reason.as_str()),
        (ip0.as_str(), "198.18.0.2", "REBOOT"),
        "after A's SIGKILL, c0's INIT-REBOOT for {ip0} is ACKed by B"
    );
    let (ip3, sid3, _) = dhclient(&s.clients, w, "c3", "c3");
    assert_eq!(sid3, "198.18.0.2");
    assert!(
        !ips.contains(ip3.as_str()),
        "a new client after the SIGKILL gets a free address, not {ip3}"
    );
    let db = db_leases(&pg);
    assert_eq!(
        db.get(&ip3).map(|l| l.0.as_str()),
        Some("52:54:00:15:00:03")
    );
    assert!(
        db.get(&ip0).is_some_and(|l| l.0 == "52:54:00:15:00:00"),
        "c0 still holds {ip0}: {db:?}"
    );
    drop(b);
}

#[test]
fn perfdhcp_against_two_servers_never_leases_an_address_twice() {
    if !tools_present(&["perfdhcp", "tcpdump", "curl"]) {
        return;
    }
    let Some(pg) = Pg::start() else { return };
    let Some(s) = site("pgr") else { return };
    let Some(p2) = Netns::new("pgr2") else { return };
    let root = tempfile::tempdir().unwrap();
    let w = root.path();
    port(&s.a, &s.clients, "p1", Some("198.18.0.11/24"), None);
    port(&s.a, &p2, "p2", Some("198.18.0.12/24"), None);
    let wide = "    - subnet: 198.18.0.0/16\n      pool: [198.18.1.0, 198.18.9.255]\n      router: 198.18.0.1\n      lease_time: 10m\n";
    let dir_a = server_dir(w, "a", "br0", "198.18.0.1", wide, &pg);
    let dir_b = server_dir(w, "b", "s0", "198.18.0.2", wide, &pg);
    let _a = Server::start_in(Some(&s.a), &dir_a);
    let _b = Server::start_in(Some(&s.b), &dir_b);
    let pcap = w.join("dhcp.pcap");
    let dump = tcpdump(&s.a, "br0", &pcap);
    // Two generators, each 150 exchanges a second from a range of 1,000 MACs (some come
    // back and must get their own address again), both servers answering every DISCOVER.
    let t0 = Instant::now();
    let g1 = perfdhcp(
        &s.clients,
        "p1",
        150,
        1000,
        6,
        "02:00:00:00:01:00",
        &w.join("p1.out"),
    );
    let g2 = perfdhcp(
        &p2,
        "p2",
        150,
        1000,
        6,
        "02:00:00:00:02:00",
        &w.join("p2.out"),
    );
    for mut g in [g1, g2] {
        let _ = g.wait();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(dump);
    let acks = acks_in(&std::fs::read(&pcap).unwrap());
    let by_server = |ip: &str| acks.iter().filter(|a| a.server == ip).count();
    let (from_a, from_b) = (by_server("198.18.0.1"), by_server("198.18.0.2"));
    let lost = metric(
        &s.a,
        "198.18.0.1",
        "stemcell_dhcp_datagrams_total{what=\"lost_race\"}",
    ) + metric(
        &s.b,
        "198.18.0.2",
        "stemcell_dhcp_datagrams_total{what=\"lost_race\"}",
    );
    let checked = check_acks(&acks, &pg);
    println!(
        "{checked} ACKs in {:.1?} ({from_a} from A, {from_b} from B), every one held by its MAC in the database; {lost} binds lost a race to the other server (NAK); perfdhcp:\n{}\n{}",
        t0.elapsed(),
        std::fs::read_to_string(w.join("p1.out")).unwrap_or_default(),
        std::fs::read_to_string(w.join("p2.out")).unwrap_or_default()
    );
    assert!(
        from_a >= 20 && from_b >= 20,
        "both servers answered: {from_a} ACKs from A, {from_b} from B"
    );
    // The database itself: one row per address (its key), and each bound lease's MAC
    // ACKed on the wire.
    let db = db_leases(&pg);
    assert!(db.len() >= checked.min(100) / 2, "{} bound rows", db.len());
}

#[test]
fn two_racks_behind_relays_each_with_its_server_share_one_database() {
    if !tools_present(&["dhclient", "dhcrelay"]) {
        return;
    }
    let Some(pg) = Pg::start() else { return };
    let Some(s) = site("pgk") else { return };
    let (Some(r1), Some(r2)) = (Netns::new("pgk1"), Netns::new("pgk2")) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let w = root.path();
    dhclient_files(w);
    // Core: A .1 (bridge), B .2, relay 1 .3, relay 2 .4; each rack's clients behind its
    // relay, in the clients' namespace.
    port(&s.a, &r1, "u1", Some("198.18.0.3/24"), None);
    port(&s.a, &r2, "u2", Some("198.18.0.4/24"), None);
    for (r, n, dev, mac) in [
        (&r1, 1, "k1", "52:54:00:16:00:01"),
        (&r2, 2, "k2", "52:54:00:16:00:02"),
    ] {
        sh(
            r,
            &format!(
                "ip link add d{n} type veth peer name {dev} netns {}",
                s.clients.name
            ),
        );
        sh(r, &format!("ip addr add 198.18.{n}.1/24 dev d{n}"));
        sh(r, &format!("ip link set d{n} up"));
        sh(&s.clients, &format!("ip link set {dev} address {mac}"));
        sh(&s.clients, &format!("ip link set {dev} up"));
        sh(r, "sysctl -qw net.ipv4.ip_forward=1");
    }
    sh(&s.a, "ip route add 198.18.1.0/24 via 198.18.0.3");
    sh(&s.b, "ip route add 198.18.2.0/24 via 198.18.0.4");
    let rack = |n: u8| {
        format!("    - subnet: 198.18.{n}.0/24\n      pool: [198.18.{n}.100, 198.18.{n}.199]\n      router: 198.18.{n}.1\n      lease_time: 10m\n")
    };
    let dir_a = server_dir(w, "a", "br0", "198.18.0.1", &rack(1), &pg);
    let dir_b = server_dir(w, "b", "s0", "198.18.0.2", &rack(2), &pg);
    let _a = Server::start_in(Some(&s.a), &dir_a);
    let _b = Server::start_in(Some(&s.b), &dir_b);
    let mut relays = Vec::new();
    for (r, dev_down, dev_up, server) in [
        (&r1, "d1", "u1", "198.18.0.1"),
        (&r2, "d2", "u2", "198.18.0.2"),
    ] {
        relays.push(
            Command::new("ip")
                .args([
                    "netns", "exec", &r.name, "dhcrelay", "-4", "-d", "-id", dev_down, "-iu",
                    dev_up, server,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dhcrelay"),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ip1, sid1, _) = dhclient(&s.clients, w, "k1", "k1");
    let (ip2, sid2, _) = dhclient(&s.clients, w, "k2", "k2");
    for mut r in relays {
        let _ = r.kill();
        let _ = r.wait();
    }
    assert!(
        ip1.starts_with("198.18.1.") && sid1 == "198.18.0.1",
        "rack 1: {ip1} from {sid1}"
    );
    assert!(
        ip2.starts_with("198.18.2.") && sid2 == "198.18.0.2",
        "rack 2: {ip2} from {sid2}"
    );
    let db = db_leases(&pg);
    let (m1, _, w1) = db
        .get(&ip1)
        .cloned()
        .expect("rack 1's lease in the database");
    let (m2, _, w2) = db
        .get(&ip2)
        .cloned()
        .expect("rack 2's lease in the database");
    assert_eq!(
        (m1.as_str(), m2.as_str()),
        ("52:54:00:16:00:01", "52:54:00:16:00:02")
    );
    assert_ne!(w1, w2, "each rack's lease was written by its own server");
}

#[test]
fn database_crash_under_load_loses_nothing_acknowledged_and_recovers() {
    if !tools_present(&["perfdhcp", "tcpdump", "curl", "dhclient"]) {
        return;
    }
    let Some(pg) = Pg::start() else { return };
    let Some(s) = site("pgo") else { return };
    let root = tempfile::tempdir().unwrap();
    let w = root.path();
    dhclient_files(w);
    port(&s.a, &s.clients, "p1", Some("198.18.0.11/24"), None);
    port(&s.a, &s.clients, "c0", None, Some("52:54:00:17:00:00"));
    let dir_a = server_dir(w, "a", "br0", "198.18.0.1", SUBNET0, &pg);
    let a = Server::start_in(Some(&s.a), &dir_a);
    let pcap = w.join("dhcp.pcap");
    let dump = tcpdump(&s.a, "br0", &pcap);
    let g = perfdhcp(
        &s.clients,
        "p1",
        30,
        140,
        12,
        "02:00:00:00:03:00",
        &w.join("p.out"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // A crash: no shutdown checkpoint, the committed leases come back from the WAL.
    pg.stop_server("immediate");
    let down = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    pg.start_server();
    let up = down + 3.0;
    let mut g = g;
    let _ = g.wait();
    std::thread::sleep(Duration::from_millis(300));
    stop(dump);
    assert!(
        a.wait_log("lease database unreachable", Duration::from_secs(1)),
        "the outage is logged:\n{}",
        a.log_text()
    );
    assert!(
        a.wait_log("lease database reachable", Duration::from_secs(10)),
        "the recovery is logged:\n{}",
        a.log_text()
    );
    let acks = acks_in(&std::fs::read(&pcap).unwrap());
    let before = acks.iter().filter(|x| x.at < down).count();
    let after = acks.iter().filter(|x| x.at > up + 1.0).count();
    let checked = check_acks(&acks, &pg);
    println!(
        "{checked} ACKs checked in the database after its crash ({before} before it, {after} after it came back); perfdhcp:\n{}",
        std::fs::read_to_string(w.join("p.out")).unwrap_or_default()
    );
    assert!(before >= 20, "ACKs before the crash: {before}");
    assert!(
        after >= 20,
        "the server takes new leases again by itself: {after} ACKs after"
    );
    // And a real client after the recovery.
    let (ip, sid, _) = dhclient(&s.clients, w, "c0", "c0");
    assert_eq!(sid, "198.18.0.1");
    assert_eq!(
        db_leases(&pg).get(&ip).map(|l| l.0.clone()),
        Some("52:54:00:17:00:00".to_string())
    );
}
