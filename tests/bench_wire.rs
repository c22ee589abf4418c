//! The load bench's packet-capture matching (`benches/load/wire.rs`), tested here: a
//! `harness = false` bench target never runs its own tests.

#[path = "../benches/load/wire.rs"]
mod wire;

use wire::trips;

/// A pcap of Ethernet/IPv4/TCP frames: (µs, sport, dport, payload).
fn pcap(frames: &[(u32, u16, u16, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&[2, 0, 4, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (us, sport, dport, payload) in frames {
        let mut frame = vec![0u8; 14];
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let total = (20 + 20 + payload.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 5 << 4;
        frame.extend_from_slice(&tcp);
        frame.extend_from_slice(payload);
        out.extend_from_slice(&(us / 1_000_000).to_le_bytes());
        out.extend_from_slice(&(us % 1_000_000).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

fn query(text: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((4 + text.len() + 1) as u32).to_be_bytes());
    m.extend_from_slice(text.as_bytes());
    m.push(0);
    m
}

#[test]
fn matches_a_query_through_the_target_and_leaves_out_repeats() {
    let (a, b, rep) = (query("aid = 1;"), query("aid = 2;"), query("aid = 3;"));
    let reply: &[u8] = b"T\0\0\0\x04";
    // Client ports 40001/40002, target 6432, server connection 50001 to Postgres 5432.
    let cap = pcap(&[
        (1_000_000, 40001, 6432, &a),
        (1_000_010, 50001, 5432, &a),
        (1_000_100, 5432, 50001, reply),
        (1_000_130, 6432, 40001, reply),
        (1_000_200, 40002, 6432, &b),
        (1_000_205, 50001, 5432, &b),
        (1_000_300, 5432, 50001, reply),
        (1_000_301, 6432, 40002, reply),
        (1_000_400, 40001, 6432, &rep),
        (1_000_401, 50001, 5432, &rep),
        (1_000_402, 5432, 50001, reply),
        (1_000_403, 6432, 40001, reply),
        (1_000_500, 40002, 6432, &rep),
    ]);
    let found = trips(&cap, 6432, 5432, 0.0).expect("parses");
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].inside(), 10.0 + 30.0);
    assert_eq!(found[0].postgres(), 90.0);
    assert_eq!(found[0].round_trip(), 130.0);
    assert_eq!(found[1].inside(), 5.0 + 1.0);
    // The first 150 µs of the capture left out: only the second remains.
    assert_eq!(trips(&cap, 6432, 5432, 150.0).expect("parses").len(), 1);
}

#[test]
fn refuses_what_is_not_a_pcap() {
    assert!(trips(b"not a capture at all, no", 6432, 5432, 0.0).is_err());
}
