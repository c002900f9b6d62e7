//! Node lifecycle with real processes: RPC, kill -9, restart, pause, stop.

use std::time::Duration;

use distlab_node::bus::RpcError;
use distlab_node::presence::MemberState;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::Lab;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trip_errors_and_deadlines() {
    let mut lab = Lab::embedded(2);
    let mut obs = lab.observer().await;
    let pid = lab.spawn("echo-0");
    obs.wait_state("echo-0", MemberState::Up, pid, T).await;
    let client = lab.client("tester").await;

    let reply = client
        .request("echo", "echo-0", "echo", json!({"hello": [1, 2, 3]}), T)
        .await
        .expect("echo reply");
    assert_eq!(reply.kind, "reply");
    assert_eq!(
        reply.body.to_value(),
        json!({"node": "echo-0", "echo": {"hello": [1, 2, 3]}})
    );

    let delayed = client
        .request("echo", "echo-0", "echo", json!({"delay_ms": 100}), T)
        .await
        .expect("delayed reply");
    assert_eq!(delayed.body.to_value()["node"], "echo-0");

    match client
        .request("echo", "echo-0", "shout", json!(null), T)
        .await
    {
        Err(RpcError::Remote { message, .. }) => assert!(message.contains("shout"), "{message}"),
        other => panic!("expected a remote error, got {other:?}"),
    }

    // Nobody serves echo-1: a clear timeout, not a hang.
    match client
        .request(
            "echo",
            "echo-1",
            "echo",
            json!({}),
            Duration::from_millis(300),
        )
        .await
    {
        Err(err @ RpcError::Timeout { .. }) => assert!(err.to_string().contains("echo/echo-1")),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_marks_the_node_down_and_restart_reuses_its_data_dir() {
    let (mut lab, mut obs, first) = Lab::one_echo_up().await;
    let lock = lab.data_dir().join("echo-0").join("node.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        first.to_string()
    );

    lab.signal(first, Signal::SIGKILL);
    // The broker publishes the last will as soon as the socket closes; the
    // bound below only tells that apart from a keep-alive expiry (7.5 s).
    let took = obs.wait_state("echo-0", MemberState::Down, first, T).await;
    eprintln!("kill -9 -> presence down in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "down took {took:?}: the last will did not fire"
    );
    assert_eq!(obs.row("echo-0").unwrap().reason.as_deref(), Some("lost"));
    lab.wait_exit(first, T);

    let second = lab.spawn("echo-0");
    obs.wait_state("echo-0", MemberState::Up, second, T).await;
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        second.to_string()
    );
    let client = lab.client("tester").await;
    client
        .request("echo", "echo-0", "echo", json!({}), T)
        .await
        .expect("the restarted node answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_pauses_heartbeats_and_sigcont_resumes_them() {
    let (lab, mut obs, pid) = Lab::one_echo_up().await;

    lab.signal(pid, Signal::SIGSTOP);
    let (row, _) = obs
        .wait_for("echo-0", "paused", T, |r| r.state == MemberState::Paused)
        .await;
    assert!(
        row.heartbeat_age.unwrap() > Duration::from_millis(1500),
        "{row:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = obs.row("echo-0").unwrap();
    assert!(
        later.heartbeat_age > row.heartbeat_age,
        "heartbeat age grows while paused"
    );

    lab.signal(pid, Signal::SIGCONT);
    obs.wait_state("echo-0", MemberState::Up, pid, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_goodbye_and_exits_zero() {
    let (mut lab, mut obs, pid) = Lab::one_echo_up().await;
    lab.signal(pid, Signal::SIGTERM);
    obs.wait_state("echo-0", MemberState::Down, pid, T).await;
    assert_eq!(
        obs.row("echo-0").unwrap().reason.as_deref(),
        Some("stopped")
    );
    assert_eq!(lab.wait_exit(pid, T), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_agrees_with_the_bus() {
    let mut lab = Lab::embedded(2);
    let mut obs = lab.observer().await;
    let a = lab.spawn("echo-0");
    let b = lab.spawn("echo-1");
    obs.wait_state("echo-0", MemberState::Up, a, T).await;
    obs.wait_state("echo-1", MemberState::Up, b, T).await;
    let out = lab
        .cli()
        .args([
            "status",
            "--json",
            "--broker",
            &lab.broker.to_string(),
            "--cluster",
            &lab.cluster,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, pid) in rows.iter().zip([a, b]) {
        assert_eq!(row["state"], "up", "{row}");
        assert_eq!(row["pid"], pid);
        assert_eq!(row["roles"], json!(["echo"]));
    }
    // The table form names the same nodes.
    let out = lab
        .cli()
        .args([
            "status",
            "--broker",
            &lab.broker.to_string(),
            "--cluster",
            &lab.cluster,
        ])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table.contains("echo-0") && table.contains("echo-1"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_command_prints_the_reply() {
    let (lab, _obs, _pid) = Lab::one_echo_up().await;
    let broker = lab.broker.to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["request", "--broker", &broker, "--cluster", &lab.cluster];
        all.extend_from_slice(args);
        lab.cli().args(&all).output().unwrap()
    };
    let out = run(&["echo", "echo-0", "echo", r#"{"n": 5}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["echo"]["n"], 5);
    let out = run(&["echo", "echo-0", "echo", "{not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
    let out = run(&["--timeout-ms", "200", "echo", "nobody", "echo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply from echo/nobody"));
}
