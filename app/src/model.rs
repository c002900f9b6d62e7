//! The cluster as the dashboard shows it: membership seen on the bus, merged
//! with what the supervisor knows about local processes.

use std::time::{Duration, Instant};

use distlab_node::config::NodeSpec;
use distlab_node::envelope::now_ms;
use distlab_node::presence::{MemberRow, MemberState};

use crate::supervisor::{ProcState, ProcView};

/// What the app can do with a row's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalControl {
    /// A process is there to signal.
    pub alive: bool,
    /// The app paused it.
    pub paused: bool,
}

/// One row of the cluster panel.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub roles: Vec<String>,
    pub host: String,
    pub pid: Option<u32>,
    pub state: MemberState,
    pub heartbeat_age: Option<Duration>,
    pub uptime: Option<Duration>,
    /// `Some` for nodes this app runs; `None` for remote ones.
    pub local: Option<LocalControl>,
    /// Extra words for the state, e.g. "killed by SIGKILL".
    pub note: Option<String>,
}

/// Merges the local processes (in config order) with the bus membership.
pub fn rows(
    specs: &[NodeSpec],
    procs: &[ProcView],
    members: &[MemberRow],
    now: Instant,
) -> Vec<NodeRow> {
    let mut out = Vec::new();
    for spec in specs {
        let proc = procs.iter().find(|p| p.id == spec.id);
        let member = members.iter().find(|m| m.node == spec.id);
        out.push(local_row(spec, proc, member, now));
    }
    for m in members {
        if out.iter().any(|r| r.id == m.node) {
            continue;
        }
        out.push(remote_row(m));
    }
    out
}

fn local_row(
    spec: &NodeSpec,
    proc: Option<&ProcView>,
    member: Option<&MemberRow>,
    now: Instant,
) -> NodeRow {
    let roles = spec.roles.iter().map(|r| r.to_string()).collect();
    let state = proc
        .map(|p| p.state.clone())
        .unwrap_or(ProcState::NotStarted);
    // Membership about this very process (not an earlier incarnation).
    let ours = member.filter(|m| proc.and_then(|p| p.pid) == Some(m.pid));
    let alive = state.is_alive();
    if !alive && let Some(m) = member.filter(|m| m.state != MemberState::Down && ours.is_none()) {
        // Our process is gone but a node with this id runs elsewhere.
        let mut row = remote_row(m);
        row.note = Some("running outside this app".to_owned());
        return row;
    }
    let (state, note) = match &state {
        ProcState::NotStarted => (MemberState::Down, Some("not started yet".to_owned())),
        ProcState::FailedToStart(why) => (MemberState::Down, Some(why.clone())),
        ProcState::Exited(how) => (MemberState::Down, Some(how.clone())),
        ProcState::Paused => (
            MemberState::Paused,
            Some("paused by you (SIGSTOP)".to_owned()),
        ),
        ProcState::Stopping => (
            ours.map(|m| m.state).unwrap_or(MemberState::Starting),
            Some("stopping…".to_owned()),
        ),
        ProcState::Running => match ours {
            Some(m) if m.state == MemberState::Down => (
                MemberState::Down,
                Some("process runs, but the broker lost it".to_owned()),
            ),
            Some(m) => (m.state, None),
            None => (MemberState::Starting, None),
        },
    };
    NodeRow {
        id: spec.id.clone(),
        roles,
        host: ours
            .map(|m| m.host.clone())
            .unwrap_or_else(|| "local".to_owned()),
        pid: proc.and_then(|p| p.pid),
        state,
        heartbeat_age: ours.and_then(|m| m.heartbeat_age).filter(|_| alive),
        uptime: proc
            .filter(|_| alive)
            .and_then(|p| p.started)
            .map(|s| now.saturating_duration_since(s)),
        local: Some(LocalControl {
            alive,
            paused: matches!(proc.map(|p| &p.state), Some(ProcState::Paused)),
        }),
        note,
    }
}

fn remote_row(m: &MemberRow) -> NodeRow {
    NodeRow {
        id: m.node.clone(),
        roles: m.roles.clone(),
        host: m.host.clone(),
        pid: Some(m.pid),
        state: m.state,
        heartbeat_age: m.heartbeat_age,
        uptime: (m.state != MemberState::Down)
            .then(|| Duration::from_millis(now_ms().saturating_sub(m.started_ms))),
        local: None,
        note: m.reason.clone().filter(|_| m.state == MemberState::Down),
    }
}

/// How many rows are up, of all.
pub fn count_up(rows: &[NodeRow]) -> (usize, usize) {
    (
        rows.iter().filter(|r| r.state == MemberState::Up).count(),
        rows.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlab_node::config::Role;

    fn spec(id: &str) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            roles: vec![Role::Echo],
        }
    }

    fn member(node: &str, pid: u32, state: MemberState) -> MemberRow {
        MemberRow {
            node: node.into(),
            state,
            roles: vec!["echo".into()],
            host: "box".into(),
            pid,
            version: "0".into(),
            started_ms: now_ms(),
            heartbeat_age: Some(Duration::from_millis(100)),
            reason: None,
        }
    }

    fn proc(id: &str, pid: u32, state: ProcState) -> ProcView {
        ProcView {
            id: id.into(),
            pid: Some(pid),
            state,
            started: Some(Instant::now()),
            starts: 1,
        }
    }

    #[test]
    fn local_running_node_takes_its_membership_state() {
        let now = Instant::now();
        let r = rows(
            &[spec("a")],
            &[proc("a", 10, ProcState::Running)],
            &[member("a", 10, MemberState::Up)],
            now,
        );
        assert_eq!(r[0].state, MemberState::Up);
        assert_eq!(r[0].host, "box");
        assert_eq!(
            r[0].local,
            Some(LocalControl {
                alive: true,
                paused: false
            })
        );
    }

    #[test]
    fn stale_membership_of_an_old_pid_means_starting() {
        let now = Instant::now();
        let r = rows(
            &[spec("a")],
            &[proc("a", 11, ProcState::Running)],
            &[member("a", 10, MemberState::Down)],
            now,
        );
        assert_eq!(r[0].state, MemberState::Starting);
        assert_eq!(r[0].heartbeat_age, None);
    }

    #[test]
    fn exited_and_paused_processes_win_over_the_bus() {
        let now = Instant::now();
        let exited = ProcState::Exited("killed by SIGKILL".into());
        let r = rows(
            &[spec("a")],
            &[proc("a", 10, exited)],
            &[member("a", 10, MemberState::Up)],
            now,
        );
        assert_eq!(r[0].state, MemberState::Down);
        assert_eq!(r[0].note.as_deref(), Some("killed by SIGKILL"));
        let r = rows(
            &[spec("a")],
            &[proc("a", 10, ProcState::Paused)],
            &[member("a", 10, MemberState::Up)],
            now,
        );
        assert_eq!(r[0].state, MemberState::Paused);
        assert!(r[0].local.unwrap().paused);
    }

    #[test]
    fn unknown_members_are_remote_rows() {
        let now = Instant::now();
        let r = rows(
            &[spec("a")],
            &[proc("a", 10, ProcState::Running)],
            &[member("z", 99, MemberState::Up)],
            now,
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].id, "z");
        assert_eq!(r[1].local, None);
        assert_eq!(count_up(&r), (1, 2));
    }

    #[test]
    fn a_local_id_running_elsewhere_shows_as_remote() {
        let now = Instant::now();
        let exited = ProcState::Exited("exited with code 0".into());
        let r = rows(
            &[spec("a")],
            &[proc("a", 10, exited)],
            &[member("a", 77, MemberState::Up)],
            now,
        );
        assert_eq!(r[0].local, None);
        assert_eq!(r[0].pid, Some(77));
        assert_eq!(r[0].state, MemberState::Up);
    }
}
