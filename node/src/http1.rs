//! A tiny keep-alive HTTP/1.1 client: one request at a time on one
//! connection, `Content-Length` bodies only (what axum sends). Enough for a
//! load generator, where a full client's per-request overhead would be
//! measured instead of the server's. The app uses reqwest; the load
//! generators keep this one because it measurably beats it: the
//! `http_clients` example (32 connections, one axum server in the same
//! process, 2 cores) ran 34,000-39,000 req/s with this client against
//! 17,600-18,100 with reqwest 0.13, p50 0.8 ms against 1.6 ms (2026-12-02).

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Percent-encodes a query value: everything but RFC 3986's unreserved
/// characters (a space is `%20`), for the load client and the app alike.
pub fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub struct Http1 {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Http1 {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Sends one request (JSON body if any, header `key` if given) and
    /// returns the status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        json: Option<&str>,
    ) -> io::Result<(u16, String)> {
        let body = json.map(|j| ("application/json", j));
        self.exchange(method, path, key, body).await
    }

    /// Posts an HTML form's fields (`a=1&b=2`, already encoded).
    pub async fn post_form(&mut self, path: &str, form: &str) -> io::Result<(u16, String)> {
        let body = Some(("application/x-www-form-urlencoded", form));
        self.exchange("POST", path, None, body).await
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> io::Result<(u16, String)> {
        self.buf.clear();
        let (kind, body) = body.map_or((None, ""), |(k, b)| (Some(k), b));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(kind) = kind {
            head.push_str("Content-Type: ");
            head.push_str(kind);
            head.push_str("\r\n");
        }
        if let Some(k) = key {
            head.push_str("key: ");
            head.push_str(k);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.buf.extend_from_slice(head.as_bytes());
        self.buf.extend_from_slice(body.as_bytes());
        self.writer.write_all(&self.buf).await?;

        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line `{line}`"),
                )
            })?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
