//! After `done`, against the real binary with curl: the OS image and the Puppet bundle
//! served, the installed system's reports with its machine key, the states they lead to,
//! drift that says what changed, and stalled machines. (QEMU proves the same with a real
//! Debian in tests/debian.rs.)

mod common;

use std::time::Duration;

use common::*;

const MAC: &str = "52:54:00:00:00:09";
const INVENTORY: &str = "defaults:
  unknown: ignore
roles:
  web:
    template: os.sh.j2
    os: debian-12
machines:
  \"52:54:00:00:00:09\":
    hostname: web09
    role: web
";

fn sha256_hex(b: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(b).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Publish `bytes` as the current image of debian-12, as `stemcell os build` would.
fn publish(dir: &std::path::Path, bytes: &[u8]) -> String {
    let sha = sha256_hex(bytes);
    let d = dir.join("images/debian-12");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("{sha}.tar.zst")), bytes).unwrap();
    std::fs::write(
        d.join("current.json"),
        format!(
            r#"{{"name":"debian-12","sha256":"{sha}","size":{},"archive":"{sha}.tar.zst"}}"#,
            bytes.len()
        ),
    )
    .unwrap();
    sha
}

fn site(dir: &std::path::Path) {
    lab(dir, INVENTORY);
    let cfg = std::fs::read_to_string(dir.join("stemcell.yaml")).unwrap();
    std::fs::write(dir.join("stemcell.yaml"), cfg + "stall_after: 2s\n").unwrap();
    std::fs::create_dir_all(dir.join("os")).unwrap();
    std::fs::write(dir.join("os/debian-12.yaml"), "suite: bookworm\n").unwrap();
    std::fs::create_dir_all(dir.join("puppet/manifests")).unwrap();
    std::fs::write(dir.join("puppet/manifests/web.pp"), "notify { 'web': }\n").unwrap();
    std::fs::write(
        dir.join("kickstarts/os.sh.j2"),
        "#!/bin/sh\nOS_URL={{ os.url }}\nOS_SHA256={{ os.sha256 }}\nOS_SIZE={{ os.size }}\nKEY={{ machine_key }}\nREPORT={{ report_url }}\nBUNDLE={{ puppet.bundle_url }}\nMANIFEST={{ puppet.manifest }}\n",
    )
    .unwrap();
}

fn script_value(script: &str, key: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{script}"))
        .to_string()
}

fn machine(s: &Server) -> serde_json::Value {
    json(&curl(&[], &s.url(&format!("/api/v1/machines/{MAC}"))))
}

fn report(s: &Server, key: &str, what: &str, body: &str) -> Reply {
    curl(
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {key}"),
            "--data-binary",
            body,
        ],
        &s.url(&format!("/report/{MAC}/{what}")),
    )
}

/// Boot, fetch the install script; returns (token, script).
fn install(s: &Server) -> (String, String) {
    let boot = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe"))).text();
    let token = cmdline_value(&boot, "stemcell.token").expect("an install token");
    let r = curl(&[], &s.url(&format!("/install/{MAC}?token={token}")));
    (token, r.text())
}

#[test]
fn an_installed_system_reports_booted_then_its_puppet_runs() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let image = b"not really zstd, but bytes with a digest".to_vec();
    let sha = publish(dir.path(), &image);
    let s = Server::start(dir.path());

    let (token, script) = install(&s);
    assert_eq!(script_value(&script, "OS_SHA256"), sha);
    assert_eq!(script_value(&script, "OS_SIZE"), image.len().to_string());
    let os_url = script_value(&script, "OS_URL");
    assert_eq!(os_url, s.url(&format!("/os/debian-12/{sha}.tar.zst")));
    let key = script_value(&script, "KEY");
    assert_eq!(key.len(), 32);
    assert_ne!(key, token, "the machine key is not the install token");
    assert_eq!(
        script_value(&script, "REPORT"),
        s.url(&format!("/report/{MAC}"))
    );
    assert_eq!(script_value(&script, "MANIFEST"), "manifests/web.pp");

    // The image streams whole, and the first fetch starts the machine's image phase.
    let got = curl(&[], &format!("{os_url}?mac={MAC}"));
    assert_eq!(got.status, 200);
    assert_eq!(got.body, image);
    let m = machine(&s);
    assert_eq!(m["state"], "installing");
    assert!(m["phases"]["image"].as_u64().is_some(), "{m}");
    assert_eq!(
        curl(&[], &s.url("/os/debian-12/..%2f..%2fsecret.txt")).status,
        404
    );

    // Nothing reports before done; then only with the machine key.
    assert_eq!(report(&s, &key, "booted", "").status, 409);
    let done = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!(done.status, 200);
    // The stem cell retries a done whose answer it lost: answered again, recorded once.
    let again = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!((again.status, again.text().trim()), (200, "installed"));
    let dones = machine(&s)["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "done")
        .count();
    assert_eq!(dones, 1);
    // The spent token opens nothing else.
    let late = curl(
        &["-X", "POST", "--data-binary", "too late"],
        &s.url(&format!("/install/{MAC}/failed?token={token}")),
    );
    assert_eq!(late.status, 403);
    assert_eq!(report(&s, &token, "booted", "").status, 403);
    assert_eq!(report(&s, "", "booted", "").status, 403);
    let r = report(&s, &key, "booted", "boot_id=x\nsecure_boot=on\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(machine(&s)["state"], "booted");
    // What the installed system read of Secure Boot is in the event.
    let events = machine(&s)["events"].to_string();
    assert!(
        events.contains("the installed system booted; now booted; Secure Boot on"),
        "{events}"
    );

    // The bundle: a tar.gz whose sha256 is in its header.
    let b = curl(&[], &s.url("/puppet/bundle.tar.gz"));
    assert_eq!(b.status, 200);
    let bundle = b.header("x-bundle-sha256").expect("X-Bundle-Sha256");
    assert_eq!(sha256_hex(&b.body), bundle);

    // A failing run, then a good one.
    let r = report(
        &s,
        &key,
        "puppet",
        &format!("exit=6\nchanged=1\nfailed=2\ntotal=9\nseconds=3.5\nbundle={bundle}\nlog=Error: Could not find package nginx-light\n"),
    );
    assert_eq!(r.text().trim(), "config-failed");
    let m = machine(&s);
    assert_eq!(m["state"], "config-failed");
    assert!(
        has_event(&m, "message", "Error: Could not find package nginx-light"),
        "{m}"
    );
    let r = report(
        &s,
        &key,
        "puppet",
        &format!(
            "exit=2\nchanged=3\nfailed=0\ntotal=9\nseconds=41.25\nbundle={bundle}\nos={sha}\n"
        ),
    );
    assert_eq!(r.status, 200);
    let m = machine(&s);
    assert_eq!(m["state"], "configured");
    assert_eq!(m["last_run"]["changed"], 3);
    assert_eq!(m["last_run"]["millis"], 41_250);
    assert_eq!(m["drifted"], false, "{m}");
    assert!(m["phases"]["configured"].as_u64().is_some());

    // Drift says what changed: the Puppet code, then the OS image.
    std::fs::write(
        dir.path().join("puppet/manifests/web.pp"),
        "notify { 'web, edited': }\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let m = machine(&s);
    assert_eq!(m["drifted"], true, "{m}");
    assert!(
        m["drift"][0]
            .as_str()
            .unwrap()
            .contains("Puppet code changed"),
        "{m}"
    );
    publish(dir.path(), b"a rebuilt image");
    let m = machine(&s);
    assert!(
        m["drift"].as_array().unwrap().iter().any(|d| d
            .as_str()
            .unwrap()
            .starts_with("OS image debian-12 rebuilt")),
        "{m}"
    );
    // The page shows the same.
    let page = curl(&[], &s.url(&format!("/machines/{MAC}"))).text();
    assert!(page.contains("Puppet code changed"), "{page}");
    assert!(
        page.contains("id=\"timeline\""),
        "the install's timeline is drawn"
    );

    // A re-arm kills the old system's key.
    let r = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer test-admin-token-0123456789",
        ],
        &s.url(&format!("/api/v1/machines/{MAC}/reinstall")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(report(&s, &key, "booted", "").status, 403);
}

#[test]
fn an_os_that_is_not_built_fails_the_install_with_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let s = Server::start(dir.path());
    let boot = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe"))).text();
    let token = cmdline_value(&boot, "stemcell.token").unwrap();
    let r = curl(&[], &s.url(&format!("/install/{MAC}?token={token}")));
    assert_eq!(r.status, 500);
    let m = machine(&s);
    assert_eq!(m["state"], "failed");
    assert!(
        m["reason"].as_str().unwrap().contains("not built yet"),
        "{m}"
    );
}

#[test]
fn an_installed_machine_that_never_phones_home_is_stalled() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    publish(dir.path(), b"image");
    let s = Server::start(dir.path());
    let (token, _) = install(&s);
    curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!(machine(&s)["state"], "installed");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(machine(&s)["state"], "stalled", "stall_after is 2s here");
    let page = curl(&[], &s.url("/?state=stalled")).text();
    assert!(
        page.contains("web09"),
        "the fleet page filters stalled machines"
    );
}
