//! `distlab-node status`: watch presence, heartbeats and the raft members'
//! reports for a moment and print the cluster membership, with who leads
//! each replicated group.

use std::time::{Duration, Instant};

use crate::bus::{Bus, BusOptions};
use crate::config::BrokerAddr;
use crate::envelope::now_ms;
use crate::presence::{MemberRow, Membership};
use crate::replica::{RaftTelemetry, Role};

/// One node as `status` shows it: its membership row, and its place in a
/// raft group if it is a member of one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusRow {
    #[serde(flatten)]
    pub member: MemberRow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftTelemetry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the MQTT broker at {broker} within {waited:?}; is it running (start one with `distlab-node broker`), and does it take {login}?"
    )]
    Unreachable {
        broker: BrokerAddr,
        /// Which credentials were presented, for the message.
        login: String,
        waited: Duration,
    },
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// Connects, listens for `listen`, and returns the membership seen.
pub async fn collect(
    broker: BrokerAddr,
    cluster: &str,
    listen: Duration,
) -> Result<Vec<StatusRow>, StatusError> {
    let me = format!("status-{}", std::process::id());
    let bus = Bus::start(BusOptions::new(broker.clone(), &me, cluster));
    let waited = Duration::from_secs(3);
    if !bus.wait_connected(waited).await {
        bus.close(Vec::new()).await;
        return Err(StatusError::Unreachable {
            login: broker.login(),
            broker,
            waited,
        });
    }
    let mut membership = Membership::new(bus.topics().clone());
    let [presence, beats] = membership.filters();
    let reports = bus.topics().telemetry("+", "raft");
    let mut rx = bus.subscribe_all(&[presence, beats, reports]).await?;
    let mut raft = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if !membership.observe(&incoming.topic, &incoming.envelope, Instant::now())
            && let Ok(report) = incoming.envelope.body_as::<RaftTelemetry>()
        {
            raft.insert(incoming.envelope.from.clone(), report);
        }
    }
    bus.close(Vec::new()).await;
    Ok(membership
        .rows(Instant::now())
        .into_iter()
        .map(|member| {
            // A down node's last report is history, not its place now.
            let live = member.state != crate::presence::MemberState::Down;
            let raft = raft.remove(&member.node).filter(|_| live);
            StatusRow { member, raft }
        })
        .collect())
}

/// Each group's leader, as its members report it (the newest term wins):
/// `(group, leader, term)`, by group name.
pub fn leaders(rows: &[StatusRow]) -> Vec<(String, Option<String>, u64)> {
    let mut groups: std::collections::BTreeMap<&str, (Option<String>, u64)> = Default::default();
    for r in rows.iter().filter_map(|r| r.raft.as_ref()) {
        let entry = groups.entry(&r.group).or_insert((None, 0));
        if r.status.leader.is_some() && (entry.0.is_none() || r.status.term > entry.1) {
            *entry = (r.status.leader.clone(), r.status.term);
        }
    }
    groups
        .into_iter()
        .map(|(g, (l, t))| (g.to_owned(), l, t))
        .collect()
}

/// A member's raft cell: `mom leader (term 3)`, `mom follower`.
fn raft_cell(raft: Option<&RaftTelemetry>) -> String {
    match raft {
        None => "-".to_owned(),
        Some(r) => match r.status.role {
            Role::Leader => format!("{} leader (term {})", r.group, r.status.term),
            Role::Follower if r.status.leader.is_none() => {
                format!("{} follower, no leader", r.group)
            }
            role => format!("{} {}", r.group, role.as_str()),
        },
    }
}

/// Formats a duration the way the table shows it: `320 ms`, `4.2 s`, `3m 05s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// The membership as an aligned text table, then who leads each group.
pub fn table(rows: &[StatusRow]) -> String {
    let now = now_ms();
    let header = [
        "NODE",
        "STATE",
        "ROLES",
        "HOST",
        "PID",
        "HEARTBEAT",
        "UPTIME",
        "RAFT",
    ];
    let mut lines: Vec<[String; 8]> = vec![header.map(str::to_owned)];
    for row in rows {
        let r = &row.member;
        let uptime = if r.state == crate::presence::MemberState::Down {
            "-".to_owned()
        } else {
            human(Duration::from_millis(now.saturating_sub(r.started_ms)))
        };
        lines.push([
            r.node.clone(),
            match (&r.state, &r.reason) {
                (crate::presence::MemberState::Down, Some(reason)) => format!("down ({reason})"),
                (state, _) => state.as_str().to_owned(),
            },
            r.roles.join(","),
            r.host.clone(),
            r.pid.to_string(),
            r.heartbeat_age
                .map(|a| format!("{} ago", human(a)))
                .unwrap_or_else(|| "-".to_owned()),
            uptime,
            raft_cell(row.raft.as_ref()),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no nodes have announced themselves on this cluster)\n");
    }
    for (group, leader, term) in leaders(rows) {
        match leader {
            Some(l) => out.push_str(&format!("{group}: led by {l} (term {term})\n")),
            None => out.push_str(&format!("{group}: no leader right now\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MemberState;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(320)), "320 ms");
        assert_eq!(human(Duration::from_millis(4200)), "4.2 s");
        assert_eq!(human(Duration::from_secs(185)), "3m 05s");
        assert_eq!(human(Duration::from_secs(7260)), "2h 01m");
    }

    #[test]
    fn table_aligns_columns() {
        let row = MemberRow {
            node: "echo-a".into(),
            state: MemberState::Up,
            roles: vec!["echo".into()],
            host: "box".into(),
            pid: 42,
            version: "0.1.0".into(),
            started_ms: now_ms(),
            heartbeat_age: Some(Duration::from_millis(120)),
            reason: None,
        };
        let mom = |node: &str, role, term, leader: Option<&str>| StatusRow {
            member: MemberRow {
                node: node.into(),
                roles: vec!["mom".into()],
                ..row.clone()
            },
            raft: Some(RaftTelemetry {
                group: "mom".into(),
                status: crate::replica::GroupStatus {
                    role,
                    term,
                    leader: leader.map(String::from),
                    ..Default::default()
                },
            }),
        };
        let rows = [
            StatusRow {
                member: row.clone(),
                raft: None,
            },
            mom("mom-a", Role::Follower, 2, Some("mom-a")),
            mom("mom-b", Role::Leader, 3, Some("mom-b")),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE    STATE"), "{t}");
        assert!(lines[1].starts_with("echo-a  up"), "{t}");
        assert!(lines[1].contains("120 ms ago"), "{t}");
        assert!(lines[3].ends_with("mom leader (term 3)"), "{t}");
        assert!(
            t.ends_with("mom: led by mom-b (term 3)\n"),
            "the newest term: {t}"
        );
        assert!(table(&[]).contains("no nodes"));
    }
}
