//! The CIDs a quinn server issues with quic-lb's generator, read off the wire: a relay
//! between client and server records the server's Source CIDs (long headers) and the
//! Destination CIDs the client sends to (Handshake and short headers), and every one must
//! decode to the server's ID, through the handshake and a CID change at every rebind.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use quic_lb::{CidGenerator, Config, ServerId};
use tokio::net::UdpSocket;

use crate::{client, server};

const REBINDS: usize = 4;

#[tokio::test]
async fn a_quinn_server_issues_cids_that_decode_to_its_server_id() {
    for config in [
        "config=2,server-id-len=2,nonce-len=6",
        "config=5,server-id-len=3,nonce-len=8,key=8f95f09245765f80256934e50c66207f",
    ] {
        let config: Config = config.parse().unwrap();
        let ours: ServerId = "0a01c3"[..2 * config.server_id_len()].parse().unwrap();
        let generator = CidGenerator::new(config.clone(), ours, true).unwrap();
        let endpoint = server::endpoint((Ipv4Addr::LOCALHOST, 0).into(), Some(generator)).unwrap();
        let server_addr = endpoint.local_addr().unwrap();
        let serving = tokio::spawn(server::serve(endpoint.clone(), "a".into()));

        let relay = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let relaying = tokio::spawn(relay_and_record(
            relay,
            server_addr,
            config.cid_len(),
            Arc::clone(&seen),
        ));

        let report = client::run(client::Plan {
            connect: relay_addr,
            connections: 1,
            rebinds: REBINDS,
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            timeout: Duration::from_secs(2),
            pause_file: None,
        })
        .await
        .unwrap();
        relaying.abort();
        serving.abort();
        endpoint.close(0u32.into(), b"done");

        assert_eq!(report["died"], 0, "{config}: {report}");
        assert_eq!(report["served_by"]["a"], REBINDS + 1, "{report}");
        let seen = seen.lock().unwrap();
        for cid in seen.iter() {
            assert_eq!(
                quic_lb::decode(&config, cid).ok(),
                Some(ours),
                "{config}: CID {cid:02x?} on the wire"
            );
        }
        // The handshake's CID, then a fresh one at each rebind (quinn moves to an unused
        // CID of the server's when its local address changes).
        assert!(
            seen.len() > REBINDS,
            "{config}: only {} CIDs: {seen:02x?}",
            seen.len()
        );
    }
}

/// Forwards datagrams between the server and the latest client address, recording the
/// CIDs that the server chose.
async fn relay_and_record(
    relay: UdpSocket,
    server: SocketAddr,
    cid_len: usize,
    seen: Arc<Mutex<BTreeSet<Vec<u8>>>>,
) {
    let mut client = None;
    let mut buf = vec![0; 65536];
    while let Ok((len, from)) = relay.recv_from(&mut buf).await {
        let datagram = &buf[..len];
        let (cid, to) = if from == server {
            (long_header_cids(datagram).map(|(_, scid)| scid), client)
        } else {
            client = Some(from);
            (client_dcid(datagram, cid_len), Some(server))
        };
        if let Some(cid) = cid {
            seen.lock().unwrap().insert(cid.to_vec());
        }
        if let Some(to) = to {
            relay.send_to(datagram, to).await.unwrap();
        }
    }
}

/// The DCID of a client's packet if the server chose it: not the Initial's (the client
/// picks the first, and later ones are the server's but look the same).
fn client_dcid(datagram: &[u8], cid_len: usize) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 {
        return datagram.get(1..1 + cid_len);
    }
    const INITIAL: u8 = 0;
    let packet_type = (first >> 4) & 0b11;
    (packet_type != INITIAL)
        .then(|| long_header_cids(datagram).map(|(dcid, _)| dcid))
        .flatten()
}

/// (DCID, SCID) of a long header (RFC 9000 §17.2).
fn long_header_cids(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    if datagram.first()? & 0x80 == 0 {
        return None;
    }
    let dcid_len = usize::from(*datagram.get(5)?);
    let dcid = datagram.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*datagram.get(6 + dcid_len)?);
    let scid = datagram.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    Some((dcid, scid))
}
