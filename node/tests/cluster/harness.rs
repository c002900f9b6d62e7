//! Test harness: a broker on a free port, a temporary data dir, real
//! `distlab-node` processes, and an observer on the bus. Everything it starts
//! is killed (by PID) when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use distlab_node::bus::{Bus, BusOptions, Incoming};
use distlab_node::config::BrokerAddr;
use distlab_node::credentials::Credentials;
use distlab_node::presence::{MemberRow, MemberState, Membership};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_distlab-node");

/// A lab config with `n` echo nodes named `echo-0` …
pub fn lab_toml(cluster: &str, n: usize) -> String {
    let mut text = format!("[lab]\nname = \"{cluster}\"\nheartbeat_ms = 500\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[node]]\nid = \"echo-{i}\"\nroles = [\"echo\"]\n"
        ));
    }
    text
}

/// A broker of its own for one test, on a free port, with credentials of
/// its own (the address carries them).
pub fn embedded_broker() -> BrokerAddr {
    distlab_node::broker::start("127.0.0.1:0".parse().unwrap(), Credentials::generate())
        .expect("embedded broker")
        .client_addr()
}

/// The environment that gives a child process `broker`'s credentials.
pub fn credentials_env(broker: &BrokerAddr) -> Vec<(&'static str, String)> {
    broker.credentials.iter().flat_map(|c| c.env()).collect()
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub broker: BrokerAddr,
    pub cluster: String,
    pub config: PathBuf,
    children: Vec<(String, Child)>,
    /// Extra processes to kill on drop (e.g. a Mosquitto broker).
    pub extra: Vec<Child>,
}

impl Lab {
    /// A lab of `nodes` echo nodes on a broker of its own.
    pub fn embedded(nodes: usize) -> Lab {
        Self::on(embedded_broker(), nodes)
    }

    /// A lab with one echo node, `echo-0`, up; its observer and PID.
    pub async fn one_echo_up() -> (Lab, Observer, u32) {
        let mut lab = Self::embedded(1);
        let mut obs = lab.observer().await;
        let pid = lab.spawn("echo-0");
        obs.wait_state("echo-0", MemberState::Up, pid, Duration::from_secs(10))
            .await;
        (lab, obs, pid)
    }

    /// A lab of `nodes` echo nodes on an existing broker.
    pub fn on(broker: BrokerAddr, nodes: usize) -> Lab {
        Self::with_config(broker, |cluster| lab_toml(cluster, nodes))
    }

    /// A lab whose config text is made from its cluster name.
    pub fn with_config(broker: BrokerAddr, text: impl FnOnce(&str) -> String) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        // A cluster name of its own keeps tests apart even on a shared broker.
        let cluster = format!("t{}x{}", std::process::id(), broker.port);
        let config = dir.path().join("lab.toml");
        std::fs::write(&config, text(&cluster)).unwrap();
        Lab {
            dir,
            broker,
            cluster,
            config,
            children: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self, node: &str, n: usize) -> PathBuf {
        self.dir.path().join(format!("{node}.{n}.log"))
    }

    /// `distlab-node` with the lab's bus credentials in its environment.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(NODE_BIN);
        cmd.envs(credentials_env(&self.broker));
        cmd
    }

    /// Runs `distlab-node fault ARGS` against the lab.
    pub fn fault_output(&self, args: &[&str]) -> std::process::Output {
        self.cli()
            .arg("fault")
            .args(["--broker", &self.broker.to_string()])
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `distlab-node fault ARGS` against the lab and checks it
    /// succeeded; its stdout.
    pub fn fault(&self, args: &[&str]) -> String {
        let out = self.fault_output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "fault {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Starts `distlab-node serve` for one node; returns its PID.
    pub fn spawn(&mut self, node: &str) -> u32 {
        let n = self.children.iter().filter(|(id, _)| id == node).count();
        let log = std::fs::File::create(self.log_path(node, n)).unwrap();
        let child = Command::new(NODE_BIN)
            .args([
                "serve",
                "--node",
                node,
                "--broker",
                &self.broker.to_string(),
            ])
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .envs(credentials_env(&self.broker))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn distlab-node");
        let pid = child.id();
        self.children.push((node.to_owned(), child));
        pid
    }

    pub fn signal(&self, pid: u32, signal: Signal) {
        kill(Pid::from_raw(pid as i32), signal).expect("signal");
    }

    /// Waits for a child to exit; returns its exit code (None if signalled).
    fn child(&mut self, pid: u32) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .expect("a child this lab started")
            .1
    }

    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child(pid);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the child is still running.
    pub fn is_alive(&mut self, pid: u32) -> bool {
        self.child(pid).try_wait().unwrap().is_none()
    }

    /// A bus client of this lab's cluster.
    pub async fn client(&self, name: &str) -> Bus {
        let bus = Bus::start(BusOptions::new(self.broker.clone(), name, &self.cluster));
        assert!(
            bus.wait_connected(Duration::from_secs(5)).await,
            "client cannot reach the broker"
        );
        bus
    }

    /// An observer that keeps the membership of this lab.
    pub async fn observer(&self) -> Observer {
        let bus = self
            .client(&format!("observer-{}", std::process::id()))
            .await;
        let membership = Membership::new(bus.topics().clone());
        let rx = bus.subscribe_all(&membership.filters()).await.unwrap();
        Observer {
            _bus: bus,
            membership,
            rx,
        }
    }

    pub fn print_logs(&self) {
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                eprintln!(
                    "--- {}\n{}",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for (_, child) in self.children.iter_mut().map(|(a, b)| (a, b)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in &mut self.extra {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Observer {
    /// Keeps the observer's connection open.
    _bus: Bus,
    pub membership: Membership,
    rx: mpsc::Receiver<Incoming>,
}

impl Observer {
    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.membership
                .observe(&m.topic, &m.envelope, Instant::now());
        }
    }

    pub fn row(&mut self, node: &str) -> Option<MemberRow> {
        self.drain();
        self.membership
            .rows(Instant::now())
            .into_iter()
            .find(|r| r.node == node)
    }

    /// Waits until the node's row satisfies `pred`; returns the row and how long it took.
    pub async fn wait_for(
        &mut self,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&MemberRow) -> bool,
    ) -> (MemberRow, Duration) {
        let start = Instant::now();
        loop {
            if let Some(row) = self.row(node).filter(|r| pred(r)) {
                return (row, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "{node} not {what} within {timeout:?}; last seen: {:?}",
                self.row(node)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_state(
        &mut self,
        node: &str,
        state: MemberState,
        pid: u32,
        timeout: Duration,
    ) -> Duration {
        self.wait_for(node, state.as_str(), timeout, |r| {
            r.state == state && r.pid == pid
        })
        .await
        .1
    }
}

/// Waits (up to 10 s: a node logs what it drops from its own tasks, in no
/// fixed order with its answers) until the file at `path` mentions `needle`.
pub fn assert_file_mentions(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    while !text.contains(needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        text = std::fs::read_to_string(path).unwrap_or_default();
    }
    assert!(
        text.contains(needle),
        "{} does not mention {needle:?}:\n{text}",
        path.display()
    );
}

/// A broker in a process of its own (`distlab-node broker`), so a test can
/// pause it (SIGSTOP), kill it and start it again on the same port.
pub struct BrokerProc {
    pub addr: BrokerAddr,
    /// The credentials file it was started with.
    credentials: PathBuf,
    child: Child,
    log: PathBuf,
    starts: usize,
    /// The address it listens on (with `addr`'s port).
    listen: &'static str,
}

impl BrokerProc {
    /// Starts a broker on a free port; logs go to `dir`.
    pub fn start(dir: &Path) -> BrokerProc {
        Self::start_on(dir, "127.0.0.1")
    }

    /// Starts a broker that listens on every interface (so serves TLS);
    /// its credentials pin its certificate once it is up.
    pub fn start_beyond_loopback(dir: &Path) -> BrokerProc {
        let mut broker = Self::start_on(dir, "0.0.0.0");
        broker.addr.credentials = Some(Credentials::load(&broker.credentials).unwrap());
        broker
    }

    fn start_on(dir: &Path, listen: &'static str) -> BrokerProc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("broker");
        let credentials = dir.join("bus-credentials");
        let addr = BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            credentials: Some(Credentials::load_or_create(&credentials).unwrap()),
        };
        let child = Self::spawn(&addr, &credentials, &log, 0, listen);
        BrokerProc {
            addr,
            credentials,
            child,
            log,
            starts: 1,
            listen,
        }
    }

    fn spawn(addr: &BrokerAddr, credentials: &Path, log: &Path, n: usize, listen: &str) -> Child {
        let port = addr.port;
        let file = std::fs::File::create(log.with_extension(format!("{n}.log"))).unwrap();
        let child = Command::new(NODE_BIN)
            .args(["broker", "--listen", &format!("{listen}:{port}")])
            .arg("--credentials")
            .arg(credentials)
            .arg("--data-dir")
            .arg(credentials.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn the broker");
        // Ready once it answers an MQTT CONNECT.
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // As the file says now: a broker with TLS writes its certificate's
        // fingerprint there once it is up.
        let login = || Credentials::load(credentials).ok();
        while distlab_node::broker::probe(addr, login().as_ref(), Duration::from_millis(200))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the broker did not come up on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the broker");
    }

    /// The broker process's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The most resident memory the broker process ever had, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the broker's /proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"));
        kb * 1024
    }

    /// kill -9, then a new broker on the same port (nothing retained
    /// survives: the embedded broker keeps it in memory).
    pub fn kill_and_restart(&mut self) {
        self.child.kill().expect("kill the broker");
        self.child.wait().expect("reap the broker");
        self.child = Self::spawn(
            &self.addr,
            &self.credentials,
            &self.log,
            self.starts,
            self.listen,
        );
        self.starts += 1;
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process does not die of SIGKILL until continued.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
