//! The JSON API (checked against the served OpenAPI document), metrics, and the page's
//! escaping and login/CSRF, against the real binary.

mod common;

use common::*;
use serde_json::Value;

const INVENTORY: &str = "defaults:
  unknown: discover
  vars: { disk: /dev/vda }
roles:
  web:
    template: web.sh.j2
machines:
  52-54-00-00-00-01:
    hostname: web01
    role: web
";
const WEB: &str = "52:54:00:00:00:01";
const ADMIN: &str = "Authorization: Bearer test-admin-token-0123456789";

/// A small OpenAPI 3.0 schema check: type, required, properties, items, enum, nullable,
/// allOf and $ref. Returns the problems found.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let mut s = doc;
        for part in r.trim_start_matches("#/").split('/') {
            s = &s[part];
        }
        return validate(doc, s, v, at, out);
    }
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, v, at, out);
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    let ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("boolean") => v.is_boolean(),
        Some(t) => panic!("schema type {t} not handled by this check"),
    };
    if !ok {
        out.push(format!("{at}: {v} is not {}", schema["type"]));
        return;
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for k in req {
            if v.get(k.as_str().unwrap()).is_none() {
                out.push(format!("{at}: required {k} missing"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for (k, s) in props {
            if let Some(x) = obj.get(k) {
                validate(doc, s, x, &format!("{at}.{k}"), out);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"), out);
        }
    }
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    &doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
}

#[test]
fn real_responses_match_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let doc = json(&curl(&[], &s.url("/api/v1/openapi.json")));
    assert_eq!(doc["openapi"], "3.0.3");
    // Put machines in several states first: one installing, one discovered.
    let script = curl(&[], &s.url(&format!("/boot/{WEB}.ipxe"))).text();
    let token = cmdline_value(&script, "stemcell.token").unwrap();
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{WEB}?token={token}"))).status,
        200
    );
    let d = curl(&[], &s.url("/boot/aa:bb:cc:dd:ee:01.ipxe")).text();
    let dtoken = cmdline_value(&d, "stemcell.token").expect("a discovery token");
    let r = curl(
        &["--data-binary", "cpus=2\nvendor=QEMU\n"],
        &s.url(&format!("/discover/aa:bb:cc:dd:ee:01?token={dtoken}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, url) in [
        ("/api/v1/machines", "/api/v1/machines".to_string()),
        ("/api/v1/machines/{mac}", format!("/api/v1/machines/{WEB}")),
        (
            "/api/v1/machines/{mac}",
            "/api/v1/machines/aa-bb-cc-dd-ee-01".to_string(),
        ),
        ("/api/v1/status", "/api/v1/status".to_string()),
    ] {
        let r = curl(&[], &s.url(&url));
        assert_eq!(r.status, 200, "{url}");
        let schema = response_schema(&doc, path, "get");
        assert!(!schema.is_null(), "{path} has no 200 schema");
        validate(&doc, schema, &json(&r), &url, &mut problems);
        checked += 1;
    }
    for (path, url) in [
        (
            "/api/v1/machines/{mac}/reinstall",
            format!("/api/v1/machines/{WEB}/reinstall"),
        ),
        (
            "/api/v1/machines/{mac}/cancel",
            format!("/api/v1/machines/{WEB}/cancel"),
        ),
    ] {
        let r = curl(&["-X", "POST", "-H", ADMIN], &s.url(&url));
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        validate(
            &doc,
            response_schema(&doc, path, "post"),
            &json(&r),
            &url,
            &mut problems,
        );
        checked += 1;
        // Every documented non-200 status is one the server really gives without a token.
        assert_eq!(curl(&["-X", "POST"], &s.url(&url)).status, 401);
        assert!(doc["paths"][path]["post"]["responses"].get("401").is_some());
    }
    assert_eq!(checked, 6);
    assert!(
        problems.is_empty(),
        "responses differ from the OpenAPI document:\n{}",
        problems.join("\n")
    );
    assert_eq!(curl(&[], &s.url("/api/v1/machines/nonsense")).status, 400);
    assert_eq!(
        curl(&[], &s.url("/api/v1/machines/02:00:00:00:00:09")).status,
        404
    );

    // Cancel before any install: held as failed, not installed.
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert_eq!(m["state"], "failed");
    assert_eq!(m["reason"], "install cancelled by an operator");
}

#[test]
fn metrics_count_requests_installs_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let script = curl(&[], &s.url(&format!("/boot/{WEB}.ipxe"))).text();
    let token = cmdline_value(&script, "stemcell.token").unwrap();
    curl(&[], &s.url(&format!("/install/{WEB}?token={token}")));
    curl(
        &["-X", "POST"],
        &s.url(&format!("/install/{WEB}/done?token={token}")),
    );
    curl(&[], &s.url("/install/52:54:00:00:00:01?token=wrong"));
    std::fs::write(dir.path().join("inventory.yaml"), "machines: [\n").unwrap();
    assert!(s.wait_log(
        "inventory edit is invalid",
        std::time::Duration::from_secs(5)
    ));

    let r = curl(&[], &s.url("/metrics"));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = r.text();
    for want in [
        "stemcell_http_requests_total{route=\"/boot/{file}\",status=\"200\"} 1\n",
        "stemcell_http_requests_total{route=\"/install/{mac}\",status=\"403\"} 1\n",
        "stemcell_installs_total{outcome=\"done\"} 1\n",
        "stemcell_install_duration_seconds_count{outcome=\"done\"} 1\n",
        "stemcell_inventory_reload_errors_total 1\n",
        "stemcell_machines{state=\"installed\"} 1\n",
        "# TYPE stemcell_dhcp_packets_total counter\n",
        "# TYPE stemcell_tftp_transfers_total counter\n",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
    // Every sample line parses as `name{labels} value`.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn the_page_escapes_what_came_from_the_network_and_guards_its_actions() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let evil = "aa:bb:cc:dd:ee:02";
    let d = curl(&[], &s.url(&format!("/boot/{evil}.ipxe"))).text();
    let dtoken = cmdline_value(&d, "stemcell.token").expect("a discovery token");
    let r = curl(
        &[
            "--data-binary",
            "vendor=<script>alert(1)</script>\nhostname=\"><img src=x onerror=alert(2)>\n",
        ],
        &s.url(&format!("/discover/{evil}?token={dtoken}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    for page in ["/".to_string(), format!("/machines/{evil}")] {
        let r = curl(&[], &s.url(&page));
        assert_eq!(r.status, 200, "{page}");
        let html = r.text();
        assert!(
            !html.contains("<script>alert(1)"),
            "{page} must escape network values"
        );
        assert!(
            !html.contains("<img src=x"),
            "{page} must escape network values"
        );
    }
    let html = curl(&[], &s.url(&format!("/machines/{evil}"))).text();
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("Add it to inventory.yaml"),
        "discovered machines get a snippet"
    );

    // Actions: hidden and refused without a login; refused with a login but without CSRF.
    let html = curl(&[], &s.url(&format!("/machines/{WEB}"))).text();
    assert!(
        !html.contains("id=\"reinstall\""),
        "actions are hidden when logged out"
    );
    let act = s.url(&format!("/machines/{WEB}/reinstall"));
    assert_eq!(curl(&["-d", "csrf=x"], &act).status, 401);
    assert_eq!(curl(&["-d", "token=wrong"], &s.url("/login")).status, 401);
    let r = curl(
        &["-d", "token=test-admin-token-0123456789"],
        &s.url("/login"),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let html = curl(
        &["-H", &format!("Cookie: {session}")],
        &s.url(&format!("/machines/{WEB}")),
    )
    .text();
    assert!(
        html.contains("id=\"reinstall\""),
        "actions shown when logged in"
    );
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        curl(
            &["-H", &format!("Cookie: {session}"), "-d", "csrf=forged"],
            &act
        )
        .status,
        403
    );
    let r = curl(
        &[
            "-H",
            &format!("Cookie: {session}"),
            "-d",
            &format!("csrf={csrf}"),
        ],
        &act,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{WEB}"))));
    assert!(has_event(&m, "kind", "rearm"), "{m}");
}

#[test]
fn without_an_admin_token_the_mutating_api_and_actions_are_off() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let cfg = dir.path().join("stemcell.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("admin_token_file: admin.token\n", "");
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start(dir.path());
    let r = curl(
        &["-X", "POST", "-H", ADMIN],
        &s.url(&format!("/api/v1/machines/{WEB}/reinstall")),
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("no admin_token_file"), "{}", r.text());
    assert_eq!(curl(&[], &s.url("/login")).status, 404);
    let html = curl(&[], &s.url("/")).text();
    assert!(!html.contains("Log in"), "no login link without a token");
}

#[test]
fn the_cli_commands_talk_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    let s = Server::start(dir.path());
    let server = format!("http://{}", s.addr);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--server", &server])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    curl(&[], &s.url(&format!("/boot/{WEB}.ipxe")));
    let (ok, out) = run(&["machines"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(WEB) && l.contains("web01") && l.contains("pending")),
        "{out}"
    );
    let (ok, out) = run(&["machine", "52-54-00-00-00-01"]);
    assert!(ok, "{out}");
    assert!(out.contains("boot script: install as role web"), "{out}");
    let (ok, out) = run(&["reinstall", WEB]);
    assert!(!ok && out.contains("admin token is needed"), "{out}");
    let token_file = dir.path().join("admin.token");
    let (ok, out) = run(&[
        "reinstall",
        WEB,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("next netboot reinstalls"), "{out}");
    let (ok, out) = run(&["machine", "02:00:00:00:00:99"]);
    assert!(!ok && out.contains("HTTP 404"), "{out}");
}
