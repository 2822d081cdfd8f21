//! SECURITY.md's protections, against real peers: the install token bound to the address
//! its machine leased (dhclient takes the lease, curl asks from that address and another),
//! TLS for the API and page (a certificate made by `openssl req`, curl --cacert and
//! `openssl s_client`), authentication for the read side, and per-install secrets.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const MAC: &str = "52:54:00:00:00:0b";
const INVENTORY: &str = "defaults:
  unknown: ignore
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
    secrets: [root_hash, ssh_key]
machines:
  \"52:54:00:00:00:0b\":
    hostname: web11
    role: web
";

const ROOT_HASH: &str = "$6$rounds=5000$saltsalt$not-a-real-hash-but-a-secret-one";
const SSH_KEY: &str =
    "-----BEGIN OPENSSH PRIVATE KEY-----\nweb11-only\n-----END OPENSSH PRIVATE KEY-----\n";

/// The lab with the secrets the inventory's role declares: the role's root hash and the
/// host's own key, and a template that fetches them by URL.
fn site(dir: &Path) {
    lab(dir, INVENTORY);
    std::fs::create_dir_all(dir.join("secrets/roles/web")).unwrap();
    std::fs::create_dir_all(dir.join("secrets/hosts/web11")).unwrap();
    std::fs::write(dir.join("secrets/roles/web/root_hash"), ROOT_HASH).unwrap();
    std::fs::write(
        dir.join("secrets/roles/web/ssh_key"),
        "the role's key, not web11's",
    )
    .unwrap();
    std::fs::write(dir.join("secrets/hosts/web11/ssh_key"), SSH_KEY).unwrap();
    std::fs::write(
        dir.join("kickstarts/web.sh.j2"),
        "#!/bin/sh\necho host={{ hostname }} role={{ role }} disk={{ vars.disk }}\nhash=$(curl -fsS '{{ secrets.root_hash }}')\ncurl -fsS -o /root/.ssh/id '{{ secrets.ssh_key }}'\ncurl -X POST '{{ done_url }}'\n",
    )
    .unwrap();
}

/// Take (or renew) a lease for `sc1` in `cli` with dhclient; the leased address.
fn dhclient(cli: &Netns, dir: &Path, tag: &str) -> String {
    let lease_file = dir.join("lease");
    let out = cli.exec(&[
        "timeout",
        "30",
        "dhclient",
        "-4",
        "-1",
        "-lf",
        lease_file.to_str().unwrap(),
        "-pf",
        dir.join(format!("pid-{tag}")).to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(out.status.success(), "dhclient: {out:?}");
    let lease = std::fs::read_to_string(&lease_file).unwrap();
    lease
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fixed-address "))
        .map(|a| a.trim_end_matches(';').to_string())
        .next_back()
        .unwrap_or_else(|| panic!("no address in the lease: {lease}"))
}

/// curl inside `ns` from source address `from`: status and body.
fn curl_from(ns: &Netns, from: &str, method: &str, url: &str) -> (String, String) {
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--interface",
        from,
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

/// Authoritative mode: the install token works only from the address its machine leased.
/// From another address the install script and every callback are 403 with the reason, and
/// the machine's events say so; with the lease released, not even its old address may use
/// it; the lease taken again, the install carries on.
#[test]
fn the_install_token_works_only_from_the_leased_address() {
    if !(require("dhclient (isc-dhcp-client)", have_tool("dhclient"))
        && require("curl", have_tool("curl")))
    {
        return;
    }
    let (Some(srv), Some(cli)) = (Netns::new("lsrv"), Netns::new("lcli")) else {
        return;
    };
    srv.cable(&cli, "198.18.93.1/24", MAC);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    site(dir);
    std::fs::write(
        dir.join("stemcell.yaml"),
        "interface: sc0
server_ip: 198.18.93.1
dhcp:
  mode: authoritative
  subnets:
    - subnet: 198.18.93.0/24
      pool: [198.18.93.100, 198.18.93.150]
      router: 198.18.93.1
http:
  listen: 198.18.93.1:8080
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
    let s = Server::start_in(Some(&srv), dir);
    let url = |p: &str| format!("http://198.18.93.1:8080{p}");

    let w = dir.join("dhclient");
    std::fs::create_dir_all(&w).unwrap();
    let leased = dhclient(&cli, &w, "1");
    let other = "198.18.93.200";
    for a in [leased.as_str(), other] {
        let out = cli.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", "sc1"]);
        assert!(out.status.success(), "{out:?}");
    }
    // The boot script (and with it the token) is anyone's to fetch: iPXE cannot log in.
    let (code, script) = curl_from(&cli, other, "GET", &url(&format!("/boot/{MAC}.ipxe")));
    assert_eq!(code, "200", "{script}");
    let token = cmdline_value(&script, "stemcell.token").expect("an install token");

    let install = url(&format!("/install/{MAC}?token={token}"));
    let (code, body) = curl_from(&cli, other, "GET", &install);
    assert_eq!(code, "403", "{body}\nlog:\n{}", s.log_text());
    assert!(
        body.contains(&format!("came from {other}")) && body.contains(&leased),
        "the reason names both addresses: {body}"
    );
    for action in ["log", "done", "failed"] {
        let (code, body) = curl_from(
            &cli,
            other,
            "POST",
            &url(&format!("/install/{MAC}/{action}?token={token}")),
        );
        assert_eq!(code, "403", "{action} from another address: {body}");
    }
    let secret = url(&format!("/secret/{MAC}/root_hash?token={token}"));
    let (code, body) = curl_from(&cli, other, "GET", &secret);
    assert_eq!(code, "403", "a secret from another address: {body}");
    assert!(!body.contains(ROOT_HASH));
    let (code, body) = curl_from(&cli, &leased, "GET", &secret);
    assert_eq!((code.as_str(), body.as_str()), ("200", ROOT_HASH));
    let (code, body) = curl_from(&cli, &leased, "GET", &install);
    assert_eq!(code, "200", "from the leased address: {body}");
    assert!(body.contains("host=web11"), "{body}");
    let (code, body) = curl_from(
        &cli,
        &leased,
        "POST",
        &url(&format!("/install/{MAC}/log?token={token}")),
    );
    assert_eq!(code, "200", "{body}");

    // Released: the old address no longer holds a lease, so nothing works from it.
    let out = cli.exec(&[
        "dhclient",
        "-4",
        "-r",
        "-lf",
        w.join("lease").to_str().unwrap(),
        "-pf",
        w.join("pid-r").to_str().unwrap(),
        "-sf",
        "/bin/true",
        "sc1",
    ]);
    assert!(out.status.success(), "dhclient -r: {out:?}");
    let done = url(&format!("/install/{MAC}/done?token={token}"));
    let mut refused = (String::new(), String::new());
    for _ in 0..50 {
        refused = curl_from(&cli, &leased, "POST", &done);
        if refused.0 == "403" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refused.0, "403", "{}", refused.1);
    assert!(refused.1.contains("holds no lease"), "{}", refused.1);

    // The events say why each was refused.
    let api = url(&format!("/api/v1/machines/{MAC}"));
    let (code, body) = curl_from(&cli, &leased, "GET", &api);
    assert_eq!(code, "200", "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let events = m["events"].to_string();
    assert!(
        events.contains(&format!(
            "install script refused: the request came from {other}"
        )),
        "{events}"
    );
    assert!(events.contains("install done refused"), "{events}");

    // Leased again (the same address), the install finishes.
    let again = dhclient(&cli, &w, "2");
    assert_eq!(again, leased, "the same address again");
    let (code, body) = curl_from(&cli, &leased, "POST", &done);
    assert_eq!(code, "200", "{body}\nlog:\n{}", s.log_text());
    let (_, body) = curl_from(&cli, &leased, "GET", &api);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["state"], "installed", "{m}");
}

/// `openssl req`: a self-signed certificate for 127.0.0.1 (and `key.pem`) in `dir`, under
/// `name`.
fn self_signed(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=stemcell test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,IP:198.18.94.1"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {out:?}");
}

/// A lab whose HTTP section is `http` (indented under `http:`).
fn tls_site(dir: &Path, http: &str) {
    site(dir);
    let cfg = std::fs::read_to_string(dir.join("stemcell.yaml")).unwrap();
    std::fs::write(
        dir.join("stemcell.yaml"),
        cfg.replace("  listen: 127.0.0.1:0\n", http),
    )
    .unwrap();
}

/// The TLS listener's address from the server's log.
fn tls_addr(s: &Server) -> String {
    let log = s.log_text();
    log.lines()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("tls_addr="))
        })
        .unwrap_or_else(|| panic!("no tls_addr= in the log:\n{log}"))
        .to_string()
}

/// curl's exit code and output, without the harness's panics.
fn curl_raw(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// TLS for the page, the API and /metrics: curl with the CA file and `openssl s_client`
/// verify the certificate; the boot and install paths are not on the TLS port; plain HTTP
/// sent to the TLS port is answered 400 and the server carries on; the TLS port shares the
/// plain one's connection bounds, and a connection that never handshakes is closed.
#[test]
fn tls_serves_the_api_and_page_with_the_configured_certificate() {
    if !(require("openssl", have_tool("openssl")) && require("curl", have_tool("curl"))) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    self_signed(&dir.join("tls"), "server");
    tls_site(
        dir,
        "  listen: 127.0.0.1:0\n  header_timeout: 4s\n  max_connections_per_client: 3\n  tls:\n    listen: 127.0.0.1:0\n    cert: tls/server.pem\n    key: tls/server.key\n",
    );
    let s = Server::start(dir);
    let tls = tls_addr(&s);
    let ca = dir.join("tls/server.pem");
    let ca = ca.to_str().unwrap();
    let https = |p: &str| format!("https://{tls}{p}");

    let (code, body, err) = curl_raw(&[
        "--cacert",
        ca,
        "-w",
        "\n%{http_code} %{http_version}",
        &https("/api/v1/machines"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("\n200 1.1"), "{body}");
    assert!(body.contains("web11"), "{body}");
    let (code, body, _) = curl_raw(&["--cacert", ca, &https("/metrics")]);
    assert_eq!(code, 0);
    assert!(body.contains("stemcell_http_requests_total"), "{body}");
    let (code, body, _) = curl_raw(&["--cacert", ca, &https("/")]);
    assert_eq!(code, 0);
    assert!(body.contains("web11"), "the page: {body}");
    // A page login over TLS gets a cookie the browser never sends in clear text.
    let (code, head, _) = curl_raw(&[
        "--cacert",
        ca,
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-d",
        "token=test-admin-token-0123456789",
        &https("/login"),
    ]);
    assert_eq!(code, 0);
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // What machines fetch is plain HTTP only.
    let (_, body, _) = curl_raw(&[
        "--cacert",
        ca,
        "-w",
        "\n%{http_code}",
        &https(&format!("/boot/{MAC}.ipxe")),
    ]);
    assert!(
        body.ends_with("\n404") && body.contains("plain HTTP at"),
        "{body}"
    );
    // Without the CA the certificate is refused by curl (a real check happened).
    let (code, _, err) = curl_raw(&[&https("/api/v1/machines")]);
    assert_eq!(code, 60, "curl must refuse an unknown issuer: {err}");

    // openssl s_client, another TLS stack, verifies the chain.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &tls,
            "-CAfile",
            ca,
            "-verify_return_error",
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");

    // Plain HTTP to the TLS port: a clear 400, and the server is unharmed.
    let (code, body, err) = curl_raw(&[
        "-w",
        "\n%{http_code}",
        &format!("http://{tls}/api/v1/machines"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        body.contains("speaks TLS") && body.ends_with("\n400"),
        "{body}"
    );
    let (code, body, _) = curl_raw(&["--cacert", ca, "-w", "\n%{http_code}", &https("/healthz")]);
    assert_eq!((code, body.as_str()), (0, "ok\n\n200"));

    // One connection bound for both listeners: three idle TLS connections from 127.0.0.2
    // (an address nothing else used, so no earlier connection is still being counted) use
    // up its share, and a fourth, on either port, is closed unanswered.
    use std::io::Read as _;
    let idle: Vec<_> = (0..3)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(
                &"127.0.0.2:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
            sock.connect(&tls.parse::<std::net::SocketAddr>().unwrap().into())
                .unwrap();
            std::net::TcpStream::from(sock)
        })
        .collect();
    // The TLS port accepts in order: a fourth is refused once the three are counted…
    let (code, _, err) = curl_raw(&[
        "--interface",
        "127.0.0.2",
        "--cacert",
        ca,
        &https("/healthz"),
    ]);
    assert_ne!(
        code, 0,
        "a fourth connection from the same address is refused: {err}"
    );
    // …and the plain port counts them too, and only them: another address is served.
    let (code, _, err) = curl_raw(&["--interface", "127.0.0.2", &s.url("/healthz")]);
    assert_ne!(code, 0, "the plain port shares the bound: {err}");
    let (code, body, _) = curl_raw(&["--cacert", ca, &https("/healthz")]);
    assert_eq!(
        (code, body.as_str()),
        (0, "ok\n"),
        "127.0.0.1 is another client"
    );
    // The silent ones are closed after the header time-out (the handshake's bound).
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a connection that never handshakes is closed");
    }
    // Served again once they are gone (the server closes a socket a moment before it
    // releases its slot, so this may take a few tries).
    let mut served = (0, String::new(), String::new());
    for _ in 0..50 {
        served = curl_raw(&[
            "--interface",
            "127.0.0.2",
            "--cacert",
            ca,
            &https("/healthz"),
        ]);
        if served.0 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((served.0, served.1.as_str()), (0, "ok\n"), "{}", served.2);
    let (code, body, _) = curl_raw(&["--interface", "127.0.0.2", &s.url("/healthz")]);
    assert_eq!((code, body.as_str()), (0, "ok\n"));
}

/// With TLS on, the plain port still serves machines from anywhere, but the page, the API
/// and /metrics only to this host (the CLI); from elsewhere they are 403 naming the TLS
/// port. Checked in a namespace, so the client has a real non-loopback address.
#[test]
fn with_tls_the_plain_port_keeps_the_admin_side_local() {
    if !(require("openssl", have_tool("openssl")) && require("curl", have_tool("curl"))) {
        return;
    }
    let Some(ns) = Netns::new("tlsp") else {
        return;
    };
    for cmd in [
        "ip link add d0 type veth peer name d1",
        "ip addr add 198.18.94.1/24 dev d0",
        "ip addr add 198.18.94.2/24 dev d1",
        "ip link set d0 up",
        "ip link set d1 up",
    ] {
        let out = ns.exec(&cmd.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    self_signed(&dir.join("tls"), "server");
    tls_site(
        dir,
        "  listen: 0.0.0.0:8080\n  tls:\n    listen: 0.0.0.0:8443\n    cert: tls/server.pem\n    key: tls/server.key\n",
    );
    let s = Server::start_in(Some(&ns), dir);
    let get = |url: &str| {
        let out = ns.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            dir.join("tls/server.pem").to_str().unwrap(),
            "-w",
            "\n%{http_code}",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // From another address (d1's; the same namespace, but not this host's d0 address) …
    let from_other = |url: &str| {
        let out = ns.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--interface",
            "198.18.94.2",
            "-w",
            "\n%{http_code}",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = from_other("http://198.18.94.1:8080/api/v1/machines");
    assert!(
        body.ends_with("\n403") && body.contains("port 8443"),
        "{body}"
    );
    let body = from_other("http://198.18.94.1:8080/metrics");
    assert!(body.ends_with("\n403"), "{body}");
    let body = from_other("http://198.18.94.1:8080/");
    assert!(body.ends_with("\n403"), "{body}");
    let body = from_other(&format!("http://198.18.94.1:8080/boot/{MAC}.ipxe"));
    assert!(
        body.ends_with("\n200") && body.contains("#!ipxe"),
        "{body}\n{}",
        s.log_text()
    );
    // … while this host is served: on its own address (as the CLI with http.url) and on
    // loopback.
    let body = get("http://198.18.94.1:8080/api/v1/machines");
    assert!(body.ends_with("\n200") && body.contains("web11"), "{body}");
    let body = get("http://127.0.0.1:8080/api/v1/machines");
    assert!(body.ends_with("\n200") && body.contains("web11"), "{body}");
    let body = get("https://198.18.94.1:8443/api/v1/machines");
    assert!(body.ends_with("\n200") && body.contains("web11"), "{body}");
}

/// Certificate and key problems stop `check` and `serve` with the file and the config
/// position named: missing, not PEM, and a key that is not the certificate's.
#[test]
fn tls_file_problems_name_the_file() {
    if !require("openssl", have_tool("openssl")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    self_signed(&dir.join("tls"), "server");
    self_signed(&dir.join("tls"), "other");
    std::fs::write(dir.join("tls/garbage.pem"), "not a certificate\n").unwrap();
    let check = |cert: &str, key: &str| {
        tls_site(
            dir,
            &format!("  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    cert: {cert}\n    key: {key}\n"),
        );
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(dir.join("stemcell.yaml"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check("tls/server.pem", "tls/server.key");
    assert_eq!(code, 0, "{err}");
    let (code, err) = check("tls/missing.pem", "tls/server.key");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("stemcell.yaml:8:11: http.tls.cert")
            && err.contains("missing.pem: cannot read"),
        "{err}"
    );
    let (code, err) = check("tls/garbage.pem", "tls/server.key");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("garbage.pem: holds no certificate"), "{err}");
    let (code, err) = check("tls/server.pem", "tls/server.pem");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("server.pem: holds no private key"), "{err}");
    let (code, err) = check("tls/server.pem", "tls/other.key");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("http.tls.key")
            && err.contains("other.key: does not match the certificate in"),
        "{err}"
    );
    // serve refuses the same before binding anything.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("stemcell.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
}

/// `http.read_auth`: the read API, the page (and its event stream) and /metrics need the
/// admin token, the read token or a page session; the read token cannot act; the boot
/// and install paths, /healthz and the OpenAPI document are unaffected. The CLI sends its
/// token file for reads.
#[test]
fn read_auth_guards_the_read_side_only() {
    if !require("curl", have_tool("curl")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tls_site(dir, "  listen: 127.0.0.1:0\n  read_auth: true\n");
    let cfg = std::fs::read_to_string(dir.join("stemcell.yaml")).unwrap();
    std::fs::write(
        dir.join("stemcell.yaml"),
        format!("{cfg}read_token_file: read.token\n"),
    )
    .unwrap();
    std::fs::write(dir.join("read.token"), "read-only-token-0123456789\n").unwrap();
    let s = Server::start(dir);
    let read = ["-H", "Authorization: Bearer read-only-token-0123456789"];
    let admin = ["-H", "Authorization: Bearer test-admin-token-0123456789"];
    let wrong = ["-H", "Authorization: Bearer not-the-token-0123456789"];

    for path in [
        "/api/v1/machines",
        &format!("/api/v1/machines/{MAC}"),
        "/api/v1/status",
        "/metrics",
        "/api/v1/events",
    ] {
        let r = curl(&[], &s.url(path));
        assert_eq!(r.status, 401, "{path} without a token: {}", r.text());
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"stemcell\"")
        );
        assert!(r.text().contains("read_auth"), "{}", r.text());
        assert_eq!(
            curl(&wrong, &s.url(path)).status,
            401,
            "{path} with a wrong token"
        );
    }
    for path in [
        "/api/v1/machines",
        &format!("/api/v1/machines/{MAC}"),
        "/metrics",
    ] {
        let r = curl(&read, &s.url(path));
        assert_eq!(r.status, 200, "{path} with the read token: {}", r.text());
        assert_eq!(
            curl(&admin, &s.url(path)).status,
            200,
            "{path} with the admin token"
        );
    }
    assert!(curl(&read, &s.url("/api/v1/machines"))
        .text()
        .contains("web11"));
    // The page sends a browser to the login form.
    for path in ["/", &format!("/machines/{MAC}")] {
        let r = curl(&[], &s.url(path));
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location").as_deref(), Some("/login"));
    }
    // The read token cannot act.
    let r = curl(
        &["-X", "POST", read[0], read[1]],
        &s.url(&format!("/api/v1/machines/{MAC}/reinstall")),
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // A page session (logged in with the admin token) reads the page and its stream.
    let r = curl(
        &["-d", "token=test-admin-token-0123456789"],
        &s.url("/login"),
    );
    let cookie = r.header("set-cookie").expect("a session cookie");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let session = ["-H", &format!("Cookie: {cookie}")];
    let r = curl(&session, &s.url("/"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("web11"));
    let r = curl(&session, &s.url("/api/v1/machines"));
    assert_eq!(r.status, 200);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "2",
            "-H",
            &format!("Cookie: {cookie}"),
        ])
        .arg(s.url("/api/v1/events"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the event stream with a session: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    // Unaffected: what machines fetch, /healthz and the API's description.
    let r = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe")));
    assert_eq!(r.status, 200);
    let token = cmdline_value(&r.text(), "stemcell.token").expect("a token");
    let r = curl(&[], &s.url(&format!("/install/{MAC}?token={token}")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(curl(&[], &s.url("/healthz")).status, 200);
    assert_eq!(curl(&[], &s.url("/api/v1/openapi.json")).status, 200);

    // The CLI reads with its token file, and is refused without one.
    let cli = |token: Option<&str>| {
        let mut c = std::process::Command::new(BIN);
        c.args(["machines", "--server", &format!("http://{}", s.addr)]);
        if let Some(t) = token {
            c.args(["--token-file", t]);
        }
        c.output().unwrap()
    };
    let out = cli(Some(dir.join("read.token").to_str().unwrap()));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("web11"));
    let out = cli(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 401"),
        "{out:?}"
    );
}

/// Per-install secrets: fetched only with the live install token, only the names the role
/// declares, the host's file before the role's; their content is in no script, event,
/// page, API answer or log line; hostile names are refused; a spent token gets 403; and
/// `check` reports a declared secret that has no file.
#[test]
fn secrets_reach_the_install_only_through_their_endpoint() {
    if !require("curl", have_tool("curl")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    site(dir);
    std::fs::write(dir.join("outside"), "not a secret of this site").unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), dir.join("secrets/roles/web/escape")).unwrap();
    let s = Server::start(dir);
    let r = curl(&[], &s.url(&format!("/boot/{MAC}.ipxe")));
    let token = cmdline_value(&r.text(), "stemcell.token").expect("a token");
    let secret =
        |name: &str, token: &str| curl(&[], &s.url(&format!("/secret/{MAC}/{name}?token={token}")));

    // The script holds each secret's URL, never its content.
    let script = curl(&[], &s.url(&format!("/install/{MAC}?token={token}"))).text();
    assert!(
        script.contains(&format!("/secret/{MAC}/root_hash?token={token}")),
        "{script}"
    );
    assert!(
        !script.contains("saltsalt") && !script.contains("web11-only"),
        "{script}"
    );

    let r = secret("root_hash", &token);
    assert_eq!((r.status, r.text().as_str()), (200, ROOT_HASH));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        secret("ssh_key", &token).text(),
        SSH_KEY,
        "the host's own file first"
    );
    assert_eq!(
        secret("root_hash", "0123456789abcdef0123456789abcdef").status,
        403
    );
    assert_eq!(secret("root_hash", "").status, 403);
    // Only declared names; hostile names are refused before any file is looked at.
    let r = secret("escape", &token);
    assert_eq!(r.status, 404, "undeclared: {}", r.text());
    assert!(r.text().contains("does not declare"), "{}", r.text());
    for hostile in [
        "..%2F..%2Foutside",
        "..%2F..%2Fadmin.token",
        ".hidden",
        "a%00b",
    ] {
        let r = secret(hostile, &token);
        assert_eq!(r.status, 400, "{hostile}: {}", r.text());
        assert!(!r.text().contains("not a secret of this site"));
    }

    // Done: the spent token fetches nothing.
    let r = curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{MAC}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = secret("root_hash", &token);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!r.text().contains("saltsalt"));

    // Nowhere else: the API, the page, the server's log.
    let api = curl(&[], &s.url(&format!("/api/v1/machines/{MAC}"))).text();
    assert!(
        api.contains("secret root_hash fetched"),
        "the fetch is an event: {api}"
    );
    let page = curl(&[], &s.url(&format!("/machines/{MAC}"))).text();
    for (what, text) in [("API", &api), ("page", &page), ("log", &s.log_text())] {
        assert!(
            !text.contains("saltsalt") && !text.contains("web11-only"),
            "{what}: {text}"
        );
    }

    // check: a role declaring a secret that has no file is an error naming where.
    drop(s);
    let inv = INVENTORY.replace("[root_hash, ssh_key]", "[root_hash, ssh_key, api_key]");
    std::fs::write(dir.join("inventory.yaml"), &inv).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("stemcell.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("inventory.yaml:7:35: role web (web11 52:54:00:00:00:0b): secret \"api_key\": neither hosts/web11/api_key nor roles/web/api_key is a file in the secrets folder"),
        "{err}"
    );
    // A hostile name in the inventory is refused with its position.
    std::fs::write(
        dir.join("inventory.yaml"),
        INVENTORY.replace("[root_hash, ssh_key]", "[root_hash, ../admin.token]"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("stemcell.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("inventory.yaml:7:26: role \"web\": secret \"../admin.token\" must be a name"),
        "{err}"
    );
}
