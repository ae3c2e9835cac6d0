//! Flood frames for the admission tests and benchmark: what a flooder sends from forged
//! sources, one packet per forged 5-tuple.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

/// `count` frames from `src_mac` to `dst_mac`, alternately a SYN and a bare ACK to
/// `vip`:`port`, each from a pseudo-random source in 198.19.0.0/16 (inside the labs'
/// range, outside every lab subnet) and port: never-seen 5-tuples.
pub fn frames(
    count: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vip: Ipv4Addr,
    port: u16,
) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let src = [198, 19, (state >> 8) as u8, state as u8];
            let src_port = 1024 + (state >> 16) as u16 % 60_000;
            let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, vip.octets(), 64);
            let tcp = ip.tcp(src_port, port, (state >> 32) as u32, 64_000);
            let mut frame = Vec::new();
            let written = if n % 2 == 0 {
                tcp.syn().write(&mut frame, &[])
            } else {
                tcp.ack((state >> 40) as u32).write(&mut frame, &[])
            };
            written.expect("build a flood frame");
            frame
        })
        .collect()
}
