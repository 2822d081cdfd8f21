//! Built OS images as the server sees them. `stemcell os build NAME` writes the archive
//! into `images/NAME/` and names the one to serve in `images/NAME/current.json`; the server
//! reads that small file when it renders an install script, so a rebuild takes effect for
//! the next install without a restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `current.json` says about the image to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BuiltOs {
    pub(crate) name: String,
    /// sha256 of the archive, lower-case hex.
    pub(crate) sha256: String,
    /// The archive's size in bytes.
    pub(crate) size: u64,
    /// The archive's file name inside `images/NAME/`.
    #[serde(rename = "archive")]
    pub(crate) file: String,
}

/// Why a role's OS image cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error("OS {name:?} is not built yet (no {}); run `stemcell os build {name}`", path.display())]
    NotBuilt { name: String, path: PathBuf },
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: String },
}

/// The image of OS `name` to serve now.
pub(crate) fn current(images: &Path, name: &str) -> Result<BuiltOs, ImageError> {
    let path = images.join(name).join("current.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NotBuilt {
                name: name.to_string(),
                path,
            })
        }
        Err(e) => {
            return Err(ImageError::Invalid {
                path,
                error: e.to_string(),
            })
        }
    };
    let os: BuiltOs = serde_json::from_str(&text).map_err(|e| ImageError::Invalid {
        path: path.clone(),
        error: format!("not a build record: {e}"),
    })?;
    let hex = os.sha256.len() == 64 && os.sha256.chars().all(|c| c.is_ascii_hexdigit());
    if !hex || !crate::values::safe_relative(&os.file) || os.file.contains('/') {
        return Err(ImageError::Invalid {
            path,
            error: "sha256 must be 64 hex digits and file a plain file name".into(),
        });
    }
    if !images.join(name).join(&os.file).is_file() {
        return Err(ImageError::Invalid {
            error: format!("its archive {} is missing", os.file),
            path,
        });
    }
    Ok(os)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_record_names_an_archive_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        assert!(matches!(
            current(images, "debian-12"),
            Err(ImageError::NotBuilt { .. })
        ));
        std::fs::create_dir_all(images.join("debian-12")).unwrap();
        let sha = "ab".repeat(32);
        let record = format!(
            r#"{{"name":"debian-12","sha256":"{sha}","size":3,"archive":"{sha}.tar.zst"}}"#
        );
        std::fs::write(images.join("debian-12/current.json"), &record).unwrap();
        let e = current(images, "debian-12").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::write(images.join(format!("debian-12/{sha}.tar.zst")), b"abc").unwrap();
        let os = current(images, "debian-12").unwrap();
        assert_eq!((os.size, os.sha256.as_str()), (3, sha.as_str()));
        std::fs::write(
            images.join("debian-12/current.json"),
            record.replace(&format!("\"{sha}.tar.zst\""), "\"../x\""),
        )
        .unwrap();
        assert!(matches!(
            current(images, "debian-12"),
            Err(ImageError::Invalid { .. })
        ));
    }
}
