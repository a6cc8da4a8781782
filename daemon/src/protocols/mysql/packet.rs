//! MySQL packet framing: a 3-byte little-endian length, a 1-byte sequence id, then the
//! payload. Payloads of 0xFFFFFF bytes or more are split into 0xFFFFFF-byte packets
//! that follow each other with consecutive sequence ids, ended by a shorter packet
//! (an empty one when the payload is an exact multiple).
//!
//! Written by hand on `bytes` rather than taken from `mysql_common`'s codec: the proxy
//! needs to reassemble a logical packet up to a limit it chooses and then fail closed,
//! to keep zero-copy payloads for what it only relays, and to renumber sequence ids
//! when it changes a response. The codec buffers whole packets without a limit the
//! proxy controls and numbers them itself.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// The largest payload one physical packet carries; a packet this long continues.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// Why bytes do not make a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a packet of more than {limit} bytes exceeds the proxy's limit")]
    TooLarge { limit: usize },
    #[error("packet sequence out of order: expected {expected}, got {got}")]
    OutOfOrder { expected: u8, got: u8 },
    #[error("the connection ended inside a packet ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// One logical packet: the payload of one or more physical packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of its first physical packet.
    pub seq: u8,
    /// Sequence id the next packet in the same exchange carries.
    pub next_seq: u8,
    pub payload: Bytes,
}

impl Packet {
    /// The first payload byte (the command, or a response's header), if any.
    pub fn first(&self) -> Option<u8> {
        self.payload.first().copied()
    }
}

/// Reassembles logical packets from a byte stream, up to `limit` payload bytes.
pub struct PacketDecoder {
    limit: usize,
    partial: Option<(u8, u8, BytesMut)>,
}

impl PacketDecoder {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            partial: None,
        }
    }

    /// The next whole packet in `buffer`, consuming its bytes; `None` when more bytes
    /// are needed.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Packet>, FrameError> {
        loop {
            let Some(header) = buffer.get(..4) else {
                return Ok(None);
            };
            let length =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let seq = header[3];
            if let Some((_, expected, _)) = &self.partial
                && *expected != seq
            {
                return Err(FrameError::OutOfOrder {
                    expected: *expected,
                    got: seq,
                });
            }
            let so_far = self.partial.as_ref().map_or(0, |(_, _, body)| body.len());
            if so_far + length > self.limit {
                return Err(FrameError::TooLarge { limit: self.limit });
            }
            if buffer.len() < 4 + length {
                buffer.reserve(4 + length - buffer.len());
                return Ok(None);
            }
            buffer.advance(4);
            let chunk = buffer.split_to(length);
            let continues = length == MAX_CHUNK;
            match (self.partial.take(), continues) {
                (None, false) => {
                    return Ok(Some(Packet {
                        seq,
                        next_seq: seq.wrapping_add(1),
                        payload: chunk.freeze(),
                    }));
                }
                (None, true) => self.partial = Some((seq, seq.wrapping_add(1), chunk)),
                (Some((first, _, mut body)), continues) => {
                    body.extend_from_slice(&chunk);
                    if continues {
                        self.partial = Some((first, seq.wrapping_add(1), body));
                    } else {
                        return Ok(Some(Packet {
                            seq: first,
                            next_seq: seq.wrapping_add(1),
                            payload: body.freeze(),
                        }));
                    }
                }
            }
        }
    }

    /// Whether a packet is half read (the stream must not end here).
    pub fn is_mid_packet(&self, buffer: &BytesMut) -> bool {
        self.partial.is_some() || !buffer.is_empty()
    }
}

/// Writes `payload` as one logical packet starting at sequence id `seq`, split as the
/// protocol requires; returns the sequence id that follows it.
pub fn encode(seq: u8, payload: &[u8], out: &mut BytesMut) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    out.reserve(payload.len() + 4 * (payload.len() / MAX_CHUNK + 1));
    loop {
        let take = rest.len().min(MAX_CHUNK);
        let (chunk, tail) = rest.split_at(take);
        // `take` fits in 24 bits by construction.
        out.put_uint_le(take as u64, 3);
        out.put_u8(seq);
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        rest = tail;
        if take < MAX_CHUNK {
            return seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_packets_round_trip_in_pieces() {
        let mut out = BytesMut::new();
        assert_eq!(encode(3, b"\x03SELECT 1", &mut out), 4);
        assert_eq!(encode(4, b"", &mut out), 5);
        let mut decoder = PacketDecoder::new(1 << 20);
        let mut buffer = BytesMut::new();
        let mut packets = Vec::new();
        for byte in out.iter() {
            buffer.put_u8(*byte);
            while let Some(packet) = decoder.decode(&mut buffer).unwrap() {
                packets.push(packet);
            }
        }
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].seq, 3);
        assert_eq!(&packets[0].payload[..], b"\x03SELECT 1");
        assert_eq!(packets[1].payload.len(), 0);
        assert_eq!(packets[1].next_seq, 5);
        assert!(!decoder.is_mid_packet(&buffer));
    }

    #[test]
    fn large_payloads_split_and_reassemble() {
        for size in [MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 5, 2 * MAX_CHUNK] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut out = BytesMut::new();
            let next = encode(0, &payload, &mut out);
            let physical = size / MAX_CHUNK + 1;
            assert_eq!(usize::from(next), physical, "size {size}");
            assert_eq!(out.len(), size + 4 * physical);
            let mut decoder = PacketDecoder::new(3 * MAX_CHUNK);
            let packet = decoder.decode(&mut out).unwrap().unwrap();
            assert_eq!(packet.payload.len(), size);
            assert!(packet.payload[..] == payload[..]);
            assert_eq!(packet.next_seq, next);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn reassembly_stops_at_the_limit() {
        let payload = vec![7u8; MAX_CHUNK + 10];
        let mut out = BytesMut::new();
        encode(0, &payload, &mut out);
        let mut decoder = PacketDecoder::new(MAX_CHUNK + 9);
        assert_eq!(
            decoder.decode(&mut out),
            Err(FrameError::TooLarge {
                limit: MAX_CHUNK + 9
            })
        );
    }

    #[test]
    fn continuation_with_a_wrong_sequence_is_refused() {
        let mut out = BytesMut::new();
        encode(0, &vec![1u8; MAX_CHUNK], &mut out);
        // Replace the empty terminator's sequence id (1) with 9.
        let last = out.len() - 1;
        out[last] = 9;
        let mut decoder = PacketDecoder::new(2 * MAX_CHUNK);
        assert_eq!(
            decoder.decode(&mut out),
            Err(FrameError::OutOfOrder {
                expected: 1,
                got: 9
            })
        );
    }
}
