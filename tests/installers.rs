//! Distribution installers as recipes (kickstarts/*.preseed.j2 …): a role boots the
//! installer's own kernel and initrd from the assets folder, with a templated command line
//! that points it at its per-machine recipe, which the real server renders; the rendered
//! recipe passes its format's own validator. The real installer fetching it in a QEMU
//! machine is tests/pxe_boot.rs's `debian-installer` scenario.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const DI: &str = "52:54:00:d1:00:01";

fn site(dir: &Path) {
    lab(
        dir,
        &format!(
            "defaults:\n  unknown: ignore\n  vars: {{ ntp_server: 198.18.0.1 }}\nroles:\n  debian-di:\n    template: debian-installer.preseed.j2\n    kernel: debian-installer/amd64/linux\n    initrd: debian-installer/amd64/initrd.gz\n    cmdline: auto=true priority=critical url={{{{ install_url }}}} interface=auto hostname={{{{ hostname }}}} domain=lab.example\n    vars:\n      disk: /dev/vda\n      packages: [nginx, jq]\n      ssh_keys:\n        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0ZW1jZWxsLWxhYi10ZXN0LWtleS1ub3QtcmVhbA lab@stemcell\nmachines:\n  \"{DI}\":\n    hostname: di01\n    role: debian-di\n"
        ),
    );
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kickstarts/debian-installer.preseed.j2"),
        dir.join("kickstarts/debian-installer.preseed.j2"),
    )
    .unwrap();
    let di = dir.join("assets/debian-installer/amd64");
    std::fs::create_dir_all(&di).unwrap();
    std::fs::write(di.join("linux"), b"the installer's kernel").unwrap();
    std::fs::write(di.join("initrd.gz"), b"the installer's initrd").unwrap();
}

/// `debconf-set-selections --checkonly FILE`: (success, output).
fn debconf_check(file: &Path) -> (bool, String) {
    let out = Command::new("debconf-set-selections")
        .arg("--checkonly")
        .arg(file)
        .output()
        .expect("debconf-set-selections runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn the_debian_preseed_is_served_per_machine_and_passes_debconf() {
    if !require(
        "debconf-set-selections (Debian's debconf)",
        have_tool("debconf-set-selections"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let s = Server::start(dir.path());

    // The boot script boots the installer's kernel and initrd from the assets folder, and
    // its command line names this machine's recipe with its install token.
    let script = curl(&[], &s.url(&format!("/boot/{DI}.ipxe"))).text();
    let kernel_line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in\n{script}"));
    assert!(
        kernel_line.starts_with(&format!(
            "kernel {} ",
            s.url(&format!("/assets/debian-installer/amd64/linux?mac={DI}"))
        )),
        "{kernel_line}"
    );
    assert!(
        script.contains(&format!(
            "initrd {}",
            s.url(&format!(
                "/assets/debian-installer/amd64/initrd.gz?mac={DI}"
            ))
        )) || script.contains("initrd.gz?mac="),
        "{script}"
    );
    let url = cmdline_value(&script, "url").expect("url= on the installer's command line");
    assert!(
        url.starts_with(&s.url(&format!("/install/{DI}?token="))),
        "{url}"
    );
    for want in [
        "auto=true",
        "priority=critical",
        "hostname=di01",
        "domain=lab.example",
    ] {
        assert!(kernel_line.contains(want), "{want} not in {kernel_line}");
    }

    // What the installer fetches: the preseed, rendered for this machine.
    let preseed = curl(&[], &url);
    assert_eq!(preseed.status, 200, "{}", preseed.text());
    let text = preseed.text();
    for want in [
        "d-i netcfg/get_hostname string di01",
        "d-i partman-auto/disk string /dev/vda",
        "d-i grub-installer/bootdev string /dev/vda",
        "d-i pkgsel/include string puppet-agent ca-certificates nginx jq",
        "d-i clock-setup/ntp-server string 198.18.0.1",
        "d-i passwd/root-password-crypted password !",
        "lab@stemcell\" >>/target/root/.ssh/authorized_keys",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let token = url.split("token=").nth(1).unwrap();
    let done = format!(
        "--post-data=ok \"{}\"",
        s.url(&format!("/install/{DI}/done?token={token}"))
    );
    assert!(text.contains(&done), "{done} not in\n{text}");
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{DI}"))));
    assert_eq!(m["state"], "installing", "{m}");

    // Debian's own validator accepts it…
    let file = dir.path().join("di01.preseed");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = debconf_check(&file);
    assert!(
        ok,
        "debconf-set-selections --checkonly refused the preseed:\n{out}\n{text}"
    );
    // …and would refuse a broken one (the check can fail).
    std::fs::write(
        &file,
        text.replace("d-i partman/confirm boolean true", "d-i partman/confirm"),
    )
    .unwrap();
    let (ok, out) = debconf_check(&file);
    assert!(!ok, "a line without a type and value passed:\n{out}");

    // The installer's last step reports done: the machine leaves install state.
    let r = curl(
        &["-X", "POST", "--data", "ok"],
        &s.url(&format!("/install/{DI}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{DI}"))));
    assert_eq!(m["state"], "installed", "{m}");
    assert!(curl(&[], &s.url(&format!("/boot/{DI}.ipxe")))
        .text()
        .contains("sanboot"));
}
