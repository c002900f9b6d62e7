//! Raft messages on the bus: each is protobuf-encoded and sent as one or
//! more [`Frame`]s (a snapshot can be larger than a bus message) to
//! `<group>/raft/<node>`. The bus may lose, delay, duplicate or reorder
//! them; raft tolerates all of that, so this layer only cuts and joins.
//! Pure: [`frames`] and [`Joiner`] are tested without a broker.

use std::collections::HashMap;

use base64::Engine as _;
use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

use super::ReplError;

/// Bytes of encoded message per frame at most (base64 makes 4/3 of it).
pub const FRAME_BYTES: usize = 1024 * 1024;
/// Partial messages kept per sender at most (older ones are dropped).
const PARTIALS: usize = 4;
/// A message in more frames than this is refused (64 MiB).
const MAX_PARTS: u32 = 64;

/// Part `part` of `parts` of message `seq` from its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub seq: u64,
    pub part: u32,
    pub parts: u32,
    /// Base64 of the protobuf bytes of this part.
    pub data: String,
}

/// Cuts `m` into frames, numbered `seq`.
pub fn frames(m: &Message, seq: u64) -> Result<Vec<Frame>, ReplError> {
    let bytes = m
        .write_to_bytes()
        .map_err(|e| ReplError::Storage(format!("cannot encode a raft message: {e}")))?;
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(FRAME_BYTES).collect()
    };
    let parts = chunks.len() as u32;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Frame {
            seq,
            part: i as u32,
            parts,
            data: base64::engine::general_purpose::STANDARD.encode(c),
        })
        .collect())
}

#[derive(Debug)]
struct Partial {
    seq: u64,
    parts: Vec<Option<Vec<u8>>>,
}

/// Joins frames back into messages, per sender.
#[derive(Debug, Default)]
pub struct Joiner {
    partial: HashMap<String, Vec<Partial>>,
}

impl Joiner {
    /// Takes one frame from `from`; returns the message it completes.
    pub fn push(&mut self, from: &str, f: Frame) -> Result<Option<Message>, ReplError> {
        if f.parts == 0 || f.parts > MAX_PARTS || f.part >= f.parts {
            return Err(ReplError::BadRequest(format!(
                "frame {} of {} is out of range",
                f.part, f.parts
            )));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(f.data.as_bytes())
            .map_err(|e| ReplError::BadRequest(format!("frame not base64: {e}")))?;
        if f.parts == 1 {
            return decode(&data).map(Some);
        }
        let list = self.partial.entry(from.to_owned()).or_default();
        let at = match list.iter().position(|p| p.seq == f.seq) {
            Some(i) => i,
            None => {
                if list.len() >= PARTIALS {
                    list.remove(0);
                }
                list.push(Partial {
                    seq: f.seq,
                    parts: vec![None; f.parts as usize],
                });
                list.len() - 1
            }
        };
        let p = &mut list[at];
        if p.parts.len() != f.parts as usize {
            return Err(ReplError::BadRequest(
                "frames of one message disagree on their count".into(),
            ));
        }
        p.parts[f.part as usize] = Some(data);
        if p.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let p = list.remove(at);
        let bytes: Vec<u8> = p.parts.into_iter().flatten().flatten().collect();
        decode(&bytes).map(Some)
    }
}

fn decode(bytes: &[u8]) -> Result<Message, ReplError> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| ReplError::BadRequest(format!("not a raft message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn message(payload: usize) -> Message {
        let mut m = Message {
            from: 1,
            to: 2,
            term: 7,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgAppend);
        m.entries = vec![Entry {
            index: 3,
            term: 7,
            data: vec![0xAB; payload].into(),
            ..Default::default()
        }]
        .into();
        m
    }

    #[test]
    fn small_messages_are_one_frame_and_large_ones_are_joined_in_any_order() {
        let mut j = Joiner::default();
        let small = message(10);
        let f = frames(&small, 1).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(j.push("a", f[0].clone()).unwrap(), Some(small));

        let big = message(3 * FRAME_BYTES);
        let mut f = frames(&big, 2).unwrap();
        assert_eq!(f.len(), 4);
        f.reverse();
        let last = f.pop().unwrap();
        for part in f.iter().cloned() {
            assert_eq!(j.push("a", part).unwrap(), None);
        }
        // A duplicate of a part changes nothing.
        assert_eq!(j.push("a", f[0].clone()).unwrap(), None);
        assert_eq!(j.push("a", last).unwrap(), Some(big));
    }

    #[test]
    fn garbage_frames_are_refused_and_lost_parts_are_forgotten() {
        let mut j = Joiner::default();
        let bad = |part, parts, data: &str| Frame {
            seq: 1,
            part,
            parts,
            data: data.into(),
        };
        assert!(j.push("a", bad(0, 0, "")).is_err());
        assert!(j.push("a", bad(3, 2, "")).is_err());
        assert!(j.push("a", bad(0, 1_000_000, "")).is_err());
        assert!(j.push("a", bad(0, 1, "*not base64*")).is_err());
        assert!(j.push("a", bad(0, 1, "AAEC")).is_err(), "not protobuf");
        // Many messages that never complete: memory stays bounded.
        for seq in 0..100 {
            let f = frames(&message(2 * FRAME_BYTES), seq).unwrap();
            assert_eq!(j.push("a", f[0].clone()).unwrap(), None);
        }
        assert!(j.partial["a"].len() <= PARTIALS);
    }
}
