//! Whether an instance listens beyond loopback: Sluice gives it `HOST`
//! (127.0.0.1), and one that binds every interface anyway answers past the
//! entry point, its rules and its telemetry. Read from `/proc/net/tcp{,6}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The addresses listening on `port` in a `/proc/net/tcp` or `tcp6` table.
pub(crate) fn listeners(table: &str, port: u16) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            // 0A is TCP_LISTEN.
            if *state != "0A" {
                return None;
            }
            let (addr, p) = local.split_once(':')?;
            (u16::from_str_radix(p, 16).ok()? == port).then_some(())?;
            parse_addr(addr)
        })
        .collect()
}

/// The kernel writes each 32-bit word of the address in host order (little-endian here).
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// The addresses beyond loopback that something listens on at `port`.
pub(crate) fn exposed(port: u16) -> Vec<IpAddr> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| listeners(&table, port))
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:2711 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:2711 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:2712 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:2713 00000000000000000000000000000000:0000 0A
";

    #[test]
    fn listening_sockets_are_read_by_port_and_state() {
        assert_eq!(listeners(TCP, 10000), vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(
            listeners(TCP, 10001),
            vec![IpAddr::from([0, 0, 0, 0])],
            "the established row is not a listener"
        );
        assert_eq!(
            listeners(TCP6, 10002),
            vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        );
        assert_eq!(
            listeners(TCP6, 10003),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        assert!(listeners(TCP, 9).is_empty());
        assert!(listeners("garbage\n1: zz:zz 0 0A", 1).is_empty());
    }
}
