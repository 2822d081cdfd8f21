//! Operating systems built from packages: `stemcell os build NAME`.
//!
//! An OS is declared in the site folder as `os/NAME.yaml` ([`spec::OsSpec`]). Its root file
//! system is built with mmdebstrap (Debian's tool for reproducible roots) into a tar
//! archive, compressed with zstd, and laid out as
//!
//! ```text
//! IMAGES/NAME/<sha256>.tar.zst    the root file system (numeric owners, xattrs)
//! IMAGES/NAME/<sha256>.manifest   every package and version in it (dpkg-query)
//! IMAGES/NAME/current.json        the newest build: name, sha256, size, built_at, digests
//! ```
//!
//! **Reproducible**: mmdebstrap honours `SOURCE_DATE_EPOCH` (file dates, the initramfs,
//! generated files) and zstd is run with a fixed level and a fixed number of workers, so
//! two builds from the same package versions and epoch are byte-for-byte identical. Without
//! `SOURCE_DATE_EPOCH` the epoch is the newest `Date:` of the package lists used: the same
//! lists give the same image.
//!
//! **Cached**: before building, the package lists' signed index files (`InRelease`) are
//! fetched with apt-get into a private state folder (nothing of the host's apt state is
//! touched; only the small index files are downloaded). The cache key is the digest of the
//! spec, of those files, of the epoch and of the zstd level: an unchanged key reuses the
//! archive and says so. Offline, the last build is reused with a note.
//!
//! **Sources**: the spec's `mirror`, else the build host's apt sources for the spec's suite
//! (`bookworm`, `bookworm-updates`, `bookworm-security`, …), never a built-in host name.

pub(crate) mod spec;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use spec::hex;
pub(crate) use spec::OsSpec;

/// The default zstd level: see README ("Operating system images") for the measurements
/// behind it.
pub(crate) const DEFAULT_ZSTD_LEVEL: u32 = 9;

/// The build recipe's revision: part of the cache key, so a change to how images are
/// made (hooks, options) rebuilds them even when spec and package lists are unchanged.
const RECIPE: u32 = 3;

/// zstd workers: fixed, so the output does not depend on the building machine's cores.
const ZSTD_WORKERS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OsError {
    #[error("{0}")]
    Spec(#[from] crate::yaml::Problems),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{tool}: {detail}")]
    Tool { tool: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OsError + '_ {
    move |source| OsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `current.json`: what the newest build of an OS is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Current {
    pub(crate) name: String,
    pub(crate) sha256: String,
    pub(crate) size: u64,
    /// The archive's file name, beside this file.
    pub(crate) archive: String,
    /// The package manifest's file name (`PACKAGE<TAB>VERSION<TAB>ARCH` lines).
    pub(crate) manifest: String,
    pub(crate) packages: usize,
    /// `SOURCE_DATE_EPOCH` of the build (seconds), and the same as UTC text.
    pub(crate) source_date_epoch: u64,
    pub(crate) built_at: String,
    pub(crate) spec_digest: String,
    /// sha256 of the package lists' index files apt used.
    pub(crate) lists_digest: String,
    /// The cache key: spec, lists, epoch, zstd level.
    pub(crate) key: String,
    pub(crate) zstd_level: u32,
    pub(crate) uncompressed_size: u64,
}

/// What one build needs.
#[derive(Clone, Debug)]
pub(crate) struct BuildOptions {
    pub(crate) spec: OsSpec,
    /// Images folder: the build goes to `images/NAME/`.
    pub(crate) images: PathBuf,
    /// `SOURCE_DATE_EPOCH`; `None`: the newest `Date:` of the package lists.
    pub(crate) source_date_epoch: Option<u64>,
    pub(crate) zstd_level: u32,
    /// Build even when the cache key is unchanged.
    pub(crate) force: bool,
}

/// What a build did.
#[derive(Clone, Debug)]
pub(crate) struct BuildReport {
    pub(crate) current: Current,
    pub(crate) dir: PathBuf,
    /// True when the cached archive was reused.
    pub(crate) cached: bool,
    pub(crate) notes: Vec<String>,
    pub(crate) seconds: f64,
    /// mmdebstrap's and zstd's seconds (a real build).
    pub(crate) phases: Vec<(String, f64)>,
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.current;
        writeln!(
            f,
            "os {}: {} ({})",
            c.name,
            if self.cached {
                "unchanged, cached archive reused"
            } else {
                "built"
            },
            self.dir.join(&c.archive).display()
        )?;
        writeln!(f, "  sha256 {}", c.sha256)?;
        writeln!(
            f,
            "  {} bytes ({:.1} MB; {:.1} MB unpacked tar), zstd -{}, {} packages (manifest {})",
            c.size,
            c.size as f64 / 1e6,
            c.uncompressed_size as f64 / 1e6,
            c.zstd_level,
            c.packages,
            c.manifest
        )?;
        writeln!(
            f,
            "  SOURCE_DATE_EPOCH={} ({}); spec {}; lists {}",
            c.source_date_epoch,
            c.built_at,
            &c.spec_digest[..12],
            &c.lists_digest[..12.min(c.lists_digest.len())]
        )?;
        for (p, s) in &self.phases {
            writeln!(f, "  {p}: {s:.1} s")?;
        }
        writeln!(f, "  took {:.1} s", self.seconds)?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// Build (or reuse) the image `opts.spec` describes.
pub(crate) fn build(opts: &BuildOptions) -> Result<BuildReport, OsError> {
    let start = Instant::now();
    let spec = &opts.spec;
    if !(1..=19).contains(&opts.zstd_level) {
        return Err(OsError::Invalid(format!(
            "zstd level {} is not between 1 and 19",
            opts.zstd_level
        )));
    }
    let dir = opts.images.join(&spec.name);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    // apt-get and mmdebstrap's hooks run elsewhere: every path they see is absolute.
    let dir = dir.canonicalize().map_err(io(&dir))?;
    let mut notes = Vec::new();
    let sources = match &spec.mirror {
        Some(m) => vec![format!(
            "deb {m} {} {}",
            spec.suite,
            spec.components.join(" ")
        )],
        None => host_sources(&spec.suite, &spec.components)?,
    };
    let current_path = dir.join("current.json");
    let previous: Option<Current> = fs::read(&current_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());

    let lists = match fetch_lists(&dir.join(".apt"), &sources, &spec.architecture) {
        Ok(l) => l,
        Err(e) => match &previous {
            // Offline: the last build stands, and we say why.
            Some(p) if archive_ok(&dir, p) => {
                notes.push(format!(
                    "cannot refresh the package lists ({e}); reusing the last build"
                ));
                return Ok(BuildReport {
                    current: p.clone(),
                    dir,
                    cached: true,
                    notes,
                    seconds: start.elapsed().as_secs_f64(),
                    phases: Vec::new(),
                });
            }
            _ => return Err(e),
        },
    };
    let epoch = match opts.source_date_epoch {
        Some(e) => e,
        None => {
            notes.push(format!(
                "SOURCE_DATE_EPOCH not set: using the package lists' date, {}",
                lists.newest_date
            ));
            lists.newest_date
        }
    };
    let spec_digest = spec.digest();
    let key = cache_key(&spec_digest, &lists.digest, epoch, opts.zstd_level);
    if let Some(p) = &previous {
        if p.key == key && archive_ok(&dir, p) && !opts.force {
            info!(os = %spec.name, sha256 = %p.sha256, "unchanged spec and package lists: reusing the archive");
            return Ok(BuildReport {
                current: p.clone(),
                dir,
                cached: true,
                notes,
                seconds: start.elapsed().as_secs_f64(),
                phases: Vec::new(),
            });
        }
    }

    let work = dir.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io(&work))?;
    let result = build_in(
        opts,
        &dir,
        &work,
        &sources,
        epoch,
        &spec_digest,
        &lists,
        notes,
    );
    let _ = fs::remove_dir_all(&work);
    let (current, phases, notes) = result?;
    let data = serde_json::to_vec_pretty(&current).map_err(|e| OsError::Invalid(e.to_string()))?;
    write_atomic(&current_path, &data)?;
    Ok(BuildReport {
        current,
        dir,
        cached: false,
        notes,
        seconds: start.elapsed().as_secs_f64(),
        phases,
    })
}

type Built = (Current, Vec<(String, f64)>, Vec<String>);

#[allow(clippy::too_many_arguments)]
fn build_in(
    opts: &BuildOptions,
    dir: &Path,
    work: &Path,
    sources: &[String],
    epoch: u64,
    spec_digest: &str,
    lists: &Lists,
    mut notes: Vec<String>,
) -> Result<Built, OsError> {
    let spec = &opts.spec;
    let w = shell_path(work)?;
    let tar = work.join("root.tar");
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .arg(format!(
            "--mode={}",
            if is_root() { "root" } else { "unshare" }
        ))
        .arg(format!("--variant={}", spec.variant))
        .arg(format!("--architectures={}", spec.architecture))
        .arg(format!("--components={}", spec.components.join(",")))
        .arg("--format=tar");
    if !spec.packages.is_empty() {
        cmd.arg(format!("--include={}", spec.packages.join(",")));
    }
    // Trimmed paths are never unpacked: dpkg's path-exclude, which mmdebstrap also writes
    // into the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so upgrades keep them out too.
    for t in &spec.trim {
        cmd.arg(format!("--dpkgopt=path-exclude=/{t}"));
        cmd.arg(format!("--dpkgopt=path-exclude=/{t}/*"));
    }
    // ...and whatever maintainer scripts generated there goes as well.
    if !spec.trim.is_empty() {
        let globs: Vec<String> = spec.trim.iter().map(|t| format!("./{t}")).collect();
        cmd.arg(format!(
            "--customize-hook=cd \"$1\" && rm -rf -- {}",
            globs.join(" ")
        ));
    }
    if let Some(lines) = &spec.apt_sources {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(work.join("sources.list"), text).map_err(io(work))?;
        cmd.arg(format!(
            "--customize-hook=cp {w}/sources.list \"$1/etc/apt/sources.list\" && rm -f \"$1\"/etc/apt/sources.list.d/*.list \"$1\"/etc/apt/sources.list.d/*.sources"
        ));
    }
    // One image, many machines: no machine's identity may be in it. SSH host keys (which
    // openssh-server's postinst generates) are made per machine by the install; the
    // machine-id is left empty for systemd to create at first boot.
    cmd.arg(
        "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*_key \"$1\"/etc/ssh/ssh_host_*_key.pub \"$1\"/var/lib/dbus/machine-id && : >\"$1/etc/machine-id\"",
    );
    cmd.arg(format!(
        "--customize-hook=chroot \"$1\" dpkg-query -W -f='${{binary:Package}}\\t${{Version}}\\t${{Architecture}}\\n' | LC_ALL=C sort >{w}/manifest"
    ));
    cmd.arg(format!(
        "--customize-hook=cat \"$1\"/var/lib/apt/lists/*Release >{w}/lists"
    ));
    cmd.arg(&spec.suite).arg(&tar).args(sources);
    info!(os = %spec.name, epoch, "building with mmdebstrap");
    let t = Instant::now();
    run(&mut cmd, "mmdebstrap", &work.join("mmdebstrap.log"))?;
    let mut phases = vec![("mmdebstrap".to_string(), t.elapsed().as_secs_f64())];
    let uncompressed_size = fs::metadata(&tar).map_err(io(&tar))?.len();

    // The build's own lists are what counts; they differ from the ones fetched a moment ago
    // only when the archive changed in between.
    let built_lists = fs::read(work.join("lists")).unwrap_or_default();
    let lists_digest = if built_lists.is_empty() {
        lists.digest.clone()
    } else {
        packages_digest(&String::from_utf8_lossy(&built_lists), &spec.architecture)
    };
    if lists_digest != lists.digest {
        notes.push("the archive changed during the build: recorded the lists it used".into());
    }

    let t = Instant::now();
    let zst = work.join("root.tar.zst");
    run(
        Command::new("zstd")
            .arg("-q")
            .arg(format!("-{}", opts.zstd_level))
            .arg(format!("-T{ZSTD_WORKERS}"))
            .arg("--no-progress")
            .arg(&tar)
            .arg("-o")
            .arg(&zst),
        "zstd",
        &work.join("zstd.log"),
    )?;
    phases.push((
        format!("zstd -{}", opts.zstd_level),
        t.elapsed().as_secs_f64(),
    ));
    let _ = fs::remove_file(&tar);
    let (sha256, size) = sha256_file(&zst)?;
    let archive = format!("{sha256}.tar.zst");
    let manifest_name = format!("{sha256}.manifest");
    let manifest = fs::read_to_string(work.join("manifest")).map_err(io(work))?;
    let packages = manifest.lines().filter(|l| !l.is_empty()).count();
    if packages == 0 {
        return Err(OsError::Tool {
            tool: "dpkg-query".into(),
            detail: "the image's package manifest is empty".into(),
        });
    }
    fs::rename(work.join("manifest"), dir.join(&manifest_name)).map_err(io(dir))?;
    fs::rename(&zst, dir.join(&archive)).map_err(io(dir))?;
    Ok((
        Current {
            name: spec.name.clone(),
            sha256,
            size,
            archive,
            manifest: manifest_name,
            packages,
            source_date_epoch: epoch,
            built_at: utc(epoch),
            spec_digest: spec_digest.to_string(),
            key: cache_key(spec_digest, &lists_digest, epoch, opts.zstd_level),
            lists_digest,
            zstd_level: opts.zstd_level,
            uncompressed_size,
        },
        phases,
        notes,
    ))
}

fn cache_key(spec: &str, lists: &str, epoch: u64, level: u32) -> String {
    hex(&Sha256::digest(
        format!("recipe {RECIPE}\nspec {spec}\nlists {lists}\nepoch {epoch}\nzstd {level}\n")
            .as_bytes(),
    ))
}

fn archive_ok(dir: &Path, c: &Current) -> bool {
    fs::metadata(dir.join(&c.archive)).is_ok_and(|m| m.len() == c.size)
        && dir.join(&c.manifest).is_file()
}

/// A path for a hook's shell text: single-quoted, so it may not hold a single quote.
fn shell_path(p: &Path) -> Result<String, OsError> {
    let s = p.to_string_lossy();
    if s.contains(['\'', '\n']) {
        return Err(OsError::Invalid(format!(
            "{s}: the images folder's path may not hold quotes or newlines"
        )));
    }
    Ok(format!("'{s}'"))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Run `cmd`, its output in `log`; on failure the log's last lines are the error.
fn run(cmd: &mut Command, tool: &str, log: &Path) -> Result<(), OsError> {
    let file = fs::File::create(log).map_err(io(log))?;
    let err = file.try_clone().map_err(io(log))?;
    let status = cmd
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| OsError::Tool {
            tool: tool.into(),
            detail: format!("cannot run it ({e}); scripts/setup-debian.sh installs it"),
        })?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    Err(OsError::Tool {
        tool: tool.into(),
        detail: format!(
            "{status}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    })
}

fn sha256_file(path: &Path) -> Result<(String, u64), OsError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), OsError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, data).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

// ---------------------------------------------------------------------------------------
// Sources and package lists

/// One-line `deb` entries for `suite` from the host's apt sources (`sources.list`,
/// `sources.list.d/*.list` and deb822 `*.sources`): every entry whose suite is `suite` or
/// one of its companions (`suite-updates`, `suite-security`, `suite/updates`), with the
/// spec's components.
pub(crate) fn host_sources(suite: &str, components: &[String]) -> Result<Vec<String>, OsError> {
    let mut texts = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if let Ok(t) = fs::read_to_string(main) {
        texts.push((false, t));
    }
    let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    parts.sort();
    for p in parts {
        let n = p.to_string_lossy();
        if n.ends_with(".list") || n.ends_with(".sources") {
            if let Ok(t) = fs::read_to_string(&p) {
                texts.push((n.ends_with(".sources"), t));
            }
        }
    }
    let mut out = Vec::new();
    for (deb822, text) in texts {
        for s in parse_sources(&text, deb822) {
            for line in s.lines_for(suite, components) {
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(OsError::Invalid(format!(
            "the spec names no mirror and this host's apt sources have no entry for {suite}: add `mirror: URL` to the spec"
        )));
    }
    Ok(out)
}

/// A `deb` source: URIs, suites, signed-by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) uris: Vec<String>,
    pub(crate) suites: Vec<String>,
    pub(crate) signed_by: Option<String>,
}

impl Source {
    fn lines_for(&self, suite: &str, components: &[String]) -> Vec<String> {
        let opts = match &self.signed_by {
            Some(k) if !k.contains(char::is_whitespace) => format!("[signed-by={k}] "),
            _ => String::new(),
        };
        let mut out = Vec::new();
        for uri in &self.uris {
            for s in &self.suites {
                let ours = *s == suite
                    || s.strip_prefix(suite)
                        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('/'));
                if ours {
                    out.push(format!("deb {opts}{uri} {s} {}", components.join(" ")));
                }
            }
        }
        out
    }
}

/// `deb` entries of a one-line (`deb [opts] URI SUITE COMP...`) or deb822 sources file.
pub(crate) fn parse_sources(text: &str, deb822: bool) -> Vec<Source> {
    let mut out = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let mut types = Vec::new();
            let mut src = Source {
                uris: Vec::new(),
                suites: Vec::new(),
                signed_by: None,
            };
            let mut enabled = true;
            for line in stanza.lines() {
                if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                    continue;
                }
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let words = || v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = words(),
                    "uris" => src.uris = words(),
                    "suites" => src.suites = words(),
                    "signed-by" => {
                        src.signed_by = Some(v.trim().to_string()).filter(|s| !s.is_empty())
                    }
                    "enabled" => enabled = v.trim() != "no",
                    _ => {}
                }
            }
            if enabled && types.iter().any(|t| t == "deb") && !src.uris.is_empty() {
                out.push(src);
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some(rest) = line.strip_prefix("deb ") else {
                continue;
            };
            let mut rest = rest.trim();
            let mut signed_by = None;
            if let Some(r) = rest.strip_prefix('[') {
                let Some((opts, after)) = r.split_once(']') else {
                    continue;
                };
                for o in opts.split_whitespace() {
                    if let Some(k) = o.strip_prefix("signed-by=") {
                        signed_by = Some(k.to_string());
                    }
                }
                rest = after.trim();
            }
            let mut w = rest.split_whitespace();
            if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
                out.push(Source {
                    uris: vec![uri.to_string()],
                    suites: vec![suite.to_string()],
                    signed_by,
                });
            }
        }
    }
    out
}

struct Lists {
    digest: String,
    newest_date: u64,
}

/// `apt-get update` for `sources` in a private state folder, fetching only the signed
/// index files (no Packages files): their digest says whether any package changed.
fn fetch_lists(state: &Path, sources: &[String], arch: &str) -> Result<Lists, OsError> {
    let lists = state.join("lists");
    fs::create_dir_all(lists.join("partial")).map_err(io(&lists))?;
    fs::create_dir_all(state.join("cache/archives/partial")).map_err(io(state))?;
    let list_file = state.join("sources.list");
    fs::write(&list_file, sources.join("\n") + "\n").map_err(io(&list_file))?;
    let parts = state.join("sources.list.d");
    fs::create_dir_all(&parts).map_err(io(&parts))?;
    let status = state.join("status");
    fs::write(&status, b"").map_err(io(&status))?;
    let o = |k: &str, v: &Path| format!("{k}={}", v.display());
    let out = Command::new("apt-get")
        .env("LC_ALL", "C.UTF-8")
        .arg("update")
        .arg("-q")
        .args(["-o", &o("Dir::State", state)])
        .args(["-o", &o("Dir::State::Lists", &lists)])
        .args(["-o", &o("Dir::State::status", &status)])
        .args(["-o", &o("Dir::Cache", &state.join("cache"))])
        .args(["-o", &o("Dir::Etc::SourceList", &list_file)])
        .args(["-o", &o("Dir::Etc::SourceParts", &parts)])
        .args(["-o", &format!("APT::Architecture={arch}")])
        .args(["-o", &format!("APT::Architectures={arch}")])
        .args(["-o", "Acquire::Languages=none"])
        .args([
            "-o",
            "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",
        ])
        .args(["-o", "APT::Sandbox::User=root"])
        .output()
        .map_err(|e| OsError::Tool {
            tool: "apt-get".into(),
            detail: e.to_string(),
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || text.contains("\nW: Failed") || text.contains("\nE: ") {
        return Err(OsError::Tool {
            tool: "apt-get update".into(),
            detail: text
                .lines()
                .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let mut files: Vec<PathBuf> = fs::read_dir(&lists)
        .map_err(io(&lists))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("Release"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(OsError::Tool {
            tool: "apt-get update".into(),
            detail: "no Release files fetched".into(),
        });
    }
    let mut all = String::new();
    let mut newest = 0;
    for f in &files {
        let data = fs::read(f).map_err(io(f))?;
        let text = String::from_utf8_lossy(&data);
        if let Some(d) = text
            .lines()
            .find_map(|l| l.strip_prefix("Date:"))
            .and_then(|d| parse_rfc2822(d.trim()))
        {
            newest = newest.max(d);
        }
        all.push_str(&text);
        all.push('\n');
    }
    Ok(Lists {
        digest: packages_digest(&all, arch),
        newest_date: newest,
    })
}

/// The digest of what the Release files say about the `Packages` indexes of `arch`: their
/// SHA256 lines. Archives re-sign their Release files often (a new `Date:`, a new
/// signature) without any package changing; only a changed package index rebuilds an image.
pub(crate) fn packages_digest(release_text: &str, arch: &str) -> String {
    let needle = format!("/binary-{arch}/Packages");
    let mut lines = Vec::new();
    let mut in_sha256 = false;
    for line in release_text.lines() {
        if !line.starts_with(' ') {
            in_sha256 = line.trim_end() == "SHA256:";
            continue;
        }
        if in_sha256 && line.contains(&needle) {
            lines.push(line.trim());
        }
    }
    lines.sort_unstable();
    lines.dedup();
    hex(&Sha256::digest(lines.join("\n").as_bytes()))
}

/// `Sat, 10 May 2025 09:13:14 UTC` (the Release files' `Date:`) as Unix seconds.
pub(crate) fn parse_rfc2822(s: &str) -> Option<u64> {
    let w: Vec<&str> = s.split_whitespace().collect();
    let w = if w.first()?.ends_with(',') {
        &w[1..]
    } else {
        &w[..]
    };
    let day: u64 = w.first()?.parse().ok()?;
    let mon = *w.get(1)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == mon)? as u64
        + 1;
    let year: i64 = w.get(2)?.parse().ok()?;
    let mut t = w.get(3)?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if !matches!(w.get(4).copied(), Some("UTC" | "GMT" | "+0000") | None) {
        return None;
    }
    let days = crate::civil::days_from_civil(year, month, day);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86400 + h * 3600 + m * 60 + sec)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc(t: u64) -> String {
    let (date, time) = crate::civil::date_time(t);
    format!("{date}T{time}Z")
}

// ---------------------------------------------------------------------------------------
// The command line: `stemcell os build ...`

/// `stemcell os ...`
#[derive(clap::Subcommand, Clone, Debug)]
pub(crate) enum OsCommand {
    /// Build an OS image from os/NAME.yaml with mmdebstrap (cached by spec and package lists).
    Build(OsBuildArgs),
}

/// `stemcell os build` options.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct OsBuildArgs {
    /// The OS: os/NAME.yaml beside the config file (optional with --spec).
    pub(crate) name: Option<String>,
    /// stemcell.yaml: the spec is NAME.yaml in its `os` folder, and the build goes to its
    /// `images` folder (served at /os/).
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// The spec file, instead of os/NAME.yaml beside the config.
    #[arg(long, value_name = "FILE")]
    pub(crate) spec: Option<PathBuf>,
    /// The images folder (the build goes to DIR/NAME/).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// zstd level (1-19).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL)]
    pub(crate) zstd_level: u32,
    /// Build even when the spec and the package lists are unchanged.
    #[arg(long)]
    pub(crate) force: bool,
}

impl OsBuildArgs {
    pub(crate) fn options(&self) -> Result<BuildOptions, OsError> {
        let config = match &self.config {
            Some(c) => {
                Some(crate::config::Config::load(c).map_err(|e| OsError::Invalid(e.to_string()))?)
            }
            None => None,
        };
        let spec_path = match (&self.spec, &self.name, &config) {
            (Some(s), _, _) => s.clone(),
            (None, Some(n), Some(c)) => c.os_specs.join(format!("{n}.yaml")),
            _ => {
                return Err(OsError::Invalid(
                    "name the OS and its site (NAME --config stemcell.yaml), or give --spec FILE --out DIR".into(),
                ))
            }
        };
        let mut spec = OsSpec::load(&spec_path)?;
        if let Some(n) = &self.name {
            spec.name = n.clone();
        }
        let images = match (&self.out, &config) {
            (Some(o), _) => o.clone(),
            (None, Some(c)) => c.os_images.clone(),
            _ => {
                return Err(OsError::Invalid(
                    "--out DIR is needed without --config".into(),
                ))
            }
        };
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().parse().map_err(|_| {
                OsError::Invalid(format!(
                    "SOURCE_DATE_EPOCH={s:?} is not a number of seconds"
                ))
            })?),
            _ => None,
        };
        Ok(BuildOptions {
            spec,
            images,
            source_date_epoch,
            zstd_level: self.zstd_level,
            force: self.force,
        })
    }
}

pub(crate) fn run_command(cmd: &OsCommand) -> Result<(), OsError> {
    match cmd {
        OsCommand::Build(args) => {
            let report = build(&args.options()?)?;
            print!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sources_one_line_and_deb822() {
        let one = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib\n\
                   deb http://m.invalid/debian-security bookworm-security main\n\
                   deb-src http://m.invalid/debian bookworm main\n\
                   deb https://other.invalid/apt cloud-sdk-bookworm main\n";
        let s = parse_sources(one, false);
        assert_eq!(s.len(), 3);
        let comps = vec!["main".to_string()];
        let lines: Vec<String> = s
            .iter()
            .flat_map(|s| s.lines_for("bookworm", &comps))
            .collect();
        assert_eq!(
            lines,
            [
                "deb [signed-by=/k.gpg] http://m.invalid/debian bookworm main",
                "deb http://m.invalid/debian-security bookworm-security main"
            ]
        );
        let d = "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                 Types: deb\nURIs: https://n.invalid/node\nSuites: nodistro\nComponents: main\n\n\
                 Types: deb\nURIs: http://x.invalid/\nSuites: bookworm\nEnabled: no\n";
        let s = parse_sources(d, true);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].lines_for("bookworm", &comps),
            [
                "deb [signed-by=/usr/share/keyrings/k.gpg] http://m.invalid/debian bookworm main",
                "deb [signed-by=/usr/share/keyrings/k.gpg] http://m.invalid/debian bookworm-updates main"
            ]
        );
        assert!(s[1].lines_for("bookworm", &comps).is_empty());
    }

    #[test]
    fn only_the_package_indexes_count() {
        let release = |date: &str, sum: &str| {
            format!(
                "Origin: Debian\nDate: {date}\nMD5Sum:\n 0123 100 main/binary-amd64/Packages\nSHA256:\n {sum} 100 main/binary-amd64/Packages\n 9999 50 main/binary-arm64/Packages\n 7777 10 main/i18n/Translation-en\n-----BEGIN PGP SIGNATURE-----\nxyz{date}\n"
            )
        };
        let a = packages_digest(&release("Sat, 10 May 2025 09:13:14 UTC", "aaaa"), "amd64");
        let resigned = packages_digest(&release("Sun, 11 May 2025 09:13:14 UTC", "aaaa"), "amd64");
        let changed = packages_digest(&release("Sat, 10 May 2025 09:13:14 UTC", "bbbb"), "amd64");
        assert_eq!(a, resigned);
        assert_ne!(a, changed);
        // Another architecture's index is not ours.
        assert_eq!(
            a,
            packages_digest(
                &release("Sat, 10 May 2025 09:13:14 UTC", "aaaa").replace(" 9999 ", " 8888 "),
                "amd64"
            )
        );
    }

    #[test]
    fn release_dates_and_utc() {
        assert_eq!(
            parse_rfc2822("Sat, 10 May 2025 09:13:14 UTC"),
            Some(1746868394)
        );
        assert_eq!(utc(1746868394), "2025-05-10T09:13:14Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc2822("Sat, 10 Foo 2025 09:13:14 UTC"), None);
        assert_eq!(parse_rfc2822("Sat, 10 May 2025 09:13:14 +0200"), None);
    }

    #[test]
    fn the_cache_key_changes_with_each_input() {
        let k = cache_key("a", "b", 1, 9);
        assert_ne!(k, cache_key("a2", "b", 1, 9));
        assert_ne!(k, cache_key("a", "b2", 1, 9));
        assert_ne!(k, cache_key("a", "b", 2, 9));
        assert_ne!(k, cache_key("a", "b", 1, 3));
        assert_eq!(k, cache_key("a", "b", 1, 9));
    }
}
