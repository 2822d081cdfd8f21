//! What the install and the installed system fetch and report: OS images (`/os/…`), the
//! site's Puppet bundle (`/puppet/bundle.tar.gz`), and the reports an installed system
//! sends with its machine key (`/report/{mac}/booted`, `/report/{mac}/puppet`).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::netboot::MacQuery;
use super::{files, machine_mac, state_reject, text, App};
use crate::mac::MacAddr;
use crate::state::ConfigRun;

/// `GET /os/{name}/{file}`: an OS image archive (Range, ETag; jailed in the images folder).
pub(super) async fn os_image(
    State(app): State<App>,
    Path((name, file)): Path<(String, String)>,
    Query(q): Query<MacQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = files::jail(&app.config.os_images, &format!("{name}/{file}")) else {
        tracing::warn!(os = %name, file = %file, "OS image request refused or not found");
        return text(StatusCode::NOT_FOUND, "no such OS image\n");
    };
    if let Some(mac) = q.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) {
        let mac = app.inventory.get().id(mac);
        // Only whole-file fetches start the phase; a resumed range continues it.
        if headers.get(header::RANGE).is_none() {
            app.store
                .event(mac, "file", format!("streaming OS image {name}/{file}"));
            app.store.image_started(mac);
        }
    }
    files::serve(&path, &headers).await
}

/// `GET /puppet/bundle.tar.gz`: the site's Puppet code; its sha256 is in `X-Bundle-Sha256`.
pub(super) async fn puppet_bundle(State(app): State<App>, headers: HeaderMap) -> Response {
    let bundles = app.bundles.clone();
    let bundle = match tokio::task::spawn_blocking(move || bundles.current()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Puppet bundle cannot be built");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the Puppet bundle cannot be built: {e}\n"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("bundle task failed: {e}\n"),
            )
        }
    };
    let etag = format!("\"{}\"", bundle.sha256);
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&bundle.sha256) {
        h.insert("x-bundle-sha256", v);
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (h, bundle.bytes.clone()).into_response()
}

/// The machine key from `Authorization: Bearer …`.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

/// Most lines taken from one report, and the longest kept.
const REPORT_LINES_MAX: usize = 2000;
const REPORT_LINE_MAX: usize = 2000;

/// `POST /report/{mac}/{what}`: `booted` at every boot of the installed system; `puppet`
/// after each Puppet run, with `key=value` lines (`exit`, `changed`, `failed`, `total`,
/// `seconds`, `bundle`, `os`, `packages`) and `log=…` lines that become the machine's events.
pub(super) async fn report(
    State(app): State<App>,
    Path((mac, what)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let key = bearer(&headers);
    if !app.store.check_key_fresh(&mac, key).await {
        tracing::warn!(mac = %mac, report = %what, "report refused: wrong or missing machine key");
        return text(StatusCode::FORBIDDEN, "wrong or missing machine key\n");
    }
    match what.as_str() {
        "booted" => match app.store.booted(mac, key).await {
            Ok(r) => {
                // `secure_boot=on|off|no-uefi`, as the installed system read it.
                let sb = body
                    .lines()
                    .find_map(|l| l.strip_prefix("secure_boot="))
                    .filter(|v| matches!(*v, "on" | "off" | "no-uefi"))
                    .map(|v| match v {
                        "on" => "; Secure Boot on",
                        "off" => "; Secure Boot off",
                        _ => "; BIOS or no UEFI variables",
                    })
                    .unwrap_or("");
                app.store.event(
                    mac,
                    "booted",
                    format!("the installed system booted; now {}{sb}", r.state.as_str()),
                );
                tracing::info!(mac = %mac, "installed system booted");
                text(StatusCode::OK, "booted\n")
            }
            Err(e) => state_reject(mac, e).into_response(),
        },
        "puppet" => {
            let (run, log) = parse_run(&body);
            let run = ConfigRun {
                at: crate::state::now_ms(),
                ..run
            };
            for line in log {
                app.store.event(mac, "puppet", line);
            }
            let summary = format!(
                "Puppet run: exit {}, {} changed, {} failed of {} resources, {:.1} s",
                run.exit,
                run.changed,
                run.failed,
                run.total,
                run.millis as f64 / 1000.0
            );
            let ok = run.succeeded();
            match app.store.config_run(mac, key, run).await {
                Ok(r) => {
                    app.metrics.inc(
                        "stemcell_config_runs_total",
                        &[("outcome", if ok { "succeeded" } else { "failed" })],
                        1.0,
                    );
                    app.store.event(
                        mac,
                        if ok { "configured" } else { "config-failed" },
                        format!("{summary}; now {}", r.state.as_str()),
                    );
                    tracing::info!(mac = %mac, ok, "configuration run reported");
                    text(StatusCode::OK, format!("{}\n", r.state.as_str()))
                }
                Err(e) => state_reject(mac, e).into_response(),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "reports are booted and puppet\n"),
    }
}

/// Pure: a Puppet report body into the run and its log lines. Unknown keys are ignored;
/// numbers that do not parse count as 0, except `exit`, which then counts as a failure.
pub(crate) fn parse_run(body: &str) -> (ConfigRun, Vec<String>) {
    let mut run = ConfigRun {
        exit: -1,
        ..ConfigRun::default()
    };
    let mut log = Vec::new();
    for line in body.lines().take(REPORT_LINES_MAX) {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let digest = |v: &str| {
            (v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit())).then(|| v.to_string())
        };
        match k.trim() {
            "exit" => run.exit = v.parse().unwrap_or(-1),
            "changed" => run.changed = v.parse().unwrap_or(0),
            "failed" => run.failed = v.parse().unwrap_or(0),
            "total" => run.total = v.parse().unwrap_or(0),
            "seconds" => {
                run.millis = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| (s * 1000.0) as u64)
                    .unwrap_or(0)
            }
            "bundle" => run.bundle = digest(v),
            "os" => run.os = digest(v),
            "packages" => run.packages = digest(v),
            "log" => log.push(
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(REPORT_LINE_MAX)
                    .collect(),
            ),
            _ => {}
        }
    }
    (run, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_puppet_report_parses_and_bad_numbers_do_not_pass_as_success() {
        let sha = "a".repeat(64);
        let (run, log) = parse_run(&format!(
            "exit=2\nchanged=3\nfailed=0\ntotal=12\nseconds=41.5\nbundle={sha}\nos=nothex\nlog=Notice: applied\nnoise\n"
        ));
        assert_eq!(
            (run.exit, run.changed, run.failed, run.total, run.millis),
            (2, 3, 0, 12, 41_500)
        );
        assert_eq!(run.bundle.as_deref(), Some(sha.as_str()));
        assert_eq!(run.os, None);
        assert_eq!(log, vec!["Notice: applied".to_string()]);
        assert!(run.succeeded());
        let (run, _) = parse_run("exit=banana\nfailed=0\n");
        assert!(!run.succeeded(), "an unreadable exit code is not a success");
        let (run, _) = parse_run("exit=6\nfailed=1\n");
        assert!(!run.succeeded());
    }
}
