//! A minimal HTTP/1.1 GET over a raw socket, for the monitoring endpoints (`/metrics`,
//! `/health/…`, the status page), and the external checkers they are held against
//! (`promtool`, headless Chromium), found on `PATH` or skipped with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: its status code, headers (lowercase names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr`; panics on a transport error or after 10 s.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// `GET path` on `addr`, or what went wrong.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Polls `GET path` until its status is `status` (the listener may not be up yet);
/// panics with the last answer after 10 s.
pub async fn wait_status(addr: SocketAddr, path: &str, status: u16) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = try_get(addr, path).await;
        match response {
            Ok(response) if response.status == status => return response,
            _ if Instant::now() > deadline => {
                panic!("GET {path} still answers {response:?}, not {status}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A program on `PATH`, or `None` after printing why the test is skipped.
pub fn tool(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: {name} not found on PATH (install Debian's {package} package: \
             apt-get install -y {package})"
        );
    }
    found
}

/// The value of the sample `name{labels}` (labels written exactly as exported, e.g.
/// `database="appdb",user="app"`) in a Prometheus text page.
pub fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = match labels {
        "" => name.to_owned(),
        labels => format!("{name}{{{labels}}}"),
    };
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(key.as_str())?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
