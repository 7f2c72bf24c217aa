//! Which client connections are still established, from the kernel's own table
//! (`/proc/net/tcp`, `/proc/net/tcp6`; Linux). actix-web notices a client that went away only
//! when a write to it fails, which for an idle stream is up to two keep-alive periods later;
//! the subscriber counts ask the kernel instead, which knows at once (the socket leaves
//! ESTABLISHED when the client's FIN or RST arrives).
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A connection as the server sees it: its own port and the client's address.
pub type Connection = (u16, SocketAddr);

/// The kernel's state number for ESTABLISHED.
const ESTABLISHED: &str = "01";

/// The established connections, or `None` where the kernel's table cannot be read.
pub fn established() -> Option<HashSet<Connection>> {
    let mut found = HashSet::new();
    let mut readable = false;
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(table) = std::fs::read_to_string(path) {
            readable = true;
            found.extend(parse(&table));
        }
    }
    readable.then_some(found)
}

/// The same address whether it came as IPv4 or as IPv4 mapped into IPv6.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn parse(table: &str) -> impl Iterator<Item = Connection> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (local, remote, state) = (fields.next()?, fields.next()?, fields.next()?);
        if state != ESTABLISHED {
            return None;
        }
        let local = address(local)?;
        Some((local.port(), normalize(address(remote)?)))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits then the port (IPv6): each 32-bit word of the
/// address in the kernel's byte order (little-endian here), the port in plain hex.
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(8 * i..8 * i + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_established_ipv4_and_ipv6_connections_only() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000\n\
            1: 0100007F:1F90 0100007F:D432 08 00000000:00000000 00:00000000 00000000\n\
            2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n";
        let found: Vec<Connection> = parse(tcp).collect();
        assert_eq!(found, [(8080, "127.0.0.1:54321".parse().unwrap())]);

        let tcp6 = "  sl  local_address rem_address st\n\
            0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 0\n\
            1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D433 01 0\n";
        let found: Vec<Connection> = parse(tcp6).collect();
        assert_eq!(
            found,
            [
                (8080, "127.0.0.1:54321".parse().unwrap()),
                (8080, "[::1]:54323".parse().unwrap())
            ]
        );
    }
}
