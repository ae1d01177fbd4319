//! The self-checking message format of the stress tests.
//!
//! ```text
//!  0            4                      12            16
//!  +------------+----------------------+-------------+------------------+
//!  | publisher  | sequence number u64  | checksum u32| filler ...       |
//!  | index u32  |                      |             |                  |
//!  +------------+----------------------+-------------+------------------+
//! ```
//!
//! Everything about message `(publisher, seq)` is a pure function of the
//! run's seed, the publisher index and the sequence number: its length
//! (16 bytes up to the ring's `max_message_len`, biased toward small sizes)
//! and every filler byte. So a subscriber re-derives the whole message from
//! its first 12 bytes and compares it byte for byte, and the checksum (over
//! every byte except its own four) catches a header torn from another
//! message. All integers are little-endian.

#![forbid(unsafe_code)]

/// Bytes before the filler: publisher index, sequence number, checksum.
pub const HEADER_LEN: usize = 16;
/// Smallest payload a publisher writes.
pub const MIN_LEN: usize = HEADER_LEN;

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift
/// generators, scrambled", 2016): tiny, fast and good enough for sizes and
/// filler.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator whose state is mixed from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        // splitmix64 finaliser, so nearby seeds give unrelated streams and
        // the state is never 0 (xorshift's one fixed point).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Prng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The generator of message `(publisher, seq)` in the run seeded `seed`.
    pub fn for_message(seed: u64, publisher: u32, seq: u64) -> Self {
        Prng::new(seed ^ (u64::from(publisher) << 56) ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    /// The next 64 pseudo-random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// Picks a payload length in `MIN_LEN..=max_len`, biased toward small sizes
/// so that millions of messages finish quickly, with both extremes common
/// enough to be hit thousands of times per run.
pub fn pick_len(rng: &mut Prng, max_len: usize) -> usize {
    assert!(max_len >= MIN_LEN, "max_len {max_len} below the {MIN_LEN}-byte header");
    let r = rng.next_u64() % 1000;
    let upto = |hi: usize| hi.min(max_len);
    match r {
        0..=9 => MIN_LEN,
        10..=19 => max_len,
        20..=719 => rng.range(MIN_LEN, upto(64)),
        720..=919 => rng.range(MIN_LEN, upto(256)),
        920..=979 => rng.range(MIN_LEN, upto(1024)),
        _ => rng.range(MIN_LEN, max_len),
    }
}

/// Length of message `(publisher, seq)`.
pub fn message_len(seed: u64, publisher: u32, seq: u64, max_len: usize) -> usize {
    pick_len(&mut Prng::for_message(seed, publisher, seq), max_len)
}

/// A word-at-a-time FNV-1a-style hash, folded to 32 bits. Not
/// cryptographic: it only has to notice bytes from the wrong message.
fn checksum(payload: &[u8]) -> u32 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ payload.len() as u64;
    let mut eat = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(PRIME);
            h ^= h >> 29;
        }
        for &b in chunks.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    eat(&payload[..12]);
    eat(&payload[HEADER_LEN..]);
    (h ^ (h >> 32)) as u32
}

/// Fills `buf` with filler derived from `rng`.
fn fill(rng: &mut Prng, buf: &mut [u8]) {
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let w = rng.next_u64().to_le_bytes();
        rest.copy_from_slice(&w[..rest.len()]);
    }
}

/// Writes message `(publisher, seq)` into `buf`, which must be exactly
/// [`message_len`] bytes long (a claim's buffer or a slice of a scratch
/// buffer).
pub fn write_message(buf: &mut [u8], seed: u64, publisher: u32, seq: u64, max_len: usize) {
    let mut rng = Prng::for_message(seed, publisher, seq);
    let len = pick_len(&mut rng, max_len);
    assert_eq!(buf.len(), len, "buffer for ({publisher}, {seq}) has the wrong length");
    buf[0..4].copy_from_slice(&publisher.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    fill(&mut rng, &mut buf[HEADER_LEN..]);
    let sum = checksum(buf);
    buf[12..16].copy_from_slice(&sum.to_le_bytes());
}

/// What is wrong with a received payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Shorter than the header.
    TooShort(usize),
    /// The checksum does not match the bytes.
    Checksum {
        /// Publisher index read from the header (may itself be torn).
        publisher: u32,
        /// Sequence number read from the header (may itself be torn).
        seq: u64,
    },
    /// The length is not the one message `(publisher, seq)` has.
    Length {
        /// Publisher index.
        publisher: u32,
        /// Sequence number.
        seq: u64,
        /// Length received.
        got: usize,
        /// Length published.
        expected: usize,
    },
    /// A filler byte differs from what message `(publisher, seq)` holds.
    Filler {
        /// Publisher index.
        publisher: u32,
        /// Sequence number.
        seq: u64,
        /// Offset of the first differing byte.
        at: usize,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::TooShort(n) => write!(f, "payload of {n} bytes is shorter than the header"),
            Damage::Checksum { publisher, seq } => write!(f, "bad checksum (header says publisher {publisher} seq {seq})"),
            Damage::Length { publisher, seq, got, expected } => {
                write!(f, "publisher {publisher} seq {seq}: length {got}, published {expected}")
            }
            Damage::Filler { publisher, seq, at } => write!(f, "publisher {publisher} seq {seq}: filler differs at byte {at}"),
        }
    }
}

/// Checks a received payload completely; returns `(publisher, seq)`.
pub fn verify(payload: &[u8], seed: u64, max_len: usize) -> Result<(u32, u64), Damage> {
    if payload.len() < HEADER_LEN {
        return Err(Damage::TooShort(payload.len()));
    }
    let publisher = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
    let sum = u32::from_le_bytes(payload[12..16].try_into().expect("4 bytes"));
    if checksum(payload) != sum {
        return Err(Damage::Checksum { publisher, seq });
    }
    let mut rng = Prng::for_message(seed, publisher, seq);
    let expected = pick_len(&mut rng, max_len);
    if payload.len() != expected {
        return Err(Damage::Length { publisher, seq, got: payload.len(), expected });
    }
    let mut at = HEADER_LEN;
    for chunk in payload[HEADER_LEN..].chunks(8) {
        let want = rng.next_u64().to_le_bytes();
        if let Some(i) = chunk.iter().zip(want).position(|(a, b)| *a != b) {
            return Err(Damage::Filler { publisher, seq, at: at + i });
        }
        at += chunk.len();
    }
    Ok((publisher, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_single_byte_flip_is_caught() {
        let max = 2048;
        for seq in 0..300u64 {
            let len = message_len(7, 2, seq, max);
            assert!((MIN_LEN..=max).contains(&len));
            let mut buf = vec![0u8; len];
            write_message(&mut buf, 7, 2, seq, max);
            assert_eq!(verify(&buf, 7, max), Ok((2, seq)));
            for i in 0..len {
                buf[i] ^= 0x40;
                assert!(verify(&buf, 7, max).is_err(), "flip at {i} of ({seq}) not caught");
                buf[i] ^= 0x40;
            }
        }
    }

    #[test]
    fn another_message_with_a_fixed_checksum_is_caught() {
        // A torn frame: the header of one message, the body of another.
        let (a, b) = (message_len(1, 0, 10, 64), message_len(1, 0, 11, 64));
        let mut x = vec![0u8; a];
        write_message(&mut x, 1, 0, 10, 64);
        let mut y = vec![0u8; b];
        write_message(&mut y, 1, 0, 11, 64);
        let n = a.min(b);
        let mut torn = y[..n].to_vec();
        torn[..HEADER_LEN].copy_from_slice(&x[..HEADER_LEN]);
        assert!(verify(&torn, 1, 64).is_err());
    }

    #[test]
    fn sizes_cover_both_extremes_and_stay_mostly_small() {
        let max = 2048;
        let lens: Vec<usize> = (0..100_000u64).map(|s| message_len(3, 1, s, max)).collect();
        assert!(lens.contains(&MIN_LEN));
        assert!(lens.contains(&max));
        let mean = lens.iter().sum::<usize>() / lens.len();
        assert!(mean < 256, "mean length {mean} is not biased small");
    }
}
