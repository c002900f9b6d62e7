//! The same node and RPC against Debian's Mosquitto broker.
//!
//! Needs Mosquitto: without it the test fails and says what to install.
//! `DISTLAB_SKIP_MOSQUITTO=1` skips it on purpose (it prints `SKIPPED`), so
//! a missing broker never passes for a test that ran.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distlab_node::config::BrokerAddr;
use distlab_node::presence::MemberState;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::Lab;

const T: Duration = Duration::from_secs(10);

fn mosquitto() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_rpc_work_on_mosquitto() {
    if std::env::var_os("DISTLAB_SKIP_MOSQUITTO").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: DISTLAB_SKIP_MOSQUITTO=1");
        return;
    }
    let Some(bin) = mosquitto() else {
        panic!(
            "Mosquitto is not installed: apt-get install mosquitto \
             (or set DISTLAB_SKIP_MOSQUITTO=1 to skip this test)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        ),
    )
    .unwrap();
    let broker = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let mut lab = Lab::on(
        BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
        },
        1,
    );
    lab.extra.push(broker);
    let deadline = Instant::now() + T;
    while distlab_node::broker::probe(("127.0.0.1", port), None, Duration::from_millis(500))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut obs = lab.observer().await;
    let pid = lab.spawn("echo-0");
    obs.wait_state("echo-0", MemberState::Up, pid, T).await;
    let client = lab.client("tester").await;
    let reply = client
        .request("echo", "echo-0", "echo", json!({"via": "mosquitto"}), T)
        .await
        .expect("echo over mosquitto");
    assert_eq!(reply.body.to_value()["echo"]["via"], "mosquitto");

    lab.signal(pid, Signal::SIGKILL);
    let took = obs.wait_state("echo-0", MemberState::Down, pid, T).await;
    eprintln!("mosquitto: kill -9 -> presence down in {took:?}");
    assert_eq!(obs.row("echo-0").unwrap().reason.as_deref(), Some("lost"));
}
