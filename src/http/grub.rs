//! GRUB's chain over TFTP, for machines whose loader is grub: the names firmware, shim and
//! GRUB ask for, served from outside the TFTP root (a [`TftpFiles`]).
//!
//! - `shimx64.efi`, `grubx64.efi` (and arm64's, [`crate::dhcp::GRUB_ARCHES`]): the files
//!   `grub:` in stemcell.yaml names (Debian's shim-signed and grub-efi-*-signed);
//! - `grub/grub.cfg`, `grub/PLATFORM/grub.cfg`: GRUB's first config, the same for all,
//!   which loads the machine's own: `grub/MAC.cfg`, made by `boot` from the same decision
//!   as an iPXE script, with the same events and state changes (arming the install);
//! - `stemcell/MAC/vmlinuz|initrd.img` and `assets/MAC/PATH`: the installer, counted and
//!   refused exactly as over HTTP (`installer_boots`).
//!
//! Why TFTP and not HTTP for all of it: Debian 12's signed network GRUB (grubnetx64) has
//! no `http` module, and only a signed GRUB boots under Secure Boot.

use std::net::SocketAddr;

use askama::Template;

use super::netboot::{boot_config_for, installer_boot_refused};
use super::App;
use crate::boot::GrubFirst;
use crate::dhcp::{Loader, GRUB_ARCHES};
use crate::mac::MacAddr;
use crate::tftp::{Opening, Refusal, Served, TftpFiles};

/// The TFTP side of the GRUB loader.
pub(crate) struct GrubTftp {
    pub(crate) app: App,
}

impl TftpFiles for GrubTftp {
    fn open<'a>(&'a self, name: &'a str, peer: SocketAddr) -> Opening<'a> {
        Box::pin(async move { self.find(name, peer).await })
    }
}

impl GrubTftp {
    async fn find(&self, name: &str, peer: SocketAddr) -> Option<Result<Served, Refusal>> {
        let app = &self.app;
        for g in &app.config.grub {
            if name == g.arch.shim {
                return Some(Ok(Served::File(g.shim.clone())));
            }
            if name == g.arch.grub {
                return Some(Ok(Served::File(g.grub.clone())));
            }
        }
        if name == "grub/grub.cfg"
            || GRUB_ARCHES
                .iter()
                .any(|a| name == format!("grub/{}/grub.cfg", a.platform))
        {
            return Some(
                GrubFirst
                    .render()
                    .map(|t| Served::Bytes(t.into_bytes()))
                    .map_err(|e| Refusal::Io(e.to_string())),
            );
        }
        if let Some(mac) = name
            .strip_prefix("grub/")
            .and_then(|n| n.strip_suffix(".cfg"))
        {
            let mac: MacAddr = mac.parse().ok()?;
            return Some(match boot_config_for(app, mac, Loader::Grub).await {
                Ok((choice, cfg)) => {
                    tracing::info!(mac = %mac, peer = %peer, choice = ?choice, "grub.cfg");
                    Ok(Served::Bytes(cfg.into_bytes()))
                }
                Err(e) => {
                    tracing::warn!(mac = %mac, error = %e, "grub.cfg failed");
                    let id = app.inventory.get().id(mac);
                    app.store
                        .event(id, "error", format!("boot script failed: {e}"));
                    Err(Refusal::Io(e.to_string()))
                }
            });
        }
        if let Some(rest) = name.strip_prefix("stemcell/") {
            let (mac, file) = rest.split_once('/')?;
            let mac = app.inventory.get().id(mac.parse().ok()?);
            let path = match file {
                "vmlinuz" => app.config.stemcell.kernel.clone(),
                "initrd.img" => app.config.stemcell.initrd.clone(),
                _ => return None,
            };
            if file == "vmlinuz" {
                if let Some((_, why)) = installer_boot_refused(app, mac).await {
                    return Some(Err(Refusal::Denied(why.trim_end().to_string())));
                }
            }
            app.store
                .event(mac, "file", format!("fetched stem-cell {file} (TFTP)"));
            return Some(Ok(Served::File(path)));
        }
        if let Some(rest) = name.strip_prefix("assets/") {
            let (mac, rel) = rest.split_once('/')?;
            let mac = app.inventory.get().id(mac.parse().ok()?);
            let root = app.config.assets.as_ref()?;
            let Some(path) = super::files::jail(root, rel) else {
                return Some(Err(Refusal::NotFound));
            };
            let role_kernel = {
                let inv = app.inventory.get();
                inv.machine(&mac)
                    .and_then(|m| inv.role_of(m))
                    .and_then(|r| r.kernel.clone())
            };
            if role_kernel.as_deref() == Some(rel) {
                if let Some((_, why)) = installer_boot_refused(app, mac).await {
                    return Some(Err(Refusal::Denied(why.trim_end().to_string())));
                }
            }
            app.store
                .event(mac, "file", format!("fetched asset {rel} (TFTP)"));
            return Some(Ok(Served::File(path)));
        }
        None
    }
}
