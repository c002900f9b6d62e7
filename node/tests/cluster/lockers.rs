//! The lockers with real processes: three MOM nodes, three `users` and
//! three `lockers`; the seed's UserService requests exactly as its web
//! front sends them (GET with a form body), races for the lockers, and
//! kill -9 of the lockers leader and of the MOM leader during a rush.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use distlab_node::presence::MemberState;
use distlab_node::replica::Role;
use distlab_node::replica::shell::GroupStatus;
use distlab_node::services::lockers::wire::{LockersStats, UsersStats};
use distlab_node::services::mom::node::MomStats;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{Lab, embedded_broker};
use crate::mom::{Answer, http};

const T: Duration = Duration::from_secs(30);
const NODES: [&str; 9] = [
    "mom-a",
    "mom-b",
    "mom-c",
    "users-a",
    "users-b",
    "users-c",
    "lockers-a",
    "lockers-b",
    "lockers-c",
];

fn lockers_lab() -> Lab {
    Lab::with_config(embedded_broker(), |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[mom]\nhttp = \"127.0.0.1:0\"\n\
             visibility_ms = 2000\n\n[lockers]\nhttp = \"127.0.0.1:0\"\nresend_ms = 500\n\n"
        );
        for node in NODES {
            let role = node.split('-').next().unwrap();
            text += &format!("[[node]]\nid = \"{node}\"\nroles = [\"{role}\"]\n\n");
        }
        text
    })
}

/// The latest telemetry of the users and lockers nodes.
#[derive(Default, Debug)]
struct Seen {
    users: BTreeMap<String, UsersStats>,
    lockers: BTreeMap<String, LockersStats>,
    mom: BTreeMap<String, GroupStatus>,
}

impl Seen {
    fn users_leader(&self) -> Option<(&String, &UsersStats)> {
        self.users.iter().find(|(_, s)| s.raft.role == Role::Leader)
    }

    fn lockers_leader(&self) -> Option<(&String, &LockersStats)> {
        self.lockers
            .iter()
            .find(|(_, s)| s.raft.role == Role::Leader)
    }
}

struct Watch {
    rx: tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    seen: Seen,
}

impl Watch {
    async fn new(lab: &Lab) -> Watch {
        let bus = lab.client("lockers-watch").await;
        let rx = bus
            .subscribe(&format!("{}/telemetry/#", bus.topics().prefix()))
            .await
            .unwrap();
        // The bus lives as long as the subscription's task holds it.
        std::mem::forget(bus);
        Watch {
            rx,
            seen: Seen::default(),
        }
    }

    /// Waits until the reports satisfy `pred` (reports sent before
    /// `since_ms` are ignored).
    async fn until(&mut self, what: &str, since_ms: u64, pred: impl Fn(&Seen) -> bool) -> &Seen {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if pred(&self.seen) {
                return &self.seen;
            }
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("not {what} within {T:?}: {:#?}", self.seen))
                .unwrap();
            if m.envelope.sent_ms < since_ms {
                continue;
            }
            let from = m.envelope.from.clone();
            if m.topic.ends_with("/users") {
                if let Ok(s) = m.envelope.body_as::<UsersStats>() {
                    self.seen.users.insert(from, s);
                }
            } else if m.topic.ends_with("/lockers") {
                if let Ok(s) = m.envelope.body_as::<LockersStats>() {
                    self.seen.lockers.insert(from, s);
                }
            } else if m.topic.ends_with("/mom")
                && let Ok(s) = m.envelope.body_as::<MomStats>()
            {
                self.seen.mom.insert(from, s.raft);
            }
        }
    }
}

/// Starts every node; returns their pids, the watch, and users-a's HTTP
/// address once both groups lead and the MOM link is up.
async fn start(lab: &mut Lab) -> (HashMap<&'static str, u32>, Watch, String) {
    let mut watch = Watch::new(lab).await;
    let mut obs = lab.observer().await;
    let mut pids = HashMap::new();
    for node in NODES {
        let pid = lab.spawn(node);
        pids.insert(node, pid);
    }
    for node in NODES {
        obs.wait_state(node, MemberState::Up, pids[node], T).await;
    }
    let seen = watch
        .until("users and lockers leading", 0, |s| {
            s.users_leader().is_some()
                && s.lockers_leader().is_some()
                && s.users.get("users-a").is_some_and(|u| u.http.is_some())
        })
        .await;
    let addr = seen.users["users-a"].http.unwrap().to_string();
    (pids, watch, addr)
}

/// Like Python `requests.get(url, data={...})`: a GET with a form body.
async fn seed_get(addr: &str, form: &[(&str, &str)]) -> Answer {
    let encoded = serde_urlencoded::to_string(form).expect("a form");
    http(
        addr,
        "GET",
        "/users_service",
        &[],
        Some(("application/x-www-form-urlencoded", encoded)),
    )
    .await
}

async fn seed(addr: &str, message: &str, name: &str) -> Answer {
    seed_get(addr, &[("message", message), ("user_name", name)]).await
}

fn seed_body(message: &str, data: &str) -> String {
    format!(r#"{{"response": {{"message": "{message}", "data": {data}}}}}"#)
}

async fn api(addr: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
    http(
        addr,
        method,
        path,
        &[],
        body.map(|b| ("application/json", b.to_string())),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_user_service_answers_as_the_seed_did() {
    let mut lab = lockers_lab();
    let (_pids, _watch, addr) = start(&mut lab).await;
    let addr = addr.as_str();

    let r = seed(addr, "add_user", "ann").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, seed_body("added user to db", "null").as_str())
    );
    assert_eq!(r.content_type, "text/html; charset=utf-8");
    let r = seed(addr, "add_user", "ann").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        "\"Error duplicate key value violates unique constraint \\\"users_user_name_key\\\"\\n\
         DETAIL:  Key (user_name)=(ann) already exists.\\n\"\n"
    );
    assert_eq!(r.content_type, "application/json");
    let r = seed(addr, "check_user", "ann").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, seed_body("user_without_locker", "null").as_str())
    );
    let r = seed(addr, "check_user", "bob").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, seed_body("user_not_exists", "null").as_str())
    );
    let r = seed(addr, "free_users_locker", "ann").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, seed_body("user_without_locker", "null").as_str())
    );

    // Asynchronous, as in the seed: the web front polls check_user.
    let r = seed(addr, "get_locker_for_user", "ann").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, seed_body("sent rabbit request", "null").as_str())
    );
    let with_locker = seed_body(
        "user_with_locker",
        r#"{"user_name": "ann", "locker_id": 1}"#,
    );
    poll(addr, "ann", &with_locker).await;
    let r = http(addr, "GET", "/users", &[], None).await;
    assert_eq!(
        r.body,
        "{\n    \"users\": {\n        \"ann\": 1\n    }\n}\n"
    );
    let r = http(addr, "GET", "/locker_service", &[], None).await;
    assert_eq!(r.status, 200);
    let mut want = String::from("{\n    \"lockers\": {\n");
    for i in 1..=20 {
        let sep = if i < 20 { "," } else { "" };
        want += &format!("        \"{i}\": {}{sep}\n", i != 1);
    }
    want += "    }\n}\n";
    assert_eq!(r.body, want);

    let r = seed(addr, "free_users_locker", "ann").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, seed_body("sent rabbit request", "null").as_str())
    );
    poll(addr, "ann", &seed_body("user_without_locker", "null")).await;

    // Missing fields were KeyErrors; an unknown message fell through (None).
    let r = seed_get(addr, &[("message", "check_user")]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "\"Error 'user_name'\"\n")
    );
    let r = seed_get(addr, &[("user_name", "ann")]).await;
    assert_eq!((r.status, r.body.as_str()), (404, "\"Error 'message'\"\n"));
    let r = seed(addr, "dance", "ann").await;
    assert_eq!((r.status, r.body.as_str()), (200, "null\n"));

    // Names are data, stored and shown literally (escaped as Python did).
    for name in ["'; DROP TABLE users; --", "Ольга", "<b>x</b>"] {
        let r = seed(addr, "add_user", name).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
    let r = http(addr, "GET", "/users", &[], None).await;
    assert_eq!(
        r.body,
        "{\n    \"users\": {\n        \"ann\": null,\n        \"'; DROP TABLE users; --\": null,\n        \
         \"\\u041e\\u043b\\u044c\\u0433\\u0430\": null,\n        \"<b>x</b>\": null\n    }\n}\n"
    );
    let page = http(addr, "GET", "/", &[], None).await;
    assert!(page.body.contains("&lt;b&gt;x&lt;/b&gt;"), "{}", page.body);
    assert!(!page.body.contains("<b>x</b>"));
    let r = seed(addr, "delete_user", "'; DROP TABLE users; --").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, seed_body("deleted user from db", "null").as_str())
    );
    let r = api(addr, "GET", "/api/v1/users", None).await;
    let users = r.json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann", "Ольга", "<b>x</b>"]);
    let r = seed(addr, "add_user", &"x".repeat(65)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            seed_body(
                "a user name is 1 to 64 bytes of UTF-8; this one has 65",
                "null"
            )
            .as_str()
        )
    );
}

/// Polls `check_user` until it answers `want`.
async fn poll(addr: &str, name: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let r = seed(addr, "check_user", name).await;
        if r.body == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "check_user {name} still answers {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lockers as the JSON API lists them: locker → holder name.
async fn held(addr: &str) -> BTreeMap<u64, String> {
    let r = api(addr, "GET", "/api/v1/lockers", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["lockers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !l["holder"].is_null())
        .map(|l| {
            (
                l["id"].as_u64().unwrap(),
                l["holder"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asks (`POST`: take, `DELETE`: free) for `name` until the lockers
/// answer, with the same request id each time: the final status (take:
/// 201 or 409; free: 200 or 409) and body.
async fn until_answered(addr: &str, method: &str, name: &str) -> (u16, Value) {
    let mut path = format!("/api/v1/users/{name}/locker");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let r = api(addr, method, &path, None).await;
        match r.status {
            200 | 201 | 409 => return (r.status, r.json()),
            202 => {
                let request = r.json()["request"].as_str().unwrap().to_owned();
                path = format!("/api/v1/users/{name}/locker?request={request}");
            }
            503 => {} // an election: ask again
            other => panic!("{method} for {name}: {other} {}", r.body),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{method} for {name} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn take(addr: &str, name: &str) -> (u16, Value) {
    until_answered(addr, "POST", name).await
}

async fn free(addr: &str, name: &str) -> u16 {
    until_answered(addr, "DELETE", name).await.0
}

async fn add_users(addr: &str, names: &[String]) {
    for name in names {
        let r = api(addr, "POST", "/api/v1/users", Some(json!({ "name": name }))).await;
        assert_eq!(r.status, 201, "{name}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_users_race_for_twenty_lockers() {
    let mut lab = lockers_lab();
    let (_pids, _watch, addr) = start(&mut lab).await;
    let names: Vec<String> = (0..100).map(|i| format!("racer-{i}")).collect();
    add_users(&addr, &names).await;
    let runs: Vec<_> = names
        .iter()
        .map(|n| {
            let (addr, n) = (addr.clone(), n.clone());
            tokio::spawn(async move { (n.clone(), take(&addr, &n).await) })
        })
        .collect();
    let mut granted = BTreeMap::new();
    let mut refused = 0;
    for run in runs {
        let (name, (status, body)) = run.await.unwrap();
        if status == 201 {
            let locker = body["locker"].as_u64().unwrap();
            assert!(
                granted.insert(locker, name).is_none(),
                "locker {locker} twice"
            );
        } else {
            assert_eq!(body["error"], "none_free", "{body}");
            refused += 1;
        }
    }
    assert_eq!((granted.len(), refused), (20, 80));
    assert_eq!(
        held(&addr).await,
        granted,
        "the lockers agree with the answers"
    );
    // A take again by a holder is its own locker; a free and a second free.
    let (locker, holder) = granted.iter().next().unwrap();
    let (status, body) = take(&addr, holder).await;
    assert_eq!((status, body["locker"].as_u64()), (201, Some(*locker)));
    let path = format!("/api/v1/users/{holder}/locker");
    let r = api(&addr, "DELETE", &path, None).await;
    assert_eq!(
        (r.status, r.json()["freed"].as_u64()),
        (200, Some(*locker)),
        "{}",
        r.body
    );
    let r = api(&addr, "DELETE", &path, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "without_locker", "{}", r.body);
    assert!(r.body.contains("holds no locker"), "{}", r.body);
    // Deleting a holder frees its locker.
    let (locker, holder) = granted.iter().nth(1).unwrap();
    let r = api(&addr, "DELETE", &format!("/api/v1/users/{holder}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = tokio::time::Instant::now() + T;
    while held(&addr).await.contains_key(locker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "locker {locker} still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = api(&addr, "GET", "/api/v1/users/nobody", None).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// Which leader a rush kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Lockers,
    Mom,
}

/// 8 clients take and free for 30 users (20 lockers) until the `victim`
/// group's leader has been killed -9 and restarted and the rush went on;
/// then, settled: every request answered, no locker held twice or by
/// nobody who thinks so, users and lockers agree.
async fn rush_through_a_kill(victim: Victim) {
    let mut lab = lockers_lab();
    let (mut pids, mut watch, addr) = start(&mut lab).await;
    let names: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    add_users(&addr, &names).await;
    let (stop, cycles) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let workers: Vec<_> = names
        .chunks(4)
        .map(|mine| {
            let (addr, mine, stop, cycles) =
                (addr.clone(), mine.to_vec(), stop.clone(), cycles.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for name in &mine {
                        let (status, _) = take(&addr, name).await;
                        if status == 201 {
                            assert_eq!(free(&addr, name).await, 200, "{name} held a locker");
                        }
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let progress = |n: usize| {
        let cycles = cycles.clone();
        async move {
            let deadline = tokio::time::Instant::now() + T;
            let start = cycles.load(Ordering::Relaxed);
            while cycles.load(Ordering::Relaxed) < start + n {
                assert!(tokio::time::Instant::now() < deadline, "the rush stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(40).await;
    let leader = match victim {
        Victim::Lockers => watch.seen.lockers_leader().unwrap().0.clone(),
        Victim::Mom => {
            let s = watch
                .until("a MOM leader", 0, |s| {
                    s.mom.values().any(|m| m.role == Role::Leader)
                })
                .await;
            s.mom
                .iter()
                .find(|(_, m)| m.role == Role::Leader)
                .unwrap()
                .0
                .clone()
        }
    };
    let node = *NODES.iter().find(|n| **n == leader).unwrap();
    eprintln!(
        "killing {node} at {} cycles",
        cycles.load(Ordering::Relaxed)
    );
    lab.signal(pids[node], Signal::SIGKILL);
    lab.wait_exit(pids[node], T);
    progress(20).await;
    let pid = lab.spawn(node);
    pids.insert(node, pid);
    let mut obs = lab.observer().await;
    obs.wait_state(node, MemberState::Up, pid, T).await;
    progress(40).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    eprintln!("{} take/free cycles", cycles.load(Ordering::Relaxed));

    // Settled: nothing waits, and both sides agree.
    let since = distlab_node::envelope::now_ms();
    watch
        .until("nothing waiting", since, |s| {
            s.users_leader().is_some_and(|(_, u)| u.waiting == 0)
        })
        .await;
    let lockers = held(&addr).await;
    let users = api(&addr, "GET", "/api/v1/users", None).await.json();
    let mut holders = BTreeMap::new();
    for u in users["users"].as_array().unwrap() {
        assert!(u["pending"].is_null(), "{u}");
        if let Some(l) = u["locker"].as_u64() {
            let name = u["name"].as_str().unwrap().to_owned();
            assert!(
                holders.insert(l, name).is_none(),
                "locker {l} held twice: {users}"
            );
        }
    }
    assert_eq!(lockers, holders, "users and lockers agree");
    assert!(lockers.is_empty(), "every locker was freed: {lockers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lockers_leader_during_a_rush_allocates_nothing_twice() {
    rush_through_a_kill(Victim::Lockers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mom_leader_during_a_rush_loses_no_request() {
    rush_through_a_kill(Victim::Mom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_mom_down_requests_wait_bounded_and_complete_when_it_returns() {
    let mut lab = Lab::with_config(embedded_broker(), |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[mom]\nhttp = \"127.0.0.1:0\"\n\n\
             [lockers]\nhttp = \"127.0.0.1:0\"\nresend_ms = 500\nmax_waiting = 5\n\n"
        );
        for node in NODES {
            let role = node.split('-').next().unwrap();
            text += &format!("[[node]]\nid = \"{node}\"\nroles = [\"{role}\"]\n\n");
        }
        text
    });
    let (mut pids, mut watch, addr) = start(&mut lab).await;
    let names: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    add_users(&addr, &names).await;
    // One take through, so every link is set up; then the whole MOM down.
    let (status, _) = take(&addr, "w5").await;
    assert_eq!(status, 201);
    for node in ["mom-a", "mom-b", "mom-c"] {
        lab.signal(pids[node], Signal::SIGKILL);
        lab.wait_exit(pids[node], T);
    }
    let mut accepted = Vec::new();
    for name in &names[..5] {
        let r = api(
            &addr,
            "POST",
            &format!("/api/v1/users/{name}/locker?wait_ms=0"),
            None,
        )
        .await;
        assert_eq!(r.status, 202, "{name}: {}", r.body);
        accepted.push((
            name.clone(),
            r.json()["request"].as_str().unwrap().to_owned(),
        ));
    }
    // Bounded: the sixth waits for nothing (w5 frees: a request too).
    let r = api(&addr, "DELETE", "/api/v1/users/w5/locker?wait_ms=0", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("waiting for the lockers"), "{}", r.body);
    let since = distlab_node::envelope::now_ms();
    watch
        .until("five waiting and the MOM link down", since, |s| {
            s.users_leader()
                .is_some_and(|(_, u)| u.waiting == 5 && !u.mom.up)
        })
        .await;
    // The MOM back (same data dirs): every accepted request completes.
    let mut obs = lab.observer().await;
    for node in ["mom-a", "mom-b", "mom-c"] {
        let pid = lab.spawn(node);
        pids.insert(node, pid);
        obs.wait_state(node, MemberState::Up, pid, T).await;
    }
    let mut granted = BTreeMap::new();
    for (name, request) in accepted {
        let path = format!("/api/v1/users/{name}/locker?request={request}");
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let r = api(&addr, "POST", &path, None).await;
            if r.status == 201 {
                let locker = r.json()["locker"].as_u64().unwrap();
                assert!(
                    granted.insert(locker, name.clone()).is_none(),
                    "locker {locker} twice"
                );
                break;
            }
            assert!(
                matches!(r.status, 202 | 503),
                "{name}: {} {}",
                r.status,
                r.body
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(granted.len(), 5);
    let mut all = held(&addr).await;
    all.retain(|_, n| n != "w5");
    assert_eq!(all, granted);
}
