//! Authentication and tenants (API.md "Authentication and tenants"), from outside: keyed
//! `serve` processes over real HTTP, tokens minted by Python's standard library.
use std::path::PathBuf;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::common::*;

mod expiry;
mod keys;
mod limits;
mod tokens;

pub const ACME_KEY: &str = "acme-key-0123456789abcdef";
pub const ACME_KEY_2: &str = "acme-key-second-0123456789";
pub const GLOBEX_KEY: &str = "globex-key-0123456789abcdef";
pub const WRONG_KEY: &str = "wrong-key-0123456789abcdef";
pub const SECRET: &str = "token-secret-0123456789abcdef";
pub const NEW_SECRET: &str = "token-secret-new-0123456789ab";

/// A keys file of its own for one test.
pub fn keys_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("jobcast-keys-{}.txt", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `acme` and `globex`, one key each.
pub fn two_tenants() -> PathBuf {
    keys_file(&format!(
        "# tenants of the tests\nacme {ACME_KEY}\n\nglobex {GLOBEX_KEY}\n"
    ))
}

/// `serve` with keys from `keys` and token secrets `secrets`.
pub fn keyed_serve(db: &TestDb, keys: &std::path::Path, secrets: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--token-secret",
        secrets,
    ];
    args.extend_from_slice(extra);
    Proc::serve(&db.url, &args)
}

/// A response as a client sees it.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// One request with an optional API key and JSON body.
pub async fn call(method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> Reply {
    let mut request = http().request(method.parse().unwrap(), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Asserts a 401 problem document with `WWW-Authenticate: Bearer`.
pub fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.body);
    assert_eq!(
        reply.headers["www-authenticate"], "Bearer",
        "{what}: every 401 carries WWW-Authenticate"
    );
    assert_eq!(
        reply.headers["content-type"], "application/problem+json",
        "{what}"
    );
    assert_eq!(reply.body["status"], 401, "{what}");
}

/// `(event type, data)` of each frame; None for one that does not parse.
type Frames = std::pin::Pin<Box<dyn Stream<Item = Option<(String, Value)>> + Send>>;

/// An open event stream (opened with a key or a token URL).
pub struct Stream200 {
    events: Frames,
}

impl Stream200 {
    /// The next `(event type, data)`; None when the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        tokio::time::timeout(Duration::from_secs(20), self.events.next())
            .await
            .expect("no event within 20 s")
            .flatten()
    }
}

/// GET a stream; its status, and the stream when it is 200.
pub async fn open_stream(url: &str, key: Option<&str>) -> (u16, Option<Stream200>) {
    let mut request = http().get(url).header("Accept", "text/event-stream");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let events = response.bytes_stream().eventsource().map(|e| {
        let e = e.ok()?;
        Some((e.event, serde_json::from_str(&e.data).unwrap()))
    });
    (
        status,
        Some(Stream200 {
            events: Box::pin(events),
        }),
    )
}

/// A JWT minted by Python's standard library (hmac + base64), not by jobcast: `header` and
/// `claims` as JSON; an empty `secret` leaves the signature empty (as `alg: none` does).
pub fn mint(header: &Value, claims: &Value, secret: &str) -> String {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, sys
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
signing_input = b64(sys.argv[1].encode()) + "." + b64(sys.argv[2].encode())
secret = sys.argv[3].encode()
signature = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret else ""
print(signing_input + "." + signature)
"#;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &header.to_string(),
            &claims.to_string(),
            secret,
        ])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Asserts that none of `secrets` appears in the logs of `procs`.
pub fn assert_logs_free_of(procs: &[&Proc], secrets: &[&str]) {
    for proc in procs {
        let log = std::fs::read_to_string(&proc.log).unwrap();
        assert!(
            !log.is_empty(),
            "the log of {} is empty",
            proc.log.display()
        );
        for secret in secrets {
            assert!(
                !log.contains(secret),
                "{} holds a key or token",
                proc.log.display()
            );
        }
    }
}
