//! QUIC connection-ID routing (draft-ietf-quic-load-balancers, plaintext mode): what the
//! datapath reads of a QUIC header and the maps that turn a server id into a backend.
//!
//! A connection ID the draft's way starts with one octet whose top three bits are the
//! config id (the "config rotation" bits; 7 marks an ID no load balancer can route),
//! then the server id (1 to 15 bytes, the config says how many), then a nonce. Only
//! Handshake and short-header packets carry an ID the server chose; Initial and 0-RTT
//! packets carry the client's, and go by Maglev.

/// The config id the draft reserves for IDs that carry no routable server id.
pub const UNROUTABLE_CONFIG_ID: u8 = 7;
/// Config ids a VIP can use (0..=6).
pub const CONFIG_IDS: usize = 7;
/// The longest server id (draft: 1..=15 bytes).
pub const MAX_SERVER_ID_LEN: usize = 15;
/// The shortest nonce, and the longest server id plus nonce (a connection ID is at most
/// 20 bytes, the first octet included).
pub const MIN_NONCE_LEN: usize = 4;
pub const MAX_ID_BODY_LEN: usize = 19;

/// The bytes of a connection ID the datapath reads at once: the first octet and the
/// longest server id (one 16-byte read, masked to the config's length).
pub const ID_READ_LEN: usize = 16;

/// The long-header bit of a QUIC packet's first byte (RFC 8999).
pub const LONG_HEADER: u8 = 0x80;
/// Where a long header's destination ID length byte is, and its ID begins.
pub const LONG_DCID_LEN_OFFSET: usize = 5;
pub const LONG_DCID_OFFSET: usize = 6;
/// Where a short header's destination ID begins.
pub const SHORT_DCID_OFFSET: usize = 1;
/// QUIC versions whose long-header packet types lb reads (RFC 9000, RFC 9369).
pub const VERSION_1: u32 = 0x0000_0001;
pub const VERSION_2: u32 = 0x6b33_43cf;

/// The long-header packet types whose destination ID the server chose (Handshake; Retry
/// goes from server to client and is never balanced). `type_bits`: (first byte >> 4) & 3.
pub const fn server_chose_id(version: u32, type_bits: u8) -> bool {
    match version {
        VERSION_1 => type_bits == 2,
        VERSION_2 => type_bits == 3,
        _ => false,
    }
}

/// The config id of a connection ID's first octet.
pub const fn config_id(first_octet: u8) -> u8 {
    first_octet >> 5
}

/// Value of QUIC_CONFIGS (an array indexed by VIP id): the server-id length of each
/// config id the VIP accepts; 0: not one of its configs (so always 0 at index 7).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicConfigs {
    pub server_id_len: [u8; 8],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for QuicConfigs {}

/// Key of QUIC_SERVERS (value: the backend id): the first [`ID_READ_LEN`] bytes of a
/// connection ID, masked by [`id_mask`] (its config bits and server id kept, everything
/// else zero), and the VIP. The ID comes first so that its words are 4-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuicServerKey {
    pub id: [u8; ID_READ_LEN],
    pub vip_id: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for QuicServerKey {}

/// Words of [`id_mask`]: the ID is masked 4 bytes at a time.
pub const ID_MASK_WORDS: usize = ID_READ_LEN / 4;

/// The mask that keeps a connection ID's config bits and its `server_id_len` bytes of
/// server id, as little-endian 32-bit words over the first [`ID_READ_LEN`] bytes.
pub const fn id_mask(server_id_len: u8) -> [u32; ID_MASK_WORDS] {
    let kept = server_id_len as u32 + 1; // bytes, the first octet included
    let mut mask = [0u32; ID_MASK_WORDS];
    let mut word = 0;
    while word < ID_MASK_WORDS {
        let start = word as u32 * 4;
        mask[word] = if kept >= start + 4 {
            u32::MAX
        } else if kept <= start {
            0
        } else {
            (1u32 << ((kept - start) * 8)) - 1
        };
        word += 1;
    }
    // Of the first octet, only the config bits.
    mask[0] = (mask[0] & !0xff) | 0xe0;
    mask
}

impl QuicServerKey {
    /// The key of a server id under a config id, as the datapath builds it from an ID.
    pub fn new(vip_id: u32, config_id: u8, server_id: &[u8]) -> Self {
        let mut id = [0u8; ID_READ_LEN];
        id[0] = config_id << 5;
        let len = server_id.len().min(MAX_SERVER_ID_LEN);
        id[1..=len].copy_from_slice(&server_id[..len]);
        Self { id, vip_id }
    }

    /// The key of the connection ID `id` (its first [`ID_READ_LEN`] bytes, zero beyond
    /// its end) under a config with `server_id_len`: what the datapath looks up.
    pub fn of_id(vip_id: u32, id: &[u8], server_id_len: u8) -> Self {
        let mut key = Self {
            id: [0; ID_READ_LEN],
            vip_id,
        };
        let len = id.len().min(ID_READ_LEN);
        key.id[..len].copy_from_slice(&id[..len]);
        for (word, mask) in key.id.chunks_exact_mut(4).zip(id_mask(server_id_len)) {
            let masked = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) & mask;
            word.copy_from_slice(&masked.to_le_bytes());
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_id_equals_the_key_of_its_config_and_server_id() {
        for server_id_len in 1..=MAX_SERVER_ID_LEN as u8 {
            let server_id: Vec<u8> = (0..server_id_len).map(|i| 0xa0 ^ i).collect();
            for config in 0..CONFIG_IDS as u8 {
                // First octet: config bits, then 5 bits of length or randomness.
                let mut id = vec![config << 5 | 0x1f];
                id.extend_from_slice(&server_id);
                id.extend_from_slice(&[0x5a; 18]);
                assert_eq!(
                    QuicServerKey::of_id(9, &id, server_id_len),
                    QuicServerKey::new(9, config, &server_id),
                    "server id length {server_id_len}, config {config}"
                );
            }
        }
    }

    #[test]
    fn the_layouts_are_fixed() {
        assert_eq!(size_of::<QuicConfigs>(), 8);
        assert_eq!(size_of::<QuicServerKey>(), 20);
        assert_eq!(config_id(0xff), UNROUTABLE_CONFIG_ID);
        assert!(server_chose_id(VERSION_1, 2) && server_chose_id(VERSION_2, 3));
        assert!(!server_chose_id(VERSION_1, 0) && !server_chose_id(VERSION_1, 1));
        assert!(
            !server_chose_id(0, 2),
            "version negotiation and unknown versions"
        );
    }
}
