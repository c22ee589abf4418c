//! Latency on the wire: where a transaction's time goes between pgbench, the target (pooler
//! or PgBouncer) and Postgres, from a loopback packet capture (`tcpdump -w`).
//!
//! Why: at a fixed rate with 2,000 clients, the p99 that pgbench reports is mostly pgbench's
//! own: one process with 1,000 clients per thread, on a 2-core machine it shares with Postgres
//! and the target, sends a query late and notices its reply late. A capture of a 2026-12-07 run
//! put the round trip seen on the wire at a p99 of 2.4 ms where pgbench reported 17.6 ms. The
//! capture tells the target's own share: the time from a client's query reaching the target to
//! the target sending it on to Postgres, plus from Postgres's reply reaching the target to the
//! target sending it on to the client.
//!
//! Matching needs nothing from the target: `pgbench -S` sends each query as one simple-protocol
//! `Query` whose text (`... WHERE aid = N;`) is, bar repeats of N, unique in a few seconds; a
//! query whose text appears twice on either side is left out. A reply is the first packet with
//! data on the same connection after the query.

use std::collections::{HashMap, HashSet};

/// One transaction's four packet times, µs: the query leaving pgbench (t1), leaving the target
/// for Postgres (t2), the reply leaving Postgres (t3), leaving the target for pgbench (t4).
#[derive(Clone, Copy, Debug)]
pub struct Trip {
    pub t1: f64,
    pub t2: f64,
    pub t3: f64,
    pub t4: f64,
}

impl Trip {
    /// Time inside the target, both directions.
    pub fn inside(&self) -> f64 {
        (self.t2 - self.t1) + (self.t4 - self.t3)
    }
    /// The round trip seen on the wire: from the query leaving pgbench to its reply coming back.
    pub fn round_trip(&self) -> f64 {
        self.t4 - self.t1
    }
    /// Postgres's share.
    pub fn postgres(&self) -> f64 {
        self.t3 - self.t2
    }
}

/// A TCP segment with data.
struct Segment<'a> {
    t_us: f64,
    sport: u16,
    dport: u16,
    payload: &'a [u8],
}

/// The TCP segments with data in a classic pcap file (µs or ns timestamps, Ethernet or Linux
/// cooked headers, IPv4).
fn segments(data: &[u8]) -> Result<Vec<Segment<'_>>, String> {
    if data.len() < 24 {
        return Err("pcap: shorter than its header".into());
    }
    let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let nanos = match u32le(&data[0..4]) {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        m => return Err(format!("pcap: unknown magic {m:#x}")),
    };
    let link_header = match u32le(&data[20..24]) {
        1 => 14,   // Ethernet (Linux `lo`)
        113 => 16, // Linux cooked
        276 => 20, // Linux cooked v2
        l => return Err(format!("pcap: link type {l} not handled")),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let (secs, frac, incl) = (
            u32le(&data[at..]),
            u32le(&data[at + 4..]),
            u32le(&data[at + 8..]) as usize,
        );
        let Some(frame) = data.get(at + 16..at + 16 + incl) else {
            break; // a capture cut off mid-record
        };
        at += 16 + incl;
        let t_us = secs as f64 * 1e6
            + if nanos {
                frac as f64 / 1e3
            } else {
                frac as f64
            };
        let Some(ip) = frame.get(link_header..) else {
            continue;
        };
        if ip.first().map(|b| b >> 4) != Some(4) || ip.get(9) != Some(&6) {
            continue; // not IPv4 TCP
        }
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let Some(tcp) = ip.get(ihl..) else { continue };
        if tcp.len() < 20 {
            continue;
        }
        let doff = ((tcp[12] >> 4) as usize) * 4;
        let payload = tcp.get(doff..).unwrap_or(&[]);
        if payload.is_empty() {
            continue;
        }
        out.push(Segment {
            t_us,
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            payload,
        });
    }
    Ok(out)
}

/// The text of a simple `Query` at the start of a segment.
fn query_text(payload: &[u8]) -> Option<&[u8]> {
    if payload.first() != Some(&b'Q') || payload.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]) as usize;
    payload.get(5..1 + len)
}

/// Every transaction of the capture whose four packets were found, in order of t1, leaving out
/// the first `skip_us` (tcpdump's own start stalls the machine for a few ms).
pub fn trips(
    pcap: &[u8],
    target_port: u16,
    pg_port: u16,
    skip_us: f64,
) -> Result<Vec<Trip>, String> {
    let segs = segments(pcap)?;
    let first = segs.first().map(|s| s.t_us).unwrap_or(0.0);
    let mut t1: HashMap<&[u8], f64> = HashMap::new();
    let mut t2: HashMap<&[u8], f64> = HashMap::new();
    let mut t3: HashMap<&[u8], f64> = HashMap::new();
    let mut t4: HashMap<&[u8], f64> = HashMap::new();
    let mut repeated: HashSet<&[u8]> = HashSet::new();
    // Connection (the other end's port) -> the query awaiting its reply.
    let mut awaiting_client: HashMap<u16, &[u8]> = HashMap::new();
    let mut awaiting_server: HashMap<u16, &[u8]> = HashMap::new();
    for s in &segs {
        if s.dport == target_port {
            if let Some(q) = query_text(s.payload) {
                if t1.insert(q, s.t_us).is_some() {
                    repeated.insert(q);
                }
                awaiting_client.insert(s.sport, q);
            }
        } else if s.dport == pg_port {
            if let Some(q) = query_text(s.payload) {
                if t2.insert(q, s.t_us).is_some() {
                    repeated.insert(q);
                }
                awaiting_server.insert(s.sport, q);
            }
        } else if s.sport == pg_port {
            if let Some(q) = awaiting_server.remove(&s.dport) {
                t3.insert(q, s.t_us);
            }
        } else if s.sport == target_port
            && let Some(q) = awaiting_client.remove(&s.dport)
        {
            t4.insert(q, s.t_us);
        }
    }
    let mut out: Vec<Trip> = t1
        .iter()
        .filter(|(q, t)| !repeated.contains(*q) && **t >= first + skip_us)
        .filter_map(|(q, &t1)| {
            Some(Trip {
                t1,
                t2: *t2.get(q)?,
                t3: *t3.get(q)?,
                t4: *t4.get(q)?,
            })
        })
        // A packet order the matching did not foresee (a query forwarded before it arrived).
        .filter(|t| t.t1 <= t.t2 && t.t2 <= t.t3 && t.t3 <= t.t4)
        .collect();
    out.sort_by(|a, b| a.t1.total_cmp(&b.t1));
    Ok(out)
}
