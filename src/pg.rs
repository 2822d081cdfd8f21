//! The PostgreSQL connection shared by the stores that can live in a database (leases,
//! machine state): connecting with the config's URL and password file, the schema and its
//! migrations, and the LISTEN connection that tells a server what the others changed.
//!
//! Several stemcell servers share one database. Everything that must hold across them is
//! the database's job, not the servers' memory: an address is a row keyed by the address
//! (two MACs can never hold it), and a change is announced with NOTIFY by a trigger, so
//! every writer — another stemcell, an operator's `psql` — is seen the same way.
//!
//! The schema version is a row in `stemcell_schema`. A server applies the migrations it
//! knows under an advisory lock (two servers starting at once migrate once) and refuses a
//! database whose version is newer than its own: it cannot know what the newer schema
//! means for the rows it would write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The schema this binary writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The channel lease changes are announced on (payload: a line per row,
/// `ip mac state expires server`).
pub(crate) const LEASE_CHANNEL: &str = "stemcell_lease";
/// The channel machine changes are announced on (payload: the MAC and the writer).
pub(crate) const MACHINE_CHANNEL: &str = "stemcell_machine";

/// How long connecting may take before it counts as a failure.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: leases, machines and their events, and the triggers that announce changes.
    r#"
CREATE TABLE stemcell_lease4 (
    ip      inet PRIMARY KEY,
    mac     text NOT NULL,
    state   text NOT NULL CHECK (state IN ('bound', 'released', 'declined')),
    -- Unix seconds: lease end (bound), quarantine end (declined), release time (released).
    expires bigint NOT NULL,
    server  text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stemcell_lease4_mac ON stemcell_lease4 (mac);
-- Changes are announced once per statement, not per row: a writer commits a batch of
-- leases in one statement, and one NOTIFY per 100 rows (a payload is at most 8,000 bytes)
-- costs the database a fraction of one per row. A line per row: ip mac state expires server.
CREATE FUNCTION stemcell_lease4_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(concat_ws(' ', host(ip), mac, state, expires, server), E'\n')
        FROM (SELECT *, (row_number() OVER () - 1) / 100 AS part FROM changed) t
        GROUP BY part
    LOOP
        PERFORM pg_notify('stemcell_lease', chunk);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER stemcell_lease4_inserted AFTER INSERT ON stemcell_lease4
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION stemcell_lease4_notify();
CREATE TRIGGER stemcell_lease4_updated AFTER UPDATE ON stemcell_lease4
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION stemcell_lease4_notify();

CREATE TABLE stemcell_machine (
    mac     text PRIMARY KEY,
    record  jsonb NOT NULL,
    server  text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE stemcell_event (
    id      bigserial PRIMARY KEY,
    mac     text NOT NULL,
    event   jsonb NOT NULL,
    server  text NOT NULL
);
CREATE INDEX stemcell_event_mac ON stemcell_event (mac, id);
CREATE FUNCTION stemcell_machine_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('stemcell_machine', json_build_object(
            'mac', OLD.mac, 'server', '')::text);
        RETURN NULL;
    END IF;
    PERFORM pg_notify('stemcell_machine', json_build_object(
        'mac', NEW.mac, 'server', NEW.server)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER stemcell_machine_notify AFTER INSERT OR UPDATE OR DELETE ON stemcell_machine
    FOR EACH ROW EXECUTE FUNCTION stemcell_machine_notify();
CREATE TRIGGER stemcell_event_notify AFTER INSERT ON stemcell_event
    FOR EACH ROW EXECUTE FUNCTION stemcell_machine_notify();

-- Secrets every server sharing the database uses alike (the discovery key).
CREATE TABLE stemcell_secret (
    name    text PRIMARY KEY,
    value   bytea NOT NULL
);
"#,
];

/// `store.postgres` in stemcell.yaml.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PgConfig {
    /// A libpq-style URL or key=value string (`postgresql://user@host/db`,
    /// `host=/run/postgresql dbname=stemcell`); a password in it is allowed but
    /// `password_file` keeps it out of the config.
    pub(crate) url: String,
    pub(crate) password_file: Option<PathBuf>,
}

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    #[error("store.postgres.url: {0}")]
    Url(String),
    #[error("store.postgres.password_file {path}: {error}")]
    PasswordFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error(
        "the database's schema is version {found}, newer than this stemcell's ({ours}): a newer \
         stemcell migrated it; run that version (or restore a backup from before it)"
    )]
    TooNew { found: i32, ours: i32 },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl PgConfig {
    /// The connection settings with the password file read.
    pub(crate) fn settings(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
        if let Some(path) = &self.password_file {
            let pw = read_password(path)?;
            cfg.password(pw);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("stemcell");
        }
        cfg.connect_timeout(CONNECT_TIMEOUT);
        Ok(cfg)
    }
}

fn read_password(path: &Path) -> Result<String, PgError> {
    let text = std::fs::read_to_string(path).map_err(|error| PgError::PasswordFile {
        path: path.to_path_buf(),
        error,
    })?;
    let pw = text.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(PgError::PasswordFile {
            path: path.to_path_buf(),
            error: std::io::Error::other("the file is empty"),
        });
    }
    Ok(pw)
}

/// A connected client; its connection runs on a task of its own until the client is
/// dropped or the connection fails. Notifications, if `notify` is given, go there.
pub(crate) async fn connect(
    cfg: &tokio_postgres::Config,
    notify: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, PgError> {
    let (client, mut conn) = tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(NoTls))
        .await
        .map_err(|_| PgError::Connect("timed out".into()))?
        .map_err(|e| PgError::Connect(describe(&e)))?;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(tx) = &notify {
                        let _ = tx.send(n);
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!(notice = %n.message(), "database notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %describe(&e), "database connection lost");
                    break;
                }
                None => break,
            }
        }
    });
    Ok(client)
}

/// A connection LISTENing on `channel`, and the notifications it receives (the receiver
/// ends when the connection does).
pub(crate) async fn listen(
    cfg: &tokio_postgres::Config,
    channel: &str,
) -> Result<
    (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    PgError,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = connect(cfg, Some(tx)).await?;
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok((client, rx))
}

/// A database error with its server-side detail, which `Display` leaves out.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// Bring the schema to [`SCHEMA_VERSION`], or refuse a newer one. Safe to run from
/// several servers at once.
pub(crate) async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    let tx = client.transaction().await?;
    // One migrating server at a time (the key is "stem" in ASCII).
    tx.execute("SELECT pg_advisory_xact_lock(1937008997)", &[])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS stemcell_schema (version integer NOT NULL, \
         migrated timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT max(version) FROM stemcell_schema", &[])
        .await?
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::TooNew {
            found,
            ours: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO stemcell_schema (version) VALUES ($1)", &[&to])
            .await?;
        tracing::info!(version = to, "database schema migrated");
    }
    tx.commit().await?;
    Ok(SCHEMA_VERSION)
}

/// A name for this server process in the rows it writes, unique among the servers that
/// share a database: the host name and a random suffix (a restarted server is a new
/// writer, so it hears its predecessor's announcements like anyone else's).
pub(crate) fn server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stemcell".into());
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!(
        "{host}-{:08x}-{}",
        u32::from_le_bytes(r),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_to_the_schema_version() {
        assert_eq!(MIGRATIONS.len() as i32, SCHEMA_VERSION);
    }

    #[test]
    fn password_file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("pw");
        std::fs::write(&empty, "\n").unwrap();
        let c = PgConfig {
            url: "host=/tmp dbname=x".into(),
            password_file: Some(empty.clone()),
        };
        let e = c.settings().unwrap_err().to_string();
        assert!(e.contains("pw") && e.contains("empty"), "{e}");
        std::fs::write(&empty, "secret\n").unwrap();
        assert_eq!(c.settings().unwrap().get_password(), Some(&b"secret"[..]));
        let missing = PgConfig {
            password_file: Some(dir.path().join("nope")),
            ..c
        };
        assert!(missing.settings().unwrap_err().to_string().contains("nope"));
        let bad = PgConfig {
            url: "postgresql://[::1".into(),
            password_file: None,
        };
        assert!(bad
            .settings()
            .unwrap_err()
            .to_string()
            .starts_with("store.postgres.url"));
    }
}
