//! Protobuf's wire format, read in place and written by hand, and the
//! framed unary answer built with it, for the RPCs the gRPC door serves
//! itself (`api::unary` serves them, the blocks decode and answer). Reading borrows:
//! strings are `&str` into the received frame and bytes fields are `Bytes`
//! slices of it, so a value Skiff only passes through is never copied and
//! a request costs no allocation to decode. Field numbers are the ones in
//! `proto/dapr/...`; a test per message checks them against prost.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use crate::errors::{ApiError, code};

/// Why a message could not be read. The texts follow prost's, which the
/// door answered with before it read messages itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("failed to decode Protobuf message: buffer underflow")]
    Truncated,
    #[error("failed to decode Protobuf message: invalid varint")]
    Varint,
    #[error("failed to decode Protobuf message: invalid wire type value: {0}")]
    WireType(u64),
    #[error("failed to decode Protobuf message: invalid tag value: 0")]
    ZeroTag,
    #[error("failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded")]
    NotUtf8,
    #[error("failed to decode Protobuf message: {0}: expected a length-delimited field")]
    Shape(&'static str),
}

/// Groups nested deeper than this are refused (prost's recursion limit).
const MAX_GROUP_DEPTH: usize = 100;

/// One field's value as it is on the wire.
pub enum Value {
    Varint(u64),
    /// The byte range of a length-delimited field in the message.
    Len(std::ops::Range<usize>),
    /// Fixed 32 or 64 bits, or a group (no field Skiff reads has them;
    /// skipped).
    Fixed,
}

/// Walks the fields of one message held in `Bytes`.
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Self {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    /// A reader of the embedded message at `range` of the same buffer.
    pub fn nested(&self, range: std::ops::Range<usize>) -> Reader<'a> {
        Reader {
            buf: self.buf,
            pos: range.start,
            end: range.end,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) else {
                return Err(WireError::Truncated);
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError::Varint)
    }

    /// The next field's number and value; `None` at the end.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, WireError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError::Varint)?;
        if field == 0 {
            return Err(WireError::ZeroTag);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                let start = self.pos;
                let end = start.checked_add(n).ok_or(WireError::Truncated)?;
                if end > self.end {
                    return Err(WireError::Truncated);
                }
                self.pos = end;
                Value::Len(start..end)
            }
            5 => self.skip(4)?,
            3 => self.skip_group(field)?,
            t => return Err(WireError::WireType(t)),
        };
        Ok(Some((field, value)))
    }

    /// Skips a (deprecated) group up to its end tag, as prost does for an
    /// unknown field; groups nest at most `MAX_GROUP_DEPTH` deep.
    fn skip_group(&mut self, field: u32) -> Result<Value, WireError> {
        let mut open = vec![field];
        while let Some(&inner) = open.last() {
            let key = self.varint()?;
            let f = u32::try_from(key >> 3).map_err(|_| WireError::Varint)?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.skip(8)?;
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                    self.skip(n)?;
                }
                3 if open.len() < MAX_GROUP_DEPTH => open.push(f),
                4 if f == inner => {
                    open.pop();
                }
                5 => {
                    self.skip(4)?;
                }
                t => return Err(WireError::WireType(t)),
            }
        }
        Ok(Value::Fixed)
    }

    fn skip(&mut self, n: usize) -> Result<Value, WireError> {
        if self.end - self.pos < n {
            return Err(WireError::Truncated);
        }
        self.pos += n;
        Ok(Value::Fixed)
    }

    /// A string field, borrowed from the message.
    pub fn str(&self, r: std::ops::Range<usize>) -> Result<&'a str, WireError> {
        std::str::from_utf8(&self.buf[r]).map_err(|_| WireError::NotUtf8)
    }

    /// A string field's value, borrowed; `what` names it in the error when
    /// the field is not length-delimited.
    pub fn string(&self, v: Value, what: &'static str) -> Result<&'a str, WireError> {
        self.str(len(v, what)?)
    }

    /// A bytes field, as a slice of the message's buffer (no copy).
    pub fn bytes(&self, r: std::ops::Range<usize>) -> Bytes {
        self.buf.slice(r)
    }

    /// A `map<string, string>` entry (key 1, value 2).
    pub fn map_entry(&self, r: std::ops::Range<usize>) -> Result<(&'a str, &'a str), WireError> {
        let mut e = self.nested(r);
        let (mut k, mut v) = ("", "");
        while let Some((f, val)) = e.next_field()? {
            match (f, val) {
                (1, Value::Len(r)) => k = e.str(r)?,
                (2, Value::Len(r)) => v = e.str(r)?,
                (1 | 2, _) => return Err(WireError::Shape("map entry")),
                _ => {}
            }
        }
        Ok((k, v))
    }
}

/// The range of a length-delimited field, or the error for a field of the
/// wrong shape.
pub fn len(v: Value, what: &'static str) -> Result<std::ops::Range<usize>, WireError> {
    match v {
        Value::Len(r) => Ok(r),
        _ => Err(WireError::Shape(what)),
    }
}

/// An `int32`/enum field (a varint; other shapes read as 0, as prost would
/// refuse them, but no client sends them).
pub fn int(v: &Value) -> i32 {
    match v {
        Value::Varint(n) => *n as i32,
        _ => 0,
    }
}

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// The encoded size of a length-delimited field of `n` bytes as
/// [`put_len_field`] writes it: its key included (field numbers below 16
/// take one byte), nothing when empty.
pub fn len_field_size(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 + varint_len(n as u64) + n
    }
}

/// The key and length of a length-delimited field of `n` bytes, whose
/// bytes the caller writes next.
pub fn put_len_prefix(out: &mut BytesMut, field: u32, n: usize) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, n as u64);
}

/// A length-delimited field (`string`, `bytes`, a message), omitted when
/// empty as proto3 does.
pub fn put_len_field(out: &mut BytesMut, field: u32, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    put_len_prefix(out, field, data.len());
    out.put_slice(data);
}

/// The size of a `map<string, string>` entry's own fields.
fn map_entry_inner(k: &str, v: &str) -> usize {
    len_field_size(k.len()) + len_field_size(v.len())
}

/// A `map<string, string>` entry as field `field`.
pub fn put_map_entry(out: &mut BytesMut, field: u32, k: &str, v: &str) {
    put_len_prefix(out, field, map_entry_inner(k, v));
    put_len_field(out, 1, k.as_bytes());
    put_len_field(out, 2, v.as_bytes());
}

pub fn map_entry_size(k: &str, v: &str) -> usize {
    let inner = map_entry_inner(k, v);
    1 + varint_len(inner as u64) + inner
}

/// The gRPC frame header: a compressed flag and a 4-byte length.
pub const FRAME_HEADER: usize = 5;

/// An answer under construction: the frame header is reserved first and
/// filled in by [`Message::finish`].
pub struct Message(BytesMut);

impl Message {
    /// A message of about `size` bytes (a good guess saves a reallocation).
    pub fn with_capacity(size: usize) -> Self {
        let mut b = BytesMut::with_capacity(FRAME_HEADER + size);
        b.put_bytes(0, FRAME_HEADER);
        Self(b)
    }

    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.0
    }

    /// The framed message, and what follows it uncopied (a large payload
    /// written last, see [`Message::tail`]).
    pub fn finish(mut self, tail: Option<Bytes>) -> (Bytes, Option<Bytes>) {
        let n = self.0.len() - FRAME_HEADER + tail.as_ref().map_or(0, Bytes::len);
        self.0[1..FRAME_HEADER].copy_from_slice(&(n as u32).to_be_bytes());
        (self.0.freeze(), tail.filter(|t| !t.is_empty()))
    }

    /// A bytes field that ends the message (proto3 omits it when empty),
    /// as [`Message::tail`] sends it.
    pub fn bytes_field_last(&mut self, field: u32, data: Bytes) -> Option<Bytes> {
        if data.is_empty() {
            return None;
        }
        put_len_prefix(&mut self.0, field, data.len());
        self.tail(data)
    }

    /// What [`Message::bytes_field_last`] of `n` bytes puts in the buffer
    /// (the value itself only when it is copied in).
    pub fn bytes_field_last_size(n: usize) -> usize {
        match n {
            0 => 0,
            n if n <= COPY_TAIL_BYTES => len_field_size(n),
            n => 1 + varint_len(n as u64),
        }
    }

    /// A payload that ends the message: copied into the buffer when small
    /// (one DATA frame), else sent after it as it is.
    fn tail(&mut self, data: Bytes) -> Option<Bytes> {
        if data.len() <= COPY_TAIL_BYTES {
            self.0.extend_from_slice(&data);
            None
        } else {
            Some(data)
        }
    }
}

/// Payloads up to this are copied into the answer's buffer: one write and
/// one DATA frame cost less than a memcpy of this size.
pub const COPY_TAIL_BYTES: usize = 16 << 10;

/// What a handler answers: the framed message (and an uncopied tail) and
/// the metadata to send with the head.
pub struct Answer {
    pub message: (Bytes, Option<Bytes>),
    pub headers: HeaderMap,
}

impl Answer {
    /// An empty message (`Empty`, or a response with every field at its
    /// default): a static frame, nothing allocated.
    pub fn empty() -> Self {
        Answer {
            message: (Bytes::from_static(&[0; FRAME_HEADER]), None),
            headers: HeaderMap::new(),
        }
    }
}

impl From<Message> for Answer {
    fn from(m: Message) -> Self {
        Answer {
            message: m.finish(None),
            headers: HeaderMap::new(),
        }
    }
}

/// A request message that is not the protobuf its RPC takes.
pub fn malformed(e: WireError) -> ApiError {
    ApiError::new(
        code::MALFORMED_REQUEST,
        StatusCode::BAD_REQUEST,
        tonic::Code::Internal,
        format!("grpc: error unmarshalling request: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_bad_ones_are_refused() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            // As field 1, wire type 0.
            let mut m = BytesMut::new();
            put_varint(&mut m, 8);
            m.extend_from_slice(&b);
            let m = m.freeze();
            let mut r = Reader::new(&m);
            match r.next_field() {
                Ok(Some((1, Value::Varint(got)))) => assert_eq!(got, v),
                _ => panic!("varint {v}"),
            }
        }
        let eleven = Bytes::from_static(&[
            8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
        ]);
        assert_eq!(
            Reader::new(&eleven).next_field().err(),
            Some(WireError::Varint)
        );
        let cut = Bytes::from_static(&[0x0a, 5, b'a']);
        assert_eq!(
            Reader::new(&cut).next_field().err(),
            Some(WireError::Truncated)
        );
        let zero = Bytes::from_static(&[0, 0]);
        assert_eq!(
            Reader::new(&zero).next_field().err(),
            Some(WireError::ZeroTag)
        );
        // A group (field 1) holding a varint, closed: skipped whole.
        let group = Bytes::from_static(&[0x0b, 0x10, 1, 0x0c, 0x18, 7]);
        let mut r = Reader::new(&group);
        assert!(matches!(r.next_field(), Ok(Some((1, Value::Fixed)))));
        assert!(matches!(r.next_field(), Ok(Some((3, Value::Varint(7))))));
        // Never closed, or closed by another field's end tag: refused.
        let open = Bytes::from_static(&[0x0b, 0x10, 1]);
        assert_eq!(
            Reader::new(&open).next_field().err(),
            Some(WireError::Truncated)
        );
        let crossed = Bytes::from_static(&[0x0b, 0x14]);
        assert_eq!(
            Reader::new(&crossed).next_field().err(),
            Some(WireError::WireType(4))
        );
    }

    #[test]
    fn nested_readers_stay_inside_their_field() {
        // Field 2 holds a message whose field 1 claims more than field 2 has.
        let m = Bytes::from_static(&[0x12, 2, 0x0a, 9, 0x18, 1]);
        let mut r = Reader::new(&m);
        let Ok(Some((2, Value::Len(inner)))) = r.next_field() else {
            panic!("field 2")
        };
        assert_eq!(
            r.nested(inner).next_field().err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn a_message_is_framed_with_its_length_and_a_large_tail_is_not_copied() {
        let mut m = Message::with_capacity(8);
        m.buf().put_slice(b"ab");
        let small = m.tail(Bytes::from_static(b"cd"));
        assert!(small.is_none());
        let (head, tail) = m.finish(small);
        assert_eq!(&head[..], &[0, 0, 0, 0, 4, b'a', b'b', b'c', b'd']);
        assert!(tail.is_none());

        let mut m = Message::with_capacity(8);
        m.buf().put_slice(b"ab");
        let big = Bytes::from(vec![1u8; COPY_TAIL_BYTES + 1]);
        let tail = m.tail(big.clone());
        let (head, tail) = m.finish(tail);
        let n = 2 + COPY_TAIL_BYTES + 1;
        assert_eq!(
            &head[..],
            &[&[0u8][..], &(n as u32).to_be_bytes(), b"ab"].concat()[..]
        );
        let tail = tail.expect("sent as it is");
        assert_eq!(tail.as_ptr(), big.as_ptr(), "not copied");
    }
}
