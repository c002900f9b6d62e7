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

/// Why an echo request gets an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EchoError {
    #[error("delay_ms must be a whole number from 0 to {MAX_DELAY_MS}")]
    BadDelay,
    #[error("unknown request kind `{0}`; the echo service answers `echo`")]
    UnknownKind(String),
}

/// The protocol, without sockets: request kind and body in, answer out.
pub fn answer(node: &str, kind: &str, body: &Value) -> Result<Answer, EchoError> {
    match kind {
        "echo" => {
            let delay_ms = match body.get("delay_ms") {
                None => 0,
                Some(v) => v
                    .as_u64()
                    .filter(|ms| *ms <= MAX_DELAY_MS)
                    .ok_or(EchoError::BadDelay)?,
            };
            Ok(Answer {
                delay: Duration::from_millis(delay_ms),
                body: json!({ "node": node, "echo": body }),
            })
        }
        other => Err(EchoError::UnknownKind(other.to_owned())),
    }
}

/// Sends an answer; a bus that is closing cannot, which is only logged.
async fn send_reply(bus: &crate::bus::Bus, request: &crate::envelope::Envelope, body: Value) {
    if let Err(e) = bus.reply(request, "reply", body).await {
        tracing::warn!(error = %e, "echo: cannot send a reply");
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
                    send_reply(&bus, &request, answer.body).await;
                }
                Ok(answer) => {
                    let stop = ctx.shutdown.clone();
                    inner.spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(answer.delay) => {
                                send_reply(&bus, &request, answer.body).await;
                            }
                            _ = stop.cancelled() => {}
                        }
                    });
                }
                Err(message) => {
                    tracing::debug!(%message, "bad echo request");
                    if let Err(e) = bus.reply_error(&request, &message.to_string()).await {
                        tracing::warn!(error = %e, "echo: cannot send an error reply");
                    }
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
        for bad in [json!({"delay_ms": 999_999}), json!({"delay_ms": "soon"})] {
            assert_eq!(answer("n", "echo", &bad), Err(EchoError::BadDelay));
        }
    }

    #[test]
    fn unknown_kind_is_a_clear_error() {
        let err = answer("n", "shout", &Value::Null).unwrap_err().to_string();
        assert!(err.contains("shout") && err.contains("echo"), "{err}");
    }
}
