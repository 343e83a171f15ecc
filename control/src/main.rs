//! `wlbs`: the appliance (`wlbs run`) and, in later issues, the operator verbs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wlbs_control::appliance;
use wlbs_control::config::Config;
use wlbs_control::ctl::{self, Request};

#[derive(Parser)]
#[command(
    name = "wlbs",
    version,
    about = "A WLBS/NLB-style distributed-filtering load balancer on DPDK"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance between the cluster port and the host port.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// DPDK EAL arguments (after --), e.g. --vdev net_pcap0,... -l 0-1 --file-prefix X.
        #[arg(last = true, value_name = "EAL ARGS")]
        eal: Vec<String>,
    },
    /// Run the filter over a capture, without DPDK: which frames would this host take?
    Filter {
        /// The TOML configuration file (its [cluster], [host] and [[port_rule]] tables).
        #[arg(long, short)]
        config: PathBuf,
        /// Live members (host priorities), e.g. 1,2,3. Default: [cluster] members.
        #[arg(long, value_delimiter = ',')]
        members: Option<Vec<u8>>,
        /// Judge as this host priority. Default: [host] priority.
        #[arg(long)]
        host: Option<u8>,
        /// Input capture (pcap, Ethernet).
        #[arg(long = "in", value_name = "IN.pcap")]
        input: PathBuf,
        /// Output capture: the frames this host forwards (accepted and passed).
        #[arg(long = "out", value_name = "OUT.pcap")]
        output: PathBuf,
        /// Print per frame the rule, bucket, owner and verdict.
        #[arg(long)]
        explain: bool,
    },
    /// Print the cluster MACs of a cluster IP (unicast, multicast, IGMP), its IGMP group, and
    /// the static ARP and MAC-table lines routers and switches need in the multicast modes.
    Ip2mac {
        /// The cluster IP, e.g. 192.0.2.10.
        ip: std::net::Ipv4Addr,
        /// Extra IPv4 VIPs that share the cluster MAC (static ARP lines for each).
        #[arg(long, value_delimiter = ',')]
        vips: Vec<std::net::Ipv4Addr>,
    },
    /// Show this host's state, the members, and every host heard with its buckets.
    Query(Target),
    /// Leave the cluster now (connections in progress break; see drainstop).
    Stop(Target),
    /// Join the cluster again after stop or drainstop.
    Start(Target),
    /// Take no new connections, let the existing ones finish, then stop.
    Drainstop(Target),
    /// Print the Prometheus metrics (the same text as the HTTP endpoint's /metrics).
    Stats(Target),
    /// Re-read the appliance's configuration file and apply it (as SIGHUP does).
    Reload(Target),
    /// Take traffic again for the rules of PORT (`80`, `all`, `192.0.2.10:80`, `192.0.2.10:all`).
    Enable(RuleTarget),
    /// Take nothing for the rules of PORT on this host (connections in progress break).
    Disable(RuleTarget),
    /// No new connections for the rules of PORT on this host; existing ones finish.
    Drain(RuleTarget),
    /// Which rule covers [VIP:]PORT, and what this host does with it.
    Queryport(PortTarget),
    /// query, the configuration in force and the recent diagnostics.
    Display(Target),
    /// The configuration in force.
    Params(Target),
    /// Stop, and ignore start, stop and drainstop (local or remote) until resume.
    Suspend(Target),
    /// Accept start, stop and drainstop again after suspend (the host stays stopped).
    Resume(Target),
}

/// Which running appliance a verb talks to.
#[derive(clap::Args)]
struct Target {
    /// The appliance's control socket ([control] socket).
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the control socket's path from this configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the answer as JSON, for scripts.
    #[arg(long)]
    json: bool,
    /// Ask over the network instead: `cluster` (every host answers) or `cluster:<priority>`,
    /// by UDP to the cluster IP, signed with the cluster key ([remote_control]).
    #[arg(long, value_name = "cluster|cluster:N")]
    remote: Option<wlbs_control::remote::Target>,
    /// The cluster IP to send to (default: [cluster] ip of --config).
    #[arg(long, requires = "remote")]
    cluster_ip: Option<std::net::Ipv4Addr>,
    /// The cluster key file (default: [cluster] key_file of --config).
    #[arg(long, requires = "remote")]
    key_file: Option<PathBuf>,
    /// The remote control UDP port (default: [remote_control] port of --config, else 2504).
    #[arg(long, requires = "remote")]
    port: Option<u16>,
    /// How long to wait for answers, in milliseconds.
    #[arg(long, default_value_t = 1000, requires = "remote")]
    wait_ms: u64,
}

/// A verb about port rules.
#[derive(clap::Args)]
struct RuleTarget {
    /// `80`, `all`, `192.0.2.10:80` or `192.0.2.10:all`.
    #[arg(value_name = "PORT")]
    rules: String,
    #[command(flatten)]
    target: Target,
}

/// `queryport [vip:]port`.
#[derive(clap::Args)]
struct PortTarget {
    /// `80` or `192.0.2.10:80`.
    #[arg(value_name = "[VIP:]PORT")]
    selector: String,
    #[command(flatten)]
    target: Target,
}

/// Exit status of a verb the appliance refused (e.g. stop while stopped).
const EXIT_REFUSED: u8 = 1;
/// Exit status when no appliance answers.
const EXIT_UNREACHABLE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let (target, request) = match cli.command {
        Command::Query(t) => (t, Request::Query),
        Command::Stop(t) => (t, Request::Stop),
        Command::Start(t) => (t, Request::Start),
        Command::Drainstop(t) => (t, Request::Drainstop),
        Command::Stats(t) => (t, Request::Stats),
        Command::Reload(t) => (t, Request::Reload),
        Command::Enable(r) => (r.target, Request::Enable { rules: r.rules }),
        Command::Disable(r) => (r.target, Request::Disable { rules: r.rules }),
        Command::Drain(r) => (r.target, Request::Drain { rules: r.rules }),
        Command::Queryport(p) => (p.target, Request::Queryport { port: p.selector }),
        Command::Display(t) => (t, Request::Display),
        Command::Params(t) => (t, Request::Params),
        Command::Suspend(t) => (t, Request::Suspend),
        Command::Resume(t) => (t, Request::Resume),
        other => return run_local(other),
    };
    verb(&target, &request)
}

/// Sends a verb to a running appliance and prints its answer.
fn verb(target: &Target, request: &Request) -> ExitCode {
    if let Some(remote) = target.remote {
        return remote_verb(target, remote, request);
    }
    let socket = match (&target.socket, &target.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => match Config::load(c) {
            Ok(config) => config.control.socket,
            Err(e) => {
                eprintln!("wlbs: error: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        },
        (None, None) => PathBuf::from(ctl::DEFAULT_SOCKET),
    };
    match ctl::call(&socket, request, std::time::Duration::from_secs(5)) {
        Ok(answer) => {
            if target.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else if answer.ok {
                println!("{}", answer.text);
            } else {
                eprintln!("wlbs: {}", answer.text);
            }
            done_or_refused(answer.ok)
        }
        Err(e) => unreachable_with(&e),
    }
}

/// Exit status of a verb that got its answer(s): 0 done, 1 refused.
fn done_or_refused(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    }
}

/// Exit status (2) of a verb that reached no appliance, after saying why.
fn unreachable_with(e: &anyhow::Error) -> ExitCode {
    eprintln!("wlbs: error: {e:#}");
    ExitCode::from(EXIT_UNREACHABLE)
}

/// A verb over remote control: every answer printed, one per host.
fn remote_verb(target: &Target, to: wlbs_control::remote::Target, request: &Request) -> ExitCode {
    let Some((verb, arg)) = wlbs_control::remote::verb_of(request) else {
        eprintln!("wlbs: error: {request:?} is local only (use the control socket)");
        return ExitCode::from(EXIT_UNREACHABLE);
    };
    let config = match target
        .config
        .as_ref()
        .map(|c| Config::load(c).map(|cfg| (c, cfg)))
    {
        Some(Err(e)) => {
            eprintln!("wlbs: error: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    let cluster = config.as_ref().and_then(|(_, c)| c.cluster.as_ref());
    let Some(cluster_ip) = target.cluster_ip.or(cluster.map(|c| c.ip)) else {
        eprintln!("wlbs: error: --remote needs --cluster-ip (or --config with [cluster] ip)");
        return ExitCode::from(EXIT_UNREACHABLE);
    };
    let key = match (&target.key_file, config.as_ref()) {
        (Some(file), _) => {
            std::fs::read(file).map_err(|e| format!("--key-file {}: {e}", file.display()))
        }
        (None, Some((path, c))) => match c.cluster_key(path) {
            Ok(Some(k)) => Ok(k.bytes().to_vec()),
            Ok(None) => Err("--config has no [cluster] key_file".to_string()),
            Err(e) => Err(e.to_string()),
        },
        (None, None) => {
            Err("--remote needs --key-file (or --config with [cluster] key_file)".into())
        }
    };
    let key = match key {
        Ok(k) if k.len() >= 16 => k,
        Ok(_) => {
            eprintln!("wlbs: error: the cluster key must be at least 16 bytes");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        Err(e) => {
            eprintln!("wlbs: error: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let port = target
        .port
        .or(config.as_ref().map(|(_, c)| c.remote_control.port))
        .unwrap_or(wlbs_control::remote::DEFAULT_PORT);
    let wait = std::time::Duration::from_millis(target.wait_ms);
    match wlbs_control::remote::send(&key, cluster_ip, port, verb, arg, to, wait) {
        Ok(answers) if answers.is_empty() => {
            eprintln!(
                "wlbs: no host answered {verb} at {cluster_ip}:{port} within {} ms",
                target.wait_ms
            );
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Ok(answers) => {
            if target.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answers).unwrap_or_default()
                );
            } else {
                for a in &answers {
                    let line = format!("host {}: {}", a.host, a.text);
                    if a.ok {
                        println!("{line}");
                    } else {
                        eprintln!("wlbs: {line}");
                    }
                }
            }
            done_or_refused(answers.iter().all(|a| a.ok))
        }
        Err(e) => unreachable_with(&e),
    }
}

/// The commands that do their work in this process.
fn run_local(command: Command) -> ExitCode {
    let result = match command {
        Command::Run { config, eal } => run(&config, &eal),
        Command::Filter {
            config,
            members,
            host,
            input,
            output,
            explain,
        } => filter(&config, members, host, &input, &output, explain),
        Command::Ip2mac { ip, vips } => {
            print!("{}", wlbs_control::macs::ip2mac_report(ip, &vips));
            Ok(())
        }
        Command::Query(_)
        | Command::Stop(_)
        | Command::Start(_)
        | Command::Drainstop(_)
        | Command::Stats(_)
        | Command::Reload(_)
        | Command::Suspend(_)
        | Command::Resume(_)
        | Command::Enable(_)
        | Command::Disable(_)
        | Command::Drain(_)
        | Command::Queryport(_)
        | Command::Display(_)
        | Command::Params(_) => {
            unreachable!("verbs go to the appliance")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wlbs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn filter(
    config_path: &std::path::Path,
    members: Option<Vec<u8>>,
    host: Option<u8>,
    input: &std::path::Path,
    output: &std::path::Path,
    explain: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let replay = wlbs_control::replay::Replay {
        config: &config,
        members,
        host,
        explain,
    };
    let summary = replay.run(input, output)?;
    for line in &summary.lines {
        println!("{line}");
    }
    println!(
        "{} frames: {} accepted, {} passed (not VIP traffic), {} dropped; wrote {} to {}",
        summary.frames,
        summary.accepted,
        summary.passed,
        summary.dropped,
        summary.accepted + summary.passed,
        output.display()
    );
    Ok(())
}

fn run(config_path: &std::path::Path, eal: &[String]) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let config = Config::load(config_path)?;
    let key = config.cluster_key(config_path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // A second Ctrl-C (or SIGTERM) while stopping means "now" (exit 130).
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .context("installing the SIGINT/SIGTERM handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    // SIGHUP: re-read the configuration (as `wlbs reload`).
    signal_hook::flag::register(SIGHUP, Arc::clone(&reload))
        .context("installing the SIGHUP handler")?;
    let summary = appliance::run(&config, config_path, key, eal, stop, reload)?;
    eprintln!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
