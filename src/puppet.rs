//! The site's Puppet code, served to installed machines as one versioned bundle.
//!
//! The folder (`puppet:` in the config, default `puppet/` beside it) holds
//! `manifests/ROLE.pp` for each role and shared `modules/`. Machines fetch it as a gzipped
//! tar at `/puppet/bundle.tar.gz` and apply their role's manifest with `puppet apply`. The
//! bundle is built in memory, reproducibly (sorted entries, owner 0, mtime 0, gzip without
//! a time stamp), so its sha256 is its version: the same code gives the same digest on
//! every server and every restart, and a changed file gives a new one (drift). It is
//! rebuilt only when a file's path, size or mtime changed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Files larger than this are refused (Puppet code is text; a stray image is a mistake).
const MAX_FILE: u64 = 16 << 20;
/// The most files a bundle may hold.
const MAX_FILES: usize = 20_000;

/// One build of the bundle.
pub(crate) struct Bundle {
    pub(crate) bytes: bytes::Bytes,
    /// sha256 of `bytes`, lower-case hex.
    pub(crate) sha256: String,
    /// Roles that have a manifest (`manifests/ROLE.pp`).
    pub(crate) roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PuppetError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Refused { why: String, path: PathBuf },
}

/// The bundle of one folder, rebuilt when the folder changes.
pub(crate) struct Bundles {
    dir: PathBuf,
    /// The folder's listing when last built, when it was last listed, and the bundle.
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    stamp: Vec<(String, u64, i128)>,
    listed: std::time::Instant,
    bundle: Arc<Bundle>,
}

/// A bundle listed this recently is served without listing the folder again (pages ask
/// for the digest once per machine change).
const RELIST_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Bundles {
    pub(crate) fn new(dir: PathBuf) -> Bundles {
        Bundles {
            dir,
            cached: Mutex::new(None),
        }
    }

    /// The bundle as the folder is now. Blocking: it reads the folder.
    pub(crate) fn current(&self) -> Result<Arc<Bundle>, PuppetError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.listed.elapsed() < RELIST_AFTER {
                return Ok(c.bundle.clone());
            }
        }
        let files = list(&self.dir)?;
        let stamp: Vec<(String, u64, i128)> = files
            .iter()
            .map(|f| (f.rel.clone(), f.size, f.mtime))
            .collect();
        if let Some(c) = cached.as_mut() {
            if c.stamp == stamp {
                c.listed = std::time::Instant::now();
                return Ok(c.bundle.clone());
            }
        }
        let bundle = Arc::new(build(&self.dir, &files)?);
        *cached = Some(Cached {
            stamp,
            listed: std::time::Instant::now(),
            bundle: bundle.clone(),
        });
        Ok(bundle)
    }
}

struct File {
    rel: String,
    size: u64,
    mtime: i128,
    executable: bool,
}

/// Every regular file under `dir`, sorted by path. Symlinks are refused: a bundle holds
/// what the folder holds, nothing from elsewhere.
fn list(dir: &Path) -> Result<Vec<File>, PuppetError> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = todo.pop() {
        let entries = std::fs::read_dir(&path).map_err(|error| PuppetError::Io {
            path: path.clone(),
            error,
        })?;
        for e in entries {
            let e = e.map_err(|error| PuppetError::Io {
                path: path.clone(),
                error,
            })?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // .git, editors' swap files
            }
            let child = e.path();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&child).map_err(|error| PuppetError::Io {
                path: child.clone(),
                error,
            })?;
            if meta.is_dir() {
                todo.push((child, child_rel));
            } else if meta.is_file() {
                if meta.len() > MAX_FILE {
                    return Err(PuppetError::Refused {
                        why: format!("larger than {} MiB; not Puppet code", MAX_FILE >> 20),
                        path: child,
                    });
                }
                use std::os::unix::fs::MetadataExt;
                out.push(File {
                    rel: child_rel,
                    size: meta.len(),
                    mtime: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                    executable: meta.mode() & 0o111 != 0,
                });
                if out.len() > MAX_FILES {
                    return Err(PuppetError::Refused {
                        why: format!("more than {MAX_FILES} files"),
                        path: dir.to_path_buf(),
                    });
                }
            } else {
                return Err(PuppetError::Refused {
                    why: "not a regular file or folder (symlinks are not bundled)".into(),
                    path: child,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn build(dir: &Path, files: &[File]) -> Result<Bundle, PuppetError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error: std::io::Error| PuppetError::Io { path, error }
    };
    let mut roles = Vec::new();
    for f in files {
        let path = dir.join(&f.rel);
        let data = std::fs::read(&path).map_err(io(&path))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(if f.executable { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, &f.rel, data.as_slice())
            .map_err(io(&path))?;
        if let Some(role) = f
            .rel
            .strip_prefix("manifests/")
            .and_then(|r| r.strip_suffix(".pp"))
            .filter(|r| !r.contains('/'))
        {
            roles.push(role.to_string());
        }
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    let mut bytes = gz.finish().map_err(io(dir))?;
    // gzip's header carries no time stamp from flate2 (mtime 0); flush is a no-op here but
    // keeps the writer honest if that ever changes.
    bytes.flush().map_err(io(dir))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    Ok(Bundle {
        bytes: bytes.into(),
        sha256,
        roles,
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &Path) {
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        std::fs::create_dir_all(dir.join("modules/web/manifests")).unwrap();
        std::fs::write(dir.join("manifests/web.pp"), "include web\n").unwrap();
        std::fs::write(
            dir.join("modules/web/manifests/init.pp"),
            "class web { package { 'nginx-light': ensure => installed } }\n",
        )
        .unwrap();
    }

    #[test]
    fn the_same_code_gives_the_same_digest_and_an_edit_a_new_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        site(a.path());
        site(b.path());
        // Different mtimes and creation order must not matter.
        std::fs::write(b.path().join("manifests/web.pp"), "include web\n").unwrap();
        let ba = Bundles::new(a.path().into()).current().unwrap();
        let bb = Bundles::new(b.path().into()).current().unwrap();
        assert_eq!(ba.sha256, bb.sha256);
        assert_eq!(ba.bytes, bb.bytes);
        assert_eq!(ba.roles, vec!["web".to_string()]);

        let bundles = Bundles::new(a.path().into());
        let first = bundles.current().unwrap();
        assert!(Arc::ptr_eq(&first, &bundles.current().unwrap()), "cached");
        std::fs::write(a.path().join("manifests/db.pp"), "notify { 'db': }\n").unwrap();
        std::thread::sleep(RELIST_AFTER);
        let second = bundles.current().unwrap();
        assert_ne!(first.sha256, second.sha256);
        assert_eq!(second.roles, vec!["db".to_string(), "web".to_string()]);
    }

    #[test]
    fn the_bundle_is_a_tar_gz_that_tar_reads() {
        let a = tempfile::tempdir().unwrap();
        site(a.path());
        let b = Bundles::new(a.path().into()).current().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("b.tar.gz");
        std::fs::write(&file, &b.bytes).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&file)
            .arg("-C")
            .arg(out.path())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(out.path().join("modules/web/manifests/init.pp")).unwrap(),
            "class web { package { 'nginx-light': ensure => installed } }\n"
        );
    }

    #[test]
    fn symlinks_and_missing_folders_are_refused_with_the_path() {
        let a = tempfile::tempdir().unwrap();
        site(a.path());
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("manifests/x.pp")).unwrap();
        let e = Bundles::new(a.path().into()).current().err().unwrap();
        assert!(e.to_string().contains("manifests/x.pp"), "{e}");
        let e = Bundles::new(a.path().join("nope")).current().err().unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
