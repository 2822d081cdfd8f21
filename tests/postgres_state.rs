//! Machine state on PostgreSQL (`store.postgres`), shared by two real `stemcell serve`
//! processes (HTTP only: DHCP and TFTP off, so no namespaces) on a private PostgreSQL
//! cluster (tests/common/postgres.rs): a token issued by one is accepted by the other,
//! events and an operator's re-arm made on one are seen on the other (its API and its live
//! page's event stream), the database stopped and started loses nothing acknowledged, and
//! a database newer than the binary is refused at start.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::PgCluster;
use common::*;

const MAC: &str = "52:54:00:00:00:01";
const ADMIN: &str = "Authorization: Bearer test-admin-token-0123456789";
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

/// A lab folder whose machine state lives in `pg`.
fn lab_on(dir: &Path, pg: &PgCluster) {
    lab(dir, INVENTORY);
    let cfg = dir.join("stemcell.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&pg.store_yaml());
    std::fs::write(&cfg, text).unwrap();
}

/// Poll `check` until it holds (the other server hears of a change asynchronously);
/// the deadline only bounds a failure, it measures nothing.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 30 s: {what}");
}

fn machine(s: &Server) -> serde_json::Value {
    let r = curl(&[], &s.url(&format!("/api/v1/machines/{MAC}")));
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)
}

fn boot_token(s: &Server) -> String {
    let r = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe")));
    assert_eq!(r.status, 200, "{}", r.text());
    cmdline_value(&r.text(), "stemcell.token").expect("an install token in the boot script")
}

fn log_line(s: &Server, token: &str, line: &str) -> Reply {
    curl(
        &["-X", "POST", "--data-binary", line],
        &s.url(&format!("/install/{MAC}/log?token={token}")),
    )
}

/// The lines of a server's live event stream (`/api/v1/events`), as they arrive.
struct Stream {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Stream {
    fn open(s: &Server) -> Stream {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-i", "--max-time", "300"])
            .arg(s.url("/api/v1/events"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Stream { child, lines }
    }

    fn has(&self, needle: &[&str]) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("data:") && needle.iter().all(|n| l.contains(n)))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the issue asks of shared machine state, on two servers and one database.
#[test]
fn two_servers_share_tokens_events_rearms_and_survive_a_database_restart() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    lab_on(da.path(), &pg);
    lab_on(db.path(), &pg);
    let a = Server::start(da.path());
    let b = Server::start(db.path());

    // B's live page stream, open before anything happens on A.
    let stream = Stream::open(&b);
    // Subscribed once its response headers are out (the handler subscribes first).
    eventually("B's event stream is connected", || {
        stream
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("HTTP/1.1 200"))
    });

    // A arms the machine, serves its install script and takes a log line.
    let token = boot_token(&a);
    let r = curl(&[], &a.url(&format!("/install/{MAC}?token={token}")));
    assert_eq!(r.status, 200, "A serves the install script: {}", r.text());
    let r = log_line(&a, &token, "partitioning, said to A");
    assert_eq!((r.status, r.text().trim()), (200, "1 lines"));

    // B hears of it: its live stream shows the machine installing, its API the event.
    eventually("B's event stream shows the install A started", || {
        stream.has(&[MAC, "\"state\":\"installing\""])
    });
    eventually("B's API shows the event logged on A", || {
        has_event(&machine(&b), "message", "partitioning, said to A")
    });
    assert_eq!(machine(&b)["state"], "installing");

    // A's token works on B: the install script, a log line, done.
    let r = curl(&[], &b.url(&format!("/install/{MAC}?token={token}")));
    assert_eq!(r.status, 200, "B serves A's token: {}", r.text());
    assert!(r.text().contains("host=web01"), "{}", r.text());
    let r = log_line(&b, &token, "image written, said to B");
    assert_eq!((r.status, r.text().trim()), (200, "1 lines"));
    let r = curl(
        &["-X", "POST"],
        &b.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "done on B with A's token: {}", r.text());
    eventually("A sees the install B finished", || {
        machine(&a)["state"] == "installed"
    });
    assert!(has_event(
        &machine(&a),
        "message",
        "image written, said to B"
    ));
    // The token died everywhere with done.
    let r = curl(&[], &a.url(&format!("/install/{MAC}?token={token}")));
    assert_eq!(r.status, 403, "a spent token on A: {}", r.text());

    // An operator re-arms on B: A hands out the new token, and the old one is dead.
    let r = curl(
        &["-X", "POST", "-H", ADMIN],
        &b.url(&format!("/api/v1/machines/{MAC}/reinstall")),
    );
    assert!(r.status < 300, "re-arm on B: {} {}", r.status, r.text());
    eventually("A sees B's re-arm", || machine(&a)["state"] == "pending");
    let token2 = boot_token(&a);
    assert_ne!(token2, token, "a re-arm makes a new token");
    let r = curl(&[], &b.url(&format!("/install/{MAC}?token={token2}")));
    assert_eq!(r.status, 200, "the re-armed token on B: {}", r.text());
    eventually("A sees the reinstall B started", || {
        machine(&a)["state"] == "installing"
    });

    // The database goes away. A log line is still acknowledged (queued), a change that
    // must be durable fails with a clear error, and both come back by themselves.
    pg.stop_server("fast");
    let r = log_line(&a, &token2, "acknowledged while the database was down");
    assert_eq!(
        (r.status, r.text().trim()),
        (200, "1 lines"),
        "a log line waits in memory"
    );
    let r = curl(
        &["-X", "POST"],
        &a.url(&format!("/install/{MAC}/done?token={token2}")),
    );
    assert_eq!(r.status, 503, "done cannot be stored: {}", r.text());
    assert!(
        r.text().contains("could not be saved"),
        "the answer says why: {}",
        r.text()
    );
    assert!(
        a.wait_log("machine database", Duration::from_secs(10)),
        "A's log names the database: {}",
        a.log_text()
    );
    pg.start_server();
    eventually(
        "B sees, after the restart, the line A acknowledged during the outage",
        || {
            has_event(
                &machine(&b),
                "message",
                "acknowledged while the database was down",
            )
        },
    );
    // done failed, but its change waited in A's memory and is stored now: a repeat is
    // answered (as after a lost answer), and B agrees.
    let r = curl(
        &["-X", "POST"],
        &a.url(&format!("/install/{MAC}/done?token={token2}")),
    );
    assert_eq!(
        r.status,
        200,
        "done after the database is back: {}",
        r.text()
    );
    eventually("B sees the install finished after the outage", || {
        machine(&b)["state"] == "installed"
    });
    // B's own writes work again too.
    let r = curl(
        &["-X", "POST", "-H", ADMIN],
        &b.url(&format!("/api/v1/machines/{MAC}/reinstall")),
    );
    assert!(
        r.status < 300,
        "re-arm on B after the outage: {} {}",
        r.status,
        r.text()
    );
    eventually("A sees B's second re-arm", || {
        machine(&a)["state"] == "pending"
    });

    // Everything acknowledged is in the database itself.
    let rows = pg.psql(
        "stemcell",
        &format!("SELECT event->>'message' FROM stemcell_event WHERE mac = '{MAC}'"),
    );
    for line in [
        "partitioning, said to A",
        "image written, said to B",
        "acknowledged while the database was down",
    ] {
        assert!(rows.lines().any(|l| l == line), "{line:?} not in:\n{rows}");
    }
    let state = pg.psql(
        "stemcell",
        &format!("SELECT record->>'state' FROM stemcell_machine WHERE mac = '{MAC}'"),
    );
    assert_eq!(state.trim(), "pending");

    // A token B has not heard of (the announcements are switched off) is looked up in
    // the database before it is refused.
    pg.psql(
        "stemcell",
        "ALTER TABLE stemcell_machine DISABLE TRIGGER stemcell_machine_notify; \
         ALTER TABLE stemcell_event DISABLE TRIGGER stemcell_event_notify",
    );
    let r = curl(
        &["-X", "POST", "-H", ADMIN],
        &a.url(&format!("/api/v1/machines/{MAC}/reinstall")),
    );
    assert!(r.status < 300, "re-arm on A: {} {}", r.status, r.text());
    let token3 = boot_token(&a);
    assert_ne!(token3, token2);
    let r = curl(&[], &b.url(&format!("/install/{MAC}?token={token3}")));
    assert_eq!(
        r.status,
        200,
        "B accepts a token it was never told about: {}",
        r.text()
    );
    pg.psql(
        "stemcell",
        "ALTER TABLE stemcell_machine ENABLE TRIGGER stemcell_machine_notify; \
         ALTER TABLE stemcell_event ENABLE TRIGGER stemcell_event_notify",
    );

    // A server started later loads it all from the database.
    drop(a);
    let c = Server::start(da.path());
    let m = machine(&c);
    assert_eq!(m["state"], "installing");
    assert!(has_event(&m, "message", "image written, said to B"));
}

/// A database migrated by a newer stemcell is refused at start, naming both versions.
#[test]
fn a_database_newer_than_the_binary_is_refused_at_start() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    lab_on(dir.path(), &pg);
    // The first start migrates the empty database.
    let mut s = Server::start(dir.path());
    s.kill();
    assert_eq!(
        pg.psql("stemcell", "SELECT max(version) FROM stemcell_schema")
            .trim(),
        "1"
    );
    pg.psql(
        "stemcell",
        "INSERT INTO stemcell_schema (version) VALUES (99)",
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("stemcell.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    if code.is_none() {
        let _ = child.kill();
    }
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(
        code.is_some_and(|c| c != 0),
        "a newer schema must stop the server ({code:?}): {err}"
    );
    assert!(
        err.contains("version 99") && err.contains("(1)"),
        "the error names both versions: {err}"
    );
}
