//! The inventory page in headless Chromium: rows move through the states live, without a
//! reload, while a machine goes through its install. Screenshots go to target/screenshots.

mod common;

#[path = "common/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const INVENTORY: &str = "roles:
  web:
    template: web.sh.j2
machines:
  52-54-00-00-00-01:
    hostname: web01
    role: web
    vars: { disk: /dev/vda }
";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

#[test]
fn the_row_moves_through_the_states_without_a_reload() {
    if !require(
        "chromium and chromedriver (Debian's chromium, chromium-driver)",
        browser::Browser::available(),
    ) {
        return;
    }
    let b = browser::Browser::start().expect("chromium and chromedriver are installed");
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    b.goto(&s.url("/"));
    // A marker that a reload would wipe out.
    b.eval("window.__noReload = 42; return 1;");
    let state = || {
        b.eval("return document.querySelector('#m-525400000001 [data-field=state]').textContent")
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let wait_for = |want: &str| {
        let t0 = Instant::now();
        loop {
            let now = state();
            if now == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "row stayed {now:?}, wanted {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("pending");
    let t0 = Instant::now();
    while b.eval("return document.getElementById('live').textContent") != "live" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the event stream did not connect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.screenshot(&shots().join("inventory-pending.png"));

    let mac = "52:54:00:00:00:01";
    let token = cmdline_value(
        &curl(&[], &s.url(&format!("/boot/{mac}.ipxe"))).text(),
        "stemcell.token",
    )
    .unwrap();
    curl(&[], &s.url(&format!("/install/{mac}?token={token}")));
    wait_for("installing");
    curl(
        &["--data-binary", "partitioning /dev/vda\n"],
        &s.url(&format!("/install/{mac}/log?token={token}")),
    );
    let t0 = Instant::now();
    while !b
        .eval("return document.querySelector('#m-525400000001 [data-field=event]').textContent")
        .as_str()
        .unwrap_or("")
        .contains("partitioning")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the last event did not update live"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.screenshot(&shots().join("inventory-installing.png"));
    curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{mac}/done?token={token}")),
    );
    wait_for("installed");
    assert_eq!(
        b.eval("return window.__noReload"),
        42,
        "the page must not have reloaded"
    );
    assert_eq!(
        b.eval("return document.getElementById('count-installed').textContent"),
        "1"
    );
    b.screenshot(&shots().join("inventory-installed.png"));

    b.goto(&s.url(&format!("/machines/{mac}")));
    let html = b
        .eval("return document.body.innerText")
        .as_str()
        .unwrap()
        .to_string();
    assert!(html.contains("install done"), "{html}");
    assert!(!html.contains(&token), "tokens are masked on the page");
    b.screenshot(&shots().join("machine-installed.png"));
}
