//! Histories: every client operation a load or scenario issues, as
//! invoke / ok / fail / info with its process, time and value, and the
//! faults as `nemesis` operations; written as JSON lines and in Jepsen's
//! EDN history format, so Knossos or Elle can check a run offline.
//!
//! The meaning of the types is Jepsen's: `ok` happened, `fail` certainly
//! did not, `info` may or may not have (a timeout, an answer lost).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who did it: a client process (a number), or the fault injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Actor {
    Client(u64),
    Nemesis(Nemesis),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nemesis {
    Nemesis,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    /// Nanoseconds since the history began.
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub process: Actor,
    pub f: String,
    pub value: Value,
}

impl Op {
    /// This op as one EDN map, e.g. `{:index 3, :time 1200, :type :ok,
    /// :process 0, :f :enqueue, :value "m0"}`.
    pub fn to_edn(&self) -> String {
        let kind = match self.kind {
            OpType::Invoke => ":invoke",
            OpType::Ok => ":ok",
            OpType::Fail => ":fail",
            OpType::Info => ":info",
        };
        let process = match self.process {
            Actor::Client(p) => p.to_string(),
            Actor::Nemesis(_) => ":nemesis".to_owned(),
        };
        format!(
            "{{:index {}, :time {}, :type {kind}, :process {process}, :f {}, :value {}}}",
            self.index,
            self.time,
            keyword(&self.f),
            edn(&self.value)
        )
    }
}

/// `:name`, with characters EDN keywords cannot hold replaced by `-`.
fn keyword(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_*+!?<>=.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(":{clean}")
}

/// A JSON value in EDN: objects become maps with keyword keys.
pub fn edn(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(edn).collect();
            format!("[{}]", inner.join(" "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} {}", keyword(k), edn(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    ops: Vec<Op>,
    next_process: u64,
}

/// A history being recorded; cheap to clone, shared by every client.
#[derive(Debug, Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for History {}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// An operation invoked and not yet completed.
#[derive(Debug, Clone)]
#[must_use = "complete the operation"]
pub struct Pending {
    process: u64,
    f: String,
}

impl History {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                started: Instant::now(),
                ops: Vec::new(),
                next_process: 0,
            })),
        }
    }

    /// A new client process id (a client that timed out gets a new one, as
    /// in Jepsen: its earlier op may still be in flight).
    pub fn process(&self) -> u64 {
        let mut i = self.inner.lock();
        i.next_process += 1;
        i.next_process - 1
    }

    fn push(&self, kind: OpType, process: Actor, f: &str, value: Value) {
        let mut i = self.inner.lock();
        let time = u64::try_from(i.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let index = i.ops.len() as u64;
        i.ops.push(Op {
            index,
            time,
            kind,
            process,
            f: f.to_owned(),
            value,
        });
    }

    pub fn invoke(&self, process: u64, f: &str, value: Value) -> Pending {
        self.push(OpType::Invoke, Actor::Client(process), f, value);
        Pending {
            process,
            f: f.to_owned(),
        }
    }

    /// Completes `pending` as `kind` (ok, fail or info) with `value`.
    pub fn complete(&self, pending: Pending, kind: OpType, value: Value) {
        self.push(kind, Actor::Client(pending.process), &pending.f, value);
    }

    /// A fault (or its end), as the nemesis's `info` op.
    pub fn nemesis(&self, f: &str, value: Value) {
        self.push(OpType::Info, Actor::Nemesis(Nemesis::Nemesis), f, value);
    }

    /// Completes, as `info` (may or may not have happened), every
    /// operation still open: those abandoned when their load stopped.
    pub fn close_open(&self) -> usize {
        let open: Vec<(u64, String)> = {
            let i = self.inner.lock();
            let mut last: std::collections::BTreeMap<u64, &Op> = std::collections::BTreeMap::new();
            for op in &i.ops {
                if let Actor::Client(p) = op.process {
                    last.insert(p, op);
                }
            }
            last.into_iter()
                .filter(|(_, op)| op.kind == OpType::Invoke)
                .map(|(p, op)| (p, op.f.clone()))
                .collect()
        };
        for (process, f) in &open {
            self.push(OpType::Info, Actor::Client(*process), f, Value::Null);
        }
        open.len()
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().ops.clone()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `history.jsonl`, `history.edn` and `report.json` (`report`)
    /// into `dir` (made if missing); returns `dir`.
    pub fn save(&self, dir: &Path, report: &Value) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let ops = self.ops();
        let mut jsonl = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        let mut edn = std::io::BufWriter::new(std::fs::File::create(dir.join("history.edn"))?);
        for op in &ops {
            serde_json::to_writer(&mut jsonl, op)?;
            jsonl.write_all(b"\n")?;
            writeln!(edn, "{}", op.to_edn())?;
        }
        jsonl.flush()?;
        edn.flush()?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
        )?;
        Ok(dir.to_owned())
    }
}

/// `<root>/runs/<UTC time>-<name>`: where a run's history goes.
pub fn run_dir(root: &Path, name: &str) -> PathBuf {
    let secs = crate::envelope::now_ms() / 1000;
    let (y, mo, d, h, mi, s) = civil(secs);
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join("-");
    root.join("runs")
        .join(format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{slug}"))
}

/// Seconds since the Unix epoch as UTC (year, month, day, hour, minute,
/// second), by Howard Hinnant's days-from-civil inverse.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_are_recorded_in_order_with_their_processes() {
        let h = History::new();
        let p = h.process();
        let q = h.process();
        assert_ne!(p, q);
        let a = h.invoke(p, "enqueue", json!("m0"));
        let b = h.invoke(q, "enqueue", json!("m1"));
        h.nemesis("isolate", json!({"node": "mom-a"}));
        h.complete(b, OpType::Info, Value::Null);
        h.complete(a, OpType::Ok, json!("m0"));
        let c = h.invoke(p, "enqueue", json!("m2"));
        drop(c);
        assert_eq!(h.close_open(), 1, "the abandoned one");
        assert_eq!(h.close_open(), 0);
        let closed = h.ops().pop().unwrap();
        assert_eq!(
            (closed.kind, closed.process),
            (OpType::Info, Actor::Client(p))
        );
        let ops = h.ops()[..5].to_vec();
        let kinds: Vec<(OpType, Actor)> = ops.iter().map(|o| (o.kind, o.process)).collect();
        assert_eq!(
            kinds,
            vec![
                (OpType::Invoke, Actor::Client(p)),
                (OpType::Invoke, Actor::Client(q)),
                (OpType::Info, Actor::Nemesis(Nemesis::Nemesis)),
                (OpType::Info, Actor::Client(q)),
                (OpType::Ok, Actor::Client(p)),
            ]
        );
        assert!(
            ops.windows(2)
                .all(|w| w[0].time <= w[1].time && w[0].index + 1 == w[1].index)
        );
        assert_eq!(ops[4].f, "enqueue");
    }

    #[test]
    fn edn_is_what_jepsen_reads() {
        let op = Op {
            index: 3,
            time: 1200,
            kind: OpType::Ok,
            process: Actor::Client(0),
            f: "enqueue".into(),
            value: json!("say \"hi\"\n"),
        };
        assert_eq!(
            op.to_edn(),
            r#"{:index 3, :time 1200, :type :ok, :process 0, :f :enqueue, :value "say \"hi\"\n"}"#
        );
        let nemesis = Op {
            process: Actor::Nemesis(Nemesis::Nemesis),
            kind: OpType::Info,
            f: "start partition".into(),
            value: json!({"groups": [["a"], ["b", "c"]], "n": null}),
            ..op
        };
        assert_eq!(
            nemesis.to_edn(),
            r#"{:index 3, :time 1200, :type :info, :process :nemesis, :f :start-partition, :value {:groups [["a"] ["b" "c"]], :n nil}}"#
        );
    }

    #[test]
    fn a_saved_history_reads_back_from_its_json_lines() {
        let h = History::new();
        let p = h.process();
        let a = h.invoke(p, "buy", json!(3));
        h.complete(a, OpType::Fail, json!("out of stock"));
        let dir = tempfile::tempdir().unwrap();
        let out = h
            .save(&dir.path().join("run"), &json!({"passed": true}))
            .unwrap();
        let text = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
        let back: Vec<Op> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, h.ops());
        let edn = std::fs::read_to_string(out.join("history.edn")).unwrap();
        assert_eq!(edn.lines().count(), 2);
        assert!(edn.contains(":type :fail"));
        assert!(out.join("report.json").is_file());
    }

    #[test]
    fn run_directories_are_named_by_utc_time_and_scenario() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_796_702_535), (2026, 12, 8, 4, 2, 15));
        let d = run_dir(Path::new("/x"), "MOM: kill the leader!");
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(d.starts_with("/x/runs"));
        assert!(name.ends_with("Z-mom-kill-the-leader"), "{name}");
    }
}
