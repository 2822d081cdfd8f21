//! stemcell: a PXE/netboot bare-metal bootstrap server.
//!
//! Every machine boots a tiny identical stem cell, which installs a minimal system for the
//! machine's role and hands it to configuration management. See ARCHITECTURE.md for the
//! modules and the boot path.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod adapters;
mod boot;
mod civil;
pub mod cli;
mod client;
mod config;
mod dhcp;
mod dhcp6;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
mod image;
mod images;
mod inventory;
mod jail;
mod journal;
mod leases;
mod logwriter;
mod mac;
mod metrics;
mod network;
mod os;
mod pg;
mod power;
mod privilege;
mod puppet;
mod render;
mod secrets;
mod server;
mod slots;
mod state;
mod tftp;
mod values;
mod yaml;
