//! Remote control: the operator verbs sent over UDP to the cluster IP (`[remote_control]`,
//! port 2504 by default), answered by every host (`cluster`) or by one (`cluster:<priority>`).
//!
//! Only with a cluster key, and never Microsoft's password scheme: a command is one JSON
//! datagram `{"verb":..,"arg":..,"target":..,"ts":..,"nonce":..,"tag":..}` whose tag is
//! HMAC-SHA256 under the cluster key over the other fields (`verb|target|ts|nonce|arg`). A host refuses,
//! counts and logs (rate limited) a command with a missing or wrong tag, a timestamp more
//! than [`MAX_SKEW_MS`] away from its clock (stale), or a nonce it has seen (a replay). Its
//! answer is signed the same way over `host|ok|text|nonce`, so the client can tell a host's
//! answer from a forged one.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ctl::{Request, Response};

/// How far a command's timestamp may be from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 30_000;
/// Largest answer datagram: one Ethernet frame with IPv4 and UDP headers.
const MAX_ANSWER: usize = 1400;
/// Default UDP port (NLB's remote control used 2504).
pub const DEFAULT_PORT: u16 = 2504;

/// Who should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every host.
    Cluster,
    /// The host with this priority.
    Host(u8),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        if s == "cluster" {
            return Ok(Target::Cluster);
        }
        s.strip_prefix("cluster:")
            .and_then(|p| p.parse::<u8>().ok())
            .filter(|p| (1..=32).contains(p))
            .map(Target::Host)
            .ok_or_else(|| format!("{s:?}: expected \"cluster\" or \"cluster:<priority 1..32>\""))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cluster => f.write_str("cluster"),
            Target::Host(p) => write!(f, "cluster:{p}"),
        }
    }
}

/// A command on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub verb: String,
    /// The verb's argument (`enable 80`, `queryport 192.0.2.10:80`); empty for none.
    #[serde(default)]
    pub arg: String,
    pub target: String,
    pub ts: u64,
    pub nonce: String,
    #[serde(default)]
    pub tag: String,
}

/// An answer on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub host: u8,
    pub ok: bool,
    pub text: String,
    #[serde(default)]
    pub data: serde_json::Value,
    pub nonce: String,
    #[serde(default)]
    pub tag: String,
}

/// The verbs remote control carries (not `reload` and `stats`: local only).
pub fn request_of(verb: &str, arg: &str) -> Option<Request> {
    let rules = || arg.to_string();
    Some(match verb {
        "enable" if !arg.is_empty() => Request::Enable { rules: rules() },
        "disable" if !arg.is_empty() => Request::Disable { rules: rules() },
        "drain" if !arg.is_empty() => Request::Drain { rules: rules() },
        "queryport" if !arg.is_empty() => Request::Queryport { port: rules() },
        "display" => Request::Display,
        "params" => Request::Params,
        "query" => Request::Query,
        "stop" => Request::Stop,
        "start" => Request::Start,
        "drainstop" => Request::Drainstop,
        "suspend" => Request::Suspend,
        "resume" => Request::Resume,
        _ => return None,
    })
}

/// The verb and argument that carry `request` ([`request_of`] the other way round); `None`
/// for the local-only verbs.
pub fn verb_of(request: &Request) -> Option<(&'static str, &str)> {
    Some(match request {
        Request::Enable { rules } => ("enable", rules.as_str()),
        Request::Disable { rules } => ("disable", rules.as_str()),
        Request::Drain { rules } => ("drain", rules.as_str()),
        Request::Queryport { port } => ("queryport", port.as_str()),
        Request::Display => ("display", ""),
        Request::Params => ("params", ""),
        Request::Query => ("query", ""),
        Request::Stop => ("stop", ""),
        Request::Start => ("start", ""),
        Request::Drainstop => ("drainstop", ""),
        Request::Suspend => ("suspend", ""),
        Request::Resume => ("resume", ""),
        Request::Stats | Request::Reload => return None,
    })
}

fn tag(key: &[u8], parts: &[&str]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b"|");
        }
        mac.update(p.as_bytes());
    }
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Command {
    /// A signed command, with a fresh nonce and the current time.
    pub fn new(key: &[u8], verb: &str, target: Target) -> Command {
        Command::with_arg(key, verb, "", target)
    }

    /// A signed command with an argument (`enable 80`).
    pub fn with_arg(key: &[u8], verb: &str, arg: &str, target: Target) -> Command {
        let mut nonce = [0u8; 16];
        getrandom(&mut nonce);
        let mut c = Command {
            verb: verb.to_string(),
            arg: arg.to_string(),
            target: target.to_string(),
            ts: now_ms(),
            nonce: hex(&nonce),
            tag: String::new(),
        };
        c.tag = c.expected_tag(key);
        c
    }

    fn expected_tag(&self, key: &[u8]) -> String {
        tag(
            key,
            &[
                &self.verb,
                &self.target,
                &self.ts.to_string(),
                &self.nonce,
                &self.arg,
            ],
        )
    }
}

/// The tag of `c` under `key` (for tools that build a command by hand, e.g. the tests'
/// stale command).
pub fn sign(key: &[u8], c: &Command) -> String {
    c.expected_tag(key)
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // No /dev/urandom: the clock and the process id still make a nonce unique per command.
    let seed = now_ms() ^ (std::process::id() as u64) << 32;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
}

impl Answer {
    fn expected_tag(&self, key: &[u8]) -> String {
        tag(
            key,
            &[
                &self.host.to_string(),
                &self.ok.to_string(),
                &self.text,
                &self.nonce,
            ],
        )
    }

    pub fn verify(&self, key: &[u8]) -> bool {
        self.tag == self.expected_tag(key)
    }
}

/// Why a command was refused (the metric label and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    Unauthenticated,
    Stale,
    Replayed,
    UnknownVerb,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Unauthenticated => "unauthenticated",
            Refused::Stale => "stale",
            Refused::Replayed => "replayed",
            Refused::UnknownVerb => "unknown_verb",
        }
    }
}

/// A host's side: checks commands, remembers nonces, signs answers, counts.
pub struct Receiver {
    key: Vec<u8>,
    priority: u8,
    seen: HashMap<String, u64>,
    /// Commands by result: "accepted", "not_for_us" and the refusals' labels.
    pub counts: HashMap<&'static str, u64>,
}

impl Receiver {
    pub fn new(key: Vec<u8>, priority: u8) -> Receiver {
        Receiver {
            key,
            priority,
            seen: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// Checks a datagram at `now_ms` (wall clock). `Ok(None)`: valid but for another host.
    pub fn accept(
        &mut self,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<Option<(Request, Command)>, Refused> {
        let result = self.check(datagram, now_ms);
        let label = match &result {
            Ok(Some(_)) => "accepted",
            Ok(None) => "not_for_us",
            Err(r) => r.label(),
        };
        *self.counts.entry(label).or_default() += 1;
        result
    }

    fn check(&mut self, datagram: &[u8], now: u64) -> Result<Option<(Request, Command)>, Refused> {
        let c: Command = serde_json::from_slice(datagram).map_err(|_| Refused::Malformed)?;
        if c.tag.is_empty() || c.tag != c.expected_tag(&self.key) {
            return Err(Refused::Unauthenticated);
        }
        if c.ts.abs_diff(now) > MAX_SKEW_MS {
            return Err(Refused::Stale);
        }
        // Nonces are remembered as long as their command could pass the clock check.
        self.seen.retain(|_, ts| ts.abs_diff(now) <= MAX_SKEW_MS);
        if self.seen.insert(c.nonce.clone(), c.ts).is_some() {
            return Err(Refused::Replayed);
        }
        let target: Target = c.target.parse().map_err(|_| Refused::Malformed)?;
        let request = request_of(&c.verb, &c.arg).ok_or(Refused::UnknownVerb)?;
        match target {
            Target::Host(p) if p != self.priority => Ok(None),
            _ => Ok(Some((request, c))),
        }
    }

    /// The signed answer to `command`, in one datagram that fits an Ethernet frame: without
    /// the JSON data, and then with the text cut, when it would not.
    pub fn answer(&self, command: &Command, response: &Response) -> Vec<u8> {
        let mut a = Answer {
            host: self.priority,
            ok: response.ok,
            text: response.text.clone(),
            data: response.data.clone(),
            nonce: command.nonce.clone(),
            tag: String::new(),
        };
        let encode = |a: &mut Answer| {
            a.tag = a.expected_tag(&self.key);
            serde_json::to_vec(&*a).unwrap_or_default()
        };
        let mut bytes = encode(&mut a);
        if bytes.len() > MAX_ANSWER {
            a.data = serde_json::Value::Null;
            bytes = encode(&mut a);
        }
        while bytes.len() > MAX_ANSWER && !a.text.is_empty() {
            let cut = a.text.len().saturating_sub(bytes.len() - MAX_ANSWER + 20);
            let mut at = cut.min(a.text.len());
            while !a.text.is_char_boundary(at) {
                at -= 1;
            }
            a.text.truncate(at);
            a.text.push_str(" ...(cut)");
            bytes = encode(&mut a);
        }
        bytes
    }
}

/// The client (`wlbs query --remote cluster --cluster-ip ... --key-file ...`): sends one
/// command and gathers the signed answers that arrive within `wait`.
pub fn send(
    key: &[u8],
    cluster_ip: Ipv4Addr,
    port: u16,
    verb: &str,
    arg: &str,
    target: Target,
    wait: Duration,
) -> Result<Vec<Answer>> {
    send_command(
        &Command::with_arg(key, verb, arg, target),
        key,
        cluster_ip,
        port,
        wait,
    )
}

/// Sends `command` and gathers the answers.
fn send_command(
    command: &Command,
    key: &[u8],
    cluster_ip: Ipv4Addr,
    port: u16,
    wait: Duration,
) -> Result<Vec<Answer>> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("opening a UDP socket")?;
    let to = SocketAddr::from((cluster_ip, port));
    socket
        .send_to(&serde_json::to_vec(command)?, to)
        .with_context(|| format!("sending to {to}"))?;
    let deadline = std::time::Instant::now() + wait;
    let mut answers: Vec<Answer> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            break;
        };
        let Ok(a) = serde_json::from_slice::<Answer>(&buf[..n]) else {
            continue;
        };
        if a.nonce != command.nonce {
            continue;
        }
        if !a.verify(key) {
            bail!(
                "an answer claiming to be host {} is not signed with the cluster key",
                a.host
            );
        }
        if !answers.iter().any(|x| x.host == a.host) {
            answers.push(a);
        }
        if let Ok(Target::Host(_)) = command.target.parse::<Target>() {
            break;
        }
    }
    answers.sort_by_key(|a| a.host);
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_remote_verb_maps_to_its_request_and_back() {
        let requests = [
            Request::Query,
            Request::Stop,
            Request::Start,
            Request::Drainstop,
            Request::Suspend,
            Request::Resume,
            Request::Display,
            Request::Params,
            Request::Enable { rules: "80".into() },
            Request::Disable {
                rules: "all".into(),
            },
            Request::Drain {
                rules: "192.0.2.10:443".into(),
            },
            Request::Queryport { port: "80".into() },
        ];
        for r in &requests {
            let (verb, arg) = verb_of(r).unwrap_or_else(|| panic!("{r:?} has no verb"));
            assert_eq!(request_of(verb, arg).as_ref(), Some(r), "{verb} {arg}");
        }
        assert_eq!(verb_of(&Request::Stats), None);
        assert_eq!(verb_of(&Request::Reload), None);
        assert_eq!(request_of("reload", ""), None);
        assert_eq!(request_of("enable", ""), None, "enable needs its rules");
    }

    const KEY: &[u8] = b"remote control key of the lab!!!";

    #[test]
    fn a_signed_command_is_accepted_once_and_refused_as_a_replay() {
        let mut r = Receiver::new(KEY.to_vec(), 2);
        let c = Command::new(KEY, "query", Target::Cluster);
        let bytes = serde_json::to_vec(&c).unwrap();
        let (req, _) = r.accept(&bytes, c.ts).unwrap().unwrap();
        assert_eq!(req, Request::Query);
        assert_eq!(r.accept(&bytes, c.ts + 10), Err(Refused::Replayed));
        assert_eq!(r.counts["accepted"], 1);
        assert_eq!(r.counts["replayed"], 1);
    }

    #[test]
    fn forged_stale_unknown_and_foreign_commands_are_told_apart() {
        let mut r = Receiver::new(KEY.to_vec(), 2);
        let c = Command::new(b"another key, not the cluster's", "stop", Target::Cluster);
        assert_eq!(
            r.accept(&serde_json::to_vec(&c).unwrap(), c.ts),
            Err(Refused::Unauthenticated)
        );
        let mut unsigned = Command::new(KEY, "stop", Target::Cluster);
        unsigned.tag.clear();
        assert_eq!(
            r.accept(&serde_json::to_vec(&unsigned).unwrap(), unsigned.ts),
            Err(Refused::Unauthenticated)
        );
        let mut tampered = Command::new(KEY, "query", Target::Cluster);
        tampered.verb = "stop".into();
        assert_eq!(
            r.accept(&serde_json::to_vec(&tampered).unwrap(), tampered.ts),
            Err(Refused::Unauthenticated)
        );
        let old = Command::new(KEY, "stop", Target::Cluster);
        assert_eq!(
            r.accept(&serde_json::to_vec(&old).unwrap(), old.ts + MAX_SKEW_MS + 1),
            Err(Refused::Stale)
        );
        let other = Command::new(KEY, "stop", Target::Host(3));
        assert_eq!(
            r.accept(&serde_json::to_vec(&other).unwrap(), other.ts),
            Ok(None)
        );
        let mine = Command::new(KEY, "drainstop", Target::Host(2));
        assert_eq!(
            r.accept(&serde_json::to_vec(&mine).unwrap(), mine.ts)
                .unwrap()
                .unwrap()
                .0,
            Request::Drainstop
        );
        let drain = Command::with_arg(KEY, "drain", "192.0.2.10:80", Target::Cluster);
        assert_eq!(
            r.accept(&serde_json::to_vec(&drain).unwrap(), drain.ts)
                .unwrap()
                .unwrap()
                .0,
            Request::Drain {
                rules: "192.0.2.10:80".into()
            }
        );
        let mut retargeted = Command::with_arg(KEY, "drain", "80", Target::Cluster);
        retargeted.arg = "all".into();
        assert_eq!(
            r.accept(&serde_json::to_vec(&retargeted).unwrap(), retargeted.ts),
            Err(Refused::Unauthenticated),
            "the argument is signed too"
        );
        let odd = Command::new(KEY, "reload", Target::Cluster);
        assert_eq!(
            r.accept(&serde_json::to_vec(&odd).unwrap(), odd.ts),
            Err(Refused::UnknownVerb)
        );
        assert_eq!(r.accept(b"\x00garbage", 0), Err(Refused::Malformed));
    }

    #[test]
    fn answers_are_signed_and_checked() {
        let r = Receiver::new(KEY.to_vec(), 2);
        let c = Command::new(KEY, "query", Target::Cluster);
        let bytes = r.answer(
            &c,
            &Response::ok("host 2 converged (1007)", serde_json::json!({})),
        );
        let a: Answer = serde_json::from_slice(&bytes).unwrap();
        assert!(a.verify(KEY));
        assert!(!a.verify(b"another key, not the cluster's"));
        assert_eq!(a.host, 2);
        assert_eq!(a.nonce, c.nonce);
        assert_eq!("cluster:7".parse::<Target>(), Ok(Target::Host(7)));
        // A long answer still fits one frame, and still verifies.
        let long = Response::ok(
            "x".repeat(5000),
            serde_json::json!({"big": "y".repeat(3000)}),
        );
        let bytes = r.answer(&c, &long);
        assert!(bytes.len() <= MAX_ANSWER, "{}", bytes.len());
        let a: Answer = serde_json::from_slice(&bytes).unwrap();
        assert!(a.verify(KEY) && a.text.ends_with("...(cut)"));
        assert!("cluster:33".parse::<Target>().is_err());
    }
}
