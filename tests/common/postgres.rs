//! A private PostgreSQL cluster for one test: Debian's server binaries run as the
//! `postgres` user on a data directory and a Unix socket in a fresh temporary folder,
//! no TCP (`listen_addresses = ''`), password authentication only (scram-sha-256), a
//! `stemcell` role and database. Stopped and removed when dropped, also on panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{is_root, require};

pub struct PgCluster {
    /// Removed on drop (after the server is stopped).
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    /// The `stemcell` role's password, in a file for `store.postgres.password_file`.
    pub password_file: PathBuf,
    superuser_password: String,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/N/bin`).
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PgCluster {
    /// A running cluster, or None (recorded as a skip) without root or PostgreSQL.
    pub fn start() -> Option<PgCluster> {
        if !require("root (to run PostgreSQL as the postgres user)", is_root()) {
            return None;
        }
        let bin = server_bin();
        if !require(
            "PostgreSQL server (apt-get install postgresql)",
            bin.is_some(),
        ) {
            return None;
        }
        let bin = bin.expect("checked");
        let dir = tempfile::Builder::new()
            .prefix("stemcell-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        let superuser_password = format!("su-{}", std::process::id());
        let pwfile = dir.path().join("su.pw");
        std::fs::write(&pwfile, &superuser_password).unwrap();
        run(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()),
        );
        run(
            "initdb",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-A", "scram-sha-256", "-U", "postgres", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("-D")
                .arg(&data),
        );
        std::fs::write(data.join("pg_hba.conf"), "local all all scram-sha-256\n").unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        use std::io::Write;
        writeln!(
            conf,
            "listen_addresses = ''\nunix_socket_directories = '{}'\nshared_buffers = 16MB\nmax_connections = 40",
            socket_dir.display()
        )
        .unwrap();
        let password_file = dir.path().join("stemcell.pw");
        std::fs::write(&password_file, "stemcell-test-password\n").unwrap();
        let c = PgCluster {
            dir,
            bin,
            data,
            socket_dir,
            password_file,
            superuser_password,
        };
        c.start_server();
        c.psql(
            "postgres",
            "CREATE ROLE stemcell LOGIN PASSWORD 'stemcell-test-password'",
        );
        c.psql("postgres", "CREATE DATABASE stemcell OWNER stemcell");
        Some(c)
    }

    /// Start the server (again) and wait until it accepts connections.
    pub fn start_server(&self) {
        run(
            "pg_ctl start",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"]),
        );
    }

    /// Stop the server: `fast` ends the sessions and shuts down cleanly, `immediate` is a
    /// crash (no checkpoint: committed data comes back from the WAL at the next start).
    pub fn stop_server(&self, mode: &str) {
        run(
            "pg_ctl stop",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-m", mode, "stop"]),
        );
    }

    /// `store.postgres.url` for the `stemcell` role and database.
    pub fn url(&self) -> String {
        format!(
            "host={} dbname=stemcell user=stemcell",
            self.socket_dir.display()
        )
    }

    /// The `store:` block of a stemcell.yaml using this cluster.
    pub fn store_yaml(&self) -> String {
        format!(
            "store:\n  postgres:\n    url: \"{}\"\n    password_file: {}\n",
            self.url(),
            self.password_file.display()
        )
    }

    /// Run SQL as the superuser on `db`; the rows, `|`-separated, one a line.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run(
            &format!("psql {sql}"),
            Command::new(self.bin.join("psql"))
                .env("PGPASSWORD", &self.superuser_password)
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                ])
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-d", db, "-c", sql]),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", "immediate", "stop"])
            .output();
    }
}
