//! The map log's front with real processes: the facade's seed pages and
//! bad input, each logged message copied to the MOM queue `messages` off
//! the request path (the MOM killed: every POST still thanked, the copies
//! wait and go when it is back), and two `messages` nodes sharing that
//! queue, each message kept once, across a kill -9.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use distlab_node::bus::Bus;
use distlab_node::presence::MemberState;
use distlab_node::services::maplog::facade::{Copied, MESSAGES_QUEUE, NO_MESSAGES, UNSUPPORTED};
use distlab_node::services::mom::client::{Client, ClientError};
use distlab_node::services::mom::model::{Kind, MomError};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{Lab, embedded_broker};

const T: Duration = Duration::from_secs(30);
const LOGGERS: [&str; 3] = ["logger-1", "logger-2", "logger-3"];

/// A MOM node, three loggers, the facade and `messages` messages nodes.
fn front_lab(messages: usize) -> (Lab, Vec<String>) {
    let mut nodes: Vec<String> = ["mom-a", "facade"].map(String::from).to_vec();
    nodes.extend(LOGGERS.map(String::from));
    nodes.extend((1..=messages).map(|i| format!("messages-{i}")));
    let listed = nodes.clone();
    let lab = Lab::with_config(embedded_broker(), |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[mom]\nhttp = \"127.0.0.1:0\"\n\
             visibility_ms = 2000\n\n[maplog]\nhttp = \"127.0.0.1:0\"\nlogger_http = \"127.0.0.1:0\"\n"
        );
        if messages > 0 {
            text += "messages_http = \"127.0.0.1:0\"\n";
        }
        for node in &listed {
            let role = node.split('-').next().unwrap();
            text += &format!("\n[[node]]\nid = \"{node}\"\nroles = [\"{role}\"]\n");
        }
        text
    });
    (lab, nodes)
}

/// The latest telemetry of every node and service.
struct Watch {
    rx: tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    seen: BTreeMap<(String, String), Value>,
}

impl Watch {
    async fn new(lab: &Lab) -> Watch {
        let bus = lab.client("front-watch").await;
        let rx = bus
            .subscribe(&format!("{}/telemetry/#", bus.topics().prefix()))
            .await
            .unwrap();
        // The bus lives as long as the subscription's task holds it.
        std::mem::forget(bus);
        Watch {
            rx,
            seen: BTreeMap::new(),
        }
    }

    fn get(&self, node: &str, service: &str) -> Option<&Value> {
        self.seen.get(&(node.to_owned(), service.to_owned()))
    }

    fn facade(&self, field: &str) -> u64 {
        self.get("facade", "facade")
            .and_then(|v| v[field].as_u64())
            .unwrap_or(u64::MAX)
    }

    /// `field` of the MOM's queue `messages`, as mom-a reports it.
    fn queue(&self, field: &str) -> Option<u64> {
        self.get("mom-a", "mom")?["channels"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == MESSAGES_QUEUE && c["kind"] == "queue")?[field]
            .as_u64()
    }

    /// Every copy on the queue taken and acked: nothing can come again.
    fn queue_drained(&self, published: u64) -> bool {
        self.queue("published") >= Some(published)
            && self.queue("ready") == Some(0)
            && self.queue("unacked") == Some(0)
    }

    fn http(&self, node: &str, service: &str) -> Option<String> {
        Some(self.get(node, service)?["http"].as_str()?.to_owned())
    }

    /// The loggers report one epoch whose view is all of them, ready.
    fn loggers_settled(&self) -> bool {
        let r: Vec<&Value> = LOGGERS
            .iter()
            .filter_map(|n| self.get(n, "maplog"))
            .collect();
        r.len() == LOGGERS.len()
            && r.iter().all(|s| {
                s["epoch"] == r[0]["epoch"]
                    && s["members"] == serde_json::json!(LOGGERS)
                    && s["ready"] == true
                    && s["migrations_in_flight"] == 0
            })
    }

    /// Waits until `pred` holds of the reports.
    async fn until(&mut self, what: &str, pred: impl Fn(&Watch) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        while !pred(self) {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("not {what} within {T:?}: {:#?}", self.seen))
                .unwrap();
            let service = m.topic.rsplit('/').next().unwrap_or_default().to_owned();
            if let Ok(mut v) = m.envelope.body_as::<Value>() {
                v["sent_ms"] = m.envelope.sent_ms.into();
                self.seen.insert((m.envelope.from.clone(), service), v);
            }
        }
    }
}

/// Starts every node and waits until each is up, the loggers settled and
/// every HTTP reported; returns the pids and the facade's address.
async fn start(
    lab: &mut Lab,
    nodes: &[String],
    watch: &mut Watch,
) -> (HashMap<String, u32>, String) {
    let mut obs = lab.observer().await;
    let mut pids = HashMap::new();
    for node in nodes {
        pids.insert(node.clone(), lab.spawn(node));
    }
    for node in nodes {
        obs.wait_state(node, MemberState::Up, pids[node], T).await;
    }
    let messages: Vec<&String> = nodes
        .iter()
        .filter(|n| n.starts_with("messages-"))
        .collect();
    watch
        .until("settled and serving", |w| {
            w.loggers_settled()
                && w.http("facade", "facade").is_some()
                && messages.iter().all(|n| w.http(n, "messages").is_some())
        })
        .await;
    let facade = watch.http("facade", "facade").unwrap();
    (pids, facade)
}

/// One raw HTTP/1.1 request (a hang is a failure); the status line and
/// headers, and the body.
async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            req += &format!("Content-Type: {ct}\r\n");
        }
        req += "\r\n";
        req += body;
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let text = tokio::time::timeout(T, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} not answered within {T:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// Posts the form as a browser does; the redirect's target.
async fn post(facade: &str, msg: &str) -> String {
    let body = format!("msg={}", distlab_node::http1::query_value(msg));
    let (head, _) = raw(facade, "POST", "/polls/", FORM, &body).await;
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("location: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no location: {head}"))
}

/// A consumer of the queue `messages` of its own, as a messages node is.
async fn consumer(bus: Bus) -> (Client, String) {
    let mom = Client::new(bus, "mom-a");
    let key = mom.create_user().await.unwrap();
    match mom.create(Kind::Queue, MESSAGES_QUEUE, &key).await {
        Ok(()) | Err(ClientError::Mom(MomError::Exists(_))) => {}
        Err(e) => panic!("create {MESSAGES_QUEUE}: {e}"),
    }
    mom.subscribe(Kind::Queue, MESSAGES_QUEUE, &key)
        .await
        .unwrap();
    (mom, key)
}

/// Consumes (and acks) until `n` distinct copies came (a retried publish
/// may bring one twice); uuid -> message.
async fn take(mom: &Client, key: &str, n: usize) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + T;
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {got:?} within {T:?}"
        );
        let batch = mom
            .consume_batch(Kind::Queue, MESSAGES_QUEUE, key, 100, 500)
            .await
            .unwrap();
        for d in &batch {
            let c: Copied = serde_json::from_str(&d.body).unwrap();
            got.insert(c.uuid, c.msg);
        }
        if !batch.is_empty() {
            let ids: Vec<u64> = batch.iter().map(|d| d.id).collect();
            mom.ack_batch(key, &ids).await.unwrap();
        }
    }
    got
}

fn sorted(msgs: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = msgs.into_iter().collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_logged_message_is_copied_to_the_mom_even_across_its_outage() {
    let (mut lab, nodes) = front_lab(0);
    let mut watch = Watch::new(&lab).await;
    let (pids, facade) = start(&mut lab, &nodes, &mut watch).await;

    // Bad input: a clear 400, and the facade serves on.
    let too_long = format!("msg={}", "x".repeat(101));
    for (ct, body, says) in [
        (FORM, "other=1", "`msg` is required"),
        (FORM, "msg=+++", "`msg` is required"),
        (FORM, too_long.as_str(), "101 characters"),
        (
            Some("application/json"),
            r#"{"msg": "hi"}"#,
            "application/x-www-form-urlencoded",
        ),
    ] {
        let (head, text) = raw(&facade, "POST", "/polls/", ct, body).await;
        assert!(
            head.starts_with("HTTP/1.1 400") && text.contains(says),
            "{body}: {head} {text}"
        );
    }
    let (head, text) = raw(&facade, "GET", "/polls/nowhere", None, "").await;
    assert!(head.starts_with("HTTP/1.1 404") && text.contains("/polls/help"));
    let (_, text) = raw(&facade, "PUT", "/polls/database", None, "").await;
    assert_eq!(text, UNSUPPORTED);
    // No messages node in this lab: the seed's text.
    let (head, text) = raw(&facade, "GET", "/polls/messages", None, "").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && text == NO_MESSAGES,
        "{text}"
    );
    let (_, text) = raw(&facade, "GET", "/polls", None, "").await;
    assert!(text.contains("name=\"msg\""), "{text}");

    let before: Vec<String> = (0..5).map(|i| format!("before {i} & ünïcode")).collect();
    for m in &before {
        assert_eq!(post(&facade, m).await, "/polls/thanks");
    }
    watch
        .until("5 logged, none queued", |w| {
            w.facade("logged") == 5 && w.facade("queued_for_messages") == 0
        })
        .await;
    let (mom, key) = consumer(lab.client("front-consumer").await).await;
    let copies = take(&mom, &key, 5).await;
    assert_eq!(sorted(copies.values().cloned()), sorted(before.clone()));

    // The MOM killed: every POST is still thanked (none waits for the
    // MOM: each would hang here), the copies wait in the outbox...
    lab.signal(pids["mom-a"], Signal::SIGKILL);
    let during: Vec<String> = (0..5).map(|i| format!("during {i}")).collect();
    for m in &during {
        assert_eq!(post(&facade, m).await, "/polls/thanks");
    }
    watch
        .until("5 copies waiting for the MOM", |w| {
            w.facade("logged") == 10 && w.facade("queued_for_messages") == 5
        })
        .await;
    let (_, text) = raw(&facade, "GET", "/polls/database", None, "").await;
    let logged: BTreeSet<&str> = text.lines().collect();
    assert_eq!(logged.len(), 10, "{text}");

    // ... and go once it is back.
    let pid = lab.spawn("mom-a");
    let mut obs = lab.observer().await;
    obs.wait_state("mom-a", MemberState::Up, pid, T).await;
    watch
        .until("the outbox drained", |w| {
            w.facade("queued_for_messages") == 0
        })
        .await;
    let copies = take(&mom, &key, 5).await;
    assert_eq!(sorted(copies.values().cloned()), sorted(during.clone()));
    assert_eq!(watch.facade("failed"), 0);
    assert_eq!(watch.facade("dropped_for_messages"), 0);
}

/// GET /messages/ of a messages node: its lines.
async fn held_by(watch: &Watch, node: &str) -> Vec<String> {
    let addr = watch.http(node, "messages").unwrap();
    let (head, text) = raw(&addr, "GET", "/messages/", None, "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    text.lines().map(str::to_owned).collect()
}

/// `part` is in the order of `all`.
fn in_order(part: &[String], all: &[String]) -> bool {
    let mut rest = all.iter();
    part.iter().all(|p| rest.any(|a| a == p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_nodes_share_the_queue_and_keep_each_message_once() {
    let (mut lab, nodes) = front_lab(2);
    let mut watch = Watch::new(&lab).await;
    let (pids, facade) = start(&mut lab, &nodes, &mut watch).await;
    let held = |w: &Watch, node: &str| {
        w.get(node, "messages")
            .and_then(|v| v["held"].as_u64())
            .unwrap_or(0)
    };

    let first: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    for m in &first {
        assert_eq!(post(&facade, m).await, "/polls/thanks");
    }
    watch
        .until("20 held in all and every copy acked", |w| {
            held(w, "messages-1") + held(w, "messages-2") == 20 && w.queue_drained(20)
        })
        .await;
    let one = held_by(&watch, "messages-1").await;
    let two = held_by(&watch, "messages-2").await;
    // Each message on one node (competing consumers), each oldest first.
    assert_eq!(one.len() + two.len(), 20, "{one:?} {two:?}");
    assert_eq!(
        sorted(one.iter().chain(&two).cloned()),
        sorted(first.clone())
    );
    assert!(
        in_order(&one, &first) && in_order(&two, &first),
        "{one:?} {two:?}"
    );
    // The facade shows one node's text, as the seed did.
    let texts = [one.join("\n"), two.join("\n")];
    for _ in 0..6 {
        let (_, text) = raw(&facade, "GET", "/polls/messages", None, "").await;
        assert!(texts.contains(&text), "{text}");
    }

    // messages-1 killed: the other takes every new message; the facade's
    // page skips the dead one.
    lab.signal(pids["messages-1"], Signal::SIGKILL);
    lab.wait_exit(pids["messages-1"], T);
    let second: Vec<String> = (0..5).map(|i| format!("later {i}")).collect();
    for m in &second {
        assert_eq!(post(&facade, m).await, "/polls/thanks");
    }
    let before = two.len() as u64;
    watch
        .until("messages-2 holds the later ones, all acked", |w| {
            held(w, "messages-2") == before + 5 && w.queue_drained(25)
        })
        .await;
    let two = held_by(&watch, "messages-2").await;
    assert_eq!(&two[two.len() - 5..], &second[..]);
    for _ in 0..3 {
        let (_, text) = raw(&facade, "GET", "/polls/messages", None, "").await;
        assert_eq!(text, two.join("\n"));
    }

    // Restarted, messages-1 still holds what it committed, once.
    let mut obs = lab.observer().await;
    let restarted = distlab_node::envelope::now_ms();
    let pid = lab.spawn("messages-1");
    obs.wait_state("messages-1", MemberState::Up, pid, T).await;
    watch
        .until("messages-1 reporting again", |w| {
            w.get("messages-1", "messages")
                .is_some_and(|v| v["sent_ms"].as_u64() > Some(restarted))
        })
        .await;
    assert_eq!(held_by(&watch, "messages-1").await, one);
    assert_eq!(held(&watch, "messages-1") + held(&watch, "messages-2"), 25);

    // Both gone: the seed's text.
    for node in ["messages-1", "messages-2"] {
        let pid = if node == "messages-1" {
            pid
        } else {
            pids[node]
        };
        lab.signal(pid, Signal::SIGKILL);
        lab.wait_exit(pid, T);
    }
    let (_, text) = raw(&facade, "GET", "/polls/messages", None, "").await;
    assert_eq!(text, NO_MESSAGES);
}
