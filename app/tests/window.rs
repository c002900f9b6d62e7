//! The real app in a real window under Xvfb: every node of the default lab
//! comes up, and neither closing the app nor killing it leaves a node behind.
//!
//! Needs Xvfb (and Mesa's software GL): without it the test fails and says
//! what to install. `DISTLAB_SKIP_WINDOW=1` skips it on purpose (it prints
//! `SKIPPED`). It builds `distlab-node` first if needed (`cargo build -p
//! distlab-node`, the same cargo, target directory and profile), so
//! `cargo test -p distlab` works on a clean checkout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use distlab_node::bus::{Bus, BusOptions};
use distlab_node::config::{BrokerAddr, LabConfig};
use distlab_node::credentials::Credentials;
use distlab_node::presence::{MemberRow, MemberState, Membership};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The app's own code for building the node binary.
#[path = "../src/node_bin/cargo.rs"]
#[allow(dead_code)]
mod node_bin;

const APP: &str = env!("CARGO_BIN_EXE_distlab");

/// Set to `1` to skip this test on purpose.
const SKIP: &str = "DISTLAB_SKIP_WINDOW";

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Starts Xvfb on a free display; returns the display name.
fn xvfb(children: &mut Killed) -> String {
    let Some(bin) = find("Xvfb") else {
        panic!(
            "Xvfb is not installed: apt-get install xvfb libgl1-mesa-dri \
             (or set {SKIP}=1 to skip this test)"
        );
    };
    for n in (140 + std::process::id() % 50)..400 {
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            || Path::new(&format!("/tmp/.X{n}-lock")).exists()
        {
            continue;
        }
        let display = format!(":{n}");
        let child = Command::new(&bin)
            .args([&display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        children.0.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return display;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Xvfb did not start on {display}");
    }
    panic!("no free X display");
}

fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Watcher {
    membership: Membership,
    rx: tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    _bus: Bus,
}

impl Watcher {
    async fn new(broker: &BrokerAddr) -> Watcher {
        let bus = Bus::start(BusOptions::new(broker.clone(), "window-test", "lab"));
        assert!(bus.wait_connected(Duration::from_secs(5)).await);
        let membership = Membership::new(bus.topics().clone());
        let rx = bus.subscribe_all(&membership.filters()).await.unwrap();
        Watcher {
            membership,
            rx,
            _bus: bus,
        }
    }

    async fn rows_when(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[MemberRow]) -> bool,
    ) -> Vec<MemberRow> {
        self.rows_when_or(what, timeout, pred, String::new).await
    }

    /// Like `rows_when`; on timeout the panic message ends with `context()`.
    async fn rows_when_or(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[MemberRow]) -> bool,
        context: impl Fn() -> String,
    ) -> Vec<MemberRow> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(m) = self.rx.try_recv() {
                self.membership
                    .observe(&m.topic, &m.envelope, Instant::now());
            }
            let rows = self.membership.rows(Instant::now());
            if pred(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {rows:#?}\n{}",
                context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_app(display: &str, broker: &BrokerAddr, dir: &Path) -> Child {
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // The broker's credentials in a file, as a user would pass them.
    let credentials = dir.join("bus-credentials");
    let c = broker
        .credentials
        .as_ref()
        .expect("the broker's credentials");
    std::fs::write(
        &credentials,
        format!("user = \"{}\"\npassword = \"{}\"\n", c.user, c.password),
    )
    .unwrap();
    Command::new(APP)
        .args(["--broker", &broker.to_string(), "--data-dir"])
        .arg(dir.join("nodes"))
        .arg("--credentials")
        .arg(&credentials)
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_DATA_HOME", dir.join("xdg"))
        .env("RUST_LOG", "info,distlab::node=debug")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("app.log")).unwrap())
        .spawn()
        .expect("start distlab")
}

fn expected_nodes() -> usize {
    LabConfig::default_lab().nodes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_runs_every_node_and_leaves_none_behind() {
    if std::env::var_os(SKIP).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {SKIP}=1");
        return;
    }
    // The app finds it next to itself (target/<profile>/distlab-node), or
    // where DISTLAB_NODE_BIN says, as the test does.
    let node = node_bin::for_tests();
    if std::env::var_os("DISTLAB_NODE_BIN").is_none() {
        assert_eq!(node.parent(), Path::new(APP).parent(), "{}", node.display());
    }
    let mut children = Killed(Vec::new());
    let display = xvfb(&mut children);
    let broker =
        distlab_node::broker::start("127.0.0.1:0".parse().unwrap(), Credentials::generate())
            .unwrap()
            .client_addr();
    let mut watcher = Watcher::new(&broker).await;
    let n = expected_nodes();

    // 1. Close the app (SIGTERM closes the window): nodes say goodbye and exit.
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(&display, &broker, dir.path());
    let app_pid = app.id();
    children.0.push(app);
    let rows = watcher
        .rows_when("every node up", Duration::from_secs(60), |rows| {
            rows.len() == n && rows.iter().all(|r| r.state == MemberState::Up)
        })
        .await;
    let pids: Vec<u32> = rows.iter().map(|r| r.pid).collect();
    kill(Pid::from_raw(app_pid as i32), Signal::SIGTERM).unwrap();
    wait_until("the app to exit", Duration::from_secs(30), || {
        !alive(app_pid)
    });
    for pid in &pids {
        wait_until("nodes to exit", Duration::from_secs(10), || !alive(*pid));
    }
    let app_log = dir.path().join("app.log");
    watcher
        .rows_when_or(
            "every node down (stopped)",
            Duration::from_secs(10),
            |rows| {
                rows.iter()
                    .all(|r| r.state == MemberState::Down && r.reason.as_deref() == Some("stopped"))
            },
            || {
                format!(
                    "app log:\n{}",
                    std::fs::read_to_string(&app_log).unwrap_or_default()
                )
            },
        )
        .await;
    let log = std::fs::read_to_string(dir.path().join("app.log")).unwrap_or_default();
    assert!(log.contains("stopping every node"), "{log}");

    // 2. Kill the app outright: the parent-death signal takes the nodes along.
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(&display, &broker, dir.path());
    let app_pid = app.id();
    children.0.push(app);
    let rows = watcher
        .rows_when("every node up again", Duration::from_secs(60), |rows| {
            rows.len() == n
                && rows
                    .iter()
                    .all(|r| r.state == MemberState::Up && !pids.contains(&r.pid))
        })
        .await;
    kill(Pid::from_raw(app_pid as i32), Signal::SIGKILL).unwrap();
    for row in &rows {
        wait_until("orphans to die", Duration::from_secs(10), || {
            !alive(row.pid)
        });
    }
    watcher
        .rows_when("every node down (lost)", Duration::from_secs(10), |rows| {
            rows.iter().all(|r| r.state == MemberState::Down)
        })
        .await;
}
