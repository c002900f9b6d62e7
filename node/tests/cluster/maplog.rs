//! The map log's map with real processes: three loggers, puts through the
//! map client, kill -9 of one logger (nothing lost, the backup count is
//! restored), its restart (partitions migrate back), and the lesson: two
//! loggers killed at once lose exactly the entries only they held with
//! one backup, and nothing with two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use distlab_node::presence::MemberState;
use distlab_node::services::maplog::client::MapClient;
use distlab_node::services::maplog::member::MemberStats;
use distlab_node::services::maplog::table::{Table, partition_of};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness::{Lab, embedded_broker};

const T: Duration = Duration::from_secs(30);
const LOGGERS: [&str; 3] = ["logger-1", "logger-2", "logger-3"];
const PARTITIONS: u32 = 271;

fn map_lab(backup_count: usize) -> Lab {
    Lab::with_config(embedded_broker(), |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[maplog]\nlogger_http = \"127.0.0.1:0\"\n\
             backup_count = {backup_count}\ndeadline_ms = 10000\n\n"
        );
        for node in LOGGERS {
            text += &format!("[[node]]\nid = \"{node}\"\nroles = [\"logger\"]\n\n");
        }
        text
    })
}

struct Watch {
    rx: tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    seen: BTreeMap<String, MemberStats>,
}

impl Watch {
    async fn new(lab: &Lab) -> Watch {
        let bus = lab.client("maplog-watch").await;
        let rx = bus
            .subscribe(&format!("{}/telemetry/+/maplog", bus.topics().prefix()))
            .await
            .unwrap();
        std::mem::forget(bus);
        Watch {
            rx,
            seen: BTreeMap::new(),
        }
    }

    /// Waits until the members `live` all report one epoch whose view is
    /// exactly them, each ready with no migration in flight.
    async fn settled(&mut self, live: &[&str]) {
        self.until(live, |_| true).await
    }

    /// [`Watch::settled`], and `pred` holds of the reports.
    async fn until(&mut self, live: &[&str], pred: impl Fn(&[&MemberStats]) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let reports: Vec<&MemberStats> =
                live.iter().filter_map(|n| self.seen.get(*n)).collect();
            if reports.len() == live.len()
                && reports.iter().all(|s| {
                    s.epoch == reports[0].epoch
                        && s.members == live
                        && s.ready
                        && s.migrations_in_flight == 0
                })
                && pred(&reports)
            {
                return;
            }
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{live:?} not settled within {T:?}: {:#?}", self.seen))
                .unwrap();
            if let Ok(s) = m.envelope.body_as::<MemberStats>() {
                self.seen.insert(m.envelope.from.clone(), s);
            }
        }
    }
}

async fn client(lab: &Lab, backup_count: usize) -> MapClient {
    let bus = lab.client("maplog-client").await;
    let c = MapClient::start(
        bus,
        PARTITIONS,
        backup_count,
        Duration::from_secs(15),
        &TaskTracker::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(c.wait_view(T).await, "a map view");
    c
}

/// Puts `n` entries from 16 callers at once; all must be acknowledged.
async fn put_many(c: &MapClient, from: usize, n: usize) -> BTreeMap<String, String> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..16 {
        let c = c.clone();
        set.spawn(async move {
            let mut done = Vec::new();
            for i in (from + w..from + n).step_by(16) {
                let (k, v) = (format!("uuid-{i}"), format!("message {i}"));
                c.put(&k, &v)
                    .await
                    .unwrap_or_else(|e| panic!("put {k}: {e}"));
                done.push((k, v));
            }
            done
        });
    }
    let mut all = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

/// The live check: acknowledged entries not read back.
async fn missing(c: &MapClient, acked: &BTreeMap<String, String>) -> BTreeSet<String> {
    let read: HashMap<String, String> = c.entries().await.unwrap().into_iter().collect();
    acked
        .iter()
        .filter(|(k, v)| read.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

async fn start(lab: &mut Lab) -> (HashMap<&'static str, u32>, Watch) {
    let mut watch = Watch::new(lab).await;
    let mut obs = lab.observer().await;
    let mut pids = HashMap::new();
    for node in LOGGERS {
        pids.insert(node, lab.spawn(node));
    }
    for node in LOGGERS {
        obs.wait_state(node, MemberState::Up, pids[node], T).await;
    }
    watch.settled(&LOGGERS).await;
    (pids, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_logger_down_loses_nothing_and_partitions_migrate_back() {
    let mut lab = map_lab(1);
    let (pids, mut watch) = start(&mut lab).await;
    let c = client(&lab, 1).await;
    let mut acked = put_many(&c, 0, 1000).await;
    assert_eq!(c.entries().await.unwrap().len(), 1000);

    lab.signal(pids["logger-2"], Signal::SIGKILL);
    // Puts go on while the view changes; all of them are acknowledged.
    acked.extend(put_many(&c, 1000, 200).await);
    watch.settled(&["logger-1", "logger-3"]).await;
    assert!(
        missing(&c, &acked).await.is_empty(),
        "nothing lost with one down"
    );
    // The backup count holds again: every entry is on two members (the
    // backups' reports may lag the owners' by a period).
    watch
        .until(&["logger-1", "logger-3"], |r| {
            let owned: u64 = r.iter().map(|s| s.owned_entries).sum();
            let backed: u64 = r.iter().map(|s| s.backup_entries).sum();
            (owned, backed) == (1200, 1200)
        })
        .await;

    let mut obs = lab.observer().await;
    let pid = lab.spawn("logger-2");
    obs.wait_state("logger-2", MemberState::Up, pid, T).await;
    watch.settled(&LOGGERS).await;
    assert!(
        watch.seen["logger-2"].owned_entries > 0 && watch.seen["logger-2"].migrations_done > 0,
        "partitions migrated back: {:#?}",
        watch.seen["logger-2"]
    );
    assert!(
        missing(&c, &acked).await.is_empty(),
        "nothing lost after the return"
    );
    assert_eq!(c.entries().await.unwrap().len(), 1200, "each entry once");
}

/// Kills two loggers at once; returns what the live check found missing
/// and what the partition table says only they held.
async fn two_down(backup_count: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut lab = map_lab(backup_count);
    let (pids, mut watch) = start(&mut lab).await;
    let c = client(&lab, backup_count).await;
    let acked = put_many(&c, 0, 600).await;
    lab.signal(pids["logger-1"], Signal::SIGKILL);
    lab.signal(pids["logger-2"], Signal::SIGKILL);
    watch.settled(&["logger-3"]).await;
    let lost = missing(&c, &acked).await;
    let names: Vec<String> = LOGGERS.iter().map(|s| s.to_string()).collect();
    let table = Table::compute(&names, PARTITIONS, backup_count);
    let only_theirs = acked
        .keys()
        .filter(|k| {
            !table
                .holders(partition_of(k, PARTITIONS))
                .any(|h| h == "logger-3")
        })
        .cloned()
        .collect();
    (lost, only_theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_down_at_once_lose_exactly_what_only_they_held() {
    let (lost, only_theirs) = two_down(1).await;
    assert!(!only_theirs.is_empty());
    assert_eq!(
        lost, only_theirs,
        "the live check names exactly the lost entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_down_at_once_lose_nothing_with_two_backups() {
    let (lost, only_theirs) = two_down(2).await;
    assert!(only_theirs.is_empty());
    assert!(lost.is_empty(), "lost {lost:?}");
}

/// One raw HTTP/1.1 request; the status line and headers, and the body.
async fn raw(addr: &str, method: &str, path: &str, form: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = form.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_requests_through_the_facade_and_a_logger() {
    let mut lab = Lab::with_config(embedded_broker(), |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[maplog]\nhttp = \"127.0.0.1:0\"\n\
             logger_http = \"127.0.0.1:0\"\n\n[[node]]\nid = \"facade\"\nroles = [\"facade\"]\n\n"
        );
        for node in LOGGERS {
            text += &format!("[[node]]\nid = \"{node}\"\nroles = [\"logger\"]\n\n");
        }
        text
    });
    let bus = lab.client("facade-watch").await;
    let mut facade_rx = bus
        .subscribe(&bus.topics().telemetry("facade", "facade"))
        .await
        .unwrap();
    let mut logger_rx = bus
        .subscribe(&bus.topics().telemetry("logger-1", "maplog"))
        .await
        .unwrap();
    let (pids, mut watch) = start(&mut lab).await;
    lab.spawn("facade");
    let field = |rx_msg: distlab_node::bus::Incoming| {
        let v: serde_json::Value = rx_msg.envelope.body_as().unwrap();
        v["http"].as_str().unwrap().to_owned()
    };
    let facade = field(
        tokio::time::timeout(T, facade_rx.recv())
            .await
            .unwrap()
            .unwrap(),
    );
    let logger = field(
        tokio::time::timeout(T, logger_rx.recv())
            .await
            .unwrap()
            .unwrap(),
    );

    // The seed's form, as a browser posts it.
    let (head, _) = raw(&facade, "POST", "/polls/", Some("msg=hello+world")).await;
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /polls/thanks"),
        "{head}"
    );
    let (_, body) = raw(&facade, "GET", "/polls/thanks", None).await;
    assert_eq!(body, "Thank's for the message!");
    let (_, body) = raw(&facade, "GET", "/polls/database", None).await;
    assert_eq!(body, "hello world");
    let (head, body) = raw(&facade, "GET", "/polls/", None).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body.contains("name=\"msg\""),
        "{body}"
    );
    let (head, body) = raw(&facade, "POST", "/polls/", Some("other=1")).await;
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("msg"),
        "{head} {body}"
    );
    let (_, body) = raw(&facade, "GET", "/polls/help", None).await;
    assert!(body.starts_with("Welcome!"));

    // The seed's facade posted JSON to a logger.
    let (head, body) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&logger).await.unwrap();
        let json = r#"{"UUID": 123456, "msg": "direct"}"#;
        let req = format!(
            "POST /database/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (h, b) = text.split_once("\r\n\r\n").unwrap();
        (h.to_owned(), b.to_owned())
    };
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "OK",
        "{head} {body}"
    );

    // With a logger killed, every message is still logged and readable.
    lab.signal(pids["logger-3"], Signal::SIGKILL);
    for i in 0..30 {
        let (head, _) = raw(&facade, "POST", "/polls/", Some(&format!("msg=after+{i}"))).await;
        assert!(
            head.to_ascii_lowercase()
                .contains("location: /polls/thanks"),
            "{head}"
        );
    }
    watch.settled(&["logger-1", "logger-2"]).await;
    let (_, body) = raw(&facade, "GET", "/polls/database", None).await;
    let lines: BTreeSet<&str> = body.lines().collect();
    assert_eq!(lines.len(), 32, "{body}");
    assert!(
        lines.contains("hello world") && lines.contains("direct") && lines.contains("after 29")
    );
}
