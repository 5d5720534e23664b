//! Records and their framing on disk.
//!
//! A frame is `len: u32 | crc: u32 | body`, little-endian, where `crc` is CRC32C over the four
//! length bytes followed by the body, so a torn write, a flipped bit or a damaged length all
//! fail the check. The body starts with the record's offset and timestamp; see
//! `docs/broker-log.md` for the full layout.

use std::collections::BTreeMap;

/// Bytes before a frame's body: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;
/// Smallest possible body: offset, timestamp, flags, header count.
const MIN_BODY: usize = 8 + 8 + 1 + 2;
/// Largest body any configuration may write; a larger length on disk is damage, not data.
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Most headers on one record.
pub const MAX_HEADERS: usize = 64;
/// Longest header name in bytes.
pub const MAX_HEADER_NAME: usize = 255;
/// Longest key or header value in bytes.
pub const MAX_KEY: usize = u16::MAX as usize;

const FLAG_KEY: u8 = 1;
const FLAG_PRODUCER: u8 = 2;

/// A producer id and the record's sequence number, for idempotent publish.
///
/// Sequences of one producer on one topic must be consecutive; a sequence already stored is a
/// retry and is answered with the original offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    /// Producer id, chosen by the publisher (random) or assigned by the gRPC layer.
    pub producer: u64,
    /// Sequence number of this record within the producer's stream on this topic.
    pub sequence: u64,
}

/// A record to append; the log assigns its offset and timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Optional key (ordering and routing are per key in the layer above).
    pub key: Option<Vec<u8>>,
    /// Optional producer id and sequence for idempotent publish.
    pub producer: Option<ProducerSeq>,
    /// Small map of headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The message itself.
    pub payload: Vec<u8>,
}

impl NewRecord {
    /// A record with only a payload.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the producer id and sequence.
    pub fn with_producer(mut self, producer: u64, sequence: u64) -> Self {
        self.producer = Some(ProducerSeq { producer, sequence });
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Size of this record's frame on disk.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER
            + MIN_BODY
            + self.key.as_ref().map_or(0, |k| 2 + k.len())
            + self.producer.map_or(0, |_| 16)
            + self
                .headers
                .iter()
                .map(|(n, v)| 2 + n.len() + 4 + v.len())
                .sum::<usize>()
            + self.payload.len()
    }

    /// Checks the shape limits; returns what is wrong.
    pub(crate) fn check(&self, max_record_bytes: usize) -> Result<(), String> {
        if let Some(key) = &self.key {
            if key.len() > MAX_KEY {
                return Err(format!(
                    "the key is {} bytes, at most {MAX_KEY} are allowed",
                    key.len()
                ));
            }
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(format!(
                "it has {} headers, at most {MAX_HEADERS} are allowed",
                self.headers.len()
            ));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || name.len() > MAX_HEADER_NAME {
                return Err(format!(
                    "header name {name:?} must be 1 to {MAX_HEADER_NAME} bytes"
                ));
            }
            if value.len() > MAX_KEY {
                return Err(format!(
                    "header {name:?} is {} bytes, at most {MAX_KEY} are allowed",
                    value.len()
                ));
            }
        }
        let len = self.encoded_len();
        if len > max_record_bytes {
            return Err(format!(
                "it is {len} bytes with framing, at most {max_record_bytes} are allowed"
            ));
        }
        Ok(())
    }
}

/// A record as stored: what was appended plus its offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the topic: dense, starting at 0.
    pub offset: u64,
    /// Time the log accepted the record, in milliseconds since the Unix epoch; never decreases
    /// within a topic.
    pub timestamp_ms: u64,
    /// Optional key.
    pub key: Option<Vec<u8>>,
    /// Optional producer id and sequence.
    pub producer: Option<ProducerSeq>,
    /// Headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The message.
    pub payload: Vec<u8>,
}

/// The fields recovery and indexing need, read without copying the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub producer: Option<ProducerSeq>,
}

/// Appends the frame of `record` at `offset` and `timestamp_ms` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, offset: u64, timestamp_ms: u64, record: &NewRecord) {
    let start = out.len();
    let body_len = record.encoded_len() - FRAME_HEADER;
    out.reserve(record.encoded_len());
    // The length is at most max_record_bytes, which config keeps below MAX_BODY.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    let flags = if record.key.is_some() { FLAG_KEY } else { 0 }
        | if record.producer.is_some() {
            FLAG_PRODUCER
        } else {
            0
        };
    out.push(flags);
    if let Some(key) = &record.key {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key);
    }
    if let Some(p) = record.producer {
        out.extend_from_slice(&p.producer.to_le_bytes());
        out.extend_from_slice(&p.sequence.to_le_bytes());
    }
    out.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&record.payload);
    debug_assert_eq!(out.len() - start, record.encoded_len());
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C of a frame: its length bytes, then its body.
pub(crate) fn frame_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), body)
}

/// Reads a frame header: body length and stored CRC; `None` if the length is impossible.
pub(crate) fn parse_header(header: &[u8; FRAME_HEADER]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (MIN_BODY..=MAX_BODY).contains(&len).then_some((len, crc))
}

/// A cursor over a body that fails instead of panicking on short input.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("a field runs past the end of the record");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decodes the fields recovery needs from a CRC-checked body.
pub(crate) fn decode_meta(body: &[u8]) -> Result<Meta, &'static str> {
    let mut c = Cursor { buf: body };
    let offset = c.u64()?;
    let timestamp_ms = c.u64()?;
    let flags = c.u8()?;
    if flags & !(FLAG_KEY | FLAG_PRODUCER) != 0 {
        return Err("unknown flag bits");
    }
    if flags & FLAG_KEY != 0 {
        let n = c.u16()? as usize;
        c.take(n)?;
    }
    let producer = if flags & FLAG_PRODUCER != 0 {
        Some(ProducerSeq {
            producer: c.u64()?,
            sequence: c.u64()?,
        })
    } else {
        None
    };
    Ok(Meta {
        offset,
        timestamp_ms,
        producer,
    })
}

/// Decodes a whole CRC-checked body.
pub(crate) fn decode(body: &[u8]) -> Result<StoredRecord, &'static str> {
    let mut c = Cursor { buf: body };
    let offset = c.u64()?;
    let timestamp_ms = c.u64()?;
    let flags = c.u8()?;
    if flags & !(FLAG_KEY | FLAG_PRODUCER) != 0 {
        return Err("unknown flag bits");
    }
    let key = if flags & FLAG_KEY != 0 {
        let n = c.u16()? as usize;
        Some(c.take(n)?.to_vec())
    } else {
        None
    };
    let producer = if flags & FLAG_PRODUCER != 0 {
        Some(ProducerSeq {
            producer: c.u64()?,
            sequence: c.u64()?,
        })
    } else {
        None
    };
    let count = c.u16()? as usize;
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let n = c.u16()? as usize;
        let name = std::str::from_utf8(c.take(n)?).map_err(|_| "a header name is not UTF-8")?;
        let v = c.u32()? as usize;
        headers.insert(name.to_owned(), c.take(v)?.to_vec());
    }
    Ok(StoredRecord {
        offset,
        timestamp_ms,
        key,
        producer,
        headers,
        payload: c.buf.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(record: &NewRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, 42, 1_700_000_000_123, record);
        out
    }

    fn check_frame(buf: &[u8]) -> Result<StoredRecord, &'static str> {
        let header: [u8; FRAME_HEADER] = buf[..FRAME_HEADER].try_into().map_err(|_| "short")?;
        let (len, crc) = parse_header(&header).ok_or("bad length")?;
        let body = buf.get(FRAME_HEADER..FRAME_HEADER + len).ok_or("short")?;
        if frame_crc(&buf[..4], body) != crc {
            return Err("crc");
        }
        decode(body)
    }

    #[test]
    fn frame_round_trips_every_field() {
        let record = NewRecord::new(b"payload".to_vec())
            .with_key(b"k1".to_vec())
            .with_producer(7, 9)
            .with_header("content-type", b"json".to_vec())
            .with_header("trace", Vec::new());
        let buf = frame(&record);
        assert_eq!(buf.len(), record.encoded_len());
        let got = check_frame(&buf).expect("valid frame");
        assert_eq!(got.offset, 42);
        assert_eq!(got.timestamp_ms, 1_700_000_000_123);
        assert_eq!(got.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(
            got.producer,
            Some(ProducerSeq {
                producer: 7,
                sequence: 9
            })
        );
        assert_eq!(got.headers, record.headers);
        assert_eq!(got.payload, b"payload");
        let meta = decode_meta(&buf[FRAME_HEADER..]).expect("meta");
        assert_eq!(
            (meta.offset, meta.producer.map(|p| p.sequence)),
            (42, Some(9))
        );

        let bare = NewRecord::new(Vec::new());
        let got = check_frame(&frame(&bare)).expect("valid frame");
        assert_eq!((got.key, got.producer, got.payload.len()), (None, None, 0));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = frame(&NewRecord::new(b"abc".to_vec()).with_key(b"k".to_vec()));
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    check_frame(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} passed"
                );
            }
        }
    }

    #[test]
    fn limits_are_enforced_with_a_reason() {
        let big = NewRecord::new(vec![0; 2000]);
        assert!(big
            .check(1000)
            .expect_err("too big")
            .contains("at most 1000"));
        let mut many = NewRecord::new(Vec::new());
        for i in 0..=MAX_HEADERS {
            many.headers.insert(format!("h{i}"), Vec::new());
        }
        assert!(many
            .check(1 << 20)
            .expect_err("headers")
            .contains("headers"));
        let empty_name = NewRecord::new(Vec::new()).with_header("", b"x".to_vec());
        assert!(empty_name.check(1 << 20).is_err());
        assert!(NewRecord::new(vec![0; 10]).check(1 << 20).is_ok());
    }
}
