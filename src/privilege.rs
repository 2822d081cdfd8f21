//! Least privilege for `serve`: started as root (ports 67, 69 and 80, SO_BINDTODEVICE), it
//! becomes the config's `user:` once every socket is bound, before any request is served,
//! and keeps no capability.
//!
//! Nothing after the bind needs one: DHCP's sockets are bound (device and port) and sending
//! to 255.255.255.255 on a socket with SO_BROADCAST is unprivileged; TFTP transfers bind
//! new sockets on ephemeral ports (`tftp::bind_transfer_socket`); HTTP's listener is bound.
//! So the switch is a plain setresuid away from 0, which clears every capability.
//!
//! The stores are opened after the switch, as the user: root never opens files in a folder
//! that user can write (a link planted there would otherwise make root truncate or append
//! to any file at the next start). Root only creates the state directory and hands it and
//! what an earlier root run left in it to the user, never following a symbolic link and
//! never touching a file with a second hard link.
//!
//! The syscalls go through `nix` (the crate forbids `unsafe`), which calls glibc: glibc
//! applies setgroups, setresgid and setresuid to every thread of the process, which matters
//! because the runtime's threads already run. The switch is then checked for every thread
//! in /proc, not assumed.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Config;
use crate::yaml::Pos;

/// Whom `serve` becomes: resolved from `user:` and `group:`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) user: String,
    pub(crate) group: String,
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivilegeError {
    /// The config names an account that cannot be used here (exit 64).
    #[error("{}:{pos}: {key}: {value:?} {why}", file.display())]
    Config {
        file: PathBuf,
        pos: Pos,
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("cannot switch to user {user} (uid {uid}, gid {gid}): {step} failed: {source}")]
    Switch {
        user: String,
        uid: Uid,
        gid: Gid,
        step: &'static str,
        source: nix::Error,
    },
    #[error("after switching to user {user}: {what}")]
    Verify { user: String, what: String },
}

/// The account the config names, looked up here; `None` without `user:`. Refused (a
/// config error naming `user:`'s position) when this process is not root, when the account
/// or group does not exist, or when it is root itself.
pub(crate) fn resolve(config: &Config) -> Result<Option<Target>, PrivilegeError> {
    let Some(run_as) = &config.run_as else {
        return Ok(None);
    };
    let bad = |pos: Pos, key: &'static str, value: &str, why: String| PrivilegeError::Config {
        file: config.file.clone(),
        pos,
        key,
        value: value.to_string(),
        why,
    };
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(bad(
            run_as.user_pos,
            "user",
            &run_as.user,
            format!("is set, but stemcell runs as uid {euid}, not root: only root can switch users (start it as root, or remove user: and run it as that user)"),
        ));
    }
    let user =
        match User::from_name(&run_as.user) {
            Ok(Some(u)) => u,
            Ok(None) => return Err(bad(
                run_as.user_pos,
                "user",
                &run_as.user,
                "does not exist on this host (create it, e.g. `adduser --system --group stemcell`)"
                    .into(),
            )),
            Err(e) => {
                return Err(bad(
                    run_as.user_pos,
                    "user",
                    &run_as.user,
                    format!("cannot be looked up: {e}"),
                ))
            }
        };
    if user.uid.is_root() {
        return Err(bad(
            run_as.user_pos,
            "user",
            &run_as.user,
            "is uid 0: name an unprivileged account".into(),
        ));
    }
    let (gid, group) = match &run_as.group {
        None => {
            let name = Group::from_gid(user.gid)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| user.gid.to_string());
            (user.gid, name)
        }
        Some((name, pos)) => match Group::from_name(name) {
            Ok(Some(g)) if g.gid.as_raw() == 0 => {
                return Err(bad(
                    *pos,
                    "group",
                    name,
                    "is gid 0: name an unprivileged group".into(),
                ))
            }
            Ok(Some(g)) => (g.gid, g.name),
            Ok(None) => {
                return Err(bad(
                    *pos,
                    "group",
                    name,
                    "does not exist on this host".into(),
                ))
            }
            Err(e) => {
                return Err(bad(
                    *pos,
                    "group",
                    name,
                    format!("cannot be looked up: {e}"),
                ))
            }
        },
    };
    Ok(Some(Target {
        user: user.name,
        group,
        uid: user.uid,
        gid,
    }))
}

/// Create the state directory owner-only (its journals hold install tokens and machine
/// keys) and, with a target, hand it and what is in it to that account.
pub(crate) fn prepare_state_dir(dir: &Path, target: Option<&Target>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(path = %dir.display(), from = format!("{:o}", mode & 0o7777), to = "700", "state directory made owner-only");
    }
    let Some(t) = target else { return Ok(()) };
    let md = std::fs::metadata(dir)?;
    if md.uid() == t.uid.as_raw() && md.gid() == t.gid.as_raw() {
        // Handed over before: what is inside is the user's doing. (Root under the unit's
        // bounding set has no CAP_DAC_READ_SEARCH and could not even list it.)
        return Ok(());
    }
    // Contents first, then the directory itself (as configured: it may be a link an
    // operator made on purpose); the other way round, root without CAP_DAC_OVERRIDE could
    // no longer list what it has just given away.
    let changed = hand_over(dir, t, 0)?;
    std::os::unix::fs::chown(dir, Some(t.uid.as_raw()), Some(t.gid.as_raw()))?;
    if changed > 0 {
        tracing::info!(path = %dir.display(), files = changed, user = %t.user, "state directory's files handed to the service user");
    }
    Ok(())
}

/// Give `dir`'s entries to `t`, without following links; the number changed.
fn hand_over(dir: &Path, t: &Target, depth: usize) -> io::Result<usize> {
    let mut changed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let md = path.symlink_metadata()?;
        let kind = md.file_type();
        if kind.is_dir() && depth < 8 {
            changed += hand_over(&path, t, depth + 1)?;
        } else if !kind.is_file() || md.nlink() > 1 {
            // A link, a device, a FIFO or a hard-linked file is nothing stemcell writes;
            // chowning it could hand someone else's file to the service user.
            tracing::warn!(path = %path.display(), "not a plain file stemcell wrote; leaving its owner alone");
            continue;
        }
        if md.uid() != t.uid.as_raw() || md.gid() != t.gid.as_raw() {
            std::os::unix::fs::lchown(&path, Some(t.uid.as_raw()), Some(t.gid.as_raw()))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Become `t` for good, in every thread: supplementary groups, group, then user (real,
/// effective and saved), so root cannot be regained and no capability is left. Checked
/// afterwards, not assumed.
pub(crate) fn switch(t: &Target) -> Result<(), PrivilegeError> {
    let fail = |step, source| PrivilegeError::Switch {
        user: t.user.clone(),
        uid: t.uid,
        gid: t.gid,
        step,
        source,
    };
    nix::unistd::setgroups(&[t.gid]).map_err(|e| fail("setgroups", e))?;
    nix::unistd::setresgid(t.gid, t.gid, t.gid).map_err(|e| fail("setresgid", e))?;
    nix::unistd::setresuid(t.uid, t.uid, t.uid).map_err(|e| fail("setresuid", e))?;
    let verify = |what: String| PrivilegeError::Verify {
        user: t.user.clone(),
        what,
    };
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(verify("root could be regained".into()));
    }
    let threads = check_threads(t.uid.as_raw(), t.gid.as_raw()).map_err(verify)?;
    tracing::info!(
        user = %t.user,
        uid = t.uid.as_raw(),
        group = %t.group,
        gid = t.gid.as_raw(),
        threads,
        "dropped root after binding; no capabilities kept"
    );
    Ok(())
}

/// Every thread's ids (real, effective, saved, file system), groups and capabilities, from
/// /proc/self/task; the number of threads checked.
fn check_threads(uid: u32, gid: u32) -> Result<usize, String> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("cannot read /proc/self/task to check the switch: {e}"))?;
    let mut n = 0;
    for task in tasks {
        let task = task.map_err(|e| e.to_string())?;
        let status = match std::fs::read_to_string(task.path().join("status")) {
            Ok(s) => s,
            // A thread that ended meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", task.path().display())),
        };
        check_status(&status, uid, gid)
            .map_err(|e| format!("thread {}: {e}", task.file_name().to_string_lossy()))?;
        n += 1;
    }
    Ok(n)
}

/// One /proc status text: `Uid:` and `Gid:` all `uid`/`gid`, `Groups:` just `gid`, and
/// `CapPrm`, `CapEff`, `CapAmb` empty.
fn check_status(status: &str, uid: u32, gid: u32) -> Result<(), String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("no {name}: line"))
    };
    let ids = |name: &str, want: u32| -> Result<(), String> {
        let v = field(name)?;
        let ok = v.split_whitespace().all(|x| x == want.to_string());
        ok.then_some(())
            .ok_or_else(|| format!("{name} is {v:?}, not {want}"))
    };
    ids("Uid", uid)?;
    ids("Gid", gid)?;
    let groups = field("Groups")?;
    if groups != gid.to_string() {
        return Err(format!("Groups is {groups:?}, not {gid}"));
    }
    for cap in ["CapPrm", "CapEff", "CapAmb"] {
        let v = field(cap)?;
        if u64::from_str_radix(v, 16) != Ok(0) {
            return Err(format!("{cap} is {v}, not empty"));
        }
    }
    Ok(())
}

/// Files the server reads while it runs (hot reload, templates, the TFTP root), opened as
/// the user it now is: an unreadable one is a clear error at start, not a failed reload or
/// a 500 later.
pub(crate) fn check_readable(config: &Config, t: &Target) -> Result<(), PrivilegeError> {
    let mut paths = vec![config.inventory.clone(), config.kickstarts.clone()];
    if let Some(tftp) = &config.tftp {
        paths.push(tftp.root.clone());
    }
    for p in paths {
        let r = if p.is_dir() {
            std::fs::read_dir(&p).map(drop)
        } else {
            std::fs::File::open(&p).map(drop)
        };
        if let Err(e) = r {
            return Err(PrivilegeError::Verify {
                user: t.user.clone(),
                what: format!(
                    "{} cannot be read: {e} (make it readable by {} or group {})",
                    p.display(),
                    t.user,
                    t.group
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tstemcell\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    fn parse(text: &str) -> Result<Config, crate::yaml::Problems> {
        Config::parse(
            Path::new("/etc/stemcell/stemcell.yaml"),
            &format!("dhcp: {{mode: off}}\n{text}"),
        )
    }

    #[test]
    fn user_and_group_are_read_with_their_positions() {
        let c = parse("user: stemcell\ngroup: netboot\n").unwrap();
        let r = c.run_as.unwrap();
        assert_eq!(
            (r.user.as_str(), r.user_pos.line, r.user_pos.col),
            ("stemcell", 2, 7)
        );
        assert_eq!(
            r.group.map(|(g, p)| (g, p.line)),
            Some(("netboot".into(), 3))
        );
        assert_eq!(parse("").unwrap().run_as, None);
        let e = parse("group: netboot\n").unwrap_err().to_string();
        assert!(e.contains(":2:8: group: needs user:"), "{e}");
        let e = parse("user: \"a;b\"\n").unwrap_err().to_string();
        assert!(
            e.contains(":2:7: user: \"a;b\" is not an account name"),
            "{e}"
        );
    }

    #[test]
    fn a_thread_that_switched_passes() {
        assert_eq!(check_status(STATUS, 65534, 65534), Ok(()));
    }

    #[test]
    fn a_thread_still_root_or_capable_fails() {
        let saved_root = STATUS.replace("Uid:\t65534\t65534\t65534", "Uid:\t65534\t65534\t0");
        assert!(check_status(&saved_root, 65534, 65534)
            .unwrap_err()
            .contains("Uid"));
        let group = STATUS.replace("Groups:\t65534 ", "Groups:\t0 65534");
        assert!(check_status(&group, 65534, 65534)
            .unwrap_err()
            .contains("Groups"));
        let cap = STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000000400");
        assert!(check_status(&cap, 65534, 65534)
            .unwrap_err()
            .contains("CapEff"));
        assert!(check_status("Name:\tx\n", 1, 1).is_err());
    }

    #[test]
    fn hand_over_leaves_links_and_hard_linked_files_alone() {
        // Runs for real only as root (chown needs it); as anyone else the walk is still
        // checked to change nothing that is already ours.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("machines.journal"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/leases.journal"), b"y").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"v").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), d.join("link")).unwrap();
        std::fs::hard_link(outside.path().join("victim"), d.join("hard")).unwrap();
        let me = nix::unistd::geteuid();
        let target = Target {
            user: "test".into(),
            group: "test".into(),
            uid: if me.is_root() {
                Uid::from_raw(65534)
            } else {
                me
            },
            gid: if me.is_root() {
                Gid::from_raw(65534)
            } else {
                nix::unistd::getegid()
            },
        };
        prepare_state_dir(d, Some(&target)).unwrap();
        let owner = |p: &Path| p.symlink_metadata().unwrap().uid();
        let want = target.uid.as_raw();
        assert_eq!(owner(d), want);
        assert_eq!(owner(&d.join("machines.journal")), want);
        assert_eq!(owner(&d.join("sub/leases.journal")), want);
        assert_eq!(
            std::fs::metadata(d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // The link's target and the hard-linked file keep their owner.
        assert_eq!(owner(&outside.path().join("victim")), me.as_raw());
        assert_eq!(owner(&d.join("link")), me.as_raw());
    }
}
