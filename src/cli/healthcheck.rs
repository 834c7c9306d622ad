//! `zhijian healthcheck`: asks a running daemon's metrics listener whether
//! it is alive (`/healthz`) or judging (`/readyz`), for container health
//! checks in images without curl. Exit 0 on 200, 1 otherwise.

use super::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long the whole question may take (a container health check has its
/// own timeout, usually 5 s).
const PATIENCE: Duration = Duration::from_secs(4);

pub(super) fn cmd_healthcheck(common: &Common, ready: bool) -> Result<(), Failure> {
    let config = load_config(common, &Overrides::default())?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let mut addr = config.metrics_addr;
    // A listener on every interface answers on loopback.
    if addr.ip().is_unspecified() {
        addr = SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        );
    }
    let status = ask(addr, path).map_err(|e| Failure::Runtime(format!("{path} on {addr}: {e}")))?;
    if status == 200 {
        println!("{path} on {addr}: 200");
        Ok(())
    } else {
        Err(Failure::Runtime(format!("{path} on {addr}: {status}")))
    }
}

/// The status code of `GET path`.
fn ask(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_write_timeout(Some(PATIENCE))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}
