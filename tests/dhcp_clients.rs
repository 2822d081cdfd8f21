//! DHCP against real clients: the real `stemcell` binary inside network namespaces, with
//! dhclient, udhcpc, isc-dhcp-relay and dnsmasq (as a site's DHCP server) as its peers.
//! The scenarios and their checks live in `tests/netns/dhcp.sh`; each test here runs one
//! scenario (so a failure names it) and shows the script's output when it fails.
//!
//! Scenarios run side by side: the script names its namespaces and work folder after its
//! own PID, and each scenario has its own server, config and state.
//!
//! The script also needs a PXE probe that sees every offer (a firmware-like client that
//! binds nothing): `examples/dhcp_probe.rs`, built by `common::helper`.
//!
//! Skips only when the script says it cannot run here (exit 77: not root, no `ip netns`, or
//! a client tool missing); a skip is reported as one, and fails under `CI=true`
//! (`common::skip`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

fn scenario(name: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns/dhcp.sh");
    let probe = helper("dhcp_probe");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args([name, BIN])
        .arg(&probe)
        .output()
        .expect("run tests/netns/dhcp.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIP_EXIT) {
        skip(&format!("tests/netns/dhcp.sh {name}: {}", stdout.trim()));
        return;
    }
    assert!(
        out.status.success(),
        "tests/netns/dhcp.sh {name} failed ({}) after {:.1?}:\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        started.elapsed()
    );
    // A scenario that checked nothing would pass as well: it must have run checks.
    assert!(
        stdout.lines().any(|l| l.starts_with("PASS: ")),
        "tests/netns/dhcp.sh {name} ran no checks:\n{stdout}"
    );
    // Shown with --nocapture; kept quiet otherwise.
    println!("{stdout}(took {:.1?})", started.elapsed());
}

/// A plain client's address and options, the lease journal, SIGKILL and restart
/// (INIT-REBOOT, a new DISCOVER), RELEASE.
#[test]
fn dhcp_authoritative_lease_restart_release() {
    scenario("auth-lease");
}

/// udhcpc renews; the ACK goes unicast to the client.
#[test]
fn dhcp_authoritative_renew() {
    scenario("auth-renew");
}

/// A reservation from the inventory, and the machine's DHCP events and ip in the API.
#[test]
fn dhcp_authoritative_reservation() {
    scenario("auth-reservation");
}

/// Boot files by PXE class (BIOS, UEFI x64, iPXE, ARM64, an unknown architecture);
/// unknown PXE machines recorded as discovered.
#[test]
fn dhcp_authoritative_pxe_classes() {
    scenario("auth-pxe");
}

/// A client behind isc-dhcp-relay gets an address from the relay's subnet.
#[test]
fn dhcp_authoritative_through_a_relay() {
    scenario("relay");
}

/// Proxy mode beside dnsmasq: boot files without addresses, port 4011, plain clients
/// left to the site's server.
#[test]
fn dhcp_proxy_beside_dnsmasq() {
    scenario("proxy");
}

/// A two-address pool, exhausted: no offer, and the log and the API say why.
#[test]
fn dhcp_pool_exhaustion() {
    scenario("tiny");
}

/// DHCPv6 (`dhcp.ipv6`) against ISC dhclient -6: the MAC's EUI-64 address, the same after a
/// restart, RELEASE answered.
#[test]
fn dhcp_authoritative_dhcpv6_with_dhclient() {
    scenario("auth-dhcpv6");
}
