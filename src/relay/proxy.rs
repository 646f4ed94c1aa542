//! The route to the relay where no `hostAliases` exist (`exec`): the child gets
//! `HTTPS_PROXY` pointing here. A `CONNECT` to the relay's host is answered by the relay
//! in this process; any other `CONNECT` is tunnelled on unchanged, directly or through
//! the proxy that our own environment names, so the child reaches everything else as
//! before. Hosts in the child's `NO_PROXY` never come here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::endpoint::Relay;
use crate::serve::Accepted;

/// The upstream proxy's answer must arrive within this; a request head must be no
/// larger than `MAX_HEAD`.
const HEAD_LIMIT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8 * 1024;

/// Where the proxy sends what is not for the relay.
#[derive(Clone, Debug)]
pub enum Upstream {
    Direct,
    /// An `http://host:port` proxy, asked with `CONNECT` in turn.
    Proxy(String),
}

impl Upstream {
    /// From the proxy variables of our own environment (an `https://` proxy or one with
    /// credentials is used as given: host and port only, no authentication).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .find_map(|k| get(k).filter(|v| !v.is_empty()))
            .and_then(|v| {
                let url = Url::parse(&v).ok()?;
                Some(format!(
                    "{}:{}",
                    url.host_str()?,
                    url.port_or_known_default()?
                ))
            })
            .map_or(Upstream::Direct, Upstream::Proxy)
    }
}

/// The target of a `CONNECT` request head, or why it is not one. Pure.
pub fn connect_target(head: &str) -> Result<(String, u16), &'static str> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("CONNECT"), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let (host, port) = target.rsplit_once(':').ok_or("CONNECT needs host:port")?;
            let port = port.parse().map_err(|_| "CONNECT needs a numeric port")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("CONNECT needs a host");
            }
            Ok((host.to_ascii_lowercase(), port))
        }
        (Some(_), Some(_), Some(_)) => Err("only CONNECT is proxied"),
        _ => Err("not an HTTP request"),
    }
}

/// Accepts on `listener` until `cancel`, with the relay's bounds ([`crate::serve`]): the
/// same connection cap for tunnels and relay requests, a request head within
/// [`Limits::handshake`](crate::serve::Limits::handshake), and the relay's own limits
/// once the stream is its.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    relay_host: String,
    upstream: Upstream,
    cancel: CancellationToken,
) {
    let relay_host = Arc::<str>::from(relay_host);
    let (limits, connections) = (relay.limits().clone(), relay.connections.clone());
    crate::serve::accept(listener, &limits, connections, cancel, move |conn| {
        let (relay, relay_host, upstream) = (relay.clone(), relay_host.clone(), upstream.clone());
        async move {
            if let Err(e) = one(conn, relay, &relay_host, &upstream).await {
                tracing::debug!(error = %e, "proxy: connection ended");
            }
        }
    })
    .await
}

async fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: nothing after the head may be swallowed, the
    // TLS handshake that follows belongs to whoever gets the stream.
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_HEAD || tcp.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("incomplete request head"));
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn one(
    conn: Accepted,
    relay: Arc<Relay>,
    relay_host: &str,
    upstream: &Upstream,
) -> std::io::Result<()> {
    let Accepted { mut tcp, ctx } = conn;
    if let Some(Peer::Other { uid, ours }) = peer_user(&tcp).await {
        // Any local user can connect to loopback; only the command (our own user) may use
        // the relay and the tunnels, or another user could queue ahead of its refreshes
        // and hold our descriptors.
        tracing::debug!(uid, ours, "proxy: refused a connection of another user");
        return Ok(());
    }
    let limit = ctx.limits.handshake;
    let head = tokio::time::timeout(limit, read_head(&mut tcp))
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    let (host, port) = match connect_target(&head) {
        Ok(t) => t,
        Err(why) => {
            let body = format!("polars-cloud-auth exec proxy: {why}\n");
            let reply = format!(
                "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return tcp.write_all(reply.as_bytes()).await;
        }
    };
    if host == relay_host {
        tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        relay.serve_connection(tcp, &ctx).await;
        return Ok(());
    }
    let outbound = tokio::time::timeout(limit, async {
        match upstream {
            Upstream::Direct => TcpStream::connect((host.as_str(), port)).await,
            Upstream::Proxy(addr) => via_proxy(addr, &host, port).await,
        }
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("connecting timed out")));
    let mut outbound = match outbound {
        Ok(s) => s,
        Err(e) => {
            tcp.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Err(e);
        }
    };
    tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut tcp, &mut outbound) => copied.map(|_| ()),
        _ = ctx.closing.cancelled() => Ok(()),
    }
}

/// Whose a loopback connection is, from the kernel's socket table.
#[derive(Debug, PartialEq, Eq)]
enum Peer {
    Ours,
    Other { uid: u32, ours: u32 },
}

/// Whether the process at the other end of `tcp` runs as our user: both ends of a
/// loopback connection are in the kernel's table (`/proc/net/tcp`), each with the user
/// that opened it. `None` where that cannot be told (no `/proc`, the peer already gone):
/// then the connection is served as before.
async fn peer_user(tcp: &TcpStream) -> Option<Peer> {
    let (ours, theirs) = (tcp.local_addr().ok()?, tcp.peer_addr().ok()?);
    if !theirs.ip().is_loopback() {
        return None;
    }
    let table = if ours.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = tokio::fs::read_to_string(table).await.ok()?;
    let ours_uid = socket_uid(&text, ours, theirs)?;
    let uid = socket_uid(&text, theirs, ours)?;
    Some(if uid == ours_uid {
        Peer::Ours
    } else {
        Peer::Other {
            uid,
            ours: ours_uid,
        }
    })
}

/// The user of the socket `local`→`remote` in a `/proc/net/tcp` table. Pure.
fn socket_uid(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (parse_addr(l)? == local && parse_addr(r)? == remote)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (the address as the kernel holds it, in hex; the port in hex). Pure.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes()).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

async fn via_proxy(addr: &str, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await?;
    let head = tokio::time::timeout(HEAD_LIMIT, read_head(&mut s))
        .await
        .map_err(|_| std::io::Error::other("upstream proxy timed out"))??;
    let ok = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("200");
    if !ok {
        return Err(std::io::Error::other("upstream proxy refused the CONNECT"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads_are_parsed_and_others_refused() {
        assert_eq!(
            connect_target("CONNECT Auth.X.internal:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(("auth.x.internal".into(), 443))
        );
        assert_eq!(
            connect_target("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n"),
            Ok(("::1".into(), 8443))
        );
        assert!(connect_target("GET http://x/ HTTP/1.1\r\n\r\n").is_err());
        assert!(connect_target("CONNECT x HTTP/1.1\r\n\r\n").is_err());
        assert!(connect_target("CONNECT x:https HTTP/1.1\r\n\r\n").is_err());
        assert!(connect_target("garbage").is_err());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_socket_table_names_each_ends_user() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:A001 0100007F:B002 01 00000000:00000000 00:00000000 00000000  1000        0 1 1\n\
            1: 0100007F:B002 0100007F:A001 01 00000000:00000000 00:00000000 00000000  2000        0 2 1\n";
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:40961".parse().unwrap(),
            "127.0.0.1:45058".parse().unwrap(),
        );
        assert_eq!(socket_uid(table, a, b), Some(1000));
        assert_eq!(socket_uid(table, b, a), Some(2000));
        assert_eq!(socket_uid(table, a, a), None);
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn our_own_connections_are_ours() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(peer_user(&server).await, Some(Peer::Ours));
        drop(client);
    }

    #[test]
    fn the_upstream_comes_from_our_proxy_variables() {
        let env = |k: &str| (k == "https_proxy").then(|| "http://proxy.corp:3128".to_string());
        assert!(matches!(Upstream::from_env(env), Upstream::Proxy(a) if a == "proxy.corp:3128"));
        assert!(matches!(Upstream::from_env(|_| None), Upstream::Direct));
    }
}
