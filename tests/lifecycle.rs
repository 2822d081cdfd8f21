//! The process as a whole: a service that dies takes the server down with a clear error
//! and a non-zero exit, and SIGTERM leaves every acknowledged journal line on disk.

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

/// A socket loop that dies must not leave a half-running server: the kernel destroys
/// TFTP's socket (`ss -K`, as an administrator or a failing NIC driver would), its
/// receive fails, and the whole server stops with exit code 70 naming the service.
#[test]
fn a_dead_service_socket_stops_the_server_with_its_error() {
    let Some(ns) = Netns::new("life") else {
        return;
    };
    for cmd in [
        "ip link add sc0 type veth peer name sc1",
        "ip addr add 198.18.77.1/24 dev sc0",
        "ip link set sc0 up",
        "ip link set sc1 up",
    ] {
        let out = ns.exec(&cmd.split(' ').collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    std::fs::create_dir_all(dir.path().join("tftproot")).unwrap();
    // The boot files the config names (the defaults) must be there, or it does not start.
    for f in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(dir.path().join("tftproot").join(f), b"boot file").unwrap();
    }
    std::fs::write(
        dir.path().join("stemcell.yaml"),
        "interface: sc0\nserver_ip: 198.18.77.1\ndhcp:\n  mode: off\ntftp:\n  root: tftproot\nhttp:\n  listen: 127.0.0.1:0\ninventory: inventory.yaml\nkickstarts: kickstarts\nstate_dir: state\n",
    )
    .unwrap();
    let mut s = Server::start_in(Some(&ns), dir.path());
    assert_eq!(
        wait_exit(&mut s.child, Duration::from_millis(300)),
        None,
        "the server must run until something stops it"
    );
    let out = ns.exec(&["ss", "-K", "-u", "-a", "sport = :69"]);
    assert!(
        out.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = wait_exit(&mut s.child, Duration::from_secs(15));
    let log = s.log_text();
    assert_eq!(
        code,
        Some(70),
        "a dead TFTP socket must end the server with exit code 70; log:\n{log}"
    );
    assert!(
        log.contains("the TFTP service failed"),
        "the error names the service; log:\n{log}"
    );
    assert!(
        log.contains("journals flushed"),
        "journals are flushed on the way out; log:\n{log}"
    );
}

/// Every log line the server acknowledged (200 "N lines") is in the journal after a
/// SIGTERM, also when the TERM arrives right behind the last acknowledgement.
#[test]
fn sigterm_leaves_every_acknowledged_journal_line_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let mut s = Server::start(dir.path());
    let script = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe"))).text();
    let token = cmdline_value(&script, "stemcell.token").expect("an install token");
    let agent = ureq::Agent::new_with_defaults();
    let url = s.url(&format!("/install/{MAC}/log?token={token}"));
    let mut sent = Vec::new();
    for batch in 0..40 {
        let body: String = (0..50)
            .map(|i| format!("acknowledged line {batch}-{i}\n"))
            .collect();
        let reply = agent
            .post(&url)
            .send(body.as_str())
            .expect("log lines are accepted")
            .into_body()
            .read_to_string()
            .unwrap();
        assert_eq!(reply.trim(), "50 lines");
        sent.extend(body.lines().map(str::to_string));
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let code = wait_exit(&mut s.child, Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "SIGTERM is a clean exit; log:\n{}",
        s.log_text()
    );
    let journal = std::fs::read_to_string(dir.path().join("state/machines.journal")).unwrap();
    let missing: Vec<&String> = sent
        .iter()
        .filter(|l| !journal.contains(l.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged lines are not in the journal, e.g. {:?}",
        missing.len(),
        sent.len(),
        missing.first()
    );
}

/// The open-file soft limit is raised to the hard limit at start, and logged.
#[test]
fn the_open_file_limit_is_raised_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    // Start with a low soft limit under a higher hard one, as a login shell gives.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && ulimit -H -n 4096 && exec {BIN} serve --config {}",
            dir.path().join("stemcell.yaml").display()
        ))
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    use std::io::BufRead;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(READY) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("open-file limit raised from=256 to=4096"),
        "{seen}"
    );
}

/// The HTTP listener destroyed under the server (`ss -K`): the accept loop reports it and
/// the whole server stops with exit code 70, instead of retrying a dead socket forever.
#[test]
fn a_dead_http_listener_stops_the_server() {
    if !require("root (ss -K needs CAP_NET_ADMIN)", is_root()) {
        return;
    }
    let Some(ns) = Netns::new("lifeh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let mut s = Server::start_in(Some(&ns), dir.path());
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    let out = ns.exec(&["ss", "-K", "-t", "-l", &format!("sport = :{port}")]);
    assert!(
        out.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = wait_exit(&mut s.child, Duration::from_secs(15));
    let log = s.log_text();
    assert_eq!(code, Some(70), "log:\n{log}");
    assert!(log.contains("the HTTP service failed"), "log:\n{log}");
}
