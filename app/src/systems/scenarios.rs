//! Scenario runs from the dashboard: the list (shipped and the lab's own
//! files) and the live state of the one that runs, which the runner (on the
//! link's runtime) writes and the panel reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distlab_node::scenario::Scenario;
use distlab_node::scenario::run::{Event, Report};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// What a run has told so far.
#[derive(Debug, Default, Clone)]
pub struct Feed {
    /// Which scenario (its file name).
    pub file: String,
    pub events: Vec<Event>,
    /// The line of the step being done now.
    pub current: Option<usize>,
    pub started: Option<Instant>,
    /// Set when it ended: the report, or why it could not run.
    pub outcome: Option<Result<Report, String>>,
}

impl Feed {
    pub fn running(&self) -> bool {
        self.started.is_some() && self.outcome.is_none()
    }

    /// Seconds since the start (of the run's clock).
    pub fn elapsed(&self) -> Option<Duration> {
        self.started.map(|s| s.elapsed())
    }
}

/// The dashboard's handle on its scenario runs (one at a time).
#[derive(Clone, Default)]
pub struct ScenarioRuns {
    pub feed: Arc<Mutex<Feed>>,
    stop: Arc<Mutex<Option<CancellationToken>>>,
}

impl ScenarioRuns {
    /// A fresh feed and stop token for a new run of `file`; `None` while
    /// one runs.
    pub fn start(&self, file: &str) -> Option<(Arc<Mutex<Feed>>, CancellationToken)> {
        let mut feed = self.feed.lock();
        if feed.running() {
            return None;
        }
        *feed = Feed {
            file: file.to_owned(),
            started: Some(Instant::now()),
            ..Feed::default()
        };
        let token = CancellationToken::new();
        *self.stop.lock() = Some(token.clone());
        Some((self.feed.clone(), token))
    }

    pub fn stop(&self) {
        if let Some(t) = self.stop.lock().take() {
            t.cancel();
        }
    }

    pub fn snapshot(&self) -> Feed {
        self.feed.lock().clone()
    }
}

/// Records one event of a run into its feed.
pub fn record(feed: &Mutex<Feed>, event: Event) {
    let mut f = feed.lock();
    if let Event::Step { line, .. } = &event {
        f.current = Some(*line);
    }
    f.events.push(event);
}

/// The scenarios the dashboard offers: shipped, and those beside the lab
/// config (`<its dir>/scenarios/*.toml`).
pub type Catalog = Vec<(String, Result<Scenario, String>)>;

/// A run saved under `<data dir>/runs/`: its directory and verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct PastRun {
    pub dir: std::path::PathBuf,
    /// The directory's name: `<UTC time>-<scenario>`.
    pub name: String,
    pub scenario: String,
    pub passed: bool,
    pub operations: u64,
    /// (check, ok, detail)
    pub checks: Vec<(String, bool, String)>,
}

/// The runs saved under `<root>/runs`, newest first (at most `max`).
pub fn past_runs(root: &std::path::Path, max: usize) -> Vec<PastRun> {
    let Ok(entries) = std::fs::read_dir(root.join("runs")) else {
        return Vec::new();
    };
    let mut dirs: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("report.json").is_file())
        .collect();
    dirs.sort();
    dirs.reverse();
    dirs.truncate(max);
    dirs.into_iter()
        .filter_map(|dir| {
            let text = std::fs::read_to_string(dir.join("report.json")).ok()?;
            let r: serde_json::Value = serde_json::from_str(&text).ok()?;
            let checks = r["checks"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            (
                                c["check"].as_str().unwrap_or("?").to_owned(),
                                c["ok"].as_bool().unwrap_or(false),
                                c["detail"].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(PastRun {
                name: dir.file_name()?.to_string_lossy().into_owned(),
                scenario: r["scenario"].as_str().unwrap_or("?").to_owned(),
                passed: r["passed"].as_bool().unwrap_or(false),
                operations: r["operations"].as_u64().unwrap_or(0),
                checks,
                dir,
            })
        })
        .collect()
}

/// A saved history's operations counted by (function, type), e.g.
/// ((`enqueue`, `ok`), 170).
pub type Tally = Vec<((String, String), u64)>;

/// The [`Tally`] of the history saved in `dir`.
pub fn tally(dir: &std::path::Path) -> Result<Tally, String> {
    use distlab_node::history::{Actor, Op};
    let text = std::fs::read_to_string(dir.join("history.jsonl"))
        .map_err(|e| format!("{}: {e}", dir.join("history.jsonl").display()))?;
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (n, line) in text.lines().enumerate() {
        let op: Op = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let who = match op.process {
            Actor::Nemesis(_) => "nemesis".to_owned(),
            Actor::Client(_) => format!("{:?}", op.kind).to_lowercase(),
        };
        *counts.entry((op.f, who)).or_default() += 1;
    }
    Ok(counts.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use distlab_node::history::{History, OpType};
    use serde_json::json;

    use super::*;

    #[test]
    fn saved_runs_are_listed_newest_first_with_their_verdict_and_tally() {
        let root = tempfile::tempdir().unwrap();
        for (name, passed) in [("20261208T010000Z-a", true), ("20261208T020000Z-b", false)] {
            let h = History::new();
            let p = h.process();
            let op = h.invoke(p, "enqueue", json!("m0"));
            h.complete(op, OpType::Ok, json!("m0"));
            h.nemesis("kill", json!("kill mom-a"));
            let report = json!({"scenario": name, "passed": passed, "operations": 3,
                "checks": [{"check": "mom-no-acked-lost", "ok": passed, "detail": "d"}]});
            h.save(&root.path().join("runs").join(name), &report)
                .unwrap();
        }
        let runs = past_runs(root.path(), 10);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].name, "20261208T020000Z-b");
        assert!(!runs[0].passed && runs[1].passed);
        assert_eq!(runs[0].checks[0].0, "mom-no-acked-lost");
        let t = tally(&runs[0].dir).unwrap();
        assert_eq!(
            t,
            vec![
                (("enqueue".into(), "invoke".into()), 1),
                (("enqueue".into(), "ok".into()), 1),
                (("kill".into(), "nemesis".into()), 1),
            ]
        );
        assert!(past_runs(&root.path().join("none"), 10).is_empty());
    }
}
