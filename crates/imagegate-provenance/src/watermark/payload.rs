//! What the watermark carries: a key id and a prefix of the content key, and the
//! CRC-32 that tells a real payload from noise.

use super::CODED_BITS;
use imagegate_core::ContentKey;

/// Bits the watermark carries, not counting the CRC.
pub const PAYLOAD_BITS: usize = 64;

/// The 64 bits in a watermark: which watermark key made it (so keys can rotate)
/// and the first 56 bits of the content key, enough to find the request in the
/// ledger (a collision needs about 2^28 keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Payload {
    pub key_id: u8,
    pub key_prefix: [u8; 7],
}

impl Payload {
    /// The payload for `key`'s files under watermark key `key_id`.
    pub fn for_content_key(key_id: u8, key: ContentKey) -> Payload {
        let mut key_prefix = [0u8; 7];
        let hex = key.to_hex();
        for (i, b) in key_prefix.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .expect("a content key's hex is valid hex");
        }
        Payload { key_id, key_prefix }
    }

    /// The content-key prefix as lowercase hex (14 digits), as keys are written.
    pub fn key_prefix_hex(&self) -> String {
        self.key_prefix.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bytes(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.key_id;
        out[1..].copy_from_slice(&self.key_prefix);
        out
    }

    /// The 96 bits embedded: payload then CRC-32, most significant bit first.
    pub fn coded_bits(&self) -> [bool; CODED_BITS] {
        let bytes = self.bytes();
        let crc = crc32fast::hash(&bytes).to_be_bytes();
        let mut bits = [false; CODED_BITS];
        for (i, bit) in bits.iter_mut().enumerate() {
            let byte = if i < 64 {
                bytes[i / 8]
            } else {
                crc[(i - 64) / 8]
            };
            *bit = byte >> (7 - i % 8) & 1 == 1;
        }
        bits
    }

    /// The payload whose CRC the bits carry, if they do.
    pub fn from_coded_bits(bits: &[bool; CODED_BITS]) -> Option<Payload> {
        let mut all = [0u8; CODED_BITS / 8];
        for (i, &bit) in bits.iter().enumerate() {
            all[i / 8] |= u8::from(bit) << (7 - i % 8);
        }
        let (bytes, crc) = all.split_at(8);
        if crc32fast::hash(bytes).to_be_bytes() != crc {
            return None;
        }
        let mut key_prefix = [0u8; 7];
        key_prefix.copy_from_slice(&bytes[1..]);
        Some(Payload {
            key_id: bytes[0],
            key_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coded_bits_round_trip_and_one_flipped_bit_fails_the_crc() {
        let key: ContentKey = "0123456789abcdef".repeat(4).parse().unwrap();
        let p = Payload::for_content_key(7, key);
        assert_eq!(p.key_prefix_hex(), "0123456789abcd");
        let bits = p.coded_bits();
        assert_eq!(Payload::from_coded_bits(&bits), Some(p));
        for i in 0..CODED_BITS {
            let mut flipped = bits;
            flipped[i] = !flipped[i];
            assert_eq!(Payload::from_coded_bits(&flipped), None, "bit {i}");
        }
    }
}
