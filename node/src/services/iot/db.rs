//! The store's SQLite database: the `meas` table, plus the token state that
//! must survive a restart (which grants were used, for which data).
//!
//! A batch and the record of its grant commit in one transaction, so after a
//! crash either both are there or neither is. `(sensor, ts_ms)` is unique and
//! inserts ignore duplicates: no reading is ever written twice.

use std::path::Path;

use rusqlite::{Connection, params};

use super::sensor::Reading;

pub struct MeasDb {
    conn: Connection,
}

/// What one committed batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Rows inserted (readings already present are skipped).
    pub inserted: usize,
    /// Those rows, with the ids the table gave them, in order.
    pub rows: Vec<Row>,
}

/// One row of `meas`: its id and the reading.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub id: i64,
    #[serde(flatten)]
    pub reading: Reading,
}

impl Row {
    /// The row as the seed's server returned it (`SELECT *` of its `meas`
    /// table): `[id, sensor, humidity, temperature, pressure, battery,
    /// timestamp]`, the timestamp as Python printed a datetime.
    pub fn seed_shape(&self) -> serde_json::Value {
        let r = &self.reading;
        serde_json::json!([
            self.id,
            r.sensor,
            r.humidity,
            r.temperature,
            r.pressure,
            r.battery,
            super::sensor::seed_timestamp(r.ts_ms),
        ])
    }
}

impl MeasDb {
    /// Opens (or creates) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> rusqlite::Result<MeasDb> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database (tests).
    pub fn memory() -> rusqlite::Result<MeasDb> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<MeasDb> {
        // WAL keeps readers off the writer's back; FULL makes an acknowledged
        // batch survive a power cut, and batches are large enough to afford it.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meas (
                 id          INTEGER PRIMARY KEY,
                 sensor      TEXT    NOT NULL,
                 humidity    REAL    NOT NULL,
                 temperature REAL    NOT NULL,
                 pressure    REAL    NOT NULL,
                 battery     REAL    NOT NULL,
                 ts          TEXT    NOT NULL,
                 ts_ms       INTEGER NOT NULL,
                 UNIQUE (sensor, ts_ms)
             );
             CREATE TABLE IF NOT EXISTS grants_used (
                 epoch  INTEGER NOT NULL,
                 seq    INTEGER NOT NULL,
                 holder TEXT    NOT NULL,
                 digest INTEGER NOT NULL,
                 rows   INTEGER NOT NULL,
                 PRIMARY KEY (epoch, seq)
             );",
        )?;
        Ok(MeasDb { conn })
    }

    /// Commits a batch admitted under grant `(epoch, seq)`.
    pub fn commit(
        &mut self,
        epoch: u64,
        seq: u64,
        holder: &str,
        digest: u64,
        readings: &[Reading],
    ) -> rusqlite::Result<Committed> {
        let tx = self.conn.transaction()?;
        let mut rows = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO meas (sensor, humidity, temperature, pressure, battery, ts, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in readings {
                let added = insert.execute(params![
                    r.sensor,
                    r.humidity,
                    r.temperature,
                    r.pressure,
                    r.battery,
                    r.ts,
                    r.ts_ms as i64
                ])?;
                if added == 1 {
                    rows.push(Row {
                        id: tx.last_insert_rowid(),
                        reading: r.clone(),
                    });
                }
            }
        }
        let inserted = rows.len();
        tx.execute(
            "INSERT OR REPLACE INTO grants_used (epoch, seq, holder, digest, rows) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![epoch as i64, seq as i64, holder, digest as i64, inserted as i64],
        )?;
        tx.commit()?;
        Ok(Committed { inserted, rows })
    }

    /// The newest epoch with a committed batch, and the `(seq, digest)` pairs used in it.
    pub fn token_state(&self) -> rusqlite::Result<(u64, Vec<(u64, u64)>)> {
        let epoch: i64 =
            self.conn
                .query_row("SELECT COALESCE(MAX(epoch), 0) FROM grants_used", [], |r| {
                    r.get(0)
                })?;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, digest FROM grants_used WHERE epoch = ?1")?;
        let used = stmt
            .query_map([epoch], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((epoch as u64, used))
    }

    /// The newest `n` readings, oldest first.
    pub fn latest(&self, n: usize) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, sensor, humidity, temperature, pressure, battery, ts, ts_ms
             FROM meas ORDER BY id DESC LIMIT ?1",
        )?;
        let mut rows = stmt
            .query_map([n as i64], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    reading: Reading {
                        sensor: r.get(1)?,
                        humidity: r.get(2)?,
                        temperature: r.get(3)?,
                        pressure: r.get(4)?,
                        battery: r.get(5)?,
                        ts: r.get(6)?,
                        ts_ms: r.get::<_, i64>(7)? as u64,
                    },
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.reverse();
        Ok(rows)
    }

    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM meas", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }
}

/// The digest of a batch: SHA-256 over every field of every reading, cut to
/// 63 bits (SQLite stores signed 64-bit integers). The holder signs it into
/// its proof, so changing any value of a signed batch (or finding another
/// batch with the same digest) is out of reach; the store also uses it to
/// tell a retried batch from other data under the same grant.
pub fn digest(readings: &[Reading]) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in readings {
        h.update((r.sensor.len() as u64).to_be_bytes());
        h.update(r.sensor.as_bytes());
        h.update(r.ts_ms.to_be_bytes());
        for v in [r.humidity, r.temperature, r.pressure, r.battery] {
            h.update(v.to_bits().to_be_bytes());
        }
        h.update((r.ts.len() as u64).to_be_bytes());
        h.update(r.ts.as_bytes());
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::iot::sensor::SensorSim;

    fn readings(n: u64, from: u64) -> Vec<Reading> {
        let mut s = SensorSim::new("s1", 1, (10, 10));
        (from..from + n).map(|t| s.next(t)).collect()
    }

    #[test]
    fn batches_commit_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meas.db");
        let batch = readings(100, 0);
        {
            let mut db = MeasDb::open(&path).unwrap();
            assert_eq!(
                db.commit(3, 1, "r1", digest(&batch), &batch)
                    .unwrap()
                    .inserted,
                100
            );
            // The same readings again (e.g. a retry under a new grant): nothing doubles.
            assert_eq!(
                db.commit(3, 2, "r1", digest(&batch), &batch)
                    .unwrap()
                    .inserted,
                0
            );
            assert_eq!(db.count().unwrap(), 100);
        }
        let db = MeasDb::open(&path).unwrap();
        assert_eq!(db.count().unwrap(), 100);
        let (epoch, used) = db.token_state().unwrap();
        assert_eq!(epoch, 3);
        assert_eq!(used.len(), 2);
        let latest = db.latest(10).unwrap();
        assert_eq!(latest.len(), 10);
        assert_eq!(latest.last().unwrap().reading.ts_ms, 99);
        assert_eq!(latest[0].reading.ts_ms, 90);
        // Ids are the table's: the 100th row is id 100.
        assert_eq!(latest.last().unwrap().id, 100);
    }

    #[test]
    fn a_commit_returns_the_rows_it_added_with_their_ids() {
        let mut db = MeasDb::memory().unwrap();
        let first = readings(3, 0);
        let c = db.commit(1, 1, "r1", digest(&first), &first).unwrap();
        assert_eq!(c.rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        // Overlapping: only the new readings come back, with the next ids.
        let more = readings(4, 1);
        let c = db.commit(1, 2, "r1", digest(&more), &more).unwrap();
        assert_eq!(c.inserted, 2);
        assert_eq!(c.rows.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(c.rows[0].reading, more[2]);
        let row = &c.rows[0];
        let seed = row.seed_shape();
        assert_eq!(seed[0], 4);
        assert_eq!(seed[1], row.reading.sensor.as_str());
        assert_eq!(seed[3], row.reading.temperature);
        assert_eq!(seed.as_array().unwrap().len(), 7);
    }

    #[test]
    fn digest_tells_batches_apart() {
        let a = readings(10, 0);
        let b = readings(10, 1);
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
        // Any value counts, not only which readings are in the batch.
        let mut c = a.clone();
        c[0].temperature += 0.01;
        assert_ne!(digest(&a), digest(&c));
        assert!(digest(&a) <= i64::MAX as u64);
    }
}
