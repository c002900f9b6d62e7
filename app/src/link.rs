//! The dashboard's own connection to the bus.
//!
//! A small tokio runtime on its own thread subscribes to what the dashboard
//! shows and hands messages to the UI over a bounded channel; the UI drains it
//! in `logic` and is asked to repaint when something arrives.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use distlab_node::bus::{Bus, BusOptions, Incoming};
use distlab_node::config::BrokerAddr;
use distlab_node::envelope::Topics;
use tokio_util::sync::CancellationToken;

pub enum LinkEvent {
    Connected(bool),
    Message(Incoming),
}

pub struct Link {
    pub rx: Receiver<LinkEvent>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

const QUEUE: usize = 65_536;

impl Link {
    /// Connects as `dashboard-<pid>`. `notify` is called when events arrive;
    /// `on_signal` when the app gets SIGINT or SIGTERM.
    pub fn start(
        broker: BrokerAddr,
        cluster: &str,
        notify: impl Fn() + Send + 'static,
        on_signal: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Link> {
        let (tx, rx) = sync_channel(QUEUE);
        let stop = CancellationToken::new();
        let cluster = cluster.to_owned();
        let token = stop.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("bus-link".to_owned())
            .spawn(move || runtime.block_on(run(broker, cluster, tx, notify, on_signal, token)))?;
        Ok(Link {
            rx,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    broker: BrokerAddr,
    cluster: String,
    tx: SyncSender<LinkEvent>,
    notify: impl Fn() + Send + 'static,
    on_signal: impl FnOnce() + Send + 'static,
    stop: CancellationToken,
) {
    let signals = CancellationToken::new();
    distlab_node::cli::cancel_on_signals(signals.clone());
    let me = format!("dashboard-{}", std::process::id());
    let bus = Bus::start(BusOptions::new(broker, &me, &cluster));
    let topics = Topics::new(&cluster);
    let (merged_tx, mut merged) = tokio::sync::mpsc::channel(QUEUE);
    for filter in [topics.presence_all(), topics.heartbeat_all()] {
        let Ok(mut rx) = bus.subscribe(&filter).await else {
            continue;
        };
        let merged_tx = merged_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if merged_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut connected = false;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut on_signal = Some(on_signal);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = signals.cancelled(), if on_signal.is_some() => {
                if let Some(f) = on_signal.take() { f() }
            }
            Some(m) = merged.recv() => {
                match tx.try_send(LinkEvent::Message(m)) {
                    Ok(()) => notify(),
                    Err(TrySendError::Full(_)) => tracing::warn!("dashboard is behind; dropping a bus message"),
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
            _ = poll.tick() => {
                if bus.is_connected() != connected {
                    connected = bus.is_connected();
                    let _ = tx.try_send(LinkEvent::Connected(connected));
                    notify();
                }
            }
        }
    }
    bus.close(Vec::new()).await;
}
