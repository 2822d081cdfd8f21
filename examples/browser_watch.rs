//! The page watcher run inside a lab's server namespace while a QEMU machine boots
//! (tests/pxe_boot.rs has tests/netns/pxe.sh run it as WATCH_CMD, with STEMCELL_URL and
//! WATCH_MAC): headless Chromium keeps the inventory page open, never reloads it, and must
//! see the machine's row go through `installing` to `installed` by live updates alone.
//! Exits non-zero (a panic) otherwise. Screenshots go to target/screenshots/.
//!
//! An example, not a `[[bin]]`: it must not ship with stemcell. tests/pxe_boot.rs builds it
//! with `cargo build --example browser_watch` (tests/common: `helper`).

#[path = "../tests/common/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::Browser;

fn main() {
    let url = std::env::var("STEMCELL_URL").expect("STEMCELL_URL");
    let mac = std::env::var("WATCH_MAC")
        .expect("WATCH_MAC")
        .to_lowercase();
    let id = mac.replace([':', '-'], "");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let b = Browser::start().expect("chromium and chromedriver (the test checks for them first)");
    b.goto(&format!("{url}/"));
    b.eval("window.__noReload = 7; return 1;");
    let row_state = format!("var e = document.querySelector('#m-{id} [data-field=state]'); return e ? e.textContent : '';");
    let mut seen: Vec<String> = Vec::new();
    let mut shot_installing = false;
    let t0 = Instant::now();
    loop {
        let s = b.eval(&row_state).as_str().unwrap_or("").to_string();
        if !s.is_empty() && seen.last() != Some(&s) {
            println!(
                "watch: {mac} is {s} after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            seen.push(s.clone());
        }
        if s == "installing" && !shot_installing {
            b.screenshot(&shots.join("lab-installing.png"));
            shot_installing = true;
        }
        if s == "installed" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the row never reached installed; saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.screenshot(&shots.join("lab-installed.png"));
    assert_eq!(
        b.eval("return window.__noReload"),
        7,
        "the page reloaded; updates must be live"
    );
    assert!(
        seen.iter().any(|s| s == "installing"),
        "never saw installing: {seen:?}"
    );
    b.goto(&format!("{url}/machines/{mac}"));
    b.screenshot(&shots.join("lab-machine.png"));
    println!("watch: states seen without a reload: {seen:?}");
}
