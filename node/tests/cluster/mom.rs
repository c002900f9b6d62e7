//! The MOM with a real `mom` process: the seed's REST requests exactly as
//! its client sends them, the JSON API's status codes, and kill -9.

use std::time::Duration;

use distlab_node::presence::MemberState;
use distlab_node::services::mom::node::MomHttp;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{Lab, embedded_broker};

const T: Duration = Duration::from_secs(20);

fn mom_lab() -> Lab {
    Lab::with_config(embedded_broker(), |cluster| {
        format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[mom]\nhttp = \"127.0.0.1:0\"\n\
             visibility_ms = 400\nmax_message = 1000\n\n[[node]]\nid = \"mom-a\"\nroles = [\"mom\"]\n\n\
             [[node]]\nid = \"mom-gateway\"\nroles = [\"mom-gateway\"]\n"
        )
    })
}

/// Starts the `mom-gateway` and returns its pid and HTTP address (the
/// announced one that answers).
pub(crate) async fn start_gateway(lab: &mut Lab) -> (u32, String) {
    let client = lab.client("gateway-watch").await;
    let mut http = client
        .subscribe(&client.topics().service("mom", "http/mom-gateway"))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let pid = lab.spawn("mom-gateway");
    obs.wait_state("mom-gateway", MemberState::Up, pid, T).await;
    loop {
        let m = tokio::time::timeout(T, http.recv())
            .await
            .expect("gateway http address")
            .unwrap();
        let h = m.envelope.body_as::<MomHttp>().unwrap();
        assert!(h.gateway, "{h:?}");
        if tokio::net::TcpStream::connect(&h.addr).await.is_ok() {
            return (pid, h.addr.to_string());
        }
    }
}

/// Starts mom-a and returns its pid and HTTP address.
async fn start_mom(lab: &mut Lab) -> (u32, String) {
    let client = lab.client("tester").await;
    let mut http = client
        .subscribe(&client.topics().service("mom", "http/mom-a"))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let pid = lab.spawn("mom-a");
    obs.wait_state("mom-a", MemberState::Up, pid, T).await;
    // The retained address of this incarnation (an older one may come first).
    loop {
        let m = tokio::time::timeout(T, http.recv())
            .await
            .expect("MOM http address")
            .unwrap();
        let addr = m.envelope.body_as::<MomHttp>().unwrap().addr;
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return (pid, addr.to_string());
        }
    }
}

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request (no client crate needed for a handful).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, String)>,
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = match body {
        Some((ct, b)) => {
            req.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                b.len()
            ));
            b
        }
        None => {
            req.push_str("Content-Length: 0\r\n");
            String::new()
        }
    };
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// Like Python `requests.post(url, data={...}, headers={"key": key})`.
async fn seed_post(addr: &str, path: &str, key: &str, form: &[(&str, &str)]) -> Answer {
    let encoded = serde_urlencoded::to_string(form).expect("a form");
    http(
        addr,
        "POST",
        path,
        &[("key", key)],
        Some(("application/x-www-form-urlencoded", encoded)),
    )
    .await
}

/// Like Python `requests.post(url, headers={})`: the connector's calls
/// without a key.
async fn seed_post_keyless(addr: &str, path: &str, form: &[(&str, &str)]) -> Answer {
    let encoded = serde_urlencoded::to_string(form).expect("a form");
    http(
        addr,
        "POST",
        path,
        &[],
        Some(("application/x-www-form-urlencoded", encoded)),
    )
    .await
}

/// Every `ChasquiConnector` call, sent as the seed's connector sends it,
/// through the gateway; each answer is the seed server's, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_rest_api_answers_as_the_seed_did() {
    let mut lab = mom_lab();
    start_mom(&mut lab).await;
    let (_, addr) = start_gateway(&mut lab).await;
    // Every seed answer is HTTP 200 with text; `said` checks the text.
    async fn said(addr: &str, path: &str, key: &str, form: &[(&str, &str)]) -> String {
        let r = seed_post(addr, path, key, form).await;
        assert_eq!(r.status, 200, "{path} {form:?}: {}", r.body);
        assert!(
            r.content_type.starts_with("text/plain"),
            "{}",
            r.content_type
        );
        r.body
    }
    const E400: &str = "Request returned error code 400";
    const E500: &str = "Request returned error code 500";

    // create_user: GET, the key as the whole body.
    let created = http(&addr, "GET", "/create_user", &[], None).await;
    assert_eq!(created.status, 200);
    let alice = created.body.clone();
    assert_eq!(alice.len(), 32, "128 random bits in hex: {alice}");
    let bob = http(&addr, "GET", "/create_user", &[], None).await.body;
    let carol = http(&addr, "GET", "/create_user", &[], None).await.body;
    assert_ne!(alice, bob);

    // Queues: the creator is subscribed, so create, publish, consume works.
    let q = |name: &'static str| [("queue_name", name)];
    assert_eq!(
        said(&addr, "/create_queue", &alice, &q("jobs")).await,
        "Queue created sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/create_queue", &bob, &q("jobs")).await,
        E500,
        "taken"
    );
    assert_eq!(
        said(&addr, "/create_queue", "not-a-key", &q("x")).await,
        E500,
        "unknown key"
    );
    assert_eq!(
        said(&addr, "/create_queue", &alice, &[]).await,
        "Make sure you added your key and the queue_name"
    );
    let r = seed_post_keyless(&addr, "/create_queue", &q("x")).await;
    assert_eq!(r.body, "Make sure you added your key and the queue_name");
    let publish =
        |name: &'static str, message: &'static str| [("queue_name", name), ("message", message)];
    assert_eq!(
        said(
            &addr,
            "/publish_queue",
            &alice,
            &publish("jobs", "hello world & more")
        )
        .await,
        "Published to queue 200"
    );
    assert_eq!(
        said(&addr, "/consume_queue", &alice, &q("jobs")).await,
        "hello world & more"
    );
    assert_eq!(
        said(&addr, "/consume_queue", &alice, &q("jobs")).await,
        E400,
        "nothing to consume"
    );
    // Not subscribed: neither publish nor consume (400); unknown queue: 500.
    assert_eq!(
        said(&addr, "/publish_queue", &bob, &publish("jobs", "x")).await,
        E400
    );
    assert_eq!(said(&addr, "/consume_queue", &bob, &q("jobs")).await, E400);
    assert_eq!(
        said(&addr, "/publish_queue", &alice, &publish("nope", "x")).await,
        E500
    );
    assert_eq!(
        said(&addr, "/publish_queue", &alice, &q("jobs")).await,
        "Make sure you added your key and the queue_name",
        "the seed's check names the message too"
    );
    assert_eq!(
        said(&addr, "/subscribe_queue", &bob, &q("jobs")).await,
        "Subscribed to queue 200"
    );
    assert_eq!(
        said(&addr, "/subscribe_queue", &bob, &q("jobs")).await,
        E400,
        "twice"
    );
    assert_eq!(
        said(&addr, "/subscribe_queue", &alice, &q("jobs")).await,
        E400,
        "the creator is in"
    );
    assert_eq!(
        said(&addr, "/subscribe_queue", &bob, &q("nope")).await,
        E500
    );
    assert_eq!(
        said(&addr, "/publish_queue", &bob, &publish("jobs", "from bob")).await,
        "Published to queue 200"
    );
    assert_eq!(
        said(&addr, "/consume_queue", &bob, &q("jobs")).await,
        "from bob",
        "a queue's copy is anyone's"
    );

    // Lists: the caller's own, as a Python list, in the order created.
    assert_eq!(
        said(&addr, "/create_queue", &alice, &q("a-second")).await,
        "Queue created sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/list_queues", &alice, &[]).await,
        "['jobs', 'a-second']"
    );
    assert_eq!(said(&addr, "/list_queues", &bob, &[]).await, "[]");
    assert_eq!(said(&addr, "/list_queues", "not-a-key", &[]).await, E500);
    let r = seed_post_keyless(&addr, "/list_queues", &[]).await;
    assert_eq!(r.body, "Make sure you added your key");
    let r = seed_post_keyless(&addr, "/list_topics", &[]).await;
    assert_eq!(
        r.body, "Make sure you added your key ",
        "the seed's trailing space"
    );

    // Topics: the publisher gets no copy of its own message.
    let t = |name: &'static str| [("topic_name", name)];
    let post =
        |name: &'static str, message: &'static str| [("topic_name", name), ("message", message)];
    assert_eq!(
        said(&addr, "/create_topic", &alice, &t("news")).await,
        "Topic created sucesfully 200"
    );
    assert_eq!(said(&addr, "/create_topic", &bob, &t("news")).await, E500);
    assert_eq!(
        said(&addr, "/subscribe_topic", &bob, &t("news")).await,
        "Subcribed to topic sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/subscribe_topic", &bob, &t("news")).await,
        E400
    );
    assert_eq!(
        said(&addr, "/publish_topic", &carol, &post("news", "x")).await,
        E400,
        "not subscribed"
    );
    assert_eq!(
        said(&addr, "/publish_topic", &alice, &post("news", "extra!")).await,
        "Published to topic sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/consume_topic", &alice, &t("news")).await,
        E400,
        "no copy for the sender"
    );
    assert_eq!(
        said(&addr, "/consume_topic", &bob, &t("news")).await,
        "extra!"
    );
    assert_eq!(said(&addr, "/consume_topic", &bob, &t("news")).await, E400);
    assert_eq!(
        said(&addr, "/consume_topic", &carol, &t("news")).await,
        E400,
        "not subscribed"
    );
    assert_eq!(
        said(&addr, "/consume_topic", &carol, &t("nope")).await,
        E500
    );
    // The seed read `message` unchecked on topics: Flask's 400.
    let r = seed_post(&addr, "/publish_topic", &alice, &t("news")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(said(&addr, "/list_topics", &alice, &[]).await, "['news']");
    assert_eq!(said(&addr, "/list_topics", &bob, &[]).await, "[]");

    // Deletes: the owner only (else 500).
    assert_eq!(
        said(&addr, "/delete_topic", &bob, &t("news")).await,
        E500,
        "not the owner"
    );
    assert_eq!(
        said(&addr, "/delete_topic", &alice, &t("news")).await,
        "Topic deleted sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/delete_topic", &alice, &t("news")).await,
        E500,
        "gone"
    );
    assert_eq!(
        said(&addr, "/delete_queue", &alice, &q("jobs")).await,
        "Queue deleted sucesfully 200"
    );
    assert_eq!(
        said(&addr, "/list_queues", &alice, &[]).await,
        "['a-second']"
    );
    assert_eq!(said(&addr, "/list_topics", &alice, &[]).await, "[]");

    // The JSON API keeps everyone's channels, and says who leads.
    let r = http(
        &addr,
        "GET",
        "/api/v1/queues",
        &[("key", bob.as_str())],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["channels"][0]["name"], "a-second");
    let r = http(&addr, "GET", "/api/v1/status", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = r.json();
    assert_eq!(
        (status["role"].as_str(), status["leader"].as_str()),
        (Some("mom-gateway"), Some("mom-a")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_status_codes_redelivery_and_kill_9() {
    let mut lab = mom_lab();
    let (pid, addr) = start_mom(&mut lab).await;
    let json_body = |v: Value| Some(("application/json", v.to_string()));

    let r = http(&addr, "POST", "/api/v1/users", &[], None).await;
    assert_eq!(r.status, 201);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let other = http(&addr, "POST", "/api/v1/users", &[], None).await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = [("key", key.as_str())];
    let auth_other = [("key", other.as_str())];

    let r = http(
        &addr,
        "POST",
        "/api/v1/queues",
        &auth,
        json_body(json!({"name": "q"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues",
        &auth,
        json_body(json!({"name": "q"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("exists"))
    );
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues",
        &[("key", "nope")],
        json_body(json!({"name": "z"})),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues",
        &auth,
        Some(("application/json", "{not json".into())),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(&addr, "DELETE", "/api/v1/queues/q", &auth_other, None).await;
    assert_eq!(r.status, 403);
    // Private: only the owner and the users it grants may subscribe.
    let r = http(&addr, "GET", "/api/v1/users/me", &auth_other, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let other_id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(
        other_id.starts_with('u') && !other_id.contains(&other),
        "{other_id}"
    );
    let private = |on: bool| json_body(json!({ "private": on }));
    let r = http(
        &addr,
        "PUT",
        "/api/v1/queues/q/private",
        &auth_other,
        private(true),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        &addr,
        "PUT",
        "/api/v1/queues/q/private",
        &auth,
        private(true),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(&addr, "GET", "/api/v1/queues", &auth, None).await;
    assert_eq!(r.json()["channels"][0]["private"], true, "{}", r.body);
    let subscription = "/api/v1/queues/q/subscription";
    let r = http(&addr, "POST", subscription, &auth_other, None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("private"), "{}", r.body);
    let grant = json_body(json!({ "user": other_id }));
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues/q/grants",
        &auth_other,
        grant.clone(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(&addr, "POST", "/api/v1/queues/q/grants", &auth, grant).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(&addr, "POST", subscription, &auth_other, None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(&addr, "DELETE", subscription, &auth_other, None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(
        &addr,
        "PUT",
        "/api/v1/queues/q/private",
        &auth,
        private(false),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // A bad query is a JSON error like every other.
    let r = http(&addr, "GET", "/api/v1/queues?mine=maybe", &auth, None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].is_string(), "{}", r.body);
    // Names: no look-alikes, no dot-only names (a path cannot reach them).
    for name in ["j\u{430}bs", ".."] {
        let r = http(
            &addr,
            "POST",
            "/api/v1/queues",
            &auth,
            json_body(json!({ "name": name })),
        )
        .await;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
    }
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues/nope/messages",
        &auth,
        json_body(json!({"message": "x"})),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues/q/messages",
        &auth,
        json_body(json!({"message": "x".repeat(1001)})),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    // Batches: a member too large refuses the whole batch; bad shapes are 400.
    let big = json!({"messages": ["ok", "x".repeat(1001)]});
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues/q/messages",
        &auth,
        json_body(big),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    // A body over what any request may carry says so (not "0 bytes").
    let r = http(
        &addr,
        "POST",
        "/api/v1/queues/q/messages",
        &auth,
        json_body(json!({"message": "x".repeat(3 << 20)})),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("request body is too large"), "{}", r.body);
    for bad in [
        json!({"messages": []}),
        json!({"message": "a", "messages": ["b"]}),
        json!({"messages": "not a list"}),
    ] {
        let r = http(
            &addr,
            "POST",
            "/api/v1/queues/q/messages",
            &auth,
            json_body(bad),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    let r = http(&addr, "POST", "/api/v1/queues/q/subscription", &auth, None).await;
    assert_eq!(r.status, 204);
    let r = http(&addr, "POST", "/api/v1/queues/q/messages/next", &auth, None).await;
    assert_eq!(r.status, 204, "empty");

    // Redelivery: consumed, not acked, visible again after 400 ms.
    http(
        &addr,
        "POST",
        "/api/v1/queues/q/messages",
        &auth,
        json_body(json!({"message": "again"})),
    )
    .await;
    let first = http(&addr, "POST", "/api/v1/queues/q/messages/next", &auth, None)
        .await
        .json();
    assert_eq!(first["deliveries"], 1);
    let second = http(
        &addr,
        "POST",
        "/api/v1/queues/q/messages/next?wait_ms=3000",
        &auth,
        None,
    )
    .await
    .json();
    assert_eq!(
        (second["id"].clone(), second["deliveries"].clone()),
        (first["id"].clone(), json!(2))
    );
    let ack = format!("/api/v1/messages/{}/ack", second["id"]);
    assert_eq!(http(&addr, "POST", &ack, &auth, None).await.status, 204);
    assert_eq!(
        http(&addr, "POST", &ack, &auth, None).await.status,
        404,
        "acked twice"
    );

    // Several at once: a consume of up to N, and one ack for many.
    for m in ["x1", "x2", "x3"] {
        let body = json_body(json!({ "message": m }));
        let r = http(&addr, "POST", "/api/v1/queues/q/messages", &auth, body).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let next = |max: &str| format!("/api/v1/queues/q/messages/next?max={max}");
    let two = http(&addr, "POST", &next("2"), &auth, None).await;
    assert_eq!(two.status, 200, "{}", two.body);
    let rest = http(&addr, "POST", &next("10"), &auth, None).await;
    let bodies = |a: &Answer| -> Vec<String> {
        a.json()["deliveries"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|d| d["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(bodies(&two), ["x1", "x2"], "{}", two.body);
    assert_eq!(bodies(&rest), ["x3"], "{}", rest.body);
    assert_eq!(
        http(&addr, "POST", &next("10"), &auth, None).await.status,
        204,
        "nothing left"
    );
    let mut ids: Vec<Value> = [&two, &rest]
        .iter()
        .flat_map(|a| {
            a.json()["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| d["id"].clone())
        .collect();
    let held = ids.clone();
    ids.push(json!(999_999));
    let acks = |ids: Value| json_body(json!({ "ids": ids }));
    let r = http(
        &addr,
        "POST",
        "/api/v1/messages/ack",
        &auth,
        acks(json!(ids)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "acked": held }),
        "only what the caller held"
    );
    let r = http(
        &addr,
        "POST",
        "/api/v1/messages/ack",
        &auth,
        acks(json!(held)),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({ "acked": [] }),
        "acked already: {}",
        r.body
    );
    for (path, body, status) in [
        (next("0"), None, 400),
        (next("1001"), None, 400),
        (next("many"), None, 400),
        ("/api/v1/messages/ack".to_owned(), acks(json!([])), 400),
        ("/api/v1/messages/ack".to_owned(), acks(json!(["a"])), 400),
        (
            "/api/v1/messages/ack".to_owned(),
            json_body(json!({"id": 1})),
            400,
        ),
    ] {
        let r = http(&addr, "POST", &path, &auth, body).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{path}: {}", r.body);
    }
    let r = http(&addr, "POST", "/api/v1/messages/ack", &[], acks(json!([1]))).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Every acknowledged publish survives kill -9.
    let mut acked = Vec::new();
    for i in 0..200 {
        let r = http(
            &addr,
            "POST",
            "/api/v1/queues/q/messages",
            &auth,
            json_body(json!({"message": format!("m{i}")})),
        )
        .await;
        if r.status == 201 {
            acked.push(format!("m{i}"));
        }
    }
    // Batches too: acknowledged only once all of a batch is durable.
    for b in 0..5 {
        let batch: Vec<String> = (0..20).map(|i| format!("b{b}-{i}")).collect();
        let r = http(
            &addr,
            "POST",
            "/api/v1/queues/q/messages",
            &auth,
            json_body(json!({ "messages": batch })),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let ids = r.json()["batch"].as_array().unwrap().clone();
        assert_eq!(ids.len(), 20, "one id list per message: {}", r.body);
        acked.extend(batch);
    }
    assert_eq!(acked.len(), 300);
    lab.signal(pid, Signal::SIGKILL);
    lab.wait_exit(pid, T);
    let (_, addr) = start_mom(&mut lab).await;
    let mut got = Vec::new();
    loop {
        let path = "/api/v1/queues/q/messages/next?max=64";
        let r = http(&addr, "POST", path, &auth, None).await;
        if r.status == 204 {
            break;
        }
        let deliveries = r.json()["deliveries"].as_array().cloned().unwrap();
        assert!((1..=64).contains(&deliveries.len()), "{}", r.body);
        got.extend(
            deliveries
                .iter()
                .map(|d| d["body"].as_str().unwrap().to_owned()),
        );
        let ids: Vec<Value> = deliveries.iter().map(|d| d["id"].clone()).collect();
        let r = http(
            &addr,
            "POST",
            "/api/v1/messages/ack",
            &auth,
            acks(json!(ids)),
        )
        .await;
        assert_eq!(r.json()["acked"].as_array().map(Vec::len), Some(ids.len()));
    }
    assert_eq!(got, acked, "every acked message, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_client_library_talk_over_mqtt() {
    use distlab_node::services::mom::client::{Client, ClientError};
    use distlab_node::services::mom::model::{Kind, MomError};

    let mut lab = mom_lab();
    start_mom(&mut lab).await;
    let broker = lab.broker.to_string();
    let cli = |args: &[&str], key: Option<&str>| {
        let mut cmd = lab.cli();
        cmd.args(["mom", "--broker", &broker, "--cluster", &lab.cluster]);
        cmd.args(args);
        match key {
            Some(k) => cmd.env("DISTLAB_MOM_KEY", k),
            None => cmd.env_remove("DISTLAB_MOM_KEY"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, key, err) = cli(&["create-user"], None);
    assert!(ok, "{err}");
    assert_eq!(key.len(), 32);
    let k = Some(key.as_str());
    for args in [
        vec!["create", "--queue", "jobs"],
        vec!["subscribe", "--queue", "jobs"],
        vec!["publish", "--queue", "jobs", "from the cli"],
    ] {
        let (ok, out, err) = cli(&args, k);
        assert!(ok, "{args:?}: {out} {err}");
    }
    let (ok, out, err) = cli(&["consume", "--queue", "jobs", "--ack"], k);
    assert!(ok, "{err}");
    assert!(out.ends_with("\t1\tfrom the cli"), "{out}");
    let (ok, out, err) = cli(&["publish", "--queue", "jobs", "b1", "b2"], k);
    assert!(ok && out.contains("published 2 messages"), "{out} {err}");
    for want in ["b1", "b2"] {
        let (ok, out, err) = cli(&["consume", "--queue", "jobs", "--ack"], k);
        assert!(ok && out.ends_with(&format!("\t{want}")), "{out} {err}");
    }
    let (ok, _, err) = cli(&["consume", "--queue", "jobs"], k);
    assert!(!ok && err.contains("no message"), "{err}");
    // Several at once, acked in one request; then by ids.
    let (ok, out, err) = cli(&["publish", "--queue", "jobs", "c1", "c2", "c3"], k);
    assert!(ok, "{out} {err}");
    let (ok, out, err) = cli(&["consume", "--queue", "jobs", "--max", "2", "--ack"], k);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("\tc1") && lines[1].ends_with("\tc2"),
        "{out}"
    );
    let (ok, out, err) = cli(&["consume", "--queue", "jobs", "--max", "5"], k);
    assert!(ok && out.ends_with("\tc3"), "{out} {err}");
    let id = out.split('\t').next().unwrap().to_owned();
    let (ok, out, err) = cli(&["ack", &id, "999999"], k);
    assert!(!ok && out.contains("acked 1 of 2"), "{out} {err}");
    assert!(err.contains("not yours"), "{err}");
    let (ok, _, err) = cli(&["consume", "--queue", "jobs", "--max", "0"], k);
    assert!(!ok && err.contains("--max"), "{err}");
    let (ok, _, err) = cli(&["create", "--queue", "x"], None);
    assert!(!ok && err.contains("DISTLAB_MOM_KEY"), "{err}");
    let (ok, _, err) = cli(&["create", "--queue", "x"], Some("wrong"));
    assert!(!ok && err.contains("unknown key"), "{err}");
    let (ok, out, _) = cli(&["ls"], k);
    assert!(ok && out.contains("jobs"), "{out}");

    // The library: a blocking consume wakes when a message is published.
    let bus = lab.client("lib").await;
    let mom = std::sync::Arc::new(Client::new(bus, "mom-a"));
    // The MOM's telemetry says when a consume waits, so the publish
    // provably comes after the consumer blocked.
    let watcher = lab.client("watcher").await;
    let mut stats = watcher
        .subscribe(&format!("{}/telemetry/+/mom", watcher.topics().prefix()))
        .await
        .unwrap();
    let blocked = |latest: &std::collections::BTreeMap<String, Stats>| {
        latest.values().map(|s| s.waiting).sum::<usize>() >= 1
    };
    let waiter = {
        let (mom, key) = (mom.clone(), key.clone());
        tokio::spawn(async move { mom.consume(Kind::Queue, "jobs", &key, 30_000).await })
    };
    mom_group(&mut stats, "a consumer waiting", blocked).await;
    mom.publish(Kind::Queue, "jobs", &key, "wake up")
        .await
        .unwrap();
    let d = waiter.await.unwrap().unwrap().expect("a delivery");
    assert_eq!(d.body, "wake up");
    mom.ack(&key, d.id).await.unwrap();
    let ids = mom
        .publish_batch(Kind::Queue, "jobs", &key, vec!["x".into(), "y".into()])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    for want in ["x", "y"] {
        let d = mom.consume(Kind::Queue, "jobs", &key, 0).await.unwrap();
        let d = d.expect("the batch, in order");
        assert_eq!(d.body, want);
        mom.ack(&key, d.id).await.unwrap();
    }
    // A batch consume waits for the first message, then takes what is there
    // (telemetry from before the first consumer woke says nothing of it).
    mom_group(&mut stats, "no consumer waiting", |latest| {
        latest.values().all(|s| s.waiting == 0)
    })
    .await;
    let waiter = {
        let (mom, key) = (mom.clone(), key.clone());
        tokio::spawn(async move {
            mom.consume_batch(Kind::Queue, "jobs", &key, 10, 30_000)
                .await
        })
    };
    mom_group(&mut stats, "a batch consumer waiting", blocked).await;
    let batch: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
    mom.publish_batch(Kind::Queue, "jobs", &key, batch.clone())
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    let bodies: Vec<String> = got.iter().map(|d| d.body.clone()).collect();
    assert_eq!(bodies, batch, "the whole batch, in order");
    let ids: Vec<u64> = got.iter().map(|d| d.id).collect();
    assert_eq!(mom.ack_batch(&key, &ids).await.unwrap(), ids);
    assert_eq!(mom.ack_batch(&key, &ids).await.unwrap(), Vec::<u64>::new());
    assert!(
        mom.consume_batch(Kind::Queue, "jobs", &key, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    match mom.consume_batch(Kind::Queue, "jobs", &key, 0, 0).await {
        Err(ClientError::Mom(MomError::BadRequest(_))) => {}
        other => panic!("{other:?}"),
    }
    match mom.create(Kind::Queue, "jobs", &key).await {
        Err(ClientError::Mom(MomError::Exists(_))) => {}
        other => panic!("{other:?}"),
    }
}

fn replicated_lab() -> Lab {
    replicated_lab_on(embedded_broker())
}

/// Three MOM nodes (`mom-a`, `mom-b`, `mom-c`) and a `mom-gateway` (started
/// only by the tests that want it) on `broker`.
pub(crate) fn replicated_lab_on(broker: distlab_node::config::BrokerAddr) -> Lab {
    Lab::with_config(broker, |cluster| {
        format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[mom]\nhttp = \"127.0.0.1:0\"\n\n\
             [[node]]\nid = \"mom-a\"\nroles = [\"mom\"]\n\n[[node]]\nid = \"mom-b\"\nroles = [\"mom\"]\n\n\
             [[node]]\nid = \"mom-c\"\nroles = [\"mom\"]\n\n\
             [[node]]\nid = \"mom-gateway\"\nroles = [\"mom-gateway\"]\n"
        )
    })
}

pub(crate) type Stats = distlab_node::services::mom::node::MomStats;

/// Waits until the latest telemetry of the MOM nodes (by name) satisfies
/// `pred`; returns it.
pub(crate) async fn mom_group(
    rx: &mut tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    what: &str,
    pred: impl Fn(&std::collections::BTreeMap<String, Stats>) -> bool,
) -> std::collections::BTreeMap<String, Stats> {
    mom_group_keeping(rx, what, |_| true, pred).await
}

/// [`mom_group`] on the reports `keep` accepts only (e.g. a restarted
/// node's from its new process, not those still in flight from the old).
pub(crate) async fn mom_group_keeping(
    rx: &mut tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    what: &str,
    keep: impl Fn(&distlab_node::envelope::Envelope) -> bool,
    pred: impl Fn(&std::collections::BTreeMap<String, Stats>) -> bool,
) -> std::collections::BTreeMap<String, Stats> {
    let mut latest = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("not {what} within {T:?}: {latest:#?}"))
            .unwrap();
        if !keep(&m.envelope) {
            continue;
        }
        if let Ok(s) = m.envelope.body_as::<Stats>() {
            latest.insert(m.envelope.from.clone(), s);
        }
        if pred(&latest) {
            return latest;
        }
    }
}

/// The node that leads with every other member of `members` caught up.
pub(crate) fn settled_leader(
    latest: &std::collections::BTreeMap<String, Stats>,
    members: &[&str],
) -> Option<String> {
    use distlab_node::replica::Role;
    let (name, l) = latest.iter().find(|(_, s)| s.raft.role == Role::Leader)?;
    let others_in = members.iter().filter(|m| **m != name).all(|m| {
        latest.get(*m).is_some_and(|s| {
            s.raft.role == Role::Follower
                && s.raft.leader.as_deref() == Some(name)
                && s.raft.applied == l.raft.applied
                && s.channels == l.channels
        })
    });
    others_in.then(|| name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_message() {
    use distlab_node::replica::Role;
    use distlab_node::services::mom::client::Client;
    use distlab_node::services::mom::model::Kind;

    let mut lab = replicated_lab();
    let watcher = lab.client("watcher").await;
    let mut stats = watcher
        .subscribe(&format!("{}/telemetry/+/mom", watcher.topics().prefix()))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let mut pids = std::collections::BTreeMap::new();
    let members = ["mom-a", "mom-b", "mom-c"];
    for node in members {
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
        pids.insert(node, pid);
    }
    // A fresh group elects a leader; the others follow it.
    let start = mom_group(&mut stats, "a leader with both followers", |l| {
        settled_leader(l, &members).is_some()
    })
    .await;
    let first = settled_leader(&start, &members).unwrap();
    let first_term = start[&first].raft.term;

    // The client follows the leader: the first, then the next.
    let bus = lab.client("publisher").await;
    let mom = std::sync::Arc::new(Client::new(bus, "mom-a"));
    let key = mom.create_user().await.unwrap();
    mom.create(Kind::Queue, "orders", &key).await.unwrap();
    mom.subscribe(Kind::Queue, "orders", &key).await.unwrap();

    const N: usize = 300;
    let publisher = {
        let (mom, key) = (mom.clone(), key.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            for i in 0..N {
                let body = format!("order-{i}");
                match mom.publish(Kind::Queue, "orders", &key, &body).await {
                    Ok(_) => acked.push(body),
                    Err(e) => {
                        failed += 1;
                        eprintln!("publish {i} failed: {e}");
                    }
                }
            }
            (acked, failed)
        })
    };
    // Kill the leader mid-way.
    mom_group(&mut stats, "a third through", |l| {
        l.get(&first)
            .is_some_and(|s| s.channels.iter().any(|c| c.published >= (N / 3) as u64))
    })
    .await;
    lab.signal(pids[first.as_str()], Signal::SIGKILL);
    let after = mom_group(&mut stats, "a new leader", |l| {
        l.iter()
            .any(|(n, s)| *n != first && s.raft.role == Role::Leader && s.raft.term > first_term)
    })
    .await;
    let (second, _) = after
        .iter()
        .find(|(n, s)| **n != first && s.raft.role == Role::Leader)
        .unwrap();
    let second = second.clone();
    let (acked, failed) = publisher.await.unwrap();
    eprintln!("{} acked, {failed} failed", acked.len());
    assert_eq!(failed, 0, "the client rode over the failover");

    // Every acknowledged message is there (duplicates allowed, counted).
    let mut got = std::collections::BTreeMap::<String, usize>::new();
    while let Some(d) = mom.consume(Kind::Queue, "orders", &key, 0).await.unwrap() {
        *got.entry(d.body.clone()).or_default() += 1;
        mom.ack(&key, d.id).await.unwrap();
    }
    let lost: Vec<&String> = acked.iter().filter(|b| !got.contains_key(*b)).collect();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    eprintln!("consumed {} distinct, {duplicates} duplicates", got.len());
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // The old leader comes back as a follower and catches up: all three
    // end with the same log and the same state.
    lab.wait_exit(pids[first.as_str()], T);
    let pid = lab.spawn(&first);
    obs.wait_state(&first, MemberState::Up, pid, T).await;
    mom_group(&mut stats, "all three converged", |l| {
        settled_leader(l, &members).is_some_and(|leader| leader != first)
    })
    .await;

    // A follower forwards: the seed API on the restarted node still works.
    let mom_a = first.as_str();
    // A replica forwards: the seed API on mom-a (now a replica) still works.
    let _ = &second;
    let mut http_addr = watcher
        .subscribe(&watcher.topics().service("mom", &format!("http/{mom_a}")))
        .await
        .unwrap();
    let addr = loop {
        let m = tokio::time::timeout(T, http_addr.recv())
            .await
            .unwrap()
            .unwrap();
        let addr = m.envelope.body_as::<MomHttp>().unwrap().addr;
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break addr.to_string();
        }
    };
    let r = seed_post(
        &addr,
        "/publish_queue",
        &key,
        &[("queue_name", "orders"), ("message", "via the replica")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = mom
        .consume(Kind::Queue, "orders", &key, 2000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.body, "via the replica");
}

/// The seed's client publishing through the gateway while each MOM replica
/// in turn is killed (kill -9) and restarted: every publish is answered
/// `Published to queue 200` (no client error) and every one of them is
/// there afterwards (duplicates allowed: at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_replica_in_turn_behind_the_gateway_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mut lab = replicated_lab();
    let watcher = lab.client("watcher").await;
    let mut stats = watcher
        .subscribe(&format!("{}/telemetry/+/mom", watcher.topics().prefix()))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let members = ["mom-a", "mom-b", "mom-c"];
    let mut pids = std::collections::BTreeMap::new();
    for node in members {
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
        pids.insert(node, pid);
    }
    mom_group(&mut stats, "a leader with both followers", |l| {
        settled_leader(l, &members).is_some()
    })
    .await;
    let (_, addr) = start_gateway(&mut lab).await;

    let key = http(&addr, "GET", "/create_user", &[], None).await.body;
    let r = seed_post(&addr, "/create_queue", &key, &[("queue_name", "orders")]).await;
    assert_eq!(r.body, "Queue created sucesfully 200");

    let (stop, acked_count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let publisher = {
        let (addr, key, stop, count) =
            (addr.clone(), key.clone(), stop.clone(), acked_count.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("order-{i}");
                let r = seed_post(
                    &addr,
                    "/publish_queue",
                    &key,
                    &[("queue_name", "orders"), ("message", &body)],
                )
                .await;
                if r.status == 200 && r.body == "Published to queue 200" {
                    acked.push(body);
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.push(format!("{body}: {} {}", r.status, r.body));
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    let progress = |since: usize| {
        let count = acked_count.clone();
        async move {
            let deadline = tokio::time::Instant::now() + T;
            while count.load(Ordering::Relaxed) < since + 20 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing stalled at {since}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for node in members {
        progress(acked_count.load(Ordering::Relaxed)).await;
        eprintln!(
            "killing {node} at {} acked",
            acked_count.load(Ordering::Relaxed)
        );
        lab.signal(pids[node], Signal::SIGKILL);
        lab.wait_exit(pids[node], T);
        let restarted_ms = distlab_node::envelope::now_ms();
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
        pids.insert(node, pid);
        // The restarted node back in the group (as a follower, or as the
        // leader: with its log intact it may win the election), judged on
        // reports its new process sent, before the next kill.
        let fresh =
            |m: &distlab_node::envelope::Envelope| m.from != node || m.sent_ms >= restarted_ms;
        mom_group_keeping(
            &mut stats,
            "the restarted node back in the group",
            fresh,
            |l| {
                use distlab_node::replica::Role;
                let Some((leader, l_stats)) = l.iter().find(|(_, s)| s.raft.role == Role::Leader)
                else {
                    return false;
                };
                l.contains_key(node)
                    && members.iter().all(|m| {
                        l.get(*m).is_some_and(|s| {
                            *m == leader
                                || (s.raft.role == Role::Follower
                                    && s.raft.leader.as_deref() == Some(leader.as_str())
                                    && l_stats.raft.applied.saturating_sub(s.raft.applied) < 200)
                        })
                    })
            },
        )
        .await;
    }
    progress(acked_count.load(Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = publisher.await.unwrap();
    eprintln!("{} acknowledged, {} failed", acked.len(), failed.len());
    assert!(failed.is_empty(), "the client saw errors: {failed:?}");

    // Everything acknowledged is there (read through the gateway too).
    let mut got = std::collections::BTreeMap::<String, usize>::new();
    loop {
        let r = seed_post(&addr, "/consume_queue", &key, &[("queue_name", "orders")]).await;
        if r.body == "Request returned error code 400" {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        *got.entry(r.body).or_default() += 1;
    }
    let lost: Vec<&String> = acked.iter().filter(|b| !got.contains_key(*b)).collect();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    eprintln!("consumed {} distinct, {duplicates} duplicates", got.len());
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // The gateway's telemetry: its address, the leader, what it ran.
    let mut gw = watcher
        .subscribe(&watcher.topics().telemetry("mom-gateway", "mom-gateway"))
        .await
        .unwrap();
    let m = tokio::time::timeout(T, gw.recv()).await.unwrap().unwrap();
    let g = m
        .envelope
        .body_as::<distlab_node::services::mom::gateway::GatewayStats>()
        .unwrap();
    eprintln!("gateway: {} requests, {} sent again", g.requests, g.resent);
    assert_eq!(g.http.to_string(), addr);
    assert!(g.status.leader.is_some(), "{g:?}");
    assert!(g.requests as usize >= acked.len(), "{g:?}");
}

/// The retained HTTP address of MOM node (or gateway) `node`.
async fn mom_http(lab: &Lab, node: &str) -> String {
    let client = lab.client(&format!("{node}-http-watch")).await;
    let mut http = client
        .subscribe(&client.topics().service("mom", &format!("http/{node}")))
        .await
        .unwrap();
    let m = tokio::time::timeout(T, http.recv())
        .await
        .expect("its http address")
        .unwrap();
    m.envelope.body_as::<MomHttp>().unwrap().addr.to_string()
}

/// Whichever way a request comes (the leader's HTTP, a follower's that
/// forwards, the gateway's, the CLI, the client library), no access key
/// crosses the bus: a client that sees every message of the lab (it holds
/// the lab's credentials) never sees one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_key_crosses_the_bus() {
    use distlab_node::services::mom::client::Client;
    use distlab_node::services::mom::model::Kind;
    use std::sync::{Arc, Mutex};

    let mut lab = replicated_lab();
    let opts = distlab_node::bus::mqtt_options(&lab.broker, "sniffer");
    let (raw, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    raw.subscribe("distlab/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sniffed = seen.clone();
    let sniffer = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let mut seen = sniffed.lock().unwrap();
                seen.extend_from_slice(p.topic.as_bytes());
                seen.extend_from_slice(&p.payload);
            }
        }
    });

    let watcher = lab.client("watcher").await;
    let mut stats = watcher
        .subscribe(&format!("{}/telemetry/+/mom", watcher.topics().prefix()))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let members = ["mom-a", "mom-b", "mom-c"];
    for node in members {
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
    }
    let settled = mom_group(&mut stats, "a leader with both followers", |l| {
        settled_leader(l, &members).is_some()
    })
    .await;
    let leader = settled_leader(&settled, &members).unwrap();
    let follower = members.iter().find(|m| **m != leader).unwrap();
    let (_, gateway) = start_gateway(&mut lab).await;
    let json_body = |v: Value| Some(("application/json", v.to_string()));

    let mut keys = Vec::new();
    let fronts = [
        mom_http(&lab, &leader).await,
        mom_http(&lab, follower).await,
        gateway,
    ];
    for (i, addr) in fronts.iter().enumerate() {
        let r = http(addr, "POST", "/api/v1/users", &[], None).await;
        assert_eq!(r.status, 201, "{addr}: {}", r.body);
        let key = r.json()["key"].as_str().unwrap().to_owned();
        let auth = [("key", key.as_str())];
        let queue = format!("sniffed-{i}");
        let r = http(
            addr,
            "POST",
            "/api/v1/queues",
            &auth,
            json_body(json!({"name": queue})),
        )
        .await;
        assert_eq!(r.status, 201, "{addr}: {}", r.body);
        let path = format!("/api/v1/queues/{queue}/messages");
        let r = http(
            addr,
            "POST",
            &path,
            &auth,
            json_body(json!({"message": "m"})),
        )
        .await;
        assert_eq!(r.status, 201, "{addr}: {}", r.body);
        keys.push(key);
    }
    // The CLI, as a person uses it.
    let broker = lab.broker.to_string();
    let out = lab
        .cli()
        .args(["mom", "--broker", &broker, "--cluster", &lab.cluster])
        .arg("--node")
        .arg(follower)
        .arg("create-user")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = lab
        .cli()
        .args(["mom", "--broker", &broker, "--cluster", &lab.cluster])
        .args(["create", "--queue", "sniffed-cli"])
        .env("DISTLAB_MOM_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    keys.push(key);
    // One request to one node, as the app's dashboard sends them.
    use distlab_node::services::mom::client::call_on;
    use distlab_node::services::mom::service::{Reply, Request};
    let app = lab.client("dashboard").await;
    let key = match call_on(&app, follower, Request::CreateUser, T)
        .await
        .unwrap()
    {
        Reply::Key { key } => key,
        other => panic!("{other:?}"),
    };
    let create = Request::Create {
        kind: Kind::Queue,
        name: "sniffed-app".into(),
        key: key.clone(),
        subscribe: false,
    };
    call_on(&app, follower, create, T).await.unwrap();
    keys.push(key);
    // The client library, as the lockers and the facade use it.
    let mom = Client::new(lab.client("library").await, follower);
    let key = mom.create_user().await.unwrap();
    mom.create(Kind::Queue, "sniffed-lib", &key).await.unwrap();
    keys.push(key);

    // Every queue made (the sniffer saw the traffic), and no key in it.
    let last = mom_group(&mut stats, "every queue on the leader", |l| {
        l.get(&leader).is_some_and(|s| {
            [
                "sniffed-0",
                "sniffed-1",
                "sniffed-2",
                "sniffed-cli",
                "sniffed-app",
                "sniffed-lib",
            ]
            .iter()
            .all(|q| s.channels.iter().any(|c| c.name == *q))
        })
    })
    .await;
    assert!(!last.is_empty());
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(seen.contains("sniffed-lib"), "the sniffer saw nothing");
    for key in &keys {
        assert_eq!(key.len(), 32, "{key}");
        assert!(!seen.contains(key.as_str()), "key {key} crossed the bus");
        // What stands for it there did (the sniffer saw its requests).
        let id = distlab_node::services::mom::store::user_id(key);
        assert!(seen.contains(&id), "{id} never seen");
    }
    sniffer.abort();
}

/// Slowloris on a real node: 2,000 connections that send half a request
/// line and nothing more. Others are served throughout, and the node cuts
/// every idle one after its header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_cut_and_others_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // This test process needs the file descriptors too.
    assert!(
        distlab_node::front_door::raise_open_files() >= 2_200,
        "the open-file limit is too low for this test"
    );
    let mut lab = mom_lab();
    let (_pid, addr) = start_mom(&mut lab).await;
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /api/v1/status HTT").await.unwrap();
        idle.push(s);
    }
    // Served while they hang (each on a connection of its own).
    for _ in 0..5 {
        let r = http(&addr, "GET", "/api/v1/status", &[], None).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Each is closed by the node, within the header timeout and a margin.
    let deadline = tokio::time::Instant::now()
        + distlab_node::front_door::HEADER_TIMEOUT
        + Duration::from_secs(20);
    for s in &mut idle {
        let mut rest = Vec::new();
        let read = tokio::time::timeout_at(deadline, s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "an idle connection was still open");
    }
    let r = http(&addr, "GET", "/api/v1/status", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
