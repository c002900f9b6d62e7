//! A node's link to the lab's MOM: its own MOM user (the key kept in the
//! data dir), its queues (the lockers' three, or any others) created if
//! missing and subscribed, and batch publish, consume and ack on them. A key the MOM no longer
//! knows (its data was wiped) is replaced by a new user on the next call.

use std::path::PathBuf;

use parking_lot::Mutex;

use super::model::{FREE_QUEUE, REPLY_QUEUE, TAKE_QUEUE};
use super::wire::LinkStatus;
use crate::config::Role;
use crate::runtime::NodeContext;
use crate::services::StartError;
use crate::services::mom::client::{Client, ClientError};
use crate::services::mom::model::{Delivery, Kind, MomError};

/// The queues every link creates and subscribes to.
const QUEUES: [&str; 3] = [TAKE_QUEUE, FREE_QUEUE, REPLY_QUEUE];

pub struct MomLink {
    client: Client,
    queues: Vec<&'static str>,
    /// Subscribe to the queues too (a consumer), or only create them.
    subscribe: bool,
    key_file: PathBuf,
    key: tokio::sync::Mutex<Option<String>>,
    status: Mutex<LinkStatus>,
}

impl MomLink {
    /// The link of this node; the lab must have a `mom` node. Nothing is
    /// sent before the first call (the MOM may be down at start).
    pub fn new(ctx: &NodeContext) -> Result<Self, StartError> {
        Self::with_queues(ctx, &QUEUES, "mom-key", true).ok_or(StartError::Setup(
            "the lockers talk through the MOM: the lab needs a node with role `mom`",
        ))
    }

    /// A link to `queues` with its key in `<data dir>/<key_file>` (a file
    /// per link: another role of the node may keep a MOM user too);
    /// `None` if the lab has no `mom` node.
    pub fn with_queues(
        ctx: &NodeContext,
        queues: &[&'static str],
        key_file: &str,
        subscribe: bool,
    ) -> Option<Self> {
        let mom = ctx.config.nodes_with(Role::Mom);
        Some(Self {
            client: Client::new(ctx.bus.clone(), mom.first()?),
            queues: queues.to_vec(),
            subscribe,
            key_file: ctx.dir.join(key_file),
            key: tokio::sync::Mutex::new(None),
            status: Mutex::new(LinkStatus::default()),
        })
    }

    pub fn status(&self) -> LinkStatus {
        let mut s = self.status.lock().clone();
        s.target = self.client.target();
        s
    }

    /// Publishes `messages` on `queue` in order (in batches the MOM takes);
    /// returns once they are durable.
    pub async fn publish(&self, queue: &str, messages: Vec<String>) -> Result<(), ClientError> {
        use crate::services::mom::service::{BATCH_BYTES, BATCH_MESSAGES};
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut rest = messages.into_iter().peekable();
        while let Some(m) = rest.next() {
            bytes += m.len() + 16;
            batch.push(m);
            let full = batch.len() == BATCH_MESSAGES
                || rest
                    .peek()
                    .is_some_and(|n| bytes + n.len() + 16 > BATCH_BYTES / 2);
            if full || rest.peek().is_none() {
                let messages = std::mem::take(&mut batch);
                bytes = 0;
                self.run(|c, key| {
                    let messages = messages.clone();
                    async move { c.publish_batch(Kind::Queue, queue, &key, messages).await }
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Up to `max` messages of `queue`, waiting up to `wait_ms` for the first.
    pub async fn consume(
        &self,
        queue: &str,
        max: u32,
        wait_ms: u64,
    ) -> Result<Vec<Delivery>, ClientError> {
        self.run(|c, key| async move {
            c.consume_batch(Kind::Queue, queue, &key, max, wait_ms)
                .await
        })
        .await
    }

    /// While `leading()`, consumes `queue` in batches (up to 500, each
    /// consume waiting up to a second) and hands them to `batches`, so
    /// the next batch is consumed while the last one is worked on. Ends at
    /// shutdown or when the receiver is gone.
    pub async fn feed(
        self: std::sync::Arc<Self>,
        queue: &'static str,
        leading: impl Fn() -> bool,
        stop: tokio_util::sync::CancellationToken,
        batches: tokio::sync::mpsc::Sender<Vec<Delivery>>,
    ) {
        let pause = |ms| {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => true,
                    _ = stop.cancelled() => false,
                }
            }
        };
        while !stop.is_cancelled() {
            if !leading() {
                if !pause(200).await {
                    return;
                }
                continue;
            }
            let asked = std::time::Instant::now();
            let consumed = tokio::select! {
                c = self.consume(queue, 500, 1000) => c,
                _ = stop.cancelled() => return,
            };
            match consumed {
                // Nothing, and at once (a MOM that does not hold a consume
                // open): a pause, not a busy loop.
                Ok(d) if d.is_empty() => {
                    if asked.elapsed() < std::time::Duration::from_millis(100) && !pause(100).await
                    {
                        return;
                    }
                }
                Ok(d) => {
                    if batches.send(d).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, queue, "cannot consume");
                    if !pause(500).await {
                        return;
                    }
                }
            }
        }
    }

    /// A task that acks what it is sent, off the caller's path (what came
    /// while one ack was on its way goes in the next); ends at shutdown or
    /// when every sender is gone. A lost ack only delivers again.
    pub fn acker(
        self: &std::sync::Arc<Self>,
        tasks: &tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::sync::mpsc::UnboundedSender<Vec<u64>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
        let link = self.clone();
        tasks.spawn(async move {
            loop {
                let first = tokio::select! {
                    ids = rx.recv() => ids,
                    _ = stop.cancelled() => return,
                };
                let Some(mut ids) = first else { return };
                while let Ok(more) = rx.try_recv() {
                    ids.extend(more);
                }
                if let Err(e) = link.ack(&ids).await {
                    tracing::debug!(error = %e, "not acked (delivered again, answered once)");
                }
            }
        });
        tx
    }

    pub async fn ack(&self, ids: &[u64]) -> Result<(), ClientError> {
        for chunk in ids.chunks(1000) {
            self.run(|c, key| async move { c.ack_batch(&key, chunk).await })
                .await?;
        }
        Ok(())
    }

    /// Runs `call` with the key, setting the link up first if need be; a
    /// key or queue the MOM does not know makes the next call set it up
    /// again.
    async fn run<'a, T, F, Fut>(&'a self, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(&'a Client, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let result = match self.key().await {
            Ok(key) => call(&self.client, key).await,
            Err(e) => Err(e),
        };
        let mut status = self.status.lock();
        match &result {
            Ok(_) => {
                status.up = true;
                status.error = None;
            }
            Err(e) => {
                status.up = false;
                status.error = Some(e.to_string());
                if matches!(
                    e,
                    ClientError::Mom(
                        MomError::BadKey | MomError::NotFound(_) | MomError::NotSubscribed(_)
                    )
                ) {
                    // Set up again on the next call (try_lock: a setup in
                    // progress is doing just that).
                    if let Ok(mut key) = self.key.try_lock() {
                        *key = None;
                    }
                    if matches!(e, ClientError::Mom(MomError::BadKey)) {
                        self.forget_key();
                    }
                }
            }
        }
        result
    }

    async fn key(&self) -> Result<String, ClientError> {
        let mut cached = self.key.lock().await;
        if let Some(key) = cached.as_ref() {
            return Ok(key.clone());
        }
        let key = self.set_up().await?;
        *cached = Some(key.clone());
        Ok(key)
    }

    /// The stored key (or a new MOM user), with the queues there and
    /// subscribed.
    async fn set_up(&self) -> Result<String, ClientError> {
        let stored = std::fs::read_to_string(&self.key_file)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let key = match stored {
            Some(key) => key,
            None => self.new_user().await?,
        };
        match self.subscribe_all(&key).await {
            Err(ClientError::Mom(MomError::BadKey)) => {
                tracing::info!("the MOM does not know this node's key; creating a new user");
                let key = self.new_user().await?;
                self.subscribe_all(&key).await?;
                Ok(key)
            }
            result => result.map(|()| key),
        }
    }

    async fn subscribe_all(&self, key: &str) -> Result<(), ClientError> {
        for &queue in &self.queues {
            match self.client.create(Kind::Queue, queue, key).await {
                Ok(()) | Err(ClientError::Mom(MomError::Exists(_))) => {}
                Err(e) => return Err(e),
            }
            if self.subscribe {
                self.client.subscribe(Kind::Queue, queue, key).await?;
            }
        }
        Ok(())
    }

    async fn new_user(&self) -> Result<String, ClientError> {
        let key = self.client.create_user().await?;
        let tmp = self.key_file.with_extension("tmp");
        let saved = std::fs::write(&tmp, &key).and_then(|()| std::fs::rename(&tmp, &self.key_file));
        if let Err(e) = saved {
            // The link works on; the next start makes another user.
            tracing::warn!(error = %e, file = %self.key_file.display(), "cannot save the MOM key");
        }
        Ok(key)
    }

    fn forget_key(&self) {
        if let Err(e) = std::fs::remove_file(&self.key_file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot remove the stale MOM key");
        }
    }
}
