//! stemcell: a PXE/netboot bare-metal bootstrap server.
//!
//! Every machine boots a tiny identical stem cell, which installs a minimal system for the
//! machine's role and hands it to configuration management. See ARCHITECTURE.md for the
//! modules and the boot path.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod dhcp;
pub mod http;
pub mod image;
pub mod inventory;
pub mod journal;
pub mod leases;
pub mod mac;
pub mod metrics;
pub mod os;
pub mod render;
pub mod server;
pub mod state;
pub mod tftp;
pub mod yaml;
