//! The CLI's side of the API (`stemcell machines`, `machine`, `reinstall`): a minimal
//! HTTP/1.1 client over a plain TCP stream (the API is served over http:// on the
//! management network; no TLS stack is pulled in for three calls).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// One request; `base` is `http://host:port`.
pub(crate) fn request(
    method: &str,
    base: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<Reply> {
    request_with(method, base, path, bearer, None, Duration::from_secs(30))
}

/// One request with an optional JSON body, waiting at most `wait` for the answer.
fn request_with(
    method: &str,
    base: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    wait: Duration,
) -> anyhow::Result<Reply> {
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{base}: only http:// server URLs are supported"))?
        .trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("{hostport} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to stemcell at {base}"))?;
    s.set_read_timeout(Some(wait))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP reply from {base}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status from {base}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn json(r: Reply, what: &str) -> anyhow::Result<Value> {
    if r.status != 200 {
        bail!("{what}: HTTP {}: {}", r.status, r.body.trim());
    }
    serde_json::from_str(&r.body).with_context(|| format!("{what}: the reply is not JSON"))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn machines(base: &str, token: Option<&str>) -> anyhow::Result<String> {
    let v = json(request("GET", base, "/api/v1/machines", token)?, "machines")?;
    let mut out = format!(
        "{:<17}  {:<20}  {:<12}  {:<14}  {:<15}  {}\n",
        "MAC", "HOSTNAME", "ROLE", "STATE", "IP", "LAST EVENT"
    );
    for m in v.as_array().into_iter().flatten() {
        let last = m["last_event"]
            .get("message")
            .map(|e| format!("{}: {}", s(&m["last_event"]["kind"]), s(e)))
            .unwrap_or_default();
        let state = if m["drifted"] == Value::Bool(true) {
            format!("{}*", s(&m["state"]))
        } else {
            s(&m["state"])
        };
        out.push_str(&format!(
            "{:<17}  {:<20}  {:<12}  {:<14}  {:<15}  {}\n",
            s(&m["mac"]),
            s(&m["hostname"]),
            s(&m["role"]),
            state,
            s(&m["ip"]),
            last
        ));
    }
    Ok(out)
}

pub(crate) fn machine(base: &str, mac: &str, token: Option<&str>) -> anyhow::Result<String> {
    let m = json(
        request("GET", base, &format!("/api/v1/machines/{mac}"), token)?,
        mac,
    )?;
    let mut out = String::new();
    for k in [
        "mac", "hostname", "role", "state", "ip", "reason", "drifted",
    ] {
        out.push_str(&format!("{k:<9} {}\n", s(&m[k])));
    }
    if m["has_bmc"] == Value::Bool(true) {
        let p = &m["power"];
        let line = match (p["state"].as_str(), p["error"].as_str(), p["at"].as_u64()) {
            (Some(st), _, Some(at)) => format!("{st} (seen at {})", at_text(at)),
            (None, Some(e), Some(at)) => format!("unknown: {e} (at {})", at_text(at)),
            _ => "not asked yet".to_string(),
        };
        out.push_str(&format!("power     {line}\n"));
    }
    for d in m["drift"].as_array().into_iter().flatten() {
        out.push_str(&format!("drift     {}\n", s(d)));
    }
    if let Some(r) = m["last_run"].as_object() {
        out.push_str(&format!(
            "puppet    exit {}, {} changed, {} failed of {} resources, {:.1} s\n",
            s(&r["exit"]),
            s(&r["changed"]),
            s(&r["failed"]),
            s(&r["total"]),
            r["millis"].as_f64().unwrap_or(0.0) / 1000.0
        ));
    }
    out.push_str(&phases(&m["phases"]));
    if let Some(f) = m["facts"].as_object() {
        for (k, v) in f {
            out.push_str(&format!("{k:<9} {}\n", s(v)));
        }
    }
    out.push_str("events:\n");
    for e in m["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  {:<9} {}\n",
            s(&e["at"]),
            s(&e["kind"]),
            s(&e["message"])
        ));
    }
    Ok(out)
}

/// Unix milliseconds as a UTC date and time.
fn at_text(ms: u64) -> String {
    let (date, time) = crate::civil::date_time(ms / 1000);
    format!("{date} {time} UTC")
}

/// "install   stem cell boot 9.8 s, partition 2.1 s, …" from a machine's phases.
fn phases(p: &Value) -> String {
    let marks = [
        ("stem cell boot", "netboot"),
        ("partition", "stemcell"),
        ("image + setup", "image"),
        ("first boot", "installed"),
        ("Puppet", "booted"),
        ("", "configured"),
    ];
    let at = |k: &str| p.get(k).and_then(Value::as_u64);
    let mut parts = Vec::new();
    for (i, (label, key)) in marks.iter().enumerate().take(5) {
        let (Some(start), Some(end)) = (at(key), marks[i + 1..].iter().find_map(|(_, k)| at(k)))
        else {
            continue;
        };
        parts.push(format!(
            "{label} {:.1} s",
            end.saturating_sub(start) as f64 / 1000.0
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("install   {}\n", parts.join(", "))
    }
}

pub(crate) fn reinstall(base: &str, mac: &str, token: &str) -> anyhow::Result<String> {
    let m = json(
        request(
            "POST",
            base,
            &format!("/api/v1/machines/{mac}/reinstall"),
            Some(token),
        )?,
        "reinstall",
    )?;
    Ok(format!(
        "{} ({}) is {}: its next netboot reinstalls\n",
        s(&m["mac"]),
        s(&m["hostname"]),
        s(&m["state"])
    ))
}

/// One power action through the server (which holds the BMC passwords, bounds the calls
/// and records the event); the reply's JSON.
pub(crate) fn power_call(
    base: &str,
    mac: &str,
    action: &str,
    token: &str,
) -> anyhow::Result<Value> {
    // The server gives up on a BMC after its power.timeout; wait longer than any sane one.
    let r = request_with(
        "POST",
        base,
        &format!("/api/v1/machines/{mac}/power"),
        Some(token),
        Some(&serde_json::json!({ "action": action }).to_string()),
        Duration::from_secs(600),
    )?;
    if r.status != 200 {
        bail!("power {action} {mac}: {}", r.body.trim());
    }
    serde_json::from_str(&r.body)
        .with_context(|| format!("power {action} {mac}: the reply is not JSON"))
}

pub(crate) fn power(base: &str, mac: &str, action: &str, token: &str) -> anyhow::Result<String> {
    let v = power_call(base, mac, action, token)?;
    let mut out = format!("{}: {}", s(&v["mac"]), s(&v["message"]));
    if action == "status" {
        out = format!("{}: {}", s(&v["mac"]), s(&v["state"]));
    }
    out.push('\n');
    Ok(out)
}

/// Re-arm, then next boot from the network once, then power-cycle: one machine's rebuild.
fn rebuild(base: &str, mac: &str, token: &str) -> anyhow::Result<String> {
    reinstall(base, mac, token)?;
    let pxe = power_call(base, mac, "pxe", token)?;
    let cycle = power_call(base, mac, "cycle", token)?;
    Ok(format!(
        "re-armed; {}; {}",
        s(&pxe["message"]),
        s(&cycle["message"])
    ))
}

/// `stemcell reinstall MAC --power`.
pub(crate) fn reinstall_power(base: &str, mac: &str, token: &str) -> anyhow::Result<String> {
    let msg = rebuild(base, mac, token)?;
    Ok(format!("{mac}: {msg}\n"))
}

/// `stemcell reinstall --role ROLE --power --parallel N`: every machine of the role, at most
/// `parallel` at once; no new machine is started once `max_failures` have failed. Each
/// machine's outcome is a line; the error says how many failed or were not started.
pub(crate) fn rolling(
    base: &str,
    role: &str,
    token: &str,
    parallel: usize,
    max_failures: usize,
) -> anyhow::Result<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let v = json(request("GET", base, "/api/v1/machines", None)?, "machines")?;
    let macs: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"].as_str() == Some(role) && m["listed"] == Value::Bool(true))
        .filter_map(|m| m["mac"].as_str().map(str::to_string))
        .collect();
    if macs.is_empty() {
        bail!("no listed machine has role {role:?}");
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let lines: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, macs.len()) {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) >= max_failures {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(mac) = macs.get(i) else { return };
                let line = match rebuild(base, mac, token) {
                    Ok(msg) => format!("{mac}  ok      {msg}"),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        format!("{mac}  FAILED  {e:#}")
                    }
                };
                eprintln!("{line}");
                if let Ok(mut l) = lines.lock() {
                    l.push((i, line));
                }
            });
        }
    });
    let mut lines = lines.into_inner().unwrap_or_default();
    lines.sort();
    let started = lines.len();
    let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    for mac in macs.iter().skip(started) {
        out.push(format!("{mac}  skipped (the failure limit was reached)"));
    }
    let text = out.join("\n") + "\n";
    let failed = failed.into_inner();
    if failed > 0 {
        print!("{text}");
        bail!(
            "{failed} of {} machines failed, {} not started",
            macs.len(),
            macs.len() - started
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_become_durations_and_missing_ends_are_left_out() {
        let p = serde_json::json!({"netboot": 1000, "stemcell": 11000, "image": 13500, "installed": 60000});
        assert_eq!(
            phases(&p),
            "install   stem cell boot 10.0 s, partition 2.5 s, image + setup 46.5 s\n"
        );
        assert_eq!(phases(&serde_json::json!({})), "");
    }
}
