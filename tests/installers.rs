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
    // The snippets beside it, as in the repo's kickstarts folder (the converge bootstrap).
    let snippets = dir.join("kickstarts/snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    for f in ["converge.sh.j2", "converge-bootstrap.sh.j2"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("kickstarts/snippets")
                .join(f),
            snippets.join(f),
        )
        .unwrap();
    }
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

    // One setting a line: a template that glues two lines together ("boolean trued-i …")
    // still parses for debconf, so every line's shape is checked here.
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        assert!(
            f.len() >= 3
                && ["d-i", "tasksel", "popularity-contest"].contains(&f[0])
                && [
                    "string",
                    "boolean",
                    "select",
                    "multiselect",
                    "password",
                    "note"
                ]
                .contains(&f[2]),
            "not one preseed setting: {line:?}"
        );
        if f[2] == "boolean" {
            assert!(
                matches!(f.get(3), Some(&"true") | Some(&"false")),
                "{line:?}"
            );
        }
    }
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

/// pykickstart's validator: the test venv scripts/setup-debian.sh makes, or one on PATH.
fn ksvalidator() -> Option<String> {
    let venv = "/opt/stemcell-test-venv/bin/ksvalidator";
    if Path::new(venv).exists() {
        return Some(venv.into());
    }
    have_tool("ksvalidator").then(|| "ksvalidator".into())
}

const ROCKY: &str = "52:54:00:d1:00:02";

#[test]
fn the_rocky_kickstart_is_served_per_machine_and_passes_ksvalidator() {
    let ks = ksvalidator();
    if !require("ksvalidator (pykickstart, from PyPI)", ks.is_some()) {
        return;
    }
    let ks = ks.unwrap();
    let dir = tempfile::tempdir().unwrap();
    lab(
        dir.path(),
        &format!(
            "defaults:\n  unknown: ignore\nroles:\n  rocky:\n    template: rocky.ks.j2\n    kernel: rocky-9/vmlinuz\n    initrd: rocky-9/initrd.img\n    cmdline: inst.ks={{{{ install_url }}}} inst.repo={{{{ vars.repo }}}} ip=dhcp inst.text\n    vars:\n      repo: http://198.18.0.1/rocky/9/BaseOS/x86_64/os\n      puppet_repo: http://198.18.0.1/puppet7/el/9/x86_64\n      ntp_server: 198.18.0.1\n      disk: /dev/vda\n      packages: [nginx]\n      ssh_keys:\n        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0ZW1jZWxsLWxhYi10ZXN0LWtleS1ub3QtcmVhbA lab@stemcell\nmachines:\n  \"{ROCKY}\":\n    hostname: rocky01\n    role: rocky\n"
        ),
    );
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kickstarts/rocky.ks.j2"),
        dir.path().join("kickstarts/rocky.ks.j2"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("assets/rocky-9")).unwrap();
    std::fs::write(dir.path().join("assets/rocky-9/vmlinuz"), b"kernel").unwrap();
    std::fs::write(dir.path().join("assets/rocky-9/initrd.img"), b"initrd").unwrap();
    let s = Server::start(dir.path());

    let script = curl(&[], &s.url(&format!("/boot/{ROCKY}.ipxe"))).text();
    assert!(
        script.contains(&s.url(&format!("/assets/rocky-9/vmlinuz?mac={ROCKY}"))),
        "{script}"
    );
    assert_eq!(
        cmdline_value(&script, "inst.repo").as_deref(),
        Some("http://198.18.0.1/rocky/9/BaseOS/x86_64/os")
    );
    let url = cmdline_value(&script, "inst.ks").expect("inst.ks= on the command line");
    assert!(
        url.starts_with(&s.url(&format!("/install/{ROCKY}?token="))),
        "{url}"
    );
    let token = url.split("token=").nth(1).unwrap().to_string();

    let r = curl(&[], &url);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for want in [
        format!("network --bootproto=dhcp --device={ROCKY} --hostname=rocky01 --activate"),
        "ignoredisk --only-use=vda".into(),
        "clearpart --all --initlabel --drives=vda".into(),
        "repo --name=puppet --baseurl=http://198.18.0.1/puppet7/el/9/x86_64".into(),
        "timesource --ntp-server=198.18.0.1".into(),
        "rootpw --lock".into(),
        "sshkey --username=root \"ssh-ed25519 ".into(),
        "\npuppet-agent\nnginx\n%end".into(),
        format!(
            "--data-binary ok \"{}\"",
            s.url(&format!("/install/{ROCKY}/done?token={token}"))
        ),
        format!(
            "\"{}\"",
            s.url(&format!("/install/{ROCKY}/failed?token={token}"))
        ),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }

    // One command a line (a glued line can still be valid kickstart).
    for want in [
        "\nurl --url=http://198.18.0.1/rocky/9/BaseOS/x86_64/os\n",
        "\nrootpw --lock\n",
        "\nlang en_US.UTF-8\n",
    ] {
        assert!(text.contains(want), "{want:?} not a line of\n{text}");
    }
    // pykickstart's own validator, for RHEL 9 syntax, accepts it…
    let file = dir.path().join("rocky01.ks");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(&ks)
        .args(["-v", "RHEL9"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ksvalidator refused the kickstart:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // …and refuses a broken one (the check can fail).
    std::fs::write(
        &file,
        text.replace("autopart --type=plain", "autopart --type=nonsense"),
    )
    .unwrap();
    let out = Command::new(&ks)
        .args(["-v", "RHEL9"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong autopart type passed");
}

const UBUNTU: &str = "52:54:00:d1:00:03";

/// `cloud-init schema --config-file FILE`: (success, output).
fn cloud_init_schema(file: &Path) -> (bool, String) {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .expect("cloud-init runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn ubuntu_autoinstall_is_a_nocloud_seed_per_machine_and_passes_cloud_init_schema() {
    if !require("cloud-init (Debian's cloud-init)", have_tool("cloud-init")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    lab(
        dir.path(),
        &format!(
            "defaults:\n  unknown: ignore\nroles:\n  ubuntu:\n    template: ubuntu-autoinstall.yaml.j2\n    kernel: ubuntu-24.04/vmlinuz\n    initrd: ubuntu-24.04/initrd\n    cmdline: ip=dhcp url={{{{ vars.iso_url }}}} autoinstall ds=nocloud;s={{{{ nocloud_url }}}}\n    vars:\n      iso_url: http://198.18.0.1:8080/assets/ubuntu-24.04/live-server.iso\n      disk: /dev/vda\n      packages: [nginx]\n      ssh_keys:\n        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0ZW1jZWxsLWxhYi10ZXN0LWtleS1ub3QtcmVhbA lab@stemcell\nmachines:\n  \"{UBUNTU}\":\n    hostname: ubuntu01\n    role: ubuntu\n"
        ),
    );
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kickstarts/ubuntu-autoinstall.yaml.j2"),
        dir.path().join("kickstarts/ubuntu-autoinstall.yaml.j2"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("assets/ubuntu-24.04")).unwrap();
    for f in ["vmlinuz", "initrd"] {
        std::fs::write(dir.path().join("assets/ubuntu-24.04").join(f), f).unwrap();
    }
    let s = Server::start(dir.path());

    // The `;` of `ds=nocloud;s=` reaches the kernel's command line (from the role's own
    // cmdline text), with this machine's seed URL and its token in the path.
    let script = curl(&[], &s.url(&format!("/boot/{UBUNTU}.ipxe"))).text();
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("{script}"));
    let seed_prefix = format!("ds=nocloud;s={}", s.url(&format!("/nocloud/{UBUNTU}/")));
    assert!(
        kernel.contains(&seed_prefix),
        "{seed_prefix} not in {kernel}"
    );
    let seed = kernel
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ds=nocloud;s="))
        .unwrap()
        .to_string();
    assert!(seed.ends_with('/'), "{seed}");
    let token = seed
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(kernel.contains(" autoinstall "), "{kernel}");

    // What cloud-init fetches: user-data (the rendered template), meta-data, vendor-data.
    let ud = curl(&[], &format!("{seed}user-data"));
    assert_eq!(ud.status, 200, "{}", ud.text());
    let text = ud.text();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    for want in [
        format!("macaddress: \"{UBUNTU}\""),
        "path: /dev/vda".into(),
        "    - nginx\n".into(),
        "hostname: ubuntu01".into(),
        format!(
            "--data-binary ok \"{}\"",
            s.url(&format!("/install/{UBUNTU}/done?token={token}"))
        ),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    let md = curl(&[], &format!("{seed}meta-data"));
    assert_eq!(md.status, 200);
    assert!(
        md.text().contains("local-hostname: ubuntu01\n"),
        "{}",
        md.text()
    );
    assert!(
        md.text().starts_with("instance-id: stemcell-525400d10003-"),
        "{}",
        md.text()
    );
    assert_eq!(curl(&[], &format!("{seed}vendor-data")).status, 200);
    assert_eq!(curl(&[], &format!("{seed}network-config")).status, 404);
    // Another token is refused.
    let wrong = seed.replace(&token, "0123456789abcdef0123456789abcdef");
    assert_eq!(curl(&[], &format!("{wrong}meta-data")).status, 403);
    assert_eq!(curl(&[], &format!("{wrong}user-data")).status, 403);
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{UBUNTU}"))));
    assert_eq!(m["state"], "installing", "{m}");

    // cloud-init's own schema check accepts the user-data…
    let file = dir.path().join("user-data");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = cloud_init_schema(&file);
    assert!(
        ok,
        "cloud-init schema refused the user-data:\n{out}\n{text}"
    );
    // …and refuses a broken one (the check can fail).
    std::fs::write(&file, text.replace("version: 1", "version: one")).unwrap();
    let (ok, out) = cloud_init_schema(&file);
    assert!(!ok, "a non-integer autoinstall version passed:\n{out}");

    // done: the token dies, and with it the seed.
    let r = curl(
        &["-X", "POST", "--data", "ok"],
        &s.url(&format!("/install/{UBUNTU}/done?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(curl(&[], &format!("{seed}user-data")).status, 403);
    assert_eq!(curl(&[], &format!("{seed}meta-data")).status, 403);
}

#[test]
fn the_installers_converge_bootstrap_sets_up_reports_and_puppet_in_a_real_debian_root() {
    // What a distribution's installer runs at its end (every recipe names converge_url):
    // the same stemcell-converge the stem cell's own installs write, here into a clean
    // Debian 12 root, as the preseed's late_command does into /target.
    if !require("root (chroot into a Debian root)", is_root())
        || !require("mmdebstrap", have_tool("mmdebstrap"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let s = Server::start(dir.path());
    let script = curl(&[], &s.url(&format!("/boot/{DI}.ipxe"))).text();
    let url = cmdline_value(&script, "url").unwrap();
    let preseed = curl(&[], &url).text();
    let token = url.split("token=").nth(1).unwrap().to_string();
    let converge = s.url(&format!("/install/{DI}/converge?token={token}"));
    assert!(
        preseed.contains(&format!(
            "wget -q -O /tmp/converge.sh \"{converge}\" && sh /tmp/converge.sh /target"
        )),
        "{preseed}"
    );
    // Only with the install's token.
    assert_eq!(
        curl(&[], &s.url(&format!("/install/{DI}/converge?token=nope"))).status,
        403
    );
    let r = curl(&[], &converge);
    assert_eq!(r.status, 200, "{}", r.text());
    let bootstrap = dir.path().join("converge.sh");
    std::fs::write(&bootstrap, r.text()).unwrap();
    assert!(
        Command::new("sh")
            .arg("-n")
            .arg(&bootstrap)
            .status()
            .unwrap()
            .success(),
        "{}",
        r.text()
    );

    let tar = debian_rootfs();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(&tar)
        .status()
        .unwrap()
        .success());
    let out = Command::new("sh")
        .arg(&bootstrap)
        .arg(&root)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the bootstrap failed:\n{log}");
    assert!(log.contains("converge: done"), "{log}");

    // The machine key (owner-only), where to report, the script, its units enabled; not
    // networkd's wait-online (an installer's system has its own network service).
    let key = root.join("etc/stemcell/machine.key");
    let meta = std::fs::metadata(&key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 32);
    let conf = std::fs::read_to_string(root.join("etc/stemcell/converge.conf")).unwrap();
    assert!(
        conf.contains(&format!(
            "REPORT_URL=\"{}\"",
            s.url(&format!("/report/{DI}"))
        )),
        "{conf}"
    );
    assert!(
        conf.contains("MANIFEST=\"manifests/debian-di.pp\""),
        "{conf}"
    );
    let exe = std::fs::metadata(root.join("usr/local/sbin/stemcell-converge")).unwrap();
    assert_eq!(exe.permissions().mode() & 0o111, 0o111);
    // Enabled: the links systemctl made (absolute, inside the new root: not followed here).
    let wants = root.join("etc/systemd/system");
    let link = |p: &str| std::fs::read_link(wants.join(p)).ok();
    assert_eq!(
        link("multi-user.target.wants/stemcell-converge.service"),
        Some("/etc/systemd/system/stemcell-converge.service".into())
    );
    assert_eq!(
        link("timers.target.wants/stemcell-converge.timer"),
        Some("/etc/systemd/system/stemcell-converge.timer".into())
    );
    assert_eq!(
        link("network-online.target.wants/systemd-networkd-wait-online.service"),
        None
    );
    // The installer then posts done; the installed system's first report carries the key
    // the bootstrap wrote, and stemcell takes it (and no other).
    let done = curl(
        &["-X", "POST", "--data", "ok"],
        &s.url(&format!("/install/{DI}/done?token={token}")),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let booted = curl(
        &[
            "-X",
            "POST",
            "-H",
            &format!(
                "Authorization: Bearer {}",
                std::fs::read_to_string(&key).unwrap().trim()
            ),
        ],
        &s.url(&format!("/report/{DI}/booted")),
    );
    assert_eq!(booted.status, 200, "{}", booted.text());
    let wrong = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer 0123456789abcdef0123456789abcdef",
        ],
        &s.url(&format!("/report/{DI}/booted")),
    );
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    let m = json(&curl(&[], &s.url(&format!("/api/v1/machines/{DI}"))));
    assert!(has_event(&m, "message", "converge bootstrap served"), "{m}");
    assert_eq!(m["state"], "booted", "{m}");
}
