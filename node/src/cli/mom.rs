//! `distlab-node mom …`: the MOM's operations, printed for people.

use distlab_node::services::mom::client::Client;

use super::args::MomCommand;

pub(super) async fn mom_command(
    mom: &Client,
    key: Option<String>,
    op: MomCommand,
) -> anyhow::Result<()> {
    let key = || {
        key.clone().ok_or_else(|| {
            anyhow::anyhow!("this needs your key: pass --key KEY or set DISTLAB_MOM_KEY (make one with `mom create-user`)")
        })
    };
    match op {
        MomCommand::CreateUser => outln!("{}", mom.create_user().await?),
        MomCommand::Create { target } => {
            let (kind, name) = target.split();
            mom.create(kind, &name, &key()?).await?;
            outln!("{kind} {name} created");
        }
        MomCommand::Delete { target } => {
            let (kind, name) = target.split();
            mom.delete(kind, &name, &key()?).await?;
            outln!("{kind} {name} deleted");
        }
        MomCommand::Ls { mine } => {
            outln!(
                "{:<6} {:<24} {:<18} {:>5} {:>7} {:>7} {:>9}",
                "KIND",
                "NAME",
                "OWNER",
                "SUBS",
                "READY",
                "UNACKED",
                "PUBLISHED"
            );
            for c in mom.list(None, &key()?, mine).await? {
                outln!(
                    "{:<6} {:<24} {:<18} {:>5} {:>7} {:>7} {:>9}",
                    c.kind,
                    c.name,
                    c.owner,
                    c.subscribers,
                    c.ready,
                    c.unacked,
                    c.published
                );
            }
        }
        MomCommand::Subscribe { target } => {
            let (kind, name) = target.split();
            let new = mom.subscribe(kind, &name, &key()?).await?;
            outln!(
                "subscribed to {kind} {name}{}",
                if new { "" } else { " (already)" }
            );
        }
        MomCommand::Unsubscribe { target } => {
            let (kind, name) = target.split();
            mom.unsubscribe(kind, &name, &key()?).await?;
            outln!("unsubscribed from {kind} {name}");
        }
        MomCommand::Publish {
            target,
            mut messages,
        } => {
            let (kind, name) = target.split();
            let ids = if messages.len() == 1 {
                let message = messages.pop().unwrap_or_default();
                vec![mom.publish(kind, &name, &key()?, &message).await?]
            } else {
                mom.publish_batch(kind, &name, &key()?, messages).await?
            };
            let copies: usize = ids.iter().map(Vec::len).sum();
            outln!(
                "published {} message{} to {kind} {name}: {copies} cop{}",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                if copies == 1 { "y" } else { "ies" }
            );
        }
        MomCommand::Consume {
            target,
            wait_ms,
            max,
            ack,
        } => {
            let (kind, name) = target.split();
            let key = key()?;
            let got = if max == 1 {
                mom.consume(kind, &name, &key, wait_ms)
                    .await?
                    .into_iter()
                    .collect()
            } else {
                mom.consume_batch(kind, &name, &key, max, wait_ms).await?
            };
            anyhow::ensure!(!got.is_empty(), "no message in {kind} {name}");
            if ack {
                let ids: Vec<u64> = got.iter().map(|d| d.id).collect();
                let acked = match ids.as_slice() {
                    [id] => mom.ack(&key, *id).await.map(|()| ids.clone())?,
                    _ => mom.ack_batch(&key, &ids).await?,
                };
                anyhow::ensure!(
                    acked.len() == ids.len(),
                    "only {} of {} acked (the others came due again first)",
                    acked.len(),
                    ids.len()
                );
            }
            for d in got {
                outln!("{}\t{}\t{}", d.id, d.deliveries, d.body);
            }
        }
        MomCommand::Ack { ids } => {
            let key = key()?;
            if let [id] = ids.as_slice() {
                mom.ack(&key, *id).await?;
                outln!("acked {id}");
            } else {
                let acked = mom.ack_batch(&key, &ids).await?;
                let listed: Vec<String> = acked.iter().map(u64::to_string).collect();
                outln!(
                    "acked {} of {}: {}",
                    acked.len(),
                    ids.len(),
                    listed.join(" ")
                );
                anyhow::ensure!(
                    acked.len() == ids.len(),
                    "the others were not yours to ack (acked already, or delivered again to another)"
                );
            }
        }
    }
    Ok(())
}
