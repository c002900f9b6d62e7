//! Bad input never takes a node down: garbage on its topics, bad config,
//! unknown ids, an unreachable broker. Fault rules arrive on the control topic.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlab_node::bus::RpcError;
use distlab_node::presence::MemberState;
use distlab_node::shim::{FaultRules, LinkRule};
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

use crate::harness::{Lab, NODE_BIN, assert_file_mentions};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_topic_is_logged_and_ignored() {
    let (mut lab, mut obs, pid) = Lab::one_echo_up().await;

    // An insider: it holds the lab's credentials.
    let mut opts = distlab_node::bus::mqtt_options(&lab.broker, "vandal");
    opts.set_keep_alive(Duration::from_secs(5));
    let (raw, mut eventloop) = AsyncClient::new(opts, 64);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let t = distlab_node::envelope::Topics::new(&lab.cluster);
    let junk: [&[u8]; 5] = [b"", b"{", b"\xff\xfe\x00", b"[1,2,3]", b"{\"id\":42}"];
    for topic in [
        t.rpc("echo", "echo-0"),
        t.control("echo-0"),
        t.heartbeat("echo-0"),
        t.reply("echo-0"),
    ] {
        for bytes in junk {
            raw.publish(topic.clone(), QoS::AtLeastOnce, false, bytes.to_vec())
                .await
                .unwrap();
        }
    }
    // Well-formed envelopes with nonsense bodies.
    let client = lab.client("tester").await;
    let bad_rules = client.envelope("rules", json!({"drop_everything": true}));
    client
        .publish(&t.control("echo-0"), &bad_rules)
        .await
        .unwrap();
    let weird = client.envelope("presence", json!("not a presence"));
    client
        .publish(&t.heartbeat("echo-0"), &weird)
        .await
        .unwrap();

    // Still alive, still answering, still up.
    let reply = client
        .request("echo", "echo-0", "echo", json!({"after": "garbage"}), T)
        .await
        .expect("echo after garbage");
    assert_eq!(reply.body.to_value()["echo"]["after"], "garbage");
    match client
        .request("echo", "echo-0", "echo", json!({"delay_ms": -5}), T)
        .await
    {
        Err(RpcError::Remote { message, .. }) => assert!(message.contains("delay_ms"), "{message}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(lab.is_alive(pid));
    obs.wait_state("echo-0", MemberState::Up, pid, T).await;
    assert_file_mentions(&lab.log_path("echo-0", 0), "not a Distlab envelope");
    assert_file_mentions(&lab.log_path("echo-0", 0), "malformed fault rules");
    pump.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rules_on_the_control_topic_cut_and_restore_a_peer() {
    let (lab, _obs, _pid) = Lab::one_echo_up().await;
    let client = lab.client("tester").await;
    let t = distlab_node::envelope::Topics::new(&lab.cluster);

    let cut = FaultRules {
        from: [("tester".to_owned(), LinkRule::CUT)].into(),
        ..Default::default()
    };
    let rules = client.envelope("rules", serde_json::to_value(&cut).unwrap());
    client.publish(&t.control("echo-0"), &rules).await.unwrap();
    // Rules apply asynchronously; poll until requests stop getting through.
    let mut cut_seen = false;
    for _ in 0..50 {
        match client
            .request(
                "echo",
                "echo-0",
                "echo",
                json!({}),
                Duration::from_millis(200),
            )
            .await
        {
            Err(RpcError::Timeout { .. }) => {
                cut_seen = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(cut_seen, "requests still got through the cut");

    let heal = client.envelope(
        "rules",
        serde_json::to_value(FaultRules::default()).unwrap(),
    );
    client.publish(&t.control("echo-0"), &heal).await.unwrap();
    client
        .request("echo", "echo-0", "echo", json!({}), T)
        .await
        .expect("healed");
}

fn run_node(args: &[&str]) -> (bool, String) {
    let out = Command::new(NODE_BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_file_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[lab]\nname = \"x\"\n\n[[node]]\nid = \"a\"\nroles = [\"echo\"]\nflavour = \"salty\"\n",
    )
    .unwrap();
    let (ok, err) = run_node(&["serve", "--node", "a", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("flavour") && err.contains("line 7") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&path, "[[node]]\nid = \"a\"\nroles = [\"wizard\"]\n").unwrap();
    let (ok, err) = run_node(&["serve", "--node", "a", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("wizard"), "{err}");

    let (ok, err) = run_node(&["serve", "--node", "a", "--config", "/nonexistent/lab.toml"]);
    assert!(!ok);
    assert!(
        err.contains("cannot read config file /nonexistent/lab.toml"),
        "{err}"
    );
}

#[test]
fn an_unknown_node_id_lists_the_known_ones() {
    let (ok, err) = run_node(&["serve", "--node", "ghost"]);
    assert!(!ok);
    assert!(err.contains("ghost") && err.contains("echo-a"), "{err}");
}

#[test]
fn bad_cli_values_are_explained() {
    let (ok, err) = run_node(&["serve", "--node", "echo-a", "--broker", "nowhere"]);
    assert!(!ok);
    assert!(err.contains("HOST:PORT"), "{err}");
    let (ok, err) = run_node(&["status", "--cluster", "a/b", "--broker", "127.0.0.1:9"]);
    assert!(!ok);
    assert!(err.contains("--cluster"), "{err}");
}

#[test]
fn status_without_a_broker_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, err) = run_node(&["status", "--broker", &format!("127.0.0.1:{port}")]);
    assert!(!ok);
    assert!(err.contains("cannot reach the MQTT broker"), "{err}");
}

#[test]
fn default_config_prints_the_lab() {
    let out = Command::new(NODE_BIN)
        .arg("default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    distlab_node::config::LabConfig::parse(&text, distlab_node::config::Origin::BuiltIn).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_payload_crosses_the_broker_and_a_larger_one_is_refused() {
    use distlab_node::bus::{BusError, MAX_PAYLOAD};
    let lab = Lab::with_config(crate::harness::embedded_broker(), |cluster| {
        format!("[lab]\nname = \"{cluster}\"\n")
    });
    let (a, b) = (lab.client("big-a").await, lab.client("big-b").await);
    let topic = b.topics().service("mom", "big");
    let mut rx = b.subscribe(&topic).await.unwrap();
    // A body whose envelope comes just under the limit (a MOM append of the
    // largest message with every character escaped is about 3 MiB).
    let body = "x".repeat(MAX_PAYLOAD - 4096);
    a.publish(&topic, &a.envelope("big", &body)).await.unwrap();
    let m = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(m.envelope.body_as::<String>().unwrap().len(), body.len());
    let over = "x".repeat(MAX_PAYLOAD);
    match a.publish(&topic, &a.envelope("big", &over)).await {
        Err(BusError::TooLarge { .. }) => {}
        other => panic!("{other:?}"),
    }
    // The connection survives both.
    a.publish(&topic, &a.envelope("small", "after"))
        .await
        .unwrap();
    let m = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(m.envelope.body_as::<String>().unwrap(), "after");
}

/// Answers every request on `rpc/echo/ghost` as `name` would; counts them.
async fn answer_as(lab: &Lab, name: &str) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let bus = lab.client(name).await;
    let mut asked = bus
        .subscribe(&bus.topics().rpc("echo", "ghost"))
        .await
        .unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = asked.recv().await {
            bus.reply(&m.envelope, "reply", json!({"forged": true}))
                .await
                .unwrap();
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (task, answered)
}

/// A reply counts only from the instance asked: another client that sees
/// the request (anyone on the bus can) cannot answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_another_node_than_the_one_asked_is_ignored() {
    let lab = Lab::embedded(0);
    let asker = lab.client("asker").await;
    let ask = |wait_ms| {
        asker.request(
            "echo",
            "ghost",
            "echo",
            json!({}),
            Duration::from_millis(wait_ms),
        )
    };
    // Until mallory has answered one (its subscription is in place): not
    // one of its answers counts.
    let (mallory, forged) = answer_as(&lab, "mallory").await;
    for tries in 0.. {
        let got = ask(500).await;
        assert!(matches!(got, Err(RpcError::Timeout { .. })), "{got:?}");
        if forged.load(Ordering::Relaxed) > 0 {
            break;
        }
        assert!(tries < 40, "mallory never saw a request");
    }
    // The instance asked is heard, with mallory still answering too.
    let (ghost, _) = answer_as(&lab, "ghost").await;
    for tries in 0.. {
        match ask(1000).await {
            Ok(reply) => {
                assert_eq!(reply.from, "ghost");
                break;
            }
            Err(RpcError::Timeout { .. }) if tries < 40 => {}
            Err(e) => panic!("{e}"),
        }
    }
    mallory.abort();
    ghost.abort();
}
