//! A minimal SSE client over a raw TCP stream: one `GET`, the response head, then the
//! (chunked) body split into events. Far lighter than an HTTP client per connection, so one
//! process can hold thousands of streams.
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One SSE event.
#[derive(Debug, Default)]
pub struct Event {
    pub event_type: String,
    pub id: String,
    pub data: String,
}

impl Event {
    /// The `at` of the event's data (RFC 3339, ms), in microseconds since the epoch.
    pub fn at_micros(&self) -> Option<i64> {
        let start = self.data.find("\"at\":")? + 5;
        let rest = self.data[start..].trim_start().strip_prefix('"')?;
        let end = rest.find('"')?;
        chrono::DateTime::parse_from_rfc3339(&rest[..end])
            .ok()
            .map(|t| t.timestamp_micros())
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.event_type.as_str(),
            "succeeded" | "failed" | "cancelled"
        )
    }
}

/// An open stream whose response head said `200`.
pub struct SseConn {
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Body bytes received and not yet split into lines, from `pos`.
    body: Vec<u8>,
    pos: usize,
}

async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0)).context("bind")?;
    }
    let stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A plain `GET` (not SSE) on a connection of its own, `Connection: close`; the connection,
/// to read the answer from with [`read_answer`].
pub async fn send_get(addr: SocketAddr, bind: Option<IpAddr>, path: &str) -> Result<TcpStream> {
    let mut stream = connect(addr, bind).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// The status and body of the answer to [`send_get`] (read to the end of the connection;
/// a chunked body is joined).
pub async fn read_answer(stream: &mut TcpStream) -> Result<(u16, Vec<u8>)> {
    let mut bytes = Vec::with_capacity(2048);
    stream.read_to_end(&mut bytes).await?;
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let mut body = bytes[split + 4..].to_vec();
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        let mut joined = Vec::new();
        let mut rest = &body[..];
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let hex = String::from_utf8_lossy(&rest[..end]);
            let size = usize::from_str_radix(hex.trim().split(';').next().unwrap_or(""), 16)?;
            if size == 0 {
                break;
            }
            let start = end + 2;
            joined.extend_from_slice(rest.get(start..start + size).context("short chunk")?);
            rest = rest.get(start + size + 2..).unwrap_or(&[]);
        }
        body = joined;
    }
    Ok((status, body))
}

/// Connects (from `bind` when given), sends the request and reads the response head.
pub async fn open(addr: SocketAddr, bind: Option<IpAddr>, path: &str) -> Result<SseConn> {
    let stream = connect(addr, bind).await?;
    let mut reader = BufReader::with_capacity(4096, stream);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        bail!("connection closed before a response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("connection closed in the response head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    if status != 200 {
        bail!("HTTP {status}");
    }
    Ok(SseConn {
        reader,
        chunked,
        body: Vec::new(),
        pos: 0,
    })
}

impl SseConn {
    /// The next event; `None` once the server ended the response.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        let mut event = Event::default();
        let mut has_data = false;
        loop {
            let Some(line) = self.next_line().await? else {
                return Ok(None);
            };
            if line.is_empty() {
                if has_data {
                    return Ok(Some(event));
                }
                event = Event::default();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => event.event_type = value.to_owned(),
                "id" => event.id = value.to_owned(),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }

    /// Drops the buffers and keeps the socket (for idle streams held by the thousand).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    async fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(offset) = self.body[self.pos..].iter().position(|&b| b == b'\n') {
                let end = self.pos + offset;
                let mut line = &self.body[self.pos..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let text = String::from_utf8_lossy(line).into_owned();
                self.pos = end + 1;
                if self.pos == self.body.len() {
                    self.body.clear();
                    self.pos = 0;
                }
                return Ok(Some(text));
            }
            if self.pos > 0 {
                self.body.drain(..self.pos);
                self.pos = 0;
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Appends the next piece of the body; false at its end.
    async fn fill(&mut self) -> Result<bool> {
        if !self.chunked {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(false);
            }
            let n = buf.len();
            self.body.extend_from_slice(buf);
            self.reader.consume(n);
            return Ok(true);
        }
        let mut size_line = String::new();
        loop {
            size_line.clear();
            if self.reader.read_line(&mut size_line).await? == 0 {
                return Ok(false);
            }
            if !size_line.trim().is_empty() {
                break;
            }
        }
        let hex = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(hex, 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(false);
        }
        let start = self.body.len();
        self.body.resize(start + size, 0);
        self.reader.read_exact(&mut self.body[start..]).await?;
        let mut crlf = [0u8; 2];
        self.reader.read_exact(&mut crlf).await?;
        Ok(true)
    }
}
