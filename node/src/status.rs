//! `distlab-node status`: watch presence and heartbeats for a moment and print
//! the cluster membership.

use std::time::{Duration, Instant};

use crate::bus::{Bus, BusOptions};
use crate::config::BrokerAddr;
use crate::envelope::now_ms;
use crate::presence::{MemberRow, Membership};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the MQTT broker at {broker} within {waited:?}; is it running? (start one with `distlab-node broker`)"
    )]
    Unreachable {
        broker: BrokerAddr,
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
) -> Result<Vec<MemberRow>, StatusError> {
    let me = format!("status-{}", std::process::id());
    let bus = Bus::start(BusOptions::new(broker.clone(), &me, cluster));
    let waited = Duration::from_secs(3);
    if !bus.wait_connected(waited).await {
        bus.close(Vec::new()).await;
        return Err(StatusError::Unreachable { broker, waited });
    }
    let mut membership = Membership::new(bus.topics().clone());
    let mut rx = bus.subscribe_all(&membership.filters()).await?;
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        membership.observe(&incoming.topic, &incoming.envelope, Instant::now());
    }
    bus.close(Vec::new()).await;
    Ok(membership.rows(Instant::now()))
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

/// The membership as an aligned text table.
pub fn table(rows: &[MemberRow]) -> String {
    let now = now_ms();
    let header = [
        "NODE",
        "STATE",
        "ROLES",
        "HOST",
        "PID",
        "HEARTBEAT",
        "UPTIME",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for r in rows {
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
        ]);
    }
    let widths: Vec<usize> = (0..7)
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
        let t = table(&[row]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE    STATE"), "{t}");
        assert!(lines[1].starts_with("echo-a  up"), "{t}");
        assert!(lines[1].contains("120 ms ago"), "{t}");
        assert!(table(&[]).contains("no nodes"));
    }
}
