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
