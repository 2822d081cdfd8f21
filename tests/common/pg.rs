//! A private PostgreSQL cluster for one test: Debian's server binaries run as the
//! `postgres` account on a data folder and a socket folder of the test's own, no TCP
//! (`listen_addresses = ''`), password (SCRAM) authentication for the `stemcell` role.
//! Stopped and removed when dropped, also on panic.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{have_tool, is_root, require};

pub struct Pg {
    /// The cluster's folder (data, socket, log), owned by `postgres`.
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// A file with the `stemcell` role's password (for `store.postgres.password_file`).
    pub password_file: PathBuf,
    password: String,
}

/// Debian's PostgreSQL server binaries (`postgresql-15`), if installed.
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

impl Pg {
    /// A started cluster with a database named `db`; `None` (a recorded skip, a failure
    /// under CI) only where this machine cannot run one.
    pub fn start(db: &str) -> Option<Pg> {
        if !require(
            "root (a private PostgreSQL cluster runs as postgres)",
            is_root(),
        ) {
            return None;
        }
        let bin = server_bin();
        if !require(
            "PostgreSQL's server (postgresql-15; scripts/setup-debian.sh installs it)",
            bin.is_some() && have_tool("psql"),
        ) {
            return None;
        }
        let bin = bin.unwrap();
        let dir = PathBuf::from(format!(
            "/tmp/scpg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let password = format!("pw-{}-{}", std::process::id(), rand_u32());
        std::fs::write(dir.join("pwfile"), format!("{password}\n")).unwrap();
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {} to postgres", dir.display());
        let pg = Pg {
            dir,
            bin,
            password_file,
            password,
        };
        pg.as_postgres(&[
            "initdb",
            "-D",
            &pg.data(),
            "-U",
            "stemcell",
            "--pwfile",
            &pg.dir.join("pwfile").to_string_lossy(),
            "-A",
            "scram-sha-256",
            "--no-sync",
        ]);
        pg.start_server();
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// `store.postgres.url` for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} dbname={db} user=stemcell",
            self.socket_dir().display()
        )
    }

    /// The `store:` section of a stemcell.yaml for database `db`.
    pub fn store_yaml(&self, db: &str) -> String {
        format!(
            "store:\n  postgres:\n    url: \"{}\"\n    password_file: {}\n",
            self.url(db),
            self.password_file.display()
        )
    }

    fn as_postgres(&self, args: &[&str]) -> String {
        let tool = self.bin.join(args[0]);
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&tool)
            .args(&args[1..])
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("runuser {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "{} {:?} failed: {}{}",
            tool.display(),
            &args[1..],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start the server (again), waiting until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-k {} -c listen_addresses='' -c max_connections=50",
            self.socket_dir().display()
        );
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &self.dir.join("log").to_string_lossy(),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
    }

    /// Stop the server: `immediate` is a crash (no checkpoint; recovery from the WAL at
    /// the next start), `fast` a clean shutdown.
    pub fn stop_server(&self, mode: &str) {
        self.as_postgres(&["pg_ctl", "-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// Run SQL in `db` with psql; its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(self.socket_dir())
            .args(["-U", "stemcell", "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_le_bytes(b)
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .current_dir("/")
            .output();
        if !Path::new(&self.dir).as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
