//! TFTP against the real binary with the real clients Debian ships: tftp-hpa (no options)
//! and atftp (blksize, tsize, windowsize), each test in its own network namespace.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const BIG: usize = 5 * 1000 * 1000;

/// Debian's iPXE binaries, the files the tests fetch (`tftp_lab`).
fn have_ipxe() -> bool {
    require(
        "/usr/lib/ipxe/undionly.kpxe and snponly.efi (Debian's ipxe)",
        ["undionly.kpxe", "snponly.efi"]
            .iter()
            .all(|f| Path::new("/usr/lib/ipxe").join(f).is_file()),
    )
}

/// A lab with TFTP on 127.0.0.1 inside `ns`, its root holding Debian's iPXE binaries and a
/// 5 MB random file.
fn tftp_lab(dir: &Path) {
    lab(dir, "machines: {}\n");
    let root = dir.join("tftproot");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for f in ["undionly.kpxe", "snponly.efi"] {
        std::fs::copy(Path::new("/usr/lib/ipxe").join(f), root.join(f))
            .unwrap_or_else(|e| panic!("/usr/lib/ipxe/{f}: {e} (apt-get install ipxe)"));
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("sub/big.bin"), data).unwrap();
    let cfg = dir.join("stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "server_ip: 127.0.0.1\n",
        "interface: lo\nserver_ip: 127.0.0.1\ntftp:\n  root: tftproot\n",
    );
    std::fs::write(cfg, text).unwrap();
}

/// The server's metrics (fetched inside `ns`) once its log mentions `needle`: transfers
/// are reported when the server has the last packet, which can be after the client exits.
fn metrics_once_logged(s: &Server, ns: &Netns, needle: &str) -> String {
    s.wait_log(needle, Duration::from_secs(5));
    String::from_utf8_lossy(&ns.exec(&["curl", "-s", &s.url("/metrics")]).stdout).to_string()
}

fn same(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap_or_default(),
    );
    assert_eq!(x.len(), y.len(), "{} vs {}", a.display(), b.display());
    assert!(x == y, "{} differs from {}", b.display(), a.display());
}

#[test]
fn real_clients_fetch_with_every_option_and_hostile_requests_are_refused() {
    if !(require("tftp (Debian's tftp-hpa)", have_tool("tftp"))
        && require("atftp", have_tool("atftp"))
        && have_ipxe())
    {
        return;
    }
    let Some(ns) = Netns::new("t") else { return };
    let dir = tempfile::tempdir().unwrap();
    tftp_lab(dir.path());
    let s = Server::start_in(Some(&ns), dir.path());
    assert!(
        s.wait_log("listening for TFTP", Duration::from_secs(10)),
        "{}",
        s.log_text()
    );
    let root = dir.path().join("tftproot");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    // tftp-hpa: plain RFC 1350, 512-byte blocks.
    for f in ["undionly.kpxe", "snponly.efi", "sub/big.bin"] {
        let o = out.join(format!("hpa-{}", f.replace('/', "_")));
        let r = ns.exec(&[
            "tftp",
            "127.0.0.1",
            "-m",
            "binary",
            "-c",
            "get",
            f,
            o.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{r:?}");
        same(&root.join(f), &o);
    }
    // atftp: defaults, blksize, windowsize, tsize + windowsize.
    for (i, opts) in [
        vec![],
        vec!["--option", "blksize 1428"],
        vec!["--option", "windowsize 16"],
        vec!["--option", "blksize 1428", "--option", "windowsize 16"],
        vec!["--option", "tsize 0", "--option", "windowsize 16"],
    ]
    .iter()
    .enumerate()
    {
        for f in ["snponly.efi", "sub/big.bin"] {
            let o = out.join(format!("atftp-{i}-{}", f.replace('/', "_")));
            let mut args = vec!["atftp", "--get", "-r", f, "-l", o.to_str().unwrap()];
            args.extend(opts.iter().copied());
            args.extend(["127.0.0.1", "69"]);
            let r = ns.exec(&args);
            assert!(r.status.success(), "atftp {opts:?} {f}: {r:?}");
            same(&root.join(f), &o);
        }
    }
    // Hostile paths and writes are refused with an error packet.
    std::fs::write(dir.path().join("secret.txt"), b"secret").unwrap();
    for bad in ["../secret.txt", "/../secret.txt", "sub/../../secret.txt"] {
        let o = out.join("bad");
        let r = ns.exec(&[
            "atftp",
            "--get",
            "-r",
            bad,
            "-l",
            o.to_str().unwrap(),
            "127.0.0.1",
            "69",
        ]);
        assert!(!r.status.success(), "{bad} must be refused: {r:?}");
        assert_ne!(std::fs::read(&o).unwrap_or_default(), b"secret");
    }
    let upload = dir.path().join("upload.txt");
    std::fs::write(&upload, b"x").unwrap();
    let r = ns.exec(&[
        "tftp",
        "127.0.0.1",
        "-m",
        "binary",
        "-c",
        "put",
        upload.to_str().unwrap(),
        "upload.txt",
    ]);
    let said = String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr);
    assert!(
        said.contains("Error code 2"),
        "a write request gets an access violation: {said}"
    );
    assert!(!root.join("upload.txt").exists());

    let m = metrics_once_logged(&s, &ns, "refused");
    assert!(
        m.contains("stemcell_tftp_transfers_total{outcome=\"completed\"} 13"),
        "{m}"
    );
    assert!(
        m.contains("stemcell_tftp_transfers_total{outcome=\"refused\"} 4"),
        "{m}"
    );
}

#[test]
fn error_8_ends_the_transfer() {
    if !have_ipxe() {
        return;
    }
    let Some(ns) = Netns::new("e") else { return };
    let dir = tempfile::tempdir().unwrap();
    tftp_lab(dir.path());
    let s = Server::start_in(Some(&ns), dir.path());
    assert!(
        s.wait_log("listening for TFTP", Duration::from_secs(10)),
        "{}",
        s.log_text()
    );
    // A firmware-like client: examples/tftp_error8_probe.rs.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(helper("tftp_error8_probe"))
        .env("PROBE_FILE", "snponly.efi")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .unwrap()
        .len();
    assert!(
        said.contains(&format!("tsize\\0{size}")),
        "the OACK carries the real size: {said}"
    );
    assert!(
        said.contains("packets_after_error=0"),
        "no packet may follow the client's error 8: {said}"
    );
    let m = metrics_once_logged(&s, &ns, "aborted");
    assert!(
        m.contains("stemcell_tftp_transfers_total{outcome=\"aborted\"} 1"),
        "{m}"
    );
}

/// The GRUB loader's names (`loader: grub`), fetched by atftp as shim and GRUB would: shim
/// and GRUB from the paths `grub:` names, GRUB's first config, the machine's own grub.cfg
/// (the same decision, events and arming as an iPXE script) and the stem cell's kernel,
/// counted against `installer_boots` as over HTTP.
#[test]
fn the_grub_loaders_names_are_served_per_machine() {
    if !require("atftp", have_tool("atftp")) {
        return;
    }
    let Some(ns) = Netns::new("g") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mac = "52:54:00:12:34:56";
    lab(
        dir.path(),
        &format!("defaults: {{loader: grub}}\nroles:\n  web: {{template: web.sh.j2}}\nmachines:\n  \"{mac}\": {{hostname: web01, role: web}}\n"),
    );
    std::fs::create_dir_all(dir.path().join("tftproot")).unwrap();
    for f in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(dir.path().join("tftproot").join(f), b"ipxe").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("signed")).unwrap();
    std::fs::write(dir.path().join("signed/shim.efi"), b"shim, signed").unwrap();
    std::fs::write(dir.path().join("signed/grubnet.efi"), b"grub, signed").unwrap();
    let cfg = dir.path().join("stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "server_ip: 127.0.0.1\n",
        "interface: lo\nserver_ip: 127.0.0.1\ntftp:\n  root: tftproot\ngrub:\n  uefi_x64: {shim: signed/shim.efi, grub: signed/grubnet.efi}\n",
    );
    std::fs::write(cfg, text).unwrap();
    let s = Server::start_in(Some(&ns), dir.path());
    assert!(
        s.wait_log("listening for TFTP", Duration::from_secs(10)),
        "{}",
        s.log_text()
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let get = |name: &str| -> Option<Vec<u8>> {
        let o = out.join(name.replace('/', "_"));
        let r = ns.exec(&[
            "atftp",
            "--get",
            "-r",
            name,
            "-l",
            o.to_str().unwrap(),
            "--option",
            "blksize 1024",
            "127.0.0.1",
            "69",
        ]);
        r.status.success().then(|| std::fs::read(&o).unwrap())
    };
    assert_eq!(get("shimx64.efi").unwrap(), b"shim, signed");
    assert_eq!(get("grubx64.efi").unwrap(), b"grub, signed");
    for first in ["/grub/grub.cfg", "/grub/x86_64-efi/grub.cfg"] {
        let t = String::from_utf8(get(first).unwrap()).unwrap();
        assert!(
            t.contains("configfile $prefix/${net_default_mac}.cfg"),
            "{t}"
        );
    }
    let t = String::from_utf8(get(&format!("/grub/{mac}.cfg")).unwrap()).unwrap();
    assert!(
        t.contains(&format!(
            "linux /stemcell/{mac}/vmlinuz 'BOOTIF=01-52-54-00-12-34-56' "
        )),
        "{t}"
    );
    assert!(t.contains("'stemcell.token="), "{t}");
    assert!(
        t.contains(&format!("initrd /stemcell/{mac}/initrd.img")),
        "{t}"
    );
    let kernel = std::fs::read(dir.path().join("stemcell/vmlinuz")).unwrap();
    assert_eq!(get(&format!("/stemcell/{mac}/vmlinuz")).unwrap(), kernel);
    assert_eq!(
        get(&format!("/stemcell/{mac}/initrd.img")).unwrap(),
        b"initrd"
    );
    assert!(get(&format!("/stemcell/{mac}/other")).is_none());
    // The same events as an iPXE boot; the fetch armed the install.
    let api = ns.exec(&["curl", "-s", &s.url(&format!("/api/v1/machines/{mac}"))]);
    let m: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
    let events = m["events"].to_string();
    assert!(
        events.contains("boot script: install as role web (GRUB)"),
        "{events}"
    );
    assert!(
        events.contains("fetched stem-cell vmlinuz (TFTP)"),
        "{events}"
    );
    assert_eq!(m["state"], "pending", "{m}");
    assert!(m["phases"]["netboot"].is_number(), "{m}");
    // installer_boots (3): the fourth whole kernel is refused, the install stopped.
    assert!(get(&format!("/stemcell/{mac}/vmlinuz")).is_some());
    assert!(get(&format!("/stemcell/{mac}/vmlinuz")).is_some());
    assert!(get(&format!("/stemcell/{mac}/vmlinuz")).is_none());
    let api = ns.exec(&["curl", "-s", &s.url(&format!("/api/v1/machines/{mac}"))]);
    let m: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
    assert_eq!(m["state"], "failed", "{m}");
    let t = String::from_utf8(get(&format!("/grub/{mac}.cfg")).unwrap()).unwrap();
    assert!(t.contains("failed:") && !t.contains("linux "), "{t}");
}
