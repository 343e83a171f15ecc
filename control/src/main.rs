//! `wlbs`: the appliance (`wlbs run`) and, in later issues, the operator verbs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wlbs_control::appliance;
use wlbs_control::config::Config;

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
}

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
    let result = match cli.command {
        Command::Run { config, eal } => run(&config, &eal),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wlbs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &std::path::Path, eal: &[String]) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        // A second Ctrl-C while stopping means "now".
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C/SIGTERM handler")?;
    let summary = appliance::run(&config, eal, stop)?;
    eprintln!("{summary}");
    Ok(())
}
