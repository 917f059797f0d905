//! A scrape of a node's `/metrics` (supervisor/src/metrics.rs) from the LAN host, as a
//! Prometheus server outside both nodes would: one HTTP GET, the text read up to its `# EOF`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::{LanHost, Result, TcpConn};

/// The metrics text `ip:port` serves now, from its first line to `# EOF` (the HTTP headers
/// dropped).
pub fn scrape(host: &LanHost, ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<String> {
    let during = "scraping /metrics";
    let mut conn = TcpConn::connect(host, SocketAddrV4::new(ip, port), timeout)?;
    conn.send_all(
        b"GET /metrics HTTP/1.1\r\nHost: havms\r\nConnection: close\r\n\r\n",
        timeout,
        during,
    )?;
    let mut body = String::new();
    let mut in_body = false;
    loop {
        let line = conn.read_line(timeout, during)?;
        if !in_body {
            in_body = line.is_empty();
            continue;
        }
        body.push_str(&line);
        body.push('\n');
        if line == "# EOF" {
            break;
        }
    }
    let _ = conn.close(timeout);
    Ok(body)
}
