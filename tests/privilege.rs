//! Least privilege: `serve` started as root with `user:` binds DHCP (67), TFTP (69) and
//! HTTP (80) as root, then runs as that user with no capabilities, and every service still
//! answers real clients (dhclient, tftp-hpa, curl) while the journals are written as that
//! user. A `user:` that cannot be used is a config error (exit 64) naming its position.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const MAC: &str = "52:54:00:00:00:07";
const INVENTORY: &str = "defaults:
  unknown: ignore
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
machines:
  \"52:54:00:00:00:07\":
    hostname: web07
    role: web
";

/// `id -u NAME` / `id -g NAME`.
fn id(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {flag} {name}: {out:?}"))
}

/// A lab the service user can read (temporary folders are root's and 0700).
fn readable_lab(dir: &Path) {
    lab(dir, INVENTORY);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The capabilities contrib/stemcell.service's bounding set allows, e.g. `CAP_NET_RAW`.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/stemcell.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace().map(str::to_string).collect()
}

/// A field of /proc/PID/status, e.g. `Uid`.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn started_as_root_it_serves_dhcp_tftp_and_http_as_the_user_with_no_capabilities() {
    if !(require("root (ports 67, 69 and 80, switching users)", is_root())
        && require("setpriv (util-linux)", have_tool("setpriv"))
        && require("dhclient (isc-dhcp-client)", have_tool("dhclient"))
        && require("tftp (Debian's tftp-hpa)", have_tool("tftp"))
        && require("curl", have_tool("curl")))
    {
        return;
    }
    let (Some(srv), Some(cli)) = (Netns::new("privs"), Netns::new("privc")) else {
        return;
    };
    let (uid, gid) = (id("-u", "nobody"), id("-g", "nobody"));
    srv.cable(&cli, "198.18.91.1/24", MAC);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    readable_lab(dir);
    let root = dir.join("tftproot");
    std::fs::create_dir_all(&root).unwrap();
    for f in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(root.join(f), b"boot file").unwrap();
    }
    // Several blocks, so the transfer socket (an ephemeral port, bound after the switch)
    // carries a real transfer.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    // An earlier run as root left a root-owned journal: it must be handed over.
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/machines.journal"), b"").unwrap();
    std::fs::write(
        dir.join("stemcell.yaml"),
        "interface: sc0
server_ip: 198.18.91.1
user: nobody
dhcp:
  mode: authoritative
  subnets:
    - subnet: 198.18.91.0/24
      pool: [198.18.91.100, 198.18.91.150]
      router: 198.18.91.1
tftp:
  root: tftproot
http:
  listen: 198.18.91.1:80
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
    // The admin token is read before the switch: it may stay root's alone.
    std::fs::set_permissions(
        dir.join("admin.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // Root, but with only the capabilities contrib/stemcell.service leaves it, and no new
    // privileges: what the unit allows is enough to bind and switch.
    let bounding = unit_capabilities()
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<String>();
    let bounding = format!("--bounding-set=-all{bounding}");
    let wrapper = ["setpriv", &bounding, "--inh-caps=-all", "--no-new-privs"];
    let mut s = Server::start_via(Some(&srv), &wrapper, dir);
    assert!(
        s.wait_log(READY, Duration::from_secs(5)),
        "log:\n{}",
        s.log_text()
    );
    let bnd = u64::from_str_radix(&proc_status(s.child.id(), "CapBnd"), 16).unwrap();
    assert_eq!(
        bnd.count_ones() as usize,
        unit_capabilities().len(),
        "CapBnd {bnd:x}"
    );
    let pid = s.child.id();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "stemcell"
    );
    let log = s.log_text();
    assert!(log.contains("dropped root after binding"), "log:\n{log}");
    // The switch comes before the readiness line, so before any request is served.
    assert!(
        log.find("dropped root").unwrap() < log.find(READY).unwrap(),
        "log:\n{log}"
    );
    let ids = |f| {
        proc_status(pid, f)
            .split_whitespace()
            .map(|x| x.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid"), vec![uid; 4], "real, effective, saved, fs uid");
    assert_eq!(ids("Gid"), vec![gid; 4], "real, effective, saved, fs gid");
    assert_eq!(ids("Groups"), vec![gid]);
    for cap in ["CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            proc_status(pid, cap),
            "0000000000000000",
            "{cap}: no capability is kept"
        );
    }
    // Every thread, not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(
            status.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")),
            "{status}"
        );
    }

    // DHCP: dhclient gets a lease, acknowledged only once it is in the lease journal.
    let w = dir.join("dhclient");
    std::fs::create_dir_all(&w).unwrap();
    let lease_file = w.join("lease");
    let out = cli.exec(&[
        "timeout",
        "30",
        "dhclient",
        "-4",
        "-v",
        "-1",
        "-lf",
        lease_file.to_str().unwrap(),
        "-pf",
        w.join("pid").to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(
        out.status.success(),
        "dhclient: {out:?}\nlog:\n{}",
        s.log_text()
    );
    let lease = std::fs::read_to_string(&lease_file).unwrap();
    let addr = lease
        .lines()
        .find_map(|l| l.trim().strip_prefix("fixed-address "))
        .map(|a| a.trim_end_matches(';').to_string())
        .unwrap_or_else(|| panic!("no address in the lease: {lease}"));
    assert!(addr.starts_with("198.18.91.1"), "{lease}");
    // dhclient ran without its script: the test configures the leased address itself.
    let out = cli.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "sc1"]);
    assert!(out.status.success(), "{out:?}");

    // TFTP: tftp-hpa fetches a multi-block file.
    let got = w.join("big.bin");
    let out = cli.exec(&[
        "tftp",
        "198.18.91.1",
        "-m",
        "binary",
        "-c",
        "get",
        "big.bin",
        got.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "tftp: {out:?}");
    let copy = std::fs::read(&got).unwrap();
    assert!(
        copy == big,
        "the TFTP copy differs: {} of {} bytes; {out:?}\nlog:\n{}",
        copy.len(),
        big.len(),
        s.log_text()
    );

    // HTTP on port 80: a boot script (an install token is made and journaled), then the
    // install script rendered from a template read as the user.
    let http = |path: &str| {
        let out = cli.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            &format!("http://198.18.91.1{path}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    let (code, script) = http(&format!("/boot/{MAC}.ipxe"));
    assert_eq!(code, "200", "{script}");
    let token = cmdline_value(&script, "stemcell.token").expect("an install token");
    let (code, install) = http(&format!("/install/{MAC}?token={token}"));
    assert_eq!(code, "200", "{install}");
    assert!(install.contains("host=web07"), "{install}");

    // The journals are written, and everything in the state directory is the user's.
    let state = dir.join("state");
    let leases = std::fs::read_to_string(state.join("leases.journal")).unwrap();
    assert!(leases.contains(&addr), "lease journal: {leases}");
    let machines = std::fs::read_to_string(state.join("machines.journal")).unwrap();
    assert!(machines.contains(&token), "machine journal: {machines}");
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        let md = path.symlink_metadata().unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (uid, gid),
            "{} belongs to the user",
            path.display()
        );
    }
    let md = std::fs::metadata(&state).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (uid, 0o700));

    // SIGTERM: the journals are flushed as the user, a clean exit.
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let code = wait_exit(&mut s.child, Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", s.log_text());
    assert!(s.log_text().contains("journals flushed"));

    // A restart finds the state directory already the user's, and the lease and the
    // install token still held.
    let s = Server::start_via(Some(&srv), &wrapper, dir);
    assert!(s.log_text().contains("dropped root after binding"));
    let (code, _) = http(&format!("/install/{MAC}?token={token}"));
    assert_eq!(code, "200", "log:\n{}", s.log_text());
    let out = cli.exec(&[
        "timeout",
        "30",
        "dhclient",
        "-4",
        "-1",
        "-lf",
        lease_file.to_str().unwrap(),
        "-pf",
        w.join("pid2").to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(out.status.success(), "dhclient again: {out:?}");
    let again = std::fs::read_to_string(&lease_file).unwrap();
    assert!(
        again.matches(&format!("fixed-address {addr};")).count() >= 2,
        "the same address again: {again}"
    );
}

/// Run `serve` on `dir`'s config, optionally as another uid (setpriv), and return its exit
/// code and stderr; it must end by itself.
fn serve_once(dir: &Path, as_nobody: bool) -> (i32, String) {
    let bin = dir.join("stemcell-bin");
    std::fs::copy(BIN, &bin).unwrap();
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(["serve", "--config"])
        .arg(dir.join("stemcell.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The copy was just written: a process forked by another test thread meanwhile may
    // still hold it open for writing (ETXTBSY) until it execs; that passes at once.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let code = wait_exit(&mut child, Duration::from_secs(20));
    if code.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (
        code.unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A config whose `user:` cannot be used is refused before anything is bound, with its
/// position: an account that does not exist, or a server that is not root.
#[test]
fn an_unusable_user_is_a_config_error_with_its_position() {
    if !(require(
        "root (to start as root, and as nobody with setpriv)",
        is_root(),
    ) && require("setpriv (util-linux)", have_tool("setpriv")))
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    readable_lab(dir);
    let cfg = dir.join("stemcell.yaml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    // Line 1, after `user: `: column 7.
    std::fs::write(&cfg, format!("user: no-such-stemcell-user\n{base}")).unwrap();
    let (code, err) = serve_once(dir, false);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1:7: user: \"no-such-stemcell-user\" does not exist",
            cfg.display()
        )),
        "{err}"
    );
    assert!(!err.contains(READY), "{err}");

    std::fs::write(&cfg, format!("{base}user: nobody\ngroup: no-such-group\n")).unwrap();
    let (code, err) = serve_once(dir, false);
    assert_eq!(code, 64, "{err}");
    let line = base.lines().count() + 2;
    assert!(
        err.contains(&format!(
            "{}:{line}:8: group: \"no-such-group\" does not exist",
            cfg.display()
        )),
        "{err}"
    );

    // Not root: only root can switch users.
    std::fs::write(&cfg, format!("{base}user: nobody\n")).unwrap();
    let (code, err) = serve_once(dir, true);
    let line = base.lines().count() + 1;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            "{}:{line}:7: user: \"nobody\" is set, but stemcell runs as uid",
            cfg.display()
        )) && err.contains("not root"),
        "{err}"
    );
}
