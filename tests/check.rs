//! `stemcell check` and `stemcell render` on the shipped example, as an operator runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab")
}

/// A copy of the example lab whose inventory is `edit(original)`.
fn copy_with(edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("examples/lab");
    std::fs::create_dir_all(&lab).unwrap();
    for f in ["stemcell.yaml", "admin.token"] {
        std::fs::copy(example().join(f), lab.join(f)).unwrap();
    }
    let inv = std::fs::read_to_string(example().join("inventory.yaml")).unwrap();
    std::fs::write(lab.join("inventory.yaml"), edit(&inv)).unwrap();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("kickstarts"),
        &dir.path().join("kickstarts"),
    );
    for sub in ["os", "puppet"] {
        if example().join(sub).is_dir() {
            copy_tree(&example().join(sub), &lab.join(sub));
        }
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn check(config: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_example_lab_passes_check() {
    let (code, out) = check(&example().join("stemcell.yaml"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (2 machines)"), "{out}");
}

#[test]
fn check_rejects_a_duplicated_mac_naming_both_lines() {
    let original = std::fs::read_to_string(example().join("inventory.yaml")).unwrap();
    let first_line = original
        .lines()
        .position(|l| l.contains("\"52:54:00:12:34:56\":"))
        .unwrap()
        + 1;
    // The same MAC again, spelled another way, at the end of the file.
    let dir =
        copy_with(|inv| format!("{inv}  52-54-00-12-34-56:\n    hostname: web99\n    role: web\n"));
    let dup_line = original.lines().count() + 1;
    let (code, out) = check(&dir.path().join("examples/lab/stemcell.yaml"));
    assert_eq!(code, 64, "{out}");
    let want = format!("inventory.yaml:{dup_line}:3: duplicate machine 52:54:00:12:34:56: already listed at line {first_line}, column 3");
    assert!(out.contains(&want), "want {want:?} in:\n{out}");
}

#[test]
fn check_reports_every_problem_with_its_position() {
    let dir = copy_with(|inv| {
        inv.replace("role: db\n", "role: dbb\n")
            .replace("hostname: web01", "hostname: web_01")
    });
    let (code, out) = check(&dir.path().join("examples/lab/stemcell.yaml"));
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("unknown role \"dbb\" (did you mean \"db\"?)"),
        "{out}"
    );
    assert!(
        out.contains("hostname \"web_01\" is not a valid hostname"),
        "{out}"
    );
    for line in out.lines().filter(|l| l.contains("inventory.yaml:")) {
        let rest = line.split("inventory.yaml:").nth(1).unwrap();
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
    }
}

#[test]
fn check_renders_every_template_and_fails_on_a_broken_one() {
    let dir = copy_with(|inv| inv.to_string());
    std::fs::write(
        dir.path().join("kickstarts/debian.sh.j2"),
        "echo {{ vars.nope }}\n",
    )
    .unwrap();
    let (code, out) = check(&dir.path().join("examples/lab/stemcell.yaml"));
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains(
            "machine 52:54:00:12:34:56 (web01): debian.sh.j2: line 1 in `echo {{ vars.nope }}`"
        ),
        "{out}"
    );
}

#[test]
fn a_broken_config_exits_64_before_binding_anything() {
    let dir = copy_with(|inv| inv.to_string());
    let cfg = dir.path().join("examples/lab/stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "  listen: 0.0.0.0:8080\n",
            "  listen: 0.0.0.0:8080\n  port: 80\n",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stemcell.yaml:18:3: unknown key \"port\" in http"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn render_shows_what_a_machine_would_get_without_changing_anything() {
    let out = Command::new(BIN)
        .args(["render", "--config"])
        .arg(example().join("stemcell.yaml"))
        .args(["--mac", "5254.0012.3457"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("#!ipxe"), "{s}");
    assert!(s.contains("BOOTIF=01-52-54-00-12-34-57"), "{s}");
    assert!(s.contains("HOSTNAME=\"db01\""), "{s}");
    // The machine's vars.disk is its disk rule `{ name: sda }`, over the defaults' /dev/vda.
    assert!(
        s.contains("DISK_RULE_NAME=\"sda\"")
            && s.contains(
                "DISK_RULE=\"name=sda pick=only (from machine 52:54:00:12:34:57 vars.disk)\""
            ),
        "machine vars override defaults: {s}"
    );
    assert!(
        s.contains("MANIFEST=\"manifests/db.pp\""),
        "the role's Puppet manifest: {s}"
    );
    assert!(
        s.contains("OS_URL=\"http://198.18.0.1:8080/os/debian-12/"),
        "{s}"
    );
}

/// Regression: nested YAML aliases made `check` abort on a failed allocation.
#[test]
fn a_billion_laughs_inventory_is_refused_with_its_position() {
    let dir = copy_with(|inv| {
        let mut bomb = String::from("x0: &x0 [l, l, l, l, l, l, l, l, l, l]\n");
        for i in 1..10 {
            bomb.push_str(&format!(
                "x{i}: &x{i} [{}]\n",
                vec![format!("*x{}", i - 1); 10].join(", ")
            ));
        }
        format!("{bomb}{inv}")
    });
    let t0 = std::time::Instant::now();
    let (code, out) = check(&dir.path().join("examples/lab/stemcell.yaml"));
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("inventory.yaml:"), "{out}");
    assert!(out.contains("aliases expand to more than"), "{out}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
}

/// Regression: `check` accepted a TFTP root that does not exist, boot files that are not
/// there, and role kernels missing from the assets folder.
#[test]
fn files_the_config_names_must_exist_and_say_where_they_were_named() {
    let dir = copy_with(|inv| {
        inv.replace(
            "    template: debian.sh.j2\n    os: debian-12\n  db:",
            "    template: debian.sh.j2\n    os: debian-12\n    kernel: installers/linux\n  db:",
        )
    });
    let cfg = dir.path().join("examples/lab/stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("root: /usr/lib/ipxe", "root: /nonexistent/tftp") + "assets: assets\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("examples/lab/assets")).unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("tftp.root /nonexistent/tftp cannot be served"),
        "{out}"
    );
    assert!(
        out.contains("role web: kernel installers/linux is not a file in the assets folder"),
        "{out}"
    );
    // With the root back, a boot file that is not in it is named with its key.
    let dir = copy_with(str::to_string);
    let cfg = dir.path().join("examples/lab/stemcell.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "      lease_time: 1h\n",
            "      lease_time: 1h\n  boot_files: { bios: no-such.kpxe }\n",
        ),
    )
    .unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("dhcp.boot_files.bios: no-such.kpxe cannot be served"),
        "{out}"
    );
}

#[test]
fn check_reports_a_missing_bmc_password_file_where_the_inventory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("bmc.pass");
    let lab = copy_with(|inv| {
        inv.replace(
            "defaults:\n",
            &format!(
                "defaults:\n  power: {{ driver: ipmi, username: admin, password_file: {} }}\n",
                pw.display()
            ),
        )
        .replace(
            "    ip: 198.18.0.21\n",
            "    ip: 198.18.0.21\n    power: { address: 198.18.1.21 }\n",
        )
    });
    let config = lab.path().join("examples/lab/stemcell.yaml");
    let (code, out) = check(&config);
    assert_ne!(code, 0, "{out}");
    let col = "  power: { driver: ipmi, username: admin, password_file: ".len() + 1;
    assert!(
        out.contains(&format!(
            "inventory.yaml:4:{col}: power.password_file: cannot read the BMC password file {}",
            pw.display()
        )),
        "{out}"
    );
    // With the file there, the same inventory passes, and the password is not printed.
    std::fs::write(&pw, "pw-that-must-not-show\n").unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("pw-that-must-not-show"), "{out}");
}
