//! `jobcast health`: a probe for container health checks (the image has no curl). Exit 0
//! when `URL/readyz` answers 200 within [`TIMEOUT`], else 1.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The whole probe, connection included, must be answered within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The URL to probe: `url` when given, else the local address that `listen` serves on
/// (a wildcard address is probed through loopback).
pub fn probe_url(url: Option<&str>, listen: SocketAddr) -> String {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, listen.port()))
        }
    };
    if base.ends_with("/readyz") {
        base
    } else {
        format!("{base}/readyz")
    }
}

/// Probes `url`: Ok when it answered 200 in time, else why not, in one line.
pub async fn check(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::db::one_line(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(());
    }
    // The problem document's detail says what is not ready.
    let detail = tokio::time::timeout(TIMEOUT, response.json::<serde_json::Value>())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|body| body["detail"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(format!("{url}: {} {detail}", status.as_u16())
        .trim_end()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_loopback_for_a_wildcard_listen_address() {
        let listen: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(probe_url(None, listen), "http://127.0.0.1:8080/readyz");
        let listen: SocketAddr = "[::]:9000".parse().unwrap();
        assert_eq!(probe_url(None, listen), "http://[::1]:9000/readyz");
        assert_eq!(
            probe_url(Some("http://web:8080/"), listen),
            "http://web:8080/readyz"
        );
        assert_eq!(
            probe_url(Some("http://web:8080/readyz"), listen),
            "http://web:8080/readyz"
        );
    }
}
