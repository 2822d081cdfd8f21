//! Shared harness: start the real `stemcell` binary on a free port in a temporary folder
//! and drive it with real clients (curl). Readiness is the one "stemcell ready" log line
//! (see [`READY`]), never a sleep. Also: honest skips ([`require`], [`skip`]) and the
//! helper programs in examples/ ([`helper`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod postgres;

pub const BIN: &str = env!("CARGO_BIN_EXE_stemcell");

/// stemcell's readiness contract: once every socket (HTTP, TFTP, DHCP) is bound it logs one
/// info line with this message and the fields `addr=<http listen addr>` and `url=<http url>`.
/// Every harness (this one, lab/lib.sh, bench/run.sh) waits for it and nothing else.
pub const READY: &str = "stemcell ready";

/// The exit code with which a script says "cannot run here" (automake's SKIP).
pub const SKIP_EXIT: i32 = 77;

/// `<target>`, the folder cargo builds into.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_path_buf()
}

/// Where skips are recorded, one line each, for tests/run.sh's summary:
/// `<target>/skipped-tests.txt`, or `STEMCELL_SKIP_FILE`.
pub fn skip_file() -> PathBuf {
    std::env::var_os("STEMCELL_SKIP_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("skipped-tests.txt"))
}

/// Whether this runs in CI (`CI` set to anything but empty, `0` or `false`), where nothing
/// may be skipped: a missing requirement is a failure there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE"))
}

/// This test's name as the summary shows it: `binary::test` (libtest names each test's
/// thread after the test).
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_else(|| "?".into());
    let test = std::thread::current().name().unwrap_or("?").to_string();
    format!("{binary}::{test}")
}

/// This test cannot run here because of `why` (what is missing). Under CI that is a failure
/// (a panic naming it); otherwise a loud message, and a line in [`skip_file`] so the skip is
/// reported as one (tests/run.sh prints them), never silently as a pass. The caller returns
/// right after.
pub fn skip(why: &str) {
    let name = test_name();
    if in_ci() {
        panic!(
            "{name} cannot run: {why}; with CI set, a missing requirement is a failure, not a skip"
        );
    }
    eprintln!("\n!!!!!!!! SKIPPED {name}: {why} !!!!!!!!\n");
    let file = skip_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let line = format!("{name}: {}\n", why.replace('\n', " "));
    // One write with O_APPEND: lines from tests running side by side do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("(could not record the skip in {}: {e})", file.display());
    }
}

/// `available`, or else a [`skip`] because `what` is missing: `if !require(..) { return; }`.
pub fn require(what: &str, available: bool) -> bool {
    if !available {
        skip(&format!("{what} is missing"));
    }
    available
}

/// Whether `tool` is a command on PATH (with /usr/sbin and /sbin, where Debian puts
/// dhclient and dhcrelay).
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("PATH=\"$PATH:/usr/sbin:/sbin\" command -v {tool}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process is root (network namespaces, tap devices and ports below 1024 need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The helper program `examples/NAME.rs`, built once per test binary with
/// `cargo build --example NAME` (cargo releases its lock once the tests run, so this does
/// not wait on the `cargo test` that runs us), and its path. Built here rather than found in
/// `<target>/…/examples/` because `cargo test --test X` builds no examples, and a stale one
/// from an earlier build would test old code.
pub fn helper(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--offline",
        "--example",
        name,
        "--message-format",
        "json",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stderr(Stdio::piped());
    if !cfg!(debug_assertions) {
        cmd.arg("--release"); // the profile the tests themselves were built with
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo build --example {name}: {e}"));
    assert!(
        out.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build --example {name} named no executable"));
    built.insert(name.to_string(), path.clone());
    path
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A lab folder with config, inventory and kickstarts, HTTP on 127.0.0.1:0, no DHCP/TFTP.
pub fn lab(dir: &Path, inventory: &str) {
    std::fs::create_dir_all(dir.join("kickstarts")).unwrap();
    std::fs::create_dir_all(dir.join("stemcell")).unwrap();
    std::fs::create_dir_all(dir.join("assets/sub")).unwrap();
    std::fs::write(
        dir.join("stemcell.yaml"),
        "server_ip: 127.0.0.1\ndhcp:\n  mode: off\nhttp:\n  listen: 127.0.0.1:0\nstemcell:\n  kernel: stemcell/vmlinuz\n  initrd: stemcell/initrd.img\n  cmdline: console=ttyS0\nassets: assets\ninventory: inventory.yaml\nkickstarts: kickstarts\nstate_dir: state\nadmin_token_file: admin.token\n",
    )
    .unwrap();
    std::fs::write(dir.join("admin.token"), "test-admin-token-0123456789\n").unwrap();
    std::fs::write(dir.join("inventory.yaml"), inventory).unwrap();
    std::fs::write(
        dir.join("kickstarts/web.sh.j2"),
        "#!/bin/sh\necho host={{ hostname }} role={{ role }} disk={{ vars.disk }}\ncurl -X POST '{{ done_url }}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("kickstarts/broken.sh.j2"),
        "#!/bin/sh\necho {{ vars.no_such_variable }}\n",
    )
    .unwrap();
    // A "kernel" with known bytes, for Range checks.
    let kernel: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("stemcell/vmlinuz"), kernel).unwrap();
    std::fs::write(dir.join("stemcell/initrd.img"), b"initrd").unwrap();
    std::fs::write(dir.join("assets/sub/file.txt"), b"asset").unwrap();
    std::fs::write(dir.join("secret.txt"), b"secret").unwrap();
}

/// A network namespace made for one test, deleted when dropped (also on panic).
pub struct Netns {
    pub name: String,
}

static NS_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Netns {
    /// `None` only where namespaces truly cannot be made (not root, no iproute2): then the
    /// test is skipped ([`skip`]: a failure under CI).
    pub fn new(tag: &str) -> Option<Netns> {
        let n = NS_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sc{tag}-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            skip("a network namespace (`ip netns add` needs root and iproute2)");
            return None;
        }
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// A cable to `client`: a veth pair, `sc0` here at `addr` (CIDR), `sc1` in `client`
    /// with the MAC `mac` and no address (its DHCP client takes one); both up. Panics on
    /// a step that fails.
    pub fn cable(&self, client: &Netns, addr: &str, mac: &str) {
        for cmd in [
            format!(
                "ip link add sc0 type veth peer name sc1 netns {}",
                client.name
            ),
            format!("ip addr add {addr} dev sc0"),
            "ip link set sc0 up".into(),
        ] {
            let out = self.exec(&cmd.split(' ').collect::<Vec<_>>());
            assert!(out.status.success(), "{cmd}: {out:?}");
        }
        for cmd in [
            format!("ip link set sc1 address {mac}"),
            "ip link set sc1 up".into(),
        ] {
            let out = client.exec(&cmd.split(' ').collect::<Vec<_>>());
            assert!(out.status.success(), "{cmd}: {out:?}");
        }
    }

    /// Run a command in the namespace; panics if it cannot start.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {args:?}: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Server::start_in(None, dir)
    }

    /// Start the real binary, inside `ns` when given.
    pub fn start_in(ns: Option<&Netns>, dir: &Path) -> Server {
        Server::start_via(ns, &[], dir)
    }

    /// Start the real binary through `wrapper` (a program and its arguments that runs the
    /// rest of its command line, such as `setpriv …`), inside `ns` when given.
    pub fn start_via(ns: Option<&Netns>, wrapper: &[&str], dir: &Path) -> Server {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            argv.extend(["ip", "netns", "exec", &ns.name]);
        }
        argv.extend(wrapper);
        argv.push(BIN);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(dir.join("stemcell.yaml"))
            .env("STEMCELL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stemcell");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(READY) {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "stemcell did not log {READY:?} within 30 s; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in the ready line: {line}"))
            .to_string();
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Wait until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Run curl with `args` and the URL; returns status, headers and body.
pub fn curl(args: &[&str], url: &str) -> Reply {
    let tmp = tempfile::tempdir().unwrap();
    let hdr = tmp.path().join("h");
    let body = tmp.path().join("b");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    let status: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl failed: {}", String::from_utf8_lossy(&out.stderr)));
    Reply {
        status,
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// The value of `key=` on a kernel command line in a boot script.
pub fn cmdline_value(script: &str, key: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
}

pub fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Whether a machine's API detail has an event whose `field` equals `want`.
pub fn has_event(machine: &serde_json::Value, field: &str, want: &str) -> bool {
    machine["events"]
        .as_array()
        .is_some_and(|ev| ev.iter().any(|e| e[field] == want))
}

/// One of `$VAR` (default 2) places for a QEMU machine: with TCG every vCPU keeps a host
/// core busy, and firmware and install timeouts do not wait for a starved machine. The
/// places are shared by every test binary running at once (tests/run.sh runs the QEMU
/// binaries side by side): place `i` is an exclusive lock on `<target>/qemu-slots/i`, held
/// while the `Slot` lives and let go by the kernel even if the test process dies.
pub struct Slot(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl Slot {
    pub fn take(var: &str) -> Slot {
        let max = std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(2)
            .max(1);
        let dir = target_dir().join("qemu-slots");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        loop {
            for i in 0..max {
                let path = dir.join(i.to_string());
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => return Slot(lock),
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                    Err((_, e)) => panic!("lock {}: {e}", path.display()),
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Wait for `child` to exit: its exit code (-1 for a signal), or `None` if it is still
/// running after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The stem cell (vmlinuz, initrd.img) in `<target>/stemcell-image`, with the shared
/// package cache (`STEMCELL_CACHE`, default `<target>/stemcell-cache`); its folder. Built
/// once per `stemcell` binary: a test binary finding it made by this very binary (size,
/// mtime and inode recorded beside it) reuses it and its build report, so the suite's
/// binaries do not each spend a build (the reproducibility test builds its own copies).
pub fn stemcell_image() -> Result<PathBuf, String> {
    stemcell_image_with_report().map(|(dir, _)| dir)
}

/// [`stemcell_image`] and what its build printed (the report: modules, firmware, sizes).
pub fn stemcell_image_with_report() -> Result<(PathBuf, String), String> {
    static IMAGE: std::sync::OnceLock<Result<(PathBuf, String), String>> =
        std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| cached_stemcell_image("stemcell-image", "amd64"))
        .clone()
}

/// The arm64 stem cell (`stemcell image build --arch arm64`) in
/// `<target>/stemcell-image-arm64`, cached as [`stemcell_image`] is (same package cache,
/// same lock; the host needs dpkg's arm64 architecture, scripts/setup-debian.sh).
#[allow(dead_code)] // not every test binary boots arm64
pub fn stemcell_image_arm64() -> Result<PathBuf, String> {
    static IMAGE: std::sync::OnceLock<Result<(PathBuf, String), String>> =
        std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| cached_stemcell_image("stemcell-image-arm64", "arm64"))
        .clone()
        .map(|(dir, _)| dir)
}

/// `stemcell image build --arch ARCH` into `<target>/NAME`, reused while this binary made it.
fn cached_stemcell_image(name: &str, arch: &str) -> Result<(PathBuf, String), String> {
    let target = target_dir();
    let out_dir = target.join(name);
    let cache = std::env::var_os("STEMCELL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("stemcell-cache"));
    let started = Instant::now();
    let script = r#"set -u
id=$(stat -L -c '%s %Y %i' "$BIN") || exit 1
if [ -f "$OUT/.built-by" ] && [ "$(cat "$OUT/.built-by")" = "$id" ] && [ -f "$OUT/.build-report" ]; then
	cat "$OUT/.build-report"
	exit 0
fi
rm -f "$OUT/.built-by"
if ! "$BIN" image build --arch "$ARCH" --out "$OUT" --cache "$CACHE" >"$OUT.report" 2>&1; then
	cat "$OUT.report"
	exit 1
fi
mv "$OUT.report" "$OUT/.build-report" && echo "$id" >"$OUT/.built-by" && cat "$OUT/.build-report""#;
    let out = Command::new("flock")
        .arg(target.join("stemcell-image.lock"))
        .args(["sh", "-c", script])
        .env("BIN", BIN)
        .env("OUT", &out_dir)
        .env("CACHE", &cache)
        .env("ARCH", arch)
        .output()
        .map_err(|e| format!("cannot run flock sh (the stem-cell build): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{} ({}):\n{text}", out_dir.display(), out.status));
    }
    eprintln!(
        "stem cell built in {:.0?}: {}",
        started.elapsed(),
        text.lines().next().unwrap_or("")
    );
    Ok((out_dir, text))
}

/// `stemcell image build --out OUT_DIR` with the shared package cache, under a file lock
/// (flock(1)) so two test binaries or runs never write it at once. Returns what the build
/// printed.
pub fn build_stemcell_image(out_dir: &Path) -> Result<String, String> {
    let target = target_dir();
    let cache = std::env::var_os("STEMCELL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("stemcell-cache"));
    let out = Command::new("flock")
        .arg(target.join("stemcell-image.lock"))
        .arg(BIN)
        .args(["image", "build", "--out"])
        .arg(out_dir)
        .arg("--cache")
        .arg(&cache)
        .output()
        .map_err(|e| format!("cannot run flock {BIN} image build: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{} ({}):\n{text}", out_dir.display(), out.status));
    }
    Ok(text)
}

/// A clean Debian 12 root file system (minbase with systemd, dbus and curl), as a tar made
/// by mmdebstrap once and cached in <target>/pkgtest (needs root, mmdebstrap and the
/// Debian mirror the first time).
pub fn debian_rootfs() -> PathBuf {
    let dir = target_dir().join("pkgtest");
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("bookworm-systemd.tar");
    // flock: two test runs at once build it once.
    let out = Command::new("flock")
        .arg(dir.join(".lock"))
        .args(["sh", "-c"])
        .arg(format!(
            "[ -f '{0}' ] || {{ rm -rf '{0}' '{1}' && mmdebstrap --quiet --format=tar --variant=minbase --include=systemd-sysv,dbus,curl,ca-certificates bookworm '{1}' && mv '{1}' '{0}'; }}",
            tar.display(),
            // mmdebstrap picks its output format from the name's ending: keep `.tar`.
            dir.join("bookworm-systemd.partial.tar").display()
        ))
        .output()
        .expect("run mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap could not make the Debian 12 root:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

/// A DHCPACK seen on the wire: when, to whom, which address, for how long.
#[derive(Debug, Clone)]
pub struct Ack {
    pub at: f64,
    pub mac: String,
    pub ip: String,
    pub lease: u64,
    /// The sender's address (the server, or the relay it answered through).
    pub server: String,
}

/// Every DHCPACK with an address in a pcap file (Ethernet link type); a record still being
/// written at the end is not read.
pub fn acks_in(pcap: &[u8]) -> Vec<Ack> {
    use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder};
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let nanos = match u32le(&pcap[0..4]) {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        m => panic!("not a little-endian pcap file (magic {m:#x})"),
    };
    assert_eq!(u32le(&pcap[20..24]), 1, "link type is Ethernet");
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let sec = u32le(&pcap[off..]) as f64;
        let frac = u32le(&pcap[off + 4..]) as f64;
        let len = u32le(&pcap[off + 8..]) as usize;
        if off + 16 + len > pcap.len() {
            break;
        }
        let frame = &pcap[off + 16..off + 16 + len];
        off += 16 + len;
        let at = sec + frac / if nanos { 1e9 } else { 1e6 };
        if frame.len() < 42 || frame[12..14] != [8, 0] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let Ok(m) = Message::decode(&mut Decoder::new(&ip[ihl + 8..])) else {
            continue;
        };
        if m.opts().msg_type() != Some(MessageType::Ack) || m.yiaddr().is_unspecified() {
            continue;
        }
        let lease = match m.opts().get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(s)) => u64::from(*s),
            _ => panic!("an ACK without a lease time: {m:?}"),
        };
        let mac = m.chaddr()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        out.push(Ack {
            at,
            mac,
            ip: m.yiaddr().to_string(),
            lease,
            server: std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).to_string(),
        });
    }
    out
}

/// tcpdump of DHCP on `iface` in `ns` into `pcap`, running once it says it listens.
pub fn tcpdump(ns: &Netns, iface: &str, pcap: &Path) -> Child {
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "tcpdump", "-i", iface, "-U", "-n",
        ])
        .args(["-B", "16384", "-Z", "root", "-s", "0", "-w"])
        .arg(pcap)
        .arg("udp port 67 or udp port 68")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump");
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(dump.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains(&format!("listening on {iface}")),
        "tcpdump: {line}"
    );
    dump
}
