//! `echo`: answers `rpc/echo/<node>` requests with their own body.
//!
//! The smallest service that exercises the whole RPC path. A request may ask
//! for a delay (`{"delay_ms": 200}`, at most 10 s) so callers can test deadlines.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use crate::bus::BusError;
use crate::runtime::NodeContext;

pub const SERVICE: &str = "echo";
const MAX_DELAY_MS: u64 = 10_000;

/// What to answer to one request: after how long, and with what.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub delay: Duration,
    pub body: Value,
}

/// The protocol, without sockets: request kind and body in, answer out.
pub fn answer(node: &str, kind: &str, body: &Value) -> Result<Answer, String> {
    match kind {
        "echo" => {
            let delay_ms = match body.get("delay_ms") {
                None => 0,
                Some(v) => v.as_u64().filter(|ms| *ms <= MAX_DELAY_MS).ok_or_else(|| {
                    format!("delay_ms must be a whole number from 0 to {MAX_DELAY_MS}")
                })?,
            };
            Ok(Answer {
                delay: Duration::from_millis(delay_ms),
                body: json!({ "node": node, "echo": body }),
            })
        }
        other => Err(format!(
            "unknown request kind `{other}`; the echo service answers `echo`"
        )),
    }
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), BusError> {
    let topic = ctx.bus.topics().rpc(SERVICE, ctx.id());
    let mut rx = ctx.bus.subscribe(&topic).await?;
    let inner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let incoming = tokio::select! {
                incoming = rx.recv() => incoming,
                _ = ctx.shutdown.cancelled() => return,
            };
            let Some(incoming) = incoming else { return };
            let request = incoming.envelope;
            let bus = ctx.bus.clone();
            match answer(ctx.id(), &request.kind, &request.body.to_value()) {
                Ok(answer) if answer.delay.is_zero() => {
                    let _ = bus.reply(&request, "reply", answer.body).await;
                }
                Ok(answer) => {
                    let stop = ctx.shutdown.clone();
                    inner.spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(answer.delay) => {
                                let _ = bus.reply(&request, "reply", answer.body).await;
                            }
                            _ = stop.cancelled() => {}
                        }
                    });
                }
                Err(message) => {
                    tracing::debug!(%message, "bad echo request");
                    let _ = bus.reply_error(&request, &message).await;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_the_body() {
        let a = answer("n", "echo", &json!({"x": [1, 2]})).unwrap();
        assert_eq!(a.delay, Duration::ZERO);
        assert_eq!(a.body, json!({"node": "n", "echo": {"x": [1, 2]}}));
    }

    #[test]
    fn delay_is_bounded() {
        let a = answer("n", "echo", &json!({"delay_ms": 250})).unwrap();
        assert_eq!(a.delay, Duration::from_millis(250));
        assert!(answer("n", "echo", &json!({"delay_ms": 999_999})).is_err());
        assert!(answer("n", "echo", &json!({"delay_ms": "soon"})).is_err());
    }

    #[test]
    fn unknown_kind_is_a_clear_error() {
        let err = answer("n", "shout", &Value::Null).unwrap_err();
        assert!(err.contains("shout") && err.contains("echo"), "{err}");
    }
}
