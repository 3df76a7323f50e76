//! Kafka's default partitioner: which partition a keyed record goes to. The worker's
//! producer uses librdkafka's `murmur2_random`, which computes the same; lookups of table
//! keys ([`crate::worker`]'s web server) find a key's partition with it.

/// Kafka's murmur2 hash of a key, as the Java clients' `Utils.murmur2` computes it.
///
/// ```
/// use streams_core::partitioner::murmur2;
/// // The values Kafka's own tests (`UtilsTest.testMurmur2`) check.
/// assert_eq!(murmur2(b"21"), -973932308);
/// assert_eq!(murmur2(b"foobar"), -790332482);
/// assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
/// assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
/// assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
/// assert_eq!(murmur2(b"abc"), 479470107);
/// ```
pub fn murmur2(key: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partitioner for keyed records: `toPositive(murmur2(key)) % partitions`,
/// as the Java clients and librdkafka's `murmur2_random` compute it.
///
/// ```
/// use streams_core::partitioner::kafka_partition;
/// // toPositive(-973932308) = 1173551340, and 1173551340 % 8 = 4.
/// assert_eq!(kafka_partition(b"21", 8), 4);
/// assert_eq!(kafka_partition(b"abc", 3), 479470107 % 3);
/// ```
pub fn kafka_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}
