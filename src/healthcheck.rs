//! `pooler --health-check`: the container's HEALTHCHECK without curl in the image. It reads
//! the same config the pooler runs with and asks the running pooler `GET /healthz` on
//! `metrics_port` (or, with the metrics listener off, connects to `listen_port`); exit status
//! 0 when it answers 200 (or accepts), 1 otherwise. Blocking std IO with short timeouts: it
//! runs once and exits, no runtime needed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::PoolerSettings;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach a listener bound to `addr`: a wildcard address is reached on loopback.
fn reachable(addr: &str, port: u16) -> Option<SocketAddr> {
    let first = addr.split(',').map(str::trim).find(|a| !a.is_empty())?;
    let host = first.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "*" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        h => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return (h, port).to_socket_addrs().ok()?.next(),
        },
    };
    Some(SocketAddr::new(ip, port))
}

/// Probes the pooler the settings describe: Ok(what answered) or Err(why not).
pub fn probe(p: &PoolerSettings) -> Result<String, String> {
    if p.metrics_port == 0 {
        let addr = reachable(&p.listen_addr, p.listen_port)
            .ok_or_else(|| format!("listen_addr {:?}: no address", p.listen_addr))?;
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
        return Ok(format!("{addr} accepts connections"));
    }
    let addr = reachable(&p.metrics_addr, p.metrics_port)
        .ok_or_else(|| format!("metrics_addr {:?}: no address", p.metrics_addr))?;
    let fail = |e: std::io::Error| format!("{addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).map_err(fail)? {
            0 => break,
            m => n += m,
        }
    }
    let status = String::from_utf8_lossy(&head[..n]);
    let status = status.lines().next().unwrap_or_default().to_string();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(format!("http://{addr}/healthz: {status}"))
    } else {
        Err(format!("http://{addr}/healthz: {status:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0", 9127),
            Some("127.0.0.1:9127".parse().unwrap())
        );
        assert_eq!(reachable("*", 1), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(reachable("::", 2), Some("[::1]:2".parse().unwrap()));
        assert_eq!(
            reachable("10.0.0.5, 127.0.0.1", 3),
            Some("10.0.0.5:3".parse().unwrap())
        );
    }
}
