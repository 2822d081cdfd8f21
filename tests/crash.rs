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
