//! The SQLite side of `svcmeta bench`: the natural relational schema (one row per instance,
//! a tags table and a meta table, an index on every queried column), loaded in memory from
//! the same instances, answering the same query classes; and durable single-row writes into
//! a file database with an fsync per transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{params, params_from_iter, Connection, Statement};
use svcmeta_core::{Health, InstanceFields};

use super::cases::{Answer, Case, Class};

const SCHEMA: &str = "
CREATE TABLE instances (
    slot        INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    service     TEXT    NOT NULL,
    service_key TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    port        INTEGER NOT NULL,
    version     TEXT,
    v_major     INTEGER,
    v_minor     INTEGER,
    v_patch     INTEGER,
    v_pre       INTEGER NOT NULL DEFAULT 0,
    environment TEXT,
    region      TEXT,
    health      TEXT    NOT NULL
);
CREATE TABLE tags (
    instance INTEGER NOT NULL,
    tag      TEXT    NOT NULL,
    PRIMARY KEY (tag, instance)
) WITHOUT ROWID;
CREATE TABLE meta (
    instance INTEGER NOT NULL,
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    PRIMARY KEY (key, value, instance)
) WITHOUT ROWID;
";

/// An index on every queried column; built after the bulk load, then `ANALYZE`.
const INDEXES: &str = "
CREATE INDEX instances_service ON instances (service_key, id);
CREATE INDEX instances_environment ON instances (environment);
CREATE INDEX instances_region ON instances (region);
CREATE INDEX instances_version ON instances (v_major, v_minor, v_patch);
CREATE INDEX instances_address ON instances (address);
CREATE INDEX instances_health ON instances (health);
CREATE INDEX tags_instance ON tags (instance, tag);
CREATE INDEX meta_instance ON meta (instance, key);
ANALYZE;
";

/// Prepared inserts of one instance with its tags and meta pairs.
struct Inserter<'c> {
    instance: Statement<'c>,
    tag: Statement<'c>,
    meta: Statement<'c>,
}

impl<'c> Inserter<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Inserter<'c>> {
        Ok(Inserter {
            instance: conn.prepare(
                "INSERT INTO instances (slot, id, service, service_key, address, port, version, \
                 v_major, v_minor, v_patch, v_pre, environment, region, health) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?,
            tag: conn.prepare("INSERT INTO tags (instance, tag) VALUES (?1, ?2)")?,
            meta: conn.prepare("INSERT INTO meta (instance, key, value) VALUES (?1, ?2, ?3)")?,
        })
    }

    fn insert(
        &mut self,
        slot: i64,
        fields: &InstanceFields,
        health: Health,
    ) -> rusqlite::Result<()> {
        let parsed = fields.version().and_then(svcmeta_core::parse_version);
        let part = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.instance.execute(params![
            slot,
            fields.id,
            fields.service(),
            fields.service().to_ascii_lowercase(),
            fields.address,
            i64::from(fields.port),
            fields.version(),
            part(parsed.as_ref().map(|v| v.major)),
            part(parsed.as_ref().map(|v| v.minor)),
            part(parsed.as_ref().map(|v| v.patch)),
            i64::from(parsed.as_ref().is_some_and(|v| !v.pre.is_empty())),
            fields.environment(),
            fields.region(),
            health.as_str(),
        ])?;
        for tag in fields.tags() {
            self.tag.execute(params![slot, tag])?;
        }
        for (key, value) in fields.meta_iter() {
            self.meta.execute(params![slot, key, value])?;
        }
        Ok(())
    }
}

/// The statements of one query class.
pub(crate) struct ClassSql {
    count: String,
    page: String,
    count_only: bool,
}

impl ClassSql {
    /// The statements of `class`.
    pub(crate) fn of(class: Class) -> ClassSql {
        ClassSql {
            count: class.sql_count(),
            page: class.sql_page(),
            count_only: class.count_only(),
        }
    }
}

/// An in-memory SQLite database holding the catalog.
pub(crate) struct Sqlite {
    conn: Connection,
}

/// What loading SQLite took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loaded {
    /// Inserting the rows.
    pub(crate) insert: Duration,
    /// Building the indexes and `ANALYZE`.
    pub(crate) index: Duration,
}

impl Sqlite {
    /// Loads instances (slot = position) into a fresh in-memory database and indexes it.
    pub(crate) fn load<'a>(
        instances: impl Iterator<Item = (&'a InstanceFields, Health)>,
    ) -> anyhow::Result<(Sqlite, Loaded)> {
        let mut conn = Connection::open_in_memory().context("opening SQLite in memory")?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        let started = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut inserter = Inserter::new(&tx)?;
            for (slot, (fields, health)) in instances.enumerate() {
                inserter
                    .insert(slot as i64, fields, health)
                    .with_context(|| format!("inserting {}", fields.id))?;
            }
        }
        tx.commit().context("committing the load")?;
        let insert = started.elapsed();
        let started = Instant::now();
        conn.execute_batch(INDEXES)
            .context("creating the indexes")?;
        let index = started.elapsed();
        Ok((Sqlite { conn }, Loaded { insert, index }))
    }

    /// Answers one case: the count and, unless the class only counts, the first page.
    pub(crate) fn answer(&self, sql: &ClassSql, case: &Case) -> anyhow::Result<Answer> {
        let total: i64 = self
            .conn
            .prepare_cached(&sql.count)?
            .query_row(params_from_iter(case.params.iter()), |row| row.get(0))
            .context("SQLite count")?;
        let ids = if sql.count_only {
            Vec::new()
        } else {
            let mut statement = self.conn.prepare_cached(&sql.page)?;
            let rows = statement.query_map(params_from_iter(case.params.iter()), |row| {
                row.get::<_, String>(0)
            })?;
            rows.collect::<Result<Vec<String>, _>>()
                .context("SQLite page")?
        };
        Ok(Answer {
            total: u64::try_from(total).unwrap_or(0),
            ids,
        })
    }

    /// The plan SQLite chose for a class's page (or count) statement, one line per step.
    pub(crate) fn explain(&self, sql: &ClassSql, case: &Case) -> anyhow::Result<Vec<String>> {
        let text = if sql.count_only {
            &sql.count
        } else {
            &sql.page
        };
        let mut statement = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {text}"))?;
        let rows = statement.query_map(params_from_iter(case.params.iter()), |row| {
            row.get::<_, String>(3)
        })?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// Bytes of the database (page count × page size).
    pub(crate) fn bytes(&self) -> u64 {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap_or(0);
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap_or(0);
        u64::try_from(pages.saturating_mul(size)).unwrap_or(0)
    }

    /// Number of instance rows.
    pub(crate) fn rows(&self) -> anyhow::Result<u64> {
        let rows: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM instances", [], |row| row.get(0))?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// Copies the database into a file (`VACUUM INTO`), for the durable-write comparison.
    pub(crate) fn save_to(&self, path: &Path) -> anyhow::Result<()> {
        let target = path.to_str().context("the SQLite file path is not UTF-8")?;
        self.conn
            .execute("VACUUM INTO ?1", [target])
            .with_context(|| format!("VACUUM INTO {}", path.display()))?;
        Ok(())
    }
}

/// Durable writes into a SQLite file: one registration (its row, tag rows and meta rows) per
/// transaction, `synchronous = FULL`, so each commit waits for an fsync.
pub(crate) struct DurableWrites {
    /// The journal mode in force (`wal` or `delete`).
    pub(crate) journal_mode: String,
    /// Instance rows in the file before the writes.
    pub(crate) rows_before: u64,
    /// Latency of each transaction.
    pub(crate) latencies: Vec<Duration>,
    /// Wall time of all of them.
    pub(crate) elapsed: Duration,
}

/// Opens `path` with `journal_mode` (`WAL` or `DELETE`) and `synchronous = FULL` and writes
/// every registration in its own transaction, slots after the largest in the file.
pub(crate) fn durable_writes<'a>(
    path: &Path,
    journal_mode: &str,
    fields: impl Iterator<Item = &'a InstanceFields>,
) -> anyhow::Result<DurableWrites> {
    let mut conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if tables == 0 {
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(INDEXES)?;
    }
    let mode: String = conn.query_row(
        &format!("PRAGMA journal_mode = {journal_mode}"),
        [],
        |row| row.get(0),
    )?;
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    let rows_before: i64 = conn.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))?;
    let mut slot: i64 =
        conn.query_row("SELECT COALESCE(MAX(slot), -1) FROM instances", [], |r| {
            r.get(0)
        })?;
    let mut latencies = Vec::new();
    let started = Instant::now();
    for fields in fields {
        slot += 1;
        let began = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut inserter = Inserter::new(&tx)?;
            inserter.insert(slot, fields, Health::Passing)?;
        }
        tx.commit().context("committing a durable SQLite write")?;
        latencies.push(began.elapsed());
    }
    Ok(DurableWrites {
        journal_mode: mode,
        rows_before: u64::try_from(rows_before).unwrap_or(0),
        latencies,
        elapsed: started.elapsed(),
    })
}
