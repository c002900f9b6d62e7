//! Supervision of local node processes.
//!
//! One thread owns every child. Commands ([`NodeCommand`]) arrive on a channel,
//! so the UI never waits on a process. Children get their own process group
//! (signals go to the whole group), stdin from /dev/null, their output read
//! line by line into per-node log buffers, and a parent-death signal so no
//! node outlives the app even if the app is killed.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};

use parking_lot::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What a person can do to a local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    /// SIGKILL: the process dies at once, saying nothing.
    Kill,
    /// SIGTERM: the node says goodbye and exits.
    Stop,
    /// SIGSTOP: frozen; its connection stays open but it sends nothing.
    Pause,
    /// SIGCONT after a pause.
    Resume,
    /// Stop if running (SIGTERM, then SIGKILL after a grace period), then start
    /// again with the same id and data directory.
    Restart,
}

impl NodeCommand {
    pub const ALL: [NodeCommand; 5] = [
        NodeCommand::Kill,
        NodeCommand::Stop,
        NodeCommand::Pause,
        NodeCommand::Resume,
        NodeCommand::Restart,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NodeCommand::Kill => "Kill",
            NodeCommand::Stop => "Stop",
            NodeCommand::Pause => "Pause",
            NodeCommand::Resume => "Resume",
            NodeCommand::Restart => "Restart",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            NodeCommand::Kill => "SIGKILL: die at once without a goodbye",
            NodeCommand::Stop => "SIGTERM: say goodbye and exit",
            NodeCommand::Pause => "SIGSTOP: freeze the process",
            NodeCommand::Resume => "SIGCONT: continue a paused process",
            NodeCommand::Restart => "Stop if running, then start with the same id and data",
        }
    }
}

/// How a local process is doing, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    /// Waiting for the node binary (e.g. while it is being built).
    NotStarted,
    Running,
    Paused,
    /// Asked to stop; waiting for it to exit.
    Stopping,
    Exited(String),
    FailedToStart(String),
}

impl ProcState {
    pub fn is_alive(&self) -> bool {
        matches!(
            self,
            ProcState::Running | ProcState::Paused | ProcState::Stopping
        )
    }
}

/// One local node as the UI sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcView {
    pub id: String,
    pub pid: Option<u32>,
    pub state: ProcState,
    pub started: Option<Instant>,
    pub starts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Said by the supervisor itself (start, exit, signals).
    Supervisor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
}

const LOG_LINES: usize = 2000;

/// Everything needed to start one node.
#[derive(Debug, Clone)]
pub struct NodeLaunch {
    pub id: String,
    pub args: Vec<OsString>,
    /// Set in its environment (the bus credentials: not on the command
    /// line, where any user sees them).
    pub env: Vec<(String, String)>,
}

enum Msg {
    Command(String, NodeCommand),
    SetProgram(PathBuf),
    Shutdown(mpsc::Sender<()>),
}

#[derive(Default)]
struct Shared {
    views: Mutex<BTreeMap<String, ProcView>>,
    logs: Mutex<BTreeMap<String, VecDeque<LogLine>>>,
}

type Notify = Arc<dyn Fn() + Send + Sync>;

/// Sends node commands to the supervisor from any thread.
#[derive(Clone)]
pub struct Commander {
    tx: mpsc::Sender<Msg>,
}

impl Commander {
    /// Queues `command` for `node`; false once the supervisor has shut down.
    pub fn command(&self, node: &str, command: NodeCommand) -> bool {
        self.tx.send(Msg::Command(node.to_owned(), command)).is_ok()
    }
}

impl std::fmt::Debug for Commander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Commander")
    }
}

/// Handle on the supervisor thread.
pub struct Supervisor {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the supervisor. Nodes start once the program is known
    /// (`program` now, or later through [`Supervisor::set_program`]).
    pub fn start(
        nodes: Vec<NodeLaunch>,
        program: Option<PathBuf>,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> Supervisor {
        let shared = Arc::new(Shared::default());
        {
            let mut views = shared.views.lock();
            for n in &nodes {
                views.insert(
                    n.id.clone(),
                    ProcView {
                        id: n.id.clone(),
                        pid: None,
                        state: ProcState::NotStarted,
                        started: None,
                        starts: 0,
                    },
                );
            }
        }
        let (tx, rx) = mpsc::channel();
        let notify: Notify = Arc::new(notify);
        let worker = Worker {
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            program: None,
            children: BTreeMap::new(),
            shared: shared.clone(),
            notify,
        };
        let thread = std::thread::Builder::new()
            .name("supervisor".to_owned())
            .spawn(move || worker.run(rx))
            .expect("cannot start the supervisor thread");
        let sup = Supervisor {
            tx,
            shared,
            thread: Some(thread),
        };
        if let Some(program) = program {
            sup.set_program(program);
        }
        sup
    }

    /// Sets the node binary and starts every node not started yet.
    pub fn set_program(&self, program: PathBuf) {
        self.post(Msg::SetProgram(program));
    }

    pub fn command(&self, node: &str, command: NodeCommand) {
        self.post(Msg::Command(node.to_owned(), command));
    }

    /// A handle that sends commands from another thread (a scenario run).
    pub fn commander(&self) -> Commander {
        Commander {
            tx: self.tx.clone(),
        }
    }

    fn post(&self, msg: Msg) {
        // Fails only after shutdown, when no node is left to act on.
        if self.tx.send(msg).is_err() {
            tracing::warn!("the supervisor has shut down; command dropped");
        }
    }

    pub fn views(&self) -> Vec<ProcView> {
        self.shared.views.lock().values().cloned().collect()
    }

    /// The last lines a node printed (up to `max`).
    pub fn log_tail(&self, node: &str, max: usize) -> Vec<LogLine> {
        self.shared
            .logs
            .lock()
            .get(node)
            .map(|l| {
                l.iter()
                    .skip(l.len().saturating_sub(max))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period) and waits.
    pub fn shutdown(&mut self) {
        let (done_tx, done_rx) = mpsc::channel();
        // A failed send: the thread already stopped (an earlier shutdown).
        if self.tx.send(Msg::Shutdown(done_tx)).is_ok() {
            match done_rx.recv_timeout(SHUTDOWN_WAIT) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(wait = ?SHUTDOWN_WAIT, "nodes are still stopping; waiting for the supervisor thread")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::warn!("the supervisor thread ended before stopping every node")
                }
            }
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the supervisor thread panicked");
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Running {
    child: Child,
    /// When a stop was asked: escalate to SIGKILL after the grace period.
    stopping_since: Option<Instant>,
    restart_after_exit: bool,
}

struct Worker {
    nodes: BTreeMap<String, NodeLaunch>,
    program: Option<PathBuf>,
    children: BTreeMap<String, Running>,
    shared: Arc<Shared>,
    notify: Notify,
}

/// A node waits up to 3 s for its tasks and then says goodbye (up to ~3 s
/// more); only after that does a stop escalate to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(7);

/// How long `shutdown` waits for every node to stop (the grace and a bit).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Msg::Command(node, command)) => self.handle(&node, command),
                Ok(Msg::SetProgram(program)) => {
                    self.program = Some(program);
                    let waiting: Vec<String> = self
                        .nodes
                        .keys()
                        .filter(|id| self.state(id) == Some(ProcState::NotStarted))
                        .cloned()
                        .collect();
                    for id in waiting {
                        self.spawn(&id);
                    }
                }
                Ok(Msg::Shutdown(done)) => {
                    self.stop_all();
                    if done.send(()).is_err() {
                        tracing::debug!("shutdown finished after its caller stopped waiting");
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop_all();
                    return;
                }
            }
            self.reap();
        }
    }

    fn state(&self, id: &str) -> Option<ProcState> {
        self.shared.views.lock().get(id).map(|v| v.state.clone())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ProcView)) {
        if let Some(view) = self.shared.views.lock().get_mut(id) {
            f(view);
        }
        (self.notify)();
    }

    fn log(&self, id: &str, text: String) {
        push_line(&self.shared, id, Stream::Supervisor, text);
    }

    fn handle(&mut self, id: &str, command: NodeCommand) {
        if !self.nodes.contains_key(id) {
            tracing::warn!(node = id, "command for a node the app does not run");
            return;
        }
        let Some(running) = self.children.get_mut(id) else {
            if command == NodeCommand::Restart {
                self.spawn(id);
            }
            return;
        };
        let send = |signal: Signal| signal_group(id, &running.child, signal);
        match command {
            NodeCommand::Kill => send(Signal::SIGKILL),
            NodeCommand::Stop | NodeCommand::Restart => {
                // Once: a node takes a second SIGTERM as "exit now".
                if running.stopping_since.is_none() {
                    send(Signal::SIGCONT);
                    send(Signal::SIGTERM);
                }
                running.stopping_since.get_or_insert_with(Instant::now);
                running.restart_after_exit |= command == NodeCommand::Restart;
                self.update(id, |v| v.state = ProcState::Stopping);
            }
            NodeCommand::Pause => {
                send(Signal::SIGSTOP);
                self.update(id, |v| v.state = ProcState::Paused);
            }
            NodeCommand::Resume => {
                send(Signal::SIGCONT);
                self.update(id, |v| {
                    if v.state == ProcState::Paused {
                        v.state = ProcState::Running;
                    }
                });
            }
        }
        self.log(
            id,
            format!("[distlab] {} sent ({})", command.label(), command.help()),
        );
    }

    fn spawn(&mut self, id: &str) {
        let (Some(program), Some(launch)) = (self.program.clone(), self.nodes.get(id).cloned())
        else {
            return;
        };
        let parent = std::process::id();
        let mut cmd = Command::new(&program);
        cmd.args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls are made
        // (prctl, getppid); nothing allocates or takes a lock.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The app may have died before prctl took effect.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    // No allocation between fork and exec.
                    return Err(nix::errno::Errno::ESRCH.into());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                if let Some(out) = child.stdout.take() {
                    read_lines(
                        self.shared.clone(),
                        self.notify.clone(),
                        id,
                        Stream::Stdout,
                        out,
                    );
                }
                if let Some(err) = child.stderr.take() {
                    read_lines(
                        self.shared.clone(),
                        self.notify.clone(),
                        id,
                        Stream::Stderr,
                        err,
                    );
                }
                self.log(id, format!("[distlab] started pid {pid}"));
                self.children.insert(
                    id.to_owned(),
                    Running {
                        child,
                        stopping_since: None,
                        restart_after_exit: false,
                    },
                );
                self.update(id, |v| {
                    v.pid = Some(pid);
                    v.state = ProcState::Running;
                    v.started = Some(Instant::now());
                    v.starts += 1;
                });
            }
            Err(err) => {
                let why = format!("cannot start {}: {err}", program.display());
                self.log(id, format!("[distlab] {why}"));
                self.update(id, |v| v.state = ProcState::FailedToStart(why));
            }
        }
    }

    /// Notices exits, escalates slow stops, and restarts what asked for it.
    fn reap(&mut self) {
        let mut exited = Vec::new();
        for (id, running) in self.children.iter_mut() {
            match running.child.try_wait() {
                Ok(Some(status)) => exited.push((id.clone(), status, running.restart_after_exit)),
                Ok(None) => {
                    if running
                        .stopping_since
                        .is_some_and(|since| since.elapsed() > STOP_GRACE)
                    {
                        tracing::warn!(node = %id, grace = ?STOP_GRACE, "did not stop in time; killing it");
                        signal_group(id, &running.child, Signal::SIGKILL);
                        running.stopping_since = None;
                    }
                }
                Err(err) => tracing::warn!(node = %id, error = %err, "cannot check child"),
            }
        }
        for (id, status, restart) in exited {
            self.children.remove(&id);
            let how = describe_exit(status);
            self.log(&id, format!("[distlab] {how}"));
            self.update(&id, |v| v.state = ProcState::Exited(how));
            if restart {
                self.spawn(&id);
            }
        }
    }

    fn stop_all(&mut self) {
        for (id, running) in &self.children {
            signal_group(id, &running.child, Signal::SIGCONT);
            signal_group(id, &running.child, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !self.children.is_empty() && Instant::now() < deadline {
            self.children
                .retain(|_, r| matches!(r.child.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(20));
        }
        for (id, mut running) in std::mem::take(&mut self.children) {
            tracing::warn!(node = %id, "did not stop in time; killing it");
            signal_group(&id, &running.child, Signal::SIGKILL);
            if let Err(err) = running.child.wait() {
                tracing::warn!(node = %id, error = %err, "cannot reap a killed node");
            }
        }
    }
}

/// Signals a child's process group. A group that is gone (ESRCH: it exited
/// and is about to be reaped) needs no signal, so that is only a debug line.
fn signal_group(id: &str, child: &Child, signal: Signal) {
    match killpg(Pid::from_raw(child.id() as i32), signal) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => {
            tracing::debug!(node = %id, ?signal, "process group already gone")
        }
        Err(err) => tracing::warn!(node = %id, ?signal, error = %err, "signal failed"),
    }
}

/// "exited with code 0", "killed by SIGKILL", …
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => "exited".to_owned(),
    }
}

fn push_line(shared: &Shared, id: &str, stream: Stream, text: String) {
    let mut logs = shared.logs.lock();
    let buf = logs.entry(id.to_owned()).or_default();
    if buf.len() == LOG_LINES {
        buf.pop_front();
    }
    buf.push_back(LogLine { stream, text });
}

fn read_lines(
    shared: Arc<Shared>,
    notify: Notify,
    id: &str,
    stream: Stream,
    pipe: impl Read + Send + 'static,
) {
    let id = id.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("log-{id}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        // Also in the app's own log (RUST_LOG=distlab::node=debug).
                        tracing::debug!(target: "distlab::node", node = %id, "{text}");
                        push_line(&shared, &id, stream, text);
                        notify();
                    }
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start a log reader thread");
    }
}

#[cfg(test)]
mod tests {
    //! Real `distlab-node` processes on an embedded broker: every command acts
    //! on a real process, and shutdown leaves none behind.

    use super::*;

    const T: Duration = Duration::from_secs(15);

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + T;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process state letter from /proc (R, S, T for stopped, Z …).
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    fn gone(pid: u32) -> bool {
        matches!(proc_state(pid), None | Some('Z'))
    }

    /// Whether the incarnation `pid` has logged its broker connection.
    fn connected_since(sup: &Supervisor, pid: u32) -> bool {
        let lines = sup.log_tail("echo-a", 2000);
        let started = format!("started pid {pid}");
        lines
            .iter()
            .skip_while(|l| !l.text.contains(&started))
            .any(|l| l.text.contains("connected to the broker"))
    }

    fn view(sup: &Supervisor) -> ProcView {
        sup.views().pop().expect("one node")
    }

    #[test]
    fn commands_act_on_real_processes() {
        let program = crate::node_bin::cargo::for_tests();
        let credentials = distlab_node::credentials::Credentials::generate();
        let broker =
            distlab_node::broker::start("127.0.0.1:0".parse().unwrap(), credentials.clone())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let launch = NodeLaunch {
            id: "echo-a".into(),
            args: vec![
                "serve".into(),
                "--node".into(),
                "echo-a".into(),
                "--broker".into(),
                broker.addr.to_string().into(),
                "--data-dir".into(),
                dir.path().as_os_str().to_owned(),
            ],
            env: credentials
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let mut sup = Supervisor::start(vec![launch], Some(program), || {});
        wait_until("start", || view(&sup).state == ProcState::Running);
        let first = view(&sup).pid.unwrap();
        wait_until("log output", || {
            sup.log_tail("echo-a", 100)
                .iter()
                .any(|l| l.text.contains("connected to the broker"))
        });

        sup.command("echo-a", NodeCommand::Pause);
        // The supervisor thread signals first and updates the view after, so
        // wait for both rather than read the view the moment the signal lands.
        wait_until("SIGSTOP", || {
            proc_state(first) == Some('T') && view(&sup).state == ProcState::Paused
        });
        sup.command("echo-a", NodeCommand::Resume);
        wait_until("SIGCONT", || {
            matches!(proc_state(first), Some('S' | 'R')) && view(&sup).state == ProcState::Running
        });

        sup.command("echo-a", NodeCommand::Kill);
        wait_until("kill", || matches!(view(&sup).state, ProcState::Exited(_)));
        assert_eq!(
            view(&sup).state,
            ProcState::Exited("killed by SIGKILL".into())
        );
        assert!(gone(first));

        sup.command("echo-a", NodeCommand::Restart);
        wait_until("restart", || {
            view(&sup).state == ProcState::Running && view(&sup).starts == 2
        });
        let second = view(&sup).pid.unwrap();
        assert_ne!(first, second);
        // Same data directory: the lock file names the new process.
        let lock = dir.path().join("echo-a/node.lock");
        wait_until("lock file", || {
            std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == second.to_string())
        });

        // Restart of a paused node: stop (SIGCONT + SIGTERM), then start.
        sup.command("echo-a", NodeCommand::Pause);
        sup.command("echo-a", NodeCommand::Restart);
        wait_until("restart of a paused node", || {
            view(&sup).starts == 3 && view(&sup).state == ProcState::Running
        });
        let third = view(&sup).pid.unwrap();
        assert!(gone(second));

        // A stop of a node that is up (its SIGTERM handler installed) is clean.
        wait_until("the third node up", || connected_since(&sup, third));
        sup.command("echo-a", NodeCommand::Stop);
        wait_until("stop", || matches!(view(&sup).state, ProcState::Exited(_)));
        assert_eq!(
            view(&sup).state,
            ProcState::Exited("exited with code 0".into())
        );

        sup.command("echo-a", NodeCommand::Restart);
        wait_until("start again", || {
            view(&sup).starts == 4 && view(&sup).state == ProcState::Running
        });
        let fourth = view(&sup).pid.unwrap();
        sup.command("echo-a", NodeCommand::Pause);
        wait_until("paused", || proc_state(fourth) == Some('T'));
        // Shutdown stops even a paused node and waits for it.
        sup.shutdown();
        for pid in [first, second, third, fourth] {
            assert!(gone(pid), "pid {pid} survived the supervisor");
        }
    }

    #[test]
    fn a_missing_program_is_reported_not_fatal() {
        let launch = NodeLaunch {
            id: "x".into(),
            args: vec![],
            env: vec![],
        };
        let sup = Supervisor::start(
            vec![launch],
            Some("/nonexistent/distlab-node".into()),
            || {},
        );
        wait_until("failure", || {
            matches!(view(&sup).state, ProcState::FailedToStart(_))
        });
        let ProcState::FailedToStart(why) = view(&sup).state else {
            unreachable!()
        };
        assert!(why.contains("/nonexistent/distlab-node"), "{why}");
    }
}
