//! Network faults set with `distlab-node fault`: each node's shim applies
//! them to what it receives, they outlive a node's restart, `heal` clears
//! them, and a delayed link holds back no other.

use std::time::{Duration, Instant};

use distlab_node::bus::{Bus, RpcError};
use distlab_node::presence::MemberState;
use distlab_node::shim::ShimReport;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::Lab;

const T: Duration = Duration::from_secs(10);

/// Waits for `node`'s shim telemetry (`+`: any node's) to satisfy `done`;
/// that report.
pub(crate) async fn wait_shim(
    watcher: &Bus,
    node: &str,
    done: impl Fn(&ShimReport) -> bool,
) -> ShimReport {
    let mut rx = watcher
        .subscribe(&watcher.topics().telemetry(node, "shim"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let incoming = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{node}'s shim never reported what was expected"))
            .unwrap();
        if let Ok(report) = incoming.envelope.body_as::<ShimReport>()
            && done(&report)
        {
            return report;
        }
    }
}

async fn echo(bus: &Bus, deadline: Duration) -> Result<(), RpcError> {
    bus.request("echo", "echo-0", "echo", json!({}), deadline)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_from_the_cli_outlives_a_restart_until_heal() {
    let (mut lab, mut obs, pid) = Lab::one_echo_up().await;
    let tester = lab.client("tester").await;
    let watcher = lab.client("watcher").await;
    echo(&tester, T).await.expect("through before the cut");

    let out = lab.fault(&["one-way", "tester", "echo-0"]);
    assert!(out.contains("tester") && out.contains("cut"), "{out}");
    wait_shim(&watcher, "echo-0", |r| r.rules.from.contains_key("tester")).await;
    assert!(matches!(
        echo(&tester, Duration::from_millis(500)).await,
        Err(RpcError::Timeout { .. })
    ));
    echo(&watcher, T).await.expect("another peer is not cut");

    // Restarted, the node is still on its side of the cut: its first
    // request already meets it.
    lab.signal(pid, Signal::SIGTERM);
    lab.wait_exit(pid, T).expect("echo-0 stops");
    let pid = lab.spawn("echo-0");
    obs.wait_state("echo-0", MemberState::Up, pid, T).await;
    assert!(matches!(
        echo(&tester, Duration::from_millis(500)).await,
        Err(RpcError::Timeout { .. })
    ));
    wait_shim(&watcher, "echo-0", |r| {
        r.links.get("tester").is_some_and(|c| c.dropped >= 1)
    })
    .await;
    let ls = lab.fault(&["ls"]);
    assert!(ls.contains("DROPPED"), "{ls}");

    let out = lab.fault(&["heal"]);
    assert!(out.contains("no fault rules"), "{out}");
    wait_shim(&watcher, "echo-0", |r| r.rules.from.is_empty()).await;
    echo(&tester, T).await.expect("healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_link_holds_back_no_other() {
    let (lab, _obs, _pid) = Lab::one_echo_up().await;
    let slow = lab.client("slow").await;
    let fast = lab.client("fast").await;
    lab.fault(&["delay", "slow", "echo-0", "500ms"]);
    wait_shim(&fast, "echo-0", |r| {
        r.rules.from.get("slow").is_some_and(|l| l.delay_ms == 500)
    })
    .await;

    let started = Instant::now();
    let delayed = tokio::spawn(async move { echo(&slow, T).await });
    // Requests from another peer go through while that one waits: ten of
    // them, one after another, all answered before it.
    for _ in 0..10 {
        echo(&fast, T).await.expect("the other link is not delayed");
    }
    assert!(
        !delayed.is_finished(),
        "the delayed request was answered before ten undelayed ones"
    );
    delayed.await.unwrap().expect("delayed, not lost");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let report = wait_shim(&fast, "echo-0", |r| {
        r.links.get("slow").is_some_and(|c| c.delayed >= 1)
    })
    .await;
    assert_eq!(report.links["slow"].dropped, 0);
    assert!(!report.links.contains_key("fast"));
}

#[test]
fn bad_fault_arguments_are_clear_errors() {
    let lab = Lab::embedded(1);
    for (args, says) in [
        (&["delay", "a", "b", "fast"][..], "not a delay"),
        (&["loss", "a", "b", "150%"][..], "not a fraction"),
        (&["partition", "a,b"][..], "two groups"),
        (&["partition", "a", "|", "a"][..], "in two groups"),
        (&["delay", "a", "a", "5ms"][..], "two different nodes"),
        (&["isolate", "a/b"][..], "not a node name"),
    ] {
        let out = lab.fault_output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
