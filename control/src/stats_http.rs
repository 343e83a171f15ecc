//! `/metrics` over HTTP: a small HTTP/1.0 responder the control thread polls between
//! heartbeats (non-blocking accept; a client gets [`READ_TIMEOUT`] to send its request line),
//! so the text is rendered where the state lives, with no lock on the packet path.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// How long a connected client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Connections served per poll.
const MAX_PER_POLL: usize = 4;
/// Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct StatsServer {
    listener: TcpListener,
}

impl StatsServer {
    pub fn bind(addr: &str) -> Result<StatsServer> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("[stats] listen = {addr:?}: cannot listen there"))?;
        listener
            .set_nonblocking(true)
            .context("making the stats listener non-blocking")?;
        Ok(StatsServer { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves the clients waiting now; `render` is called once per `/metrics` request.
    pub fn poll(&mut self, mut render: impl FnMut() -> String) -> usize {
        let mut served = 0;
        for _ in 0..MAX_PER_POLL {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if serve(stream, &mut render).is_ok() {
                served += 1;
            }
        }
        served
    }
}

fn serve(stream: TcpStream, render: &mut impl FnMut() -> String) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are read (bounded) and ignored.
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, render()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "wlbs: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    (&stream).write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> std::thread::JoinHandle<String> {
        let path = path.to_string();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }

    fn serve_one(server: &mut StatsServer) {
        for _ in 0..400 {
            if server.poll(|| "wlbs_up 1\n".into()) > 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no request served");
    }

    #[test]
    fn metrics_are_served_with_prometheus_content_type_and_others_get_404() {
        let mut server = StatsServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let client = get(addr, "/metrics");
        serve_one(&mut server);
        let answer = client.join().unwrap();
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: text/plain; version=0.0.4"),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\nwlbs_up 1\n"), "{answer}");
        let client = get(addr, "/secret");
        serve_one(&mut server);
        assert!(client.join().unwrap().starts_with("HTTP/1.0 404"));
    }

    #[test]
    fn a_silent_client_costs_at_most_the_read_timeout() {
        let mut server = StatsServer::bind("127.0.0.1:0").unwrap();
        let _silent = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let t = std::time::Instant::now();
        server.poll(|| unreachable!("nothing was asked"));
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
