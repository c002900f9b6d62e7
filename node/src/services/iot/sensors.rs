//! `sensors` role: publishes the readings of `iot.sensors` simulated sensors,
//! each on its own topic at its own period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::sensor::{READING, READINGS, Reading, SensorSim};
use crate::bus::BusError;
use crate::envelope::now_ms;
use crate::runtime::NodeContext;

/// Sensor ids are `<node>-s<index>`, unique across sensors nodes.
pub fn sensor_id(node: &str, index: usize) -> String {
    format!("{node}-s{index}")
}

/// What a sensors node reports on `telemetry/<node>/sensors`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SensorsStats {
    pub sensors: u64,
    pub published: u64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), BusError> {
    let iot = ctx.config.iot.clone();
    let published = Arc::new(AtomicU64::new(0));
    let count = published.clone();
    let sensors = iot.sensors as u64;
    ctx.spawn_telemetry(tasks, "sensors", Duration::from_millis(250), move || {
        SensorsStats {
            sensors,
            published: count.load(Ordering::Relaxed),
        }
    });
    for index in 0..iot.sensors {
        let id = sensor_id(ctx.id(), index);
        let seed = iot.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fnv(ctx.id());
        let mut sim = SensorSim::new(&id, seed, (iot.period_ms[0], iot.period_ms[1]));
        let ctx = ctx.clone();
        let published = published.clone();
        let iot = iot.clone();
        tasks.spawn(async move {
            let topic = super::sensor_topic(ctx.bus.topics(), &sim.id);
            // A sensor samples every period; with `batch` > 1 it sends its
            // last `batch` samples together, waking once per message.
            let batch = iot.batch;
            let period_ms = sim.period.as_millis() as u64;
            let every = sim.period * batch as u32;
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Spread the sensors' phases so they do not all fire together.
            tokio::time::sleep(Duration::from_millis(
                (index as u64 * 7) % every.as_millis().max(1) as u64,
            ))
            .await;
            let mut last_ms = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
                let first = now_ms().saturating_sub(period_ms * (batch as u64 - 1));
                let taken: Vec<Reading> = (0..batch as u64)
                    .map(|i| {
                        // Unique per sensor: (sensor, ts) identifies a reading.
                        let ts = (first + i * period_ms).max(last_ms + 1);
                        last_ms = ts;
                        sim.next(ts)
                    })
                    .collect();
                let count = taken.len() as u64;
                let envelope = match taken.as_slice() {
                    [one] => ctx.bus.envelope(READING, one),
                    many => ctx.bus.envelope(READINGS, many),
                };
                let sent = tokio::select! {
                    sent = ctx.bus.publish_qos0(&topic, &envelope) => sent,
                    _ = ctx.shutdown.cancelled() => return,
                };
                match sent {
                    Ok(true) => {
                        published.fetch_add(count, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        });
    }
    tracing::info!(sensors = iot.sensors, "sensors publishing");
    Ok(())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
