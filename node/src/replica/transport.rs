//! Raft messages on the bus: the messages for one peer that leave
//! together are packed into one batch (each protobuf-encoded, length first:
//! under load a Ready's appends, heartbeats and commit notices share one
//! bus message instead of one each), sent as one or more [`Frame`]s (a
//! snapshot can be larger than a bus message) to `<group>/raft/<node>`.
//! The bus may lose, delay, duplicate or reorder them; raft tolerates all
//! of that, so this layer only packs, cuts and joins. Pure: [`frames`],
//! [`batches`] and [`Joiner`] are tested without a broker.

use std::collections::HashMap;

use base64::Engine as _;
use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

use super::ReplError;

/// Bytes of encoded message per frame at most (base64 makes 4/3 of it).
pub const FRAME_BYTES: usize = 1024 * 1024;
/// The largest bus message a frame makes: its data in base64 and the
/// envelope around it. The raft lane drops larger ones unread.
pub const MAX_FRAME_MESSAGE: usize = FRAME_BYTES.div_ceil(3) * 4 + 64 * 1024;
/// Partial messages kept per sender at most (older ones are dropped).
const PARTIALS: usize = 4;
/// A message in more frames than this is refused (64 MiB).
const MAX_PARTS: u32 = 64;

/// Part `part` of `parts` of batch `seq` from its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub seq: u64,
    pub part: u32,
    pub parts: u32,
    /// Base64 of this part of the batch: each message as its length (4
    /// bytes, big-endian) and its protobuf bytes.
    pub data: String,
}

/// Messages per batch at most (a batch of more is refused).
const MAX_BATCH: usize = 4096;

/// Splits `msgs` (in order) into batches per peer of at most [`FRAME_BYTES`]
/// of messages each (a larger message makes a batch of its own); each
/// peer's batches keep its messages' order. Returns (peer, batch).
pub fn batches(msgs: Vec<Message>) -> Vec<(u64, Vec<Message>)> {
    let mut out: Vec<(u64, Vec<Message>, usize)> = Vec::new();
    for m in msgs {
        let size = m.compute_size() as usize;
        let open = out
            .iter_mut()
            .rev()
            .find(|(to, _, _)| *to == m.to)
            .filter(|(_, list, bytes)| list.len() < MAX_BATCH && *bytes + size <= FRAME_BYTES);
        match open {
            Some((_, list, bytes)) => {
                *bytes += size;
                list.push(m);
            }
            None => out.push((m.to, vec![m], size)),
        }
    }
    out.into_iter().map(|(to, list, _)| (to, list)).collect()
}

/// Packs `msgs` (one peer's) into frames, numbered `seq`.
pub fn frames(msgs: &[Message], seq: u64) -> Result<Vec<Frame>, ReplError> {
    let mut bytes = Vec::new();
    for m in msgs {
        let one = m
            .write_to_bytes()
            .map_err(|e| ReplError::Storage(format!("cannot encode a raft message: {e}")))?;
        let len = u32::try_from(one.len())
            .map_err(|_| ReplError::Storage("a raft message over 4 GiB".into()))?;
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&one);
    }
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

/// Joins frames back into batches of messages, per sender.
#[derive(Debug, Default)]
pub struct Joiner {
    partial: HashMap<String, Vec<Partial>>,
}

impl Joiner {
    /// Takes one frame from `from`; returns the batch it completes.
    pub fn push(&mut self, from: &str, f: Frame) -> Result<Option<Vec<Message>>, ReplError> {
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

/// A batch back into its messages; any flaw refuses all of it.
fn decode(mut bytes: &[u8]) -> Result<Vec<Message>, ReplError> {
    let bad = |why: String| ReplError::BadRequest(format!("not a batch of raft messages: {why}"));
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if out.len() >= MAX_BATCH {
            return Err(bad(format!("more than {MAX_BATCH} messages")));
        }
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(bad("a length cut short".into()));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad(format!(
                "a message of {len} bytes in {} left",
                rest.len()
            )));
        }
        let (one, rest) = rest.split_at(len);
        out.push(Message::parse_from_bytes(one).map_err(|e| bad(e.to_string()))?);
        bytes = rest;
    }
    if out.is_empty() {
        return Err(bad("no message".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    /// The raft lane drops messages over MAX_FRAME_MESSAGE unread: every
    /// frame, as the bus carries it, must fit.
    #[test]
    fn the_largest_frame_fits_the_raft_lane() {
        let factory = crate::envelope::EnvelopeFactory::new(&"n".repeat(64));
        let f = frames(&[message(5 * FRAME_BYTES)], u64::MAX).unwrap();
        assert!(f.len() > 1);
        let largest = f
            .iter()
            .map(|f| factory.make("raft", None, f).to_bytes().len())
            .max()
            .unwrap();
        assert!(largest > FRAME_BYTES, "{largest}");
        assert!(
            largest <= MAX_FRAME_MESSAGE,
            "{largest} > {MAX_FRAME_MESSAGE}"
        );
    }

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
        let f = frames(std::slice::from_ref(&small), 1).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(
            j.push("a", f[0].clone()).unwrap(),
            Some(vec![small.clone()])
        );
        let mut other = message(20);
        other.set_msg_type(MessageType::MsgHeartbeat);
        let both = vec![small, other];
        let f = frames(&both, 2).unwrap();
        assert_eq!(f.len(), 1, "small ones share a frame");
        assert_eq!(j.push("a", f[0].clone()).unwrap(), Some(both));

        let big = message(3 * FRAME_BYTES);
        let mut f = frames(std::slice::from_ref(&big), 3).unwrap();
        assert_eq!(f.len(), 4);
        f.reverse();
        let last = f.pop().unwrap();
        for part in f.iter().cloned() {
            assert_eq!(j.push("a", part).unwrap(), None);
        }
        // A duplicate of a part changes nothing.
        assert_eq!(j.push("a", f[0].clone()).unwrap(), None);
        assert_eq!(j.push("a", last).unwrap(), Some(vec![big]));
    }

    #[test]
    fn batches_are_per_peer_in_order_and_bounded() {
        let to = |to: u64, payload: usize, index: u64| {
            let mut m = message(payload);
            m.to = to;
            m.index = index;
            m
        };
        let msgs = vec![to(2, 10, 1), to(3, 10, 2), to(2, 10, 3), to(3, 10, 4)];
        let got: Vec<(u64, Vec<u64>)> = batches(msgs)
            .into_iter()
            .map(|(peer, list)| (peer, list.iter().map(|m| m.index).collect()))
            .collect();
        assert_eq!(got, [(2, vec![1, 3]), (3, vec![2, 4])]);
        // Large ones: no batch over FRAME_BYTES unless one message is.
        let msgs = vec![
            to(2, FRAME_BYTES / 2, 1),
            to(2, FRAME_BYTES / 2, 2),
            to(2, 2 * FRAME_BYTES, 3),
            to(2, 10, 4),
        ];
        let got: Vec<Vec<u64>> = batches(msgs)
            .into_iter()
            .map(|(_, list)| list.iter().map(|m| m.index).collect())
            .collect();
        assert_eq!(got, [vec![1], vec![2], vec![3], vec![4]]);
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
        assert!(
            j.push("a", bad(0, 1, "AAEC")).is_err(),
            "a length cut short"
        );
        assert!(j.push("a", bad(0, 1, "")).is_err(), "an empty batch");
        // A length past the end; a message that is not protobuf.
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert!(j.push("a", bad(0, 1, &b64(&[0, 0, 0, 9, 1, 2]))).is_err());
        assert!(
            j.push("a", bad(0, 1, &b64(&[0, 0, 0, 2, 0xFF, 0xFF])))
                .is_err()
        );
        // Many messages that never complete: memory stays bounded.
        for seq in 0..100 {
            let f = frames(&[message(2 * FRAME_BYTES)], seq).unwrap();
            assert_eq!(j.push("a", f[0].clone()).unwrap(), None);
        }
        assert!(j.partial["a"].len() <= PARTIALS);
    }
}
