//! The local control socket: `wlbs query`, `wlbs drainstop` and the other verbs talk to a
//! running appliance through a Unix socket only root can open (mode 0600 in a 0700
//! directory). One JSON request line in, one JSON response line out, then the connection
//! closes. The control thread polls the socket between heartbeats and never blocks on it
//! for more than [`READ_TIMEOUT`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where an appliance listens unless `[control] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/wlbs/wlbs.sock";
/// How long the control thread waits for a connected client's request line.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Connections the control thread serves per poll; more wait for the next one.
const MAX_PER_POLL: usize = 8;
/// Longest request line read.
const MAX_REQUEST: u64 = 4096;

/// What an operator asks the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum Request {
    /// State, members, buckets, peers.
    Query,
    /// Leave the cluster now (connections in progress break).
    Stop,
    /// Join again after a stop or a completed drainstop.
    Start,
    /// Take no new connections, let the existing ones finish, then stop.
    Drainstop,
    /// The Prometheus text `/metrics` serves.
    Stats,
    /// Re-read the configuration file and apply what can change while running.
    Reload,
    /// Stop, and ignore start, stop and drainstop (local or remote) until resume.
    Suspend,
    /// Accept start, stop and drainstop again (the host stays stopped until start).
    Resume,
    /// Take traffic for the selected rules again (`port`, `all`, `vip:port`, `vip:all`).
    Enable { rules: String },
    /// Take nothing for the selected rules: connections in progress break.
    Disable { rules: String },
    /// No new connections for the selected rules; existing ones finish.
    Drain { rules: String },
    /// The rule that covers `[vip:]port` and what this host does with it.
    Queryport { port: String },
    /// `query`, the configuration in force and the recent diagnostics.
    Display,
    /// The configuration in force.
    Params,
}

/// The appliance's answer: `ok` false when the verb failed or does not apply, with `text`
/// saying why. `text` is what a person reads; `data` what a script reads (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub text: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(text: impl Into<String>, data: serde_json::Value) -> Response {
        Response {
            ok: true,
            text: text.into(),
            data,
        }
    }

    pub fn refused(text: impl Into<String>) -> Response {
        Response {
            ok: false,
            text: text.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// The appliance's end of the control socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Listens on `path`, creating its directory (mode 0700) if needed. A socket file left by
    /// an appliance that is gone is replaced; one a running appliance answers on is an error.
    pub fn bind(path: &Path) -> Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("restricting {}", dir.display()))?;
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "[control] socket = {:?}: another wlbs appliance is running there (give each appliance its own socket)",
                    path.display().to_string()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the control socket non-blocking")?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request waiting (at most a few per call of a loop that drains it: a client
    /// that connected but sent nothing within [`READ_TIMEOUT`] is dropped). Garbage is
    /// answered here and not handed on.
    pub fn next_request(&mut self) -> Option<Pending> {
        for _ in 0..MAX_PER_POLL {
            let (stream, _) = self.listener.accept().ok()?;
            let Ok(request) = read_request(&stream) else {
                continue;
            };
            match request {
                Ok(request) => return Some(Pending { request, stream }),
                Err(e) => {
                    let _ = write_response(
                        &stream,
                        &Response::refused(format!("not a request this appliance knows: {e}")),
                    );
                }
            }
        }
        None
    }
}

/// A request read from a client, to be answered.
pub struct Pending {
    pub request: Request,
    stream: UnixStream,
}

impl Pending {
    pub fn answer(self, response: &Response) -> Result<()> {
        write_response(&self.stream, response)
    }
}

fn read_request(stream: &UnixStream) -> Result<Result<Request, serde_json::Error>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    Ok(serde_json::from_str::<Request>(line.trim()))
}

fn write_response(stream: &UnixStream, response: &Response) -> Result<()> {
    let mut out = serde_json::to_string(response)?;
    out.push('\n');
    let mut w = stream;
    w.write_all(out.as_bytes())?;
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `request` to the appliance listening on `path` and waits for its answer.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "no wlbs appliance answers on {} (is it running? is this its [control] socket?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the appliance's answer")?;
    if answer.is_empty() {
        bail!("the appliance closed the control socket without answering");
    }
    serde_json::from_str(answer.trim()).context("the appliance's answer is not valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers the requests waiting now with `handle`, as the control loop does.
    fn serve_waiting(server: &mut Server, mut handle: impl FnMut(Request) -> Response) -> usize {
        let mut served = 0;
        while let Some(pending) = server.next_request() {
            let response = handle(pending.request.clone());
            if pending.answer(&response).is_ok() {
                served += 1;
            }
        }
        served
    }

    #[test]
    fn a_request_is_answered_over_the_socket_and_the_file_is_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("wlbs.sock");
        let mut server = Server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let client = {
            let path = path.clone();
            std::thread::spawn(move || call(&path, &Request::Drainstop, Duration::from_secs(5)))
        };
        let mut seen = Vec::new();
        for _ in 0..500 {
            if serve_waiting(&mut server, |r| {
                seen.push(r);
                Response::ok("draining", serde_json::json!({"state": "draining"}))
            }) > 0
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let answer = client.join().unwrap().unwrap();
        assert_eq!(seen, vec![Request::Drainstop]);
        assert!(answer.ok);
        assert_eq!(answer.data["state"], "draining");
    }

    #[test]
    fn a_second_appliance_on_the_same_socket_is_refused_and_a_stale_file_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wlbs.sock");
        let first = Server::bind(&path).unwrap();
        let err = Server::bind(&path).err().unwrap().to_string();
        assert!(err.contains("another wlbs appliance"), "{err}");
        drop(first);
        // A crashed appliance leaves the file behind without a listener.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let again = Server::bind(&path).unwrap();
        drop(again);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn garbage_gets_an_answer_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wlbs.sock");
        let mut server = Server::bind(&path).unwrap();
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&path).unwrap();
                (&s).write_all(b"{\"verb\":\"format-disk\"}\n").unwrap();
                let mut a = String::new();
                BufReader::new(&s).read_line(&mut a).unwrap();
                a
            })
        };
        for _ in 0..500 {
            if serve_waiting(&mut server, |_| unreachable!("garbage is not handed on")) > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let answer: Response = serde_json::from_str(client.join().unwrap().trim()).unwrap();
        assert!(!answer.ok);
        assert!(answer.text.contains("not a request"), "{}", answer.text);
        // A client that connects and says nothing costs the control thread READ_TIMEOUT.
        let _silent = UnixStream::connect(&path).unwrap();
        let t = std::time::Instant::now();
        serve_waiting(&mut server, |_| unreachable!());
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
