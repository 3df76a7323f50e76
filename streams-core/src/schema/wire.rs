//! Confluent's wire format: a magic byte (0), the schema id (u32, big-endian), then the
//! payload; Protobuf's payload starts with the message's indexes in its file.

use crate::DecodeError;

const MAGIC: u8 = 0;

/// `payload` framed with schema `id`; `prefix` goes between the id and the payload.
pub(crate) fn frame(id: u32, prefix: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + prefix.len() + payload.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
    out
}

/// The schema id of framed bytes, and what follows it.
pub(crate) fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes {
        [] => Err(DecodeError::new(
            "empty value (expected the schema registry's wire format: magic byte 0, schema id, payload)",
        )),
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [MAGIC, ..] => Err(DecodeError::new(format!(
            "{} bytes: too short for the schema registry's wire format (magic byte, 4-byte schema id)",
            bytes.len()
        ))),
        [other, ..] => Err(DecodeError::new(format!(
            "wrong magic byte {other} (expected 0): not in the schema registry's wire format"
        ))),
    }
}

#[cfg(feature = "protobuf")]
/// Protobuf message indexes: the path of the message in its file (`[0]`, the first message,
/// is written as a single 0), zigzag varints after their count.
pub(crate) fn write_indexes(indexes: &[i32]) -> Vec<u8> {
    let mut out = Vec::new();
    if indexes == [0] {
        out.push(0);
        return out;
    }
    write_zigzag(&mut out, indexes.len() as i64);
    for index in indexes {
        write_zigzag(&mut out, i64::from(*index));
    }
    out
}

#[cfg(feature = "protobuf")]
/// The message indexes at the start of a Protobuf payload, and the rest.
pub(crate) fn read_indexes(bytes: &[u8]) -> Result<(Vec<i32>, &[u8]), DecodeError> {
    let (count, mut rest) = read_zigzag(bytes)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=100).contains(&count) {
        return Err(DecodeError::new(format!(
            "{count} Protobuf message indexes: not a message path"
        )));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (index, next) = read_zigzag(rest)?;
        let index = i32::try_from(index)
            .ok()
            .filter(|index| *index >= 0)
            .ok_or_else(|| DecodeError::new(format!("Protobuf message index {index} out of range")))?;
        indexes.push(index);
        rest = next;
    }
    Ok((indexes, rest))
}

#[cfg(feature = "protobuf")]
fn write_zigzag(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(feature = "protobuf")]
fn read_zigzag(bytes: &[u8]) -> Result<(i64, &[u8]), DecodeError> {
    let mut n: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((n >> 1) as i64) ^ -((n & 1) as i64);
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(DecodeError::new("Protobuf message indexes cut short"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_say_what_is_wrong() {
        assert_eq!(frame(7, &[], b"x"), [0, 0, 0, 0, 7, b'x']);
        assert_eq!(unframe(&[0, 0, 0, 1, 0, 9]).unwrap(), (256, &[9u8][..]));
        assert!(unframe(b"{\"a\":1}")
            .unwrap_err()
            .to_string()
            .contains("magic byte 123"));
        assert!(unframe(&[0, 1]).unwrap_err().to_string().contains("too short"));
        assert!(unframe(&[]).is_err());
    }

    /// As Confluent's clients write them.
    #[cfg(feature = "protobuf")]
    #[test]
    fn indexes_are_written_as_confluent_writes_them() {
        assert_eq!(write_indexes(&[0]), [0]);
        assert_eq!(write_indexes(&[1]), [2, 2]);
        assert_eq!(write_indexes(&[0, 2]), [4, 0, 4]);
    }

    #[cfg(feature = "protobuf")]
    proptest! {
        #[test]
        fn indexes_round_trip_and_bytes_never_panic(indexes in proptest::collection::vec(0..1000i32, 1..5), junk in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut bytes = write_indexes(&indexes);
            bytes.extend_from_slice(&junk);
            let (read, rest) = read_indexes(&bytes).unwrap();
            prop_assert_eq!(read, indexes);
            prop_assert_eq!(rest, &junk[..]);
            let _ = read_indexes(&junk);
            let _ = unframe(&junk);
        }
    }
}
