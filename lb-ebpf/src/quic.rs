//! QUIC VIPs: the backend a packet's connection ID names (draft-ietf-quic-load-balancers,
//! plaintext configs). Only IDs the server chose are read: a Handshake packet's or a short
//! header's. Anything else, or an ID that names no serving backend of the VIP, goes by
//! Maglev as any UDP flow does (the caller's fallback), each case counted.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{BACKEND_ACTIVE, BACKEND_DRAINING, NO_BACKEND},
    quic::{
        ID_MASK_WORDS, ID_READ_LEN, LONG_DCID_LEN_OFFSET, LONG_DCID_OFFSET, LONG_HEADER,
        QuicServerKey, SHORT_DCID_OFFSET, config_id, id_mask, server_chose_id,
    },
    service::Backend,
    stats::Stat,
};

use crate::{
    maps::{BACKENDS, QUIC_CONFIGS, QUIC_SERVERS},
    parse::{Packet, ptr_at},
    stats,
};

/// The UDP header ahead of the QUIC packet.
const UDP_HEADER: usize = 8;

/// The serving backend of VIP `vip_id` whose server id `packet`'s connection ID carries,
/// or `None` (Maglev decides), with the case counted.
#[inline(always)]
pub fn server(ctx: &XdpContext, packet: &Packet, vip_id: u32) -> Option<(u32, &'static Backend)> {
    let id = named_backend(ctx, packet.l4_offset + UDP_HEADER, vip_id);
    if id == NO_BACKEND {
        return None;
    }
    BACKENDS.get(id).map(|backend| (id, backend))
}

/// [`server`]'s work: the backend id, or [`NO_BACKEND`]. A BPF subprogram: called from
/// the tracked and the untracked path, inlined it took `lb` past 460 stack bytes.
#[inline(never)]
fn named_backend(ctx: &XdpContext, payload: usize, vip_id: u32) -> u32 {
    match lookup(ctx, payload, vip_id) {
        Ok(id) => {
            stats::count_event(Stat::QuicByServerId);
            id
        }
        Err(reason) => {
            stats::count_event(reason);
            NO_BACKEND
        }
    }
}

#[inline(always)]
fn lookup(ctx: &XdpContext, payload: usize, vip_id: u32) -> Result<u32, Stat> {
    // SAFETY (every packet read below): `ptr_at` checked the bytes are inside the packet;
    // byte arrays have alignment 1, and the version is read unaligned.
    let first = unsafe { *ptr_at::<u8>(ctx, payload).ok_or(Stat::QuicTruncated)? };
    // A long header says how long its ID is; a short header does not (its config does).
    let (id_offset, id_len) = if first & LONG_HEADER != 0 {
        let header =
            ptr_at::<[u8; LONG_DCID_LEN_OFFSET + 1]>(ctx, payload).ok_or(Stat::QuicTruncated)?;
        let version =
            u32::from_be(unsafe { header.cast::<u8>().add(1).cast::<u32>().read_unaligned() });
        if !server_chose_id(version, (first >> 4) & 3) {
            return Err(Stat::QuicLongHeader);
        }
        let id_len = unsafe { *header.cast::<u8>().add(LONG_DCID_LEN_OFFSET) };
        (payload + LONG_DCID_OFFSET, id_len)
    } else {
        (payload + SHORT_DCID_OFFSET, u8::MAX)
    };
    let configs = QUIC_CONFIGS.get(vip_id).ok_or(Stat::QuicUnknownConfig)?;
    // 16 bytes are read whatever the ID's length: a Handshake or 1-RTT packet carries at
    // least its 16-byte AEAD tag after the ID, so a real one is never this short. Copied
    // into the key as they are, then masked there a word at a time: assembled into
    // registers first, they spilled onto a stack with little room left.
    let id = ptr_at::<[u8; ID_READ_LEN]>(ctx, id_offset).ok_or(Stat::QuicTruncated)?;
    let mut key = QuicServerKey {
        id: unsafe { *id },
        vip_id,
    };
    // One byte per config id, picked by a shift: indexing a copy made a stack address
    // the verifier refuses.
    let lengths = u64::from_le_bytes(configs.server_id_len);
    let server_id_len = (lengths >> (u32::from(config_id(key.id[0]) & 7) * 8)) as u8;
    if server_id_len == 0 {
        return Err(Stat::QuicUnknownConfig);
    }
    if id_len <= server_id_len {
        return Err(Stat::QuicTruncated);
    }
    let mask = id_mask(server_id_len);
    // SAFETY: the key is 4-aligned (`repr(C)`, a u32 field) and its ID comes first.
    let words = unsafe { &mut *key.id.as_mut_ptr().cast::<[u32; ID_MASK_WORDS]>() };
    words[0] &= mask[0];
    words[1] &= mask[1];
    words[2] &= mask[2];
    words[3] &= mask[3];
    // SAFETY: the value is copied out before the map can change it.
    let backend_id = unsafe { QUIC_SERVERS.get(&key) }
        .copied()
        .ok_or(Stat::QuicUnknownServerId)?;
    let backend = BACKENDS.get(backend_id).ok_or(Stat::QuicUnknownServerId)?;
    // Draining backends keep their connections; a down or retired one has none to keep.
    let serving = matches!(backend.state, BACKEND_ACTIVE | BACKEND_DRAINING);
    if !serving || backend.vip_id != vip_id {
        return Err(Stat::QuicUnknownServerId);
    }
    Ok(backend_id)
}
