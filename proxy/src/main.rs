use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rampart::explain::Answer;
use rampart::server::{self, RunOptions};
use rampart::snapshot::{Carried, RuleSnapshot};

/// jemalloc, with background threads that return freed pages to the system after a few
/// seconds: with glibc's allocator, memory freed after a load peak stayed in its per-thread
/// arenas for good (benches/load/rss_cycles.py).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "An edge proxy for an AI platform, on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run(RunArgs),
    /// Validate a rules directory; exits non-zero with the error a reload would report.
    Check {
        #[arg(default_value = "rules")]
        rules: PathBuf,
        /// Give every secret a placeholder value instead of reading its sources (for CI
        /// pipelines without the secrets); everything else is checked as a reload would.
        #[arg(long)]
        placeholder_secrets: bool,
    },
    /// Work with rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Show which rules a raw HTTP request (in a file) matches, and why, then the answer the
    /// client would get. Exits 0 when every request passes, 3 when one is refused, 1 on an
    /// error (an unreadable file, broken rules).
    Test {
        /// Files holding one raw HTTP request each (request line, headers, blank line, body).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "rules", env = "RAMPART_RULES")]
        rules: PathBuf,
        /// The listener whose chain runs.
        #[arg(long, default_value = "web")]
        listener: String,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Rules directory (gateway.toml and rule files); watched for changes.
    #[arg(long, default_value = "rules", env = "RAMPART_RULES")]
    rules: PathBuf,
    /// Override a listener's address: NAME=ADDR (repeatable), e.g. web=127.0.0.1:8000.
    #[arg(long = "listen", value_parser = parse_override)]
    listen: Vec<(String, String)>,
    /// Override the admin listener's address.
    #[arg(long)]
    admin: Option<String>,
    /// Worker threads per listener (default: `[server] threads`, else one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not watch the rules directory (SIGHUP and POST /reload still reload).
    #[arg(long)]
    no_watch: bool,
    /// Take the listening sockets over from the running rampart, then send it SIGQUIT
    /// (docs/operations.md, "Upgrading the binary").
    #[arg(long)]
    upgrade: bool,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // Pingora's debug and trace logs print whole request headers (bearer tokens,
        // cookies, shared secrets): never below info, whatever RUST_LOG says.
        .filter_module("pingora", log::LevelFilter::Info)
        // Its health-check warnings carry the whole error context (some 1,500 characters);
        // rampart logs each change of a replica's health in one short line instead.
        .filter_module("pingora_load_balancing", log::LevelFilter::Error)
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            rules,
            placeholder_secrets,
        }) => {
            let carried = if placeholder_secrets {
                Carried::with_placeholder_secrets()
            } else {
                Carried::default()
            };
            match RuleSnapshot::load(&rules, 0, None, &carried) {
                Ok(snapshot) => {
                    println!(
                        "{}: ok ({} listeners, {} upstreams)",
                        rules.display(),
                        snapshot.listeners.len(),
                        snapshot.upstreams.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Rules {
            command:
                RulesCommand::Test {
                    files,
                    rules,
                    listener,
                },
        }) => {
            let (mut failed, mut refused) = (false, false);
            for file in files {
                match rampart::explain::explain(&rules, &listener, &file) {
                    Ok(explained) => {
                        print!("{}", explained.report);
                        refused |= explained.answer == Answer::Refused;
                        failed |= explained.answer == Answer::Undecided;
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            match (failed, refused) {
                (true, _) => ExitCode::FAILURE,
                (false, true) => ExitCode::from(3),
                (false, false) => ExitCode::SUCCESS,
            }
        }
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let opts = RunOptions {
        rules_dir: args.rules,
        listen_overrides: args.listen.into_iter().collect::<HashMap<_, _>>(),
        admin_override: args.admin,
        threads: args.threads,
        watch: !args.no_watch,
        upgrade: args.upgrade,
    };
    match server::build(opts) {
        Ok((server, run_args)) => {
            server.run(run_args);
            rampart::access_log::flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rampart: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
