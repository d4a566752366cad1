//! Command-line parsing and output. Errors go to stderr with a non-zero exit code; `--json`
//! prints one JSON object per line.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sealpost_sdk::{Client, Event, Live, LoggedEvent, Suite, Username};

use crate::client_config::ClientConfig;
use crate::help;
use crate::render::{line, safe};
use crate::session::Session;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Sealpost: end-to-end encrypted messaging through a server that only sees ciphertext.
#[derive(Debug, Parser)]
#[command(
    name = "sealpost",
    version,
    about = "Sealpost: an end-to-end encrypted messenger",
    long_about = help::ABOUT,
    after_help = help::AFTER_HELP
)]
pub struct Cli {
    /// Client profile directory [default: `home` in the settings file, or
    /// $XDG_DATA_HOME/sealpost/client].
    #[arg(long, global = true, env = "SEALPOST_HOME")]
    home: Option<PathBuf>,
    /// Print one JSON object per line (the shapes of docs/jsonrpc.md); errors go to stderr as
    /// JSON too.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether output (and errors) are JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// The command line as clap sees it, with the client's options (`--home`, `--json`) left
    /// out of what `server` offers in its help, completions and manual page.
    pub fn command() -> clap::Command {
        // A subcommand that has an argument of a global one's name does not get the global
        // one: `server` gets hidden ones of its own instead, refused in `parse_args`.
        <Cli as clap::CommandFactory>::command().mut_subcommand("server", |server| {
            server
                .arg(
                    clap::Arg::new("home")
                        .long("home")
                        .hide(true)
                        .num_args(0..=1),
                )
                .arg(
                    clap::Arg::new("json")
                        .long("json")
                        .hide(true)
                        .action(clap::ArgAction::SetTrue),
                )
        })
    }

    /// [`command`](Self::command) as completions and manual pages show it: the client's
    /// options on every command but `server` (a completion script offers even hidden options,
    /// so `server` must not have them at all here).
    pub fn for_display() -> clap::Command {
        fn with(command: clap::Command, args: &[clap::Arg]) -> clap::Command {
            let names: Vec<String> = command
                .get_subcommands()
                .map(|c| c.get_name().to_owned())
                .collect();
            let command = args.iter().fold(command, |c, a| c.arg(a.clone()));
            names.into_iter().fold(command, |c, name| {
                c.mut_subcommand(name, |sub| with(sub, args))
            })
        }
        let base = <Cli as clap::CommandFactory>::command()
            .mut_arg("home", |a| a.global(false))
            .mut_arg("json", |a| a.global(false));
        let client: Vec<clap::Arg> = base
            .get_arguments()
            .filter(|a| ["home", "json"].contains(&a.get_id().as_str()))
            .cloned()
            .collect();
        let names: Vec<String> = base
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .filter(|name| name != "server")
            .collect();
        names.into_iter().fold(base, |c, name| {
            c.mut_subcommand(name, |sub| with(sub, &client))
        })
    }

    /// Reads the command line (on a mistake, says so and exits, as clap does).
    pub fn parse_args() -> Cli {
        use clap::parser::ValueSource;
        let mut command = Cli::command();
        let matches = command.get_matches_mut();
        if let Some(("server", server)) = matches.subcommand() {
            let typed = |id: &str| {
                matches.value_source(id) == Some(ValueSource::CommandLine)
                    || server.value_source(id) == Some(ValueSource::CommandLine)
            };
            if typed("home") || typed("json") {
                command
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--home and --json are options of the client's commands; the server \
                         keeps its data in --data and its settings in --config",
                    )
                    .exit();
            }
        }
        match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Server(ServerArgs),
    /// Create an account and this device on a server.
    Register {
        /// The username (3-32 of a-z, 0-9, _; starting with a letter).
        username: String,
        /// The server, e.g. https://chat.example.org [default: `server` in the settings file].
        #[arg(long)]
        server: Option<String>,
    },
    /// Show this profile's account and device.
    Whoami,
    /// Send a message to @user or #group ('-' reads the text from stdin).
    #[command(after_help = help::SEND_EXAMPLES)]
    Send {
        /// @user or #group.
        to: String,
        /// The text, or '-' for stdin (none with --file).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file (a photo, a document; up to the server's limit, 100 MiB by default),
        /// encrypted under a key of its own.
        #[arg(long, value_name = "PATH", conflicts_with = "text")]
        file: Option<std::path::PathBuf>,
        /// A caption for the file.
        #[arg(long, value_name = "TEXT")]
        caption: Option<String>,
        /// Answer this message: its id, as `messages` shows it after the conversation (8 hex
        /// digits), or more of it.
        #[arg(long, value_name = "MESSAGE_ID")]
        reply_to: Option<String>,
    },
    /// React to a message with an emoji, or take your reaction back with --remove.
    #[command(after_help = help::REACT_EXAMPLES)]
    React {
        /// The message's id, as `messages` shows it after the conversation (8 hex digits), or more
        /// of it.
        message: String,
        /// The reaction, e.g. 👍.
        emoji: String,
        /// Take back this reaction of yours.
        #[arg(long)]
        remove: bool,
    },
    /// Change the text of a message you sent, for everyone (they see it marked as edited).
    Edit {
        /// The message's id, as `messages` shows it.
        message: String,
        /// The new text, or '-' for stdin.
        text: String,
    },
    /// Take back a message you sent, for everyone.
    ///
    /// Its text is deleted from every member's device that follows the protocol (one that does not
    /// can have kept a copy).
    Delete {
        /// The message's id, as `messages` shows it.
        message: String,
    },
    /// Make messages in a conversation disappear a while after they are sent.
    ///
    /// For every member (e.g. 1h, 7d; `off` to keep them). Any member can change it; everyone sees
    /// who did.
    #[command(after_help = help::DISAPPEAR_EXAMPLES)]
    Disappear {
        /// @user or #group.
        to: String,
        /// How long messages last: a number with s, m, h, d or w (30s, 10m, 1h, 7d, 4w), up to
        /// 365d; or `off`.
        duration: String,
    },
    /// Show or change delivery and read receipts, typing indicators (both off by default), and
    /// the key directory auditors this device compares with.
    ///
    /// What you tell the people you talk to beyond your messages. Both are off until you switch
    /// them on, and each works both ways: while yours are off, you do not see those of others
    /// either. They are encrypted like messages; the server cannot tell them from one.
    Settings {
        /// Tell senders when your devices received their messages and when you read them
        /// (`messages` marks a conversation read).
        #[arg(long, value_name = "on|off")]
        receipts: Option<Switch>,
        /// Tell a conversation while you are typing in it (interfaces built on the daemon do).
        #[arg(long, value_name = "on|off")]
        typing: Option<Switch>,
        /// Compare this device's key directory with an auditor's on every sync: the URL its
        /// `sealpost audit --serve` printed. Two different roots for one version of the
        /// directory, both signed by the server, are a split view (a security alert). Repeat
        /// for several; replaces the list.
        #[arg(long, value_name = "URL")]
        auditor: Vec<String>,
        /// Compare with no auditor.
        #[arg(long, conflicts_with = "auditor")]
        no_auditors: bool,
    },
    /// Show or change your display name and avatar, or show someone's.
    ///
    /// What you share of yourself with the people you talk to. They go, encrypted, to every
    /// conversation you are in (and to people who join later). Others see your name beside your
    /// @username, never instead of it.
    Profile {
        /// Show what @user shares instead (their name, and their avatar as saved here).
        #[arg(conflicts_with_all = ["name", "avatar", "remove_avatar"])]
        user: Option<String>,
        /// Your display name (up to 64 characters, no @ or "); '' takes it away.
        #[arg(long)]
        name: Option<String>,
        /// Your avatar: a PNG, JPEG, GIF or WebP image of up to 1 MiB.
        #[arg(long, value_name = "PATH", conflicts_with = "remove_avatar")]
        avatar: Option<PathBuf>,
        /// Take your avatar away.
        #[arg(long)]
        remove_avatar: bool,
    },
    /// Download the file of a message, check it and save it.
    ///
    /// Checks that it is the one the sender sent, and saves it (under the sender's name for it, in
    /// the current directory, unless --out says where). Never overwrites a file.
    #[command(after_help = help::DOWNLOAD_EXAMPLES)]
    Download {
        /// The message's id, as `messages` shows it.
        message: String,
        /// Save it here: a file name, or a directory to save it in.
        #[arg(long, value_name = "PATH")]
        out: Option<std::path::PathBuf>,
    },
    /// Fetch and process everything pending; print new messages and events.
    ///
    /// Also checks this account's key-directory history. Exits with status 3 if a security event
    /// was shown.
    Sync,
    /// Show a conversation's history, oldest first, and mark it read.
    ///
    /// The history kept on this device (with receipts on, its senders are told that you read it).
    #[command(after_help = help::MESSAGES_EXAMPLES)]
    Messages {
        /// @user or #group.
        conversation: String,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries before this position, to page further back (`--json` shows each entry's
        /// `position`; a full page says the one to pass next).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Chat in a full-screen terminal: conversations, messages, files, groups.
    ///
    /// Messages arrive while you type; /help (or F1) lists the commands and keys. While it runs,
    /// other commands on this profile go through it. Needs a terminal; NO_COLOR turns colours
    /// off.
    Chat,
    /// Chat in your web browser, served by this process to this computer only.
    ///
    /// Prints an address to open (it carries a token that works once; the browser keeps a
    /// cookie). The keys stay in this process. While it runs, other commands on this profile go
    /// through it.
    Web {
        /// Where to listen: a loopback address only [default: 127.0.0.1 on a free port].
        #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Stay connected and print messages as they arrive.
    ///
    /// First those no command printed yet. While it runs, other commands on this profile go through
    /// it.
    Listen,
    /// Serve this profile to other programs (JSON-RPC 2.0 on a Unix socket), staying connected.
    ///
    /// Keeps this profile (and any given with --profile) connected and serves it over JSON-RPC 2.0
    /// on a Unix socket (see docs/jsonrpc.md). While it runs, every other command on a profile it
    /// serves goes through it. Stops on Ctrl-C or SIGTERM.
    Daemon(DaemonArgs),
    /// Manage groups.
    #[command(subcommand, after_help = help::GROUP_EXAMPLES)]
    Group(GroupCommand),
    /// Link, list and remove this account's devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show the safety number you share with @user, or confirm it.
    ///
    /// Compare it with them in person or by phone, then confirm it with --confirm. Sending to a
    /// verified contact whose key changes is blocked until you confirm again.
    #[command(after_help = help::VERIFY_EXAMPLES)]
    Verify {
        /// The @user.
        user: String,
        /// The number they read to you (spaces are ignored).
        #[arg(long)]
        confirm: Option<String>,
    },
    /// List conversations.
    Conversations,
    /// List this device's messages whose sending is not settled, or stop trying.
    ///
    /// The server's answer to them was lost: each sync sends them again until the server answers
    /// for them.
    Outbox {
        /// Stop trying to send the unsettled messages to @user or #group: they are shown as not
        /// sent, though some may have received them. For a server that keeps failing on one
        /// message, which would otherwise hold up every sync.
        #[arg(long, value_name = "CONVERSATION")]
        give_up: Option<String>,
    },
    /// Check that a server never rewrote its key directory (only ever added to it).
    ///
    /// The key directory is where the server publishes every account's device keys; if it could
    /// rewrite it, it could show one key to you and another to your contacts
    /// (docs/threat-model.md). This checks its audit proofs (akd), one published version ("epoch")
    /// after another, from where the last run stopped. Exits with status 3 if a check fails.
    Audit(AuditArgs),
    /// Remember this profile's passphrase in the system's keyring, or forget it.
    ///
    /// Remembered, commands open the profile without asking (on Linux: in the kernel's user
    /// keyring, in memory only, until the next restart).
    Passphrase {
        #[command(subcommand)]
        action: PassphraseAction,
    },
    /// Show the client's settings in effect, in the form of its settings file.
    ///
    /// The file is $XDG_CONFIG_HOME/sealpost/client.toml (~/.config/sealpost/client.toml); it can
    /// name the profile directory and the server that `register`, `device link` and `audit` use
    /// when not given --server. The output can be saved as the file.
    Config,
    /// Run a self-checking demonstration on a private loopback server.
    Demo,
    /// Print a shell's completion script for sealpost.
    ///
    /// With it installed, commands, options and their values complete on Tab.
    #[command(after_help = help::COMPLETIONS_HELP)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print sealpost's manual page, or write a page per command into a directory.
    #[command(after_help = help::MAN_HELP)]
    Man {
        /// Write `sealpost.1` and a page per command (`sealpost-send.1`, …) into this
        /// directory (made if missing) instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Measure the server with a load generator (see docs/BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group.
    Create {
        /// The group's name (travels encrypted; members see it as #name).
        name: String,
        /// A member to add (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
        /// The MLS ciphersuite.
        #[arg(long, value_enum, default_value_t = SuiteArg::Pq)]
        ciphersuite: SuiteArg,
    },
    /// Add people (all their devices).
    Add {
        /// The #group.
        group: String,
        /// @users to add.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove people (all their devices).
    Remove {
        /// The #group.
        group: String,
        /// @users to remove.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// The #group.
        group: String,
    },
    /// Delete a group you left (or were removed from), with its history, from this device.
    Delete {
        /// The #group (or its id).
        group: String,
    },
    /// List a group's members.
    Members {
        /// The #group or @user.
        group: String,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum PassphraseAction {
    /// Keep the passphrase (SEALPOST_PASSPHRASE, or typed) once it opened the profile.
    Remember,
    /// Take it out again.
    Forget,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// On a NEW device: ask to join an account. Prints a code (and a QR code) to enter on a
    /// device of the account with `sealpost device approve`, then waits up to 10 minutes.
    Link {
        /// The account's username.
        username: String,
        /// The server, e.g. https://chat.example.org [default: `server` in the settings file].
        #[arg(long)]
        server: Option<String>,
    },
    /// On a device of the account: approve the new device showing this code. It gets the
    /// account key and is added to every conversation.
    Approve {
        /// The code the new device shows (XXXX-XXXX-XXXX-XXXX).
        code: String,
    },
    /// List this account's devices (from the verified key directory).
    List,
    /// Remove another device: it can no longer sign in or read new messages.
    Remove {
        /// The device id (see `sealpost device list`).
        device: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SuiteArg {
    /// Post-quantum hybrid: MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519.
    Pq,
    /// Classic: MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519.
    Classic,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// The socket [default: $XDG_RUNTIME_DIR/sealpost/<profile>.sock, or run/ in the profile].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve HTTP on this loopback address (e.g. 127.0.0.1:7583; port 0 picks one):
    /// POST /api/v1/rpc, GET /api/v1/events (Server-Sent Events), GET /api/v1/check. Every call
    /// needs `Authorization: Bearer <token>`, the token being in daemon-http.token in the
    /// profile; requests from web pages are refused.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Serve this profile directory too, besides --home's (repeatable). Each profile gets its
    /// own socket at the default place, and other commands on it go through this daemon; over
    /// HTTP, `?profile=@user` picks one. Every profile is opened with the same
    /// SEALPOST_PASSPHRASE.
    #[arg(long, value_name = "DIR")]
    profile: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The server, e.g. https://chat.example.org [default: `server` in the settings file].
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// Start at this epoch instead of where the last run stopped.
    #[arg(long)]
    pub(crate) from: Option<u64>,
    /// Where to remember progress [default: <home>/audit-<server>.json].
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
    /// Keep running: audit new epochs as they are published.
    #[arg(long)]
    pub(crate) follow: bool,
    /// With --follow: seconds between checks.
    #[arg(long, default_value_t = 10)]
    pub(crate) interval: u64,
    /// Another auditor of the same server (the URL its --serve prints), or anything else that
    /// serves the directory's signed roots. After each check, its newest root is compared with
    /// the one checked here for the same version: two different roots, both signed by the
    /// server, prove that it shows different people different directories (exit status 3).
    /// Repeat for several peers.
    #[arg(long, value_name = "URL")]
    pub(crate) peer: Vec<String>,
    /// With --follow: serve the roots checked here to other auditors at this address (e.g.
    /// 127.0.0.1:7445; port 0 picks one), as GET /v1/directory/root and
    /// /v1/directory/roots/{version}. The URL is printed first.
    #[arg(long, value_name = "ADDRESS", requires = "follow")]
    pub(crate) serve: Option<std::net::SocketAddr>,
}

/// The process exits with status 3: a security check failed or a security event was shown.
#[derive(Debug)]
pub struct SecurityExit(pub String);

impl std::fmt::Display for SecurityExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecurityExit {}

/// Turns an SDK security error into a [`SecurityExit`]; other errors pass through.
pub(crate) fn security_exit(e: sealpost_sdk::Error) -> anyhow::Error {
    match e {
        e @ sealpost_sdk::Error::Security { .. } => SecurityExit(e.to_string()).into(),
        other => crate::rpc::RpcError::from(other).into(),
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7443].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory [default: $XDG_DATA_HOME/sealpost/server].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Database URL: unset for the embedded SQLite database in the data directory, or
    /// postgres://user:password@host:5432/db for a PostgreSQL database that several server
    /// nodes share (see docs/deploy.md).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// NATS URL (nats://host:4222) through which server nodes sharing a database push messages
    /// to devices connected to other nodes.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key. Without them the server
    /// speaks plain HTTP, for a TLS proxy in front (see docs/deploy.md). After a renewal,
    /// SIGHUP makes the server read both files again, without a restart.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_certificate: Option<PathBuf>,
    /// The private key of --tls-certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_certificate")]
    tls_key: Option<PathBuf>,
    /// How the server logs to stderr: lines for people, or one JSON object per line for a log
    /// collector (each request's lines carry its request id either way).
    #[arg(long, env = "SEALPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// A TOML config file (see --print-config). Without it: the file SEALPOST_CONFIG names, or
    /// $XDG_CONFIG_HOME/sealpost/server.toml (~/.config/sealpost/server.toml) if it exists.
    /// Environment variables (SEALPOST_*) override the file, and these options override both.
    #[arg(long, env = "SEALPOST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (defaults, config file, environment, these options) as a
    /// config file, with passwords hidden, and exit.
    #[arg(long)]
    print_config: bool,
}

/// How the server's log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines for people (coloured on a terminal unless NO_COLOR is set).
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether what goes to stderr may be coloured: only on a terminal, and never while `NO_COLOR`
/// is set and not empty (<https://no-color.org>).
fn colour_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn users(list: &[String]) -> Result<Vec<Username>> {
    list.iter()
        .map(|u| {
            let name = u.strip_prefix('@').unwrap_or(u);
            Username::new(name).with_context(|| format!("{u} is not a valid @user"))
        })
        .collect()
}

pub(crate) fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Fails with [`SecurityExit`] if `n` security events were shown (after they were printed).
fn exit_on_alerts(n: usize) -> Result<()> {
    if n > 0 {
        return Err(SecurityExit(format!(
            "{n} security event(s): see docs/threat-model.md for what each means"
        ))
        .into());
    }
    Ok(())
}

/// The name under which the command line keeps its place in the profile's event log: whatever
/// one command found and did not print, the next `sync` or `listen` prints.
const CONSUMER: &str = "cli";

/// Prints the events no command has printed yet (with `only_security`, just the security
/// events, leaving the rest for `sync`) and marks them printed. Returns how many security
/// events it printed.
async fn show_unseen(session: &Session, json: bool, only_security: bool) -> Result<usize> {
    let unseen: Vec<LoggedEvent> = session
        .call("events.unseen", serde_json::json!({ "consumer": CONSUMER }))
        .await?;
    let mut shown = Vec::new();
    let mut alerts = 0;
    for e in &unseen {
        let security = matches!(e.event, Event::Security { .. });
        if only_security && !security {
            continue;
        }
        print_logged(e, json)?;
        alerts += usize::from(security);
        shown.push(e.event_id);
    }
    if !shown.is_empty() {
        let _: serde_json::Value = session
            .call(
                "events.seen",
                serde_json::json!({ "consumer": CONSUMER, "ids": shown }),
            )
            .await?;
    }
    Ok(alerts)
}

fn print_logged(e: &LoggedEvent, json: bool) -> Result<()> {
    if json {
        print_json(e)
    } else {
        println!("{}", line(&e.event));
        Ok(())
    }
}

/// Runs a command.
pub async fn run(cli: Cli) -> Result<()> {
    use serde_json::json;
    let as_json = cli.json;
    match cli.command {
        Command::Server(args) => return server(args).await,
        Command::Demo => return crate::demo::run().await,
        Command::Completions { shell } => return help::completions(shell),
        Command::Man { out } => return help::man(out.as_deref()),
        Command::Bench(args) => return crate::bench::run(args).await,
        _ => {}
    }
    // Only the client's commands read the client's settings.
    let config = ClientConfig::load(&crate::client_config::default_file(), cli.home.clone())?;
    let home = config.home();
    match cli.command {
        Command::Config => {
            if as_json {
                return print_json(&config);
            }
            print!("{}", config.render());
            return Ok(());
        }
        Command::Audit(mut args) => {
            args.server = Some(config.server(args.server.take())?);
            return crate::audit::run(&home, args, as_json).await;
        }
        Command::Register { username, server } => {
            let server = config.server(server)?;
            let passphrase = crate::passphrase::for_new_profile(&home).await?;
            let client = Client::register(
                &home,
                &server,
                username.trim_start_matches('@'),
                passphrase.as_ref().map(|p| p.as_str()),
            )
            .await
            .map_err(crate::rpc::RpcError::from)?;
            let me = client.whoami();
            if as_json {
                return print_json(&me);
            }
            println!(
                "registered {} (device {}) on {}",
                me.username, me.device, me.server
            );
            return Ok(());
        }
        Command::Passphrase { action } => {
            return match action {
                PassphraseAction::Remember => {
                    crate::passphrase::remember(&home).await?;
                    println!(
                        "remembered: commands open {} without asking until the next restart \
                         (`sealpost passphrase forget` takes it out)",
                        safe(&home.display().to_string())
                    );
                    Ok(())
                }
                PassphraseAction::Forget => {
                    if crate::passphrase::forget(&home)? {
                        println!("forgotten");
                    } else {
                        println!("nothing was remembered for this profile");
                    }
                    Ok(())
                }
            };
        }
        Command::Device(DeviceCommand::Link { username, server }) => {
            let server = config.server(server)?;
            return link(&home, &server, username.trim_start_matches('@'), as_json).await;
        }
        _ => {}
    }
    let passphrase = crate::passphrase::from_env();
    let session = Session::open(&home, passphrase.as_ref().map(|p| p.as_str())).await?;
    let out = Output {
        session: &session,
        json: as_json,
    };
    match cli.command {
        Command::Whoami => {
            let me: sealpost_sdk::Whoami = session.call("whoami", json!({})).await?;
            if as_json {
                print_json(&me)
            } else {
                println!("{} (device {}) on {}", me.username, me.device, me.server);
                Ok(())
            }
        }
        Command::Send {
            to,
            text,
            file,
            caption,
            reply_to,
        } => {
            if caption.is_some() && file.is_none() {
                bail!("--caption goes with --file: a text is sent as it is");
            }
            let params = match file {
                Some(file) => json!({
                    "to": to,
                    "file": absolute(&file)?,
                    "caption": caption.unwrap_or_default(),
                    "reply_to": reply_to,
                }),
                None => json!({
                    "to": to,
                    "text": text_or_stdin(text.unwrap_or_default())?,
                    "reply_to": reply_to,
                }),
            };
            let bar = out.progress_bar();
            let mut sent = None;
            let done = out
                .settle("send", params, |e: Event| {
                    sent = Some(e);
                    Ok(())
                })
                .await;
            bar.finish().await;
            match sent {
                Some(sent) if as_json => print_json(&sent).and(done),
                _ => done,
            }
        }
        Command::Disappear { to, duration } => {
            let seconds = parse_duration(&duration)?;
            let params = json!({ "to": to, "seconds": seconds });
            out.settle("disappear", params, |set: Event| {
                if as_json {
                    print_json(&set)
                } else {
                    println!("{}", line(&set));
                    Ok(())
                }
            })
            .await
        }
        Command::Settings {
            receipts,
            typing,
            auditor,
            no_auditors,
        } => {
            let mut params = serde_json::Map::new();
            for (name, switch) in [("receipts", receipts), ("typing", typing)] {
                if let Some(switch) = switch {
                    params.insert(name.into(), json!(switch == Switch::On));
                }
            }
            if no_auditors || !auditor.is_empty() {
                params.insert("auditors".into(), json!(auditor));
            }
            let settings: crate::rpc::SettingsInEffect =
                session.call("settings", params.into()).await?;
            if as_json {
                return print_json(&settings);
            }
            let word = |on: bool| if on { "on" } else { "off" };
            println!("receipts: {}", word(settings.preferences.receipts));
            println!("typing indicators: {}", word(settings.preferences.typing));
            let auditors: Vec<String> = settings.auditors.iter().map(|a| safe(a)).collect();
            println!(
                "auditors compared with: {}",
                if auditors.is_empty() {
                    "none".to_owned()
                } else {
                    auditors.join(", ")
                }
            );
            Ok(())
        }
        Command::Profile {
            user,
            name,
            avatar,
            remove_avatar,
        } => {
            let mut params = serde_json::Map::new();
            if let Some(user) = user {
                params.insert("user".into(), json!(user));
            }
            if let Some(name) = name {
                params.insert("name".into(), json!(name));
            }
            if let Some(avatar) = avatar {
                params.insert("avatar".into(), json!(absolute(&avatar)?));
            } else if remove_avatar {
                params.insert("avatar".into(), serde_json::Value::Null);
            }
            let profile: sealpost_sdk::SharedProfile =
                session.call("profile", params.into()).await?;
            if as_json {
                return print_json(&profile);
            }
            println!(
                "{}{}",
                profile.user,
                crate::render::shown_name(Some(&profile.name))
            );
            match profile.avatar {
                Some(path) => println!("avatar: {}", safe(&path.display().to_string())),
                None => println!("no avatar"),
            }
            Ok(())
        }
        Command::Download { message, out: path } => {
            // Absolute, so that a daemon serving the profile saves it where this command runs.
            let path = absolute(&path.unwrap_or_else(|| PathBuf::from(".")))?;
            let params = json!({ "message": message, "out": path });
            let bar = out.progress_bar();
            let mut saved = None;
            let done = out
                .settle("download", params, |v: serde_json::Value| {
                    saved = Some(v);
                    Ok(())
                })
                .await;
            bar.finish().await;
            match saved {
                Some(saved) if as_json => print_json(&saved).and(done),
                Some(saved) => {
                    println!("saved {}", safe(saved["path"].as_str().unwrap_or_default()));
                    done
                }
                None => done,
            }
        }
        Command::React {
            message,
            emoji,
            remove,
        } => {
            let params = json!({ "message": message, "emoji": emoji, "remove": remove });
            out.settle("react", params, |done: Event| {
                if as_json { print_json(&done) } else { Ok(()) }
            })
            .await
        }
        Command::Edit { message, text } => {
            let text = text_or_stdin(text)?;
            let params = json!({ "message": message, "text": text });
            out.settle("edit", params, |done: Event| {
                if as_json { print_json(&done) } else { Ok(()) }
            })
            .await
        }
        Command::Delete { message } => {
            out.settle("delete", json!({ "message": message }), |done: Event| {
                if as_json { print_json(&done) } else { Ok(()) }
            })
            .await
        }
        Command::Sync => {
            let synced = session.call::<serde_json::Value>("sync", json!({})).await;
            // Printed even when the sync broke off: what it stored before is new too.
            let alerts = show_unseen(&session, as_json, false).await?;
            match synced {
                Err(e) if alerts > 0 => Err(SecurityExit(format!("{e:#}")).into()),
                Err(e) => Err(e),
                Ok(_) => exit_on_alerts(alerts),
            }
        }
        Command::Messages {
            conversation,
            limit,
            before,
        } => {
            let params = json!({ "conversation": conversation, "limit": limit, "before": before });
            let page: Vec<sealpost_sdk::HistoryEntry> = session.call("messages", params).await?;
            for entry in &page {
                if as_json {
                    print_json(entry)?;
                } else {
                    println!("{}", line(&entry.event));
                }
            }
            match page.first() {
                Some(first) if page.len() == limit && !as_json => eprintln!(
                    "(older entries: sealpost messages '{}' --before {})",
                    safe(&conversation),
                    first.position
                ),
                _ => {}
            }
            if before.is_none() {
                // Shown: read. The history was shown even if telling the senders fails.
                let read = json!({ "conversation": conversation });
                if let Err(e) = session.call::<serde_json::Value>("read", read).await {
                    eprintln!("warning: could not send read receipts: {e:#}");
                }
            }
            Ok(())
        }
        Command::Listen => listen(session, as_json).await,
        Command::Chat => crate::chat::run(session).await,
        Command::Web { listen } => crate::web::run(session, listen).await,
        Command::Conversations => {
            let list: Vec<sealpost_sdk::ConversationInfo> =
                session.call("conversations", json!({})).await?;
            for c in list {
                if as_json {
                    print_json(&c)?;
                } else {
                    let state = if c.active { "" } else { " (left)" };
                    let unread = match c.unread {
                        0 => String::new(),
                        sealpost_sdk::MAX_UNREAD_COUNTED.. => {
                            format!("  {}+ unread", sealpost_sdk::MAX_UNREAD_COUNTED)
                        }
                        n => format!("  {n} unread"),
                    };
                    println!(
                        "{}  {} members  {:?}{}{}  {}",
                        safe(&c.conversation),
                        c.members,
                        c.ciphersuite,
                        state,
                        unread,
                        c.id
                    );
                }
            }
            Ok(())
        }
        Command::Outbox { give_up: None } => {
            let list: Vec<sealpost_sdk::Unconfirmed> = session.call("outbox", json!({})).await?;
            for u in list {
                if as_json {
                    print_json(&u)?;
                } else {
                    let id = u.id.as_ref().map_or("(the group's name)", |id| id.as_str());
                    println!("{}  {}  unconfirmed", safe(&u.conversation), safe(id));
                }
            }
            Ok(())
        }
        Command::Outbox {
            give_up: Some(conversation),
        } => {
            let params = json!({ "conversation": conversation });
            out.settle("outbox.give_up", params, |v: serde_json::Value| {
                if as_json {
                    print_json(&v)
                } else {
                    println!(
                        "stopped trying to send {} message(s) to {}",
                        v["given_up"],
                        safe(&conversation)
                    );
                    Ok(())
                }
            })
            .await
        }
        Command::Group(g) => group(&out, g).await,
        Command::Device(d) => device(&out, d).await,
        Command::Verify { user, confirm } => {
            let params = json!({ "user": user, "confirm": confirm });
            out.settle("verify", params, |v| show_verification(&v, as_json))
                .await
        }
        Command::Daemon(args) => daemon(&home, session, args, as_json).await,
        Command::Server(_)
        | Command::Config
        | Command::Passphrase { .. }
        | Command::Demo
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Bench(_)
        | Command::Audit(_)
        | Command::Register { .. } => Ok(()),
    }
}

/// Where a command's results go: the session it calls, and whether it prints JSON.
struct Output<'a> {
    session: &'a Session,
    json: bool,
}

/// A transfer's progress being shown (see `Output::progress_bar`).
struct ProgressShown(Option<(CancellationToken, tokio::task::JoinHandle<()>)>);

impl ProgressShown {
    /// Stops showing it, once what was reported is shown.
    async fn finish(self) {
        if let Some((stop, task)) = self.0 {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// A timer as people write it (`30s`, `10m`, `1h`, `7d`, `4w`, or `off`), in seconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let bad = || {
        anyhow::anyhow!(
            "{text:?} is not a duration for disappearing messages: write a number and s, m, h, d or w (30s, 1h, 7d), or off"
        )
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let number: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    let seconds = number.checked_mul(scale).ok_or_else(bad)?;
    if seconds == 0 || seconds > 365 * 86_400 {
        bail!("a disappearing-messages timer is 1 second to 365 days (or off)");
    }
    Ok(seconds)
}

/// `path` made absolute (a daemon running elsewhere resolves it the same way).
pub(crate) fn absolute(path: &std::path::Path) -> Result<String> {
    let path = std::path::absolute(path)
        .with_context(|| format!("{} is not a usable path", path.display()))?;
    path.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("{} is not valid UTF-8", p.display()))
}

/// A message's text from the command line, or from stdin for '-'; never empty.
fn text_or_stdin(text: String) -> Result<String> {
    let text = if text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the message from stdin")?;
        s.trim_end_matches('\n').to_owned()
    } else {
        text
    };
    if text.is_empty() {
        bail!("the message is empty");
    }
    Ok(text)
}

impl Output<'_> {
    /// Runs a method that may sync: prints the security events it (or any earlier command)
    /// found and no command printed, then the method's own outcome (`report`), and turns it
    /// into the exit status: 3 when a security event was printed or the call failed a security
    /// check.
    async fn settle<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: serde_json::Value,
        report: impl FnOnce(T) -> Result<()>,
    ) -> Result<()> {
        let outcome = self.session.call::<T>(method, params).await;
        let alerts = show_unseen(self.session, self.json, true).await?;
        match outcome {
            Ok(v) => {
                report(v)?;
                exit_on_alerts(alerts)
            }
            Err(e) if alerts > 0 => Err(SecurityExit(format!("{e:#}")).into()),
            Err(e) => Err(e),
        }
    }

    /// Shows the progress of a file transfer that this process runs (not one the daemon runs
    /// for it): a bar on stderr when it is a terminal, or with `--json` a line
    /// `{"progress": {"kind", "name", "done", "total"}}` for each percent.
    fn progress_bar(&self) -> ProgressShown {
        let Session::Local { live, .. } = self.session else {
            return ProgressShown(None);
        };
        let mut transfers = live.transfers();
        transfers.borrow_and_update();
        let json = self.json;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let bar = (!json).then(|| {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                )
            });
            let show = |t: &sealpost_sdk::Transfer| match &bar {
                Some(bar) => {
                    bar.set_length(t.total);
                    bar.set_position(t.done);
                    bar.set_message(safe(&t.name));
                }
                None => {
                    println!("{}", serde_json::json!({ "progress": t }));
                }
            };
            loop {
                tokio::select! {
                    changed = transfers.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = stopped.cancelled() => break,
                }
                if let Some(t) = transfers.borrow_and_update().clone() {
                    show(&t);
                }
            }
            // The last state, if it came as the transfer ended.
            if transfers.has_changed().unwrap_or(false)
                && let Some(t) = transfers.borrow_and_update().clone()
            {
                show(&t);
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        ProgressShown(Some((stop, task)))
    }

    /// [`settle`](Self::settle) for a method with nothing to show but success: `{}` in JSON.
    async fn settle_done(&self, method: &str, params: serde_json::Value) -> Result<()> {
        let json = self.json;
        self.settle(
            method,
            params,
            |v: serde_json::Value| {
                if json { print_json(&v) } else { Ok(()) }
            },
        )
        .await
    }
}

/// `sealpost listen`: prints what no command printed yet, then each event as it comes. Holding
/// the profile itself, it also serves the daemon's socket, so that other commands on the
/// profile go through it meanwhile.
async fn listen(session: Session, json: bool) -> Result<()> {
    match session {
        Session::Local { live, home } => {
            let held = crate::daemon::Held::start(&home, &live)?;
            let shutdown = held.shutdown.clone();
            let mut sub = live.subscribe_as(CONSUMER);
            let mut state = live.connection();
            let mut said = None;
            let printed = loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    Ok(()) = state.changed() => {
                        say_connection(&state.borrow_and_update(), &mut said);
                        continue;
                    }
                    next = sub.next() => next,
                };
                let shown = next
                    .map_err(anyhow::Error::from)
                    .and_then(|e| print_logged(&e, json).map(|()| e.event_id));
                match shown {
                    Ok(id) => sub.seen(&[id]).await?,
                    Err(e) => break Err(e),
                }
            };
            held.stop().await;
            printed
        }
        Session::Remote(remote) => {
            let sub: serde_json::Value = remote
                .call("subscribe", serde_json::json!({ "consumer": CONSUMER }))
                .await?;
            let n = sub["subscription"].as_u64();
            let mut said = None;
            while let Some(note) = remote.notification().await {
                if note["params"]["subscription"].as_u64() != n {
                    continue;
                }
                if note["method"] == "connection" {
                    if let Ok(state) = serde_json::from_value(note["params"]["connection"].clone())
                    {
                        say_connection(&state, &mut said);
                    }
                    continue;
                }
                if note["method"] != "event" {
                    continue;
                }
                let e: LoggedEvent = serde_json::from_value(note["params"]["event"].clone())
                    .context("the daemon sent an event that does not parse")?;
                print_logged(&e, json)?;
                remote
                    .call(
                        "events.seen",
                        serde_json::json!({ "consumer": CONSUMER, "ids": [e.event_id] }),
                    )
                    .await?;
            }
            bail!("the daemon stopped")
        }
    }
}

/// Tells, on stderr (the events on stdout stay events), when the connection to the server is
/// lost and when it is back: nothing is missed meanwhile, it comes when the connection does.
/// Said once per change between connected and not (`said` remembers which was said last), not
/// at every attempt to reconnect.
fn say_connection(state: &sealpost_sdk::Connection, said: &mut Option<bool>) {
    let up = match state {
        sealpost_sdk::Connection::Starting => return,
        sealpost_sdk::Connection::Connected { .. } => true,
        sealpost_sdk::Connection::Disconnected { .. } => false,
    };
    if *said == Some(up) {
        return;
    }
    *said = Some(up);
    match state {
        sealpost_sdk::Connection::Disconnected { reason, .. } => eprintln!(
            "disconnected from the server ({}); trying again, and catching up once back",
            safe(reason)
        ),
        _ => eprintln!("connected to the server"),
    }
}

/// `sealpost daemon`: serves its profiles until SIGINT or SIGTERM.
async fn daemon(
    home: &std::path::Path,
    session: Session,
    args: DaemonArgs,
    as_json: bool,
) -> Result<()> {
    if args.socket.is_some() && !args.profile.is_empty() {
        bail!("--socket names one profile's socket: leave it out to serve several profiles");
    }
    // Every profile is opened before anything is served: all of them, or none.
    let mut profiles = vec![held_by_this_process(home, session)?];
    for extra in &args.profile {
        let passphrase = crate::passphrase::from_env();
        let session = Session::open(extra, passphrase.as_ref().map(|p| p.as_str())).await?;
        profiles.push(held_by_this_process(extra, session)?);
    }
    let mut served = Vec::with_capacity(profiles.len());
    for (i, (home, live)) in profiles.into_iter().enumerate() {
        let path = match (&args.socket, i) {
            (Some(path), 0) => path.clone(),
            _ => crate::daemon::default_socket(&home),
        };
        let socket = std::sync::Arc::new(crate::daemon::Socket::bind(&home, &path)?);
        let username = live.lock().await.whoami().username;
        if served
            .iter()
            .any(|(_, other, _, _): &(_, String, _, _)| *other == username)
        {
            bail!(
                "two of these profiles are {}: serve them from two daemons",
                safe(&username)
            );
        }
        served.push((home, username, live, socket));
    }
    let shutdown = CancellationToken::new();
    let signals = Signals::install()?;
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    let homes: Vec<&std::path::Path> = served.iter().map(|(home, ..)| home.as_path()).collect();
    let http = match args.http {
        Some(addr) => Some(crate::daemon_http::bind(&homes, addr).await?),
        None => None,
    };
    for (home, username, _, socket) in &served {
        let token_file = crate::daemon_http::token_file(home);
        if as_json {
            print_json(&serde_json::json!({
                "serving": home,
                "username": username,
                "socket": socket.path(),
                "http": http.as_ref().map(|h| &h.url),
                "token_file": http.as_ref().map(|_| &token_file),
            }))?;
        } else {
            println!(
                "sealpost daemon serving {} ({}) on {}",
                home.display(),
                safe(username),
                socket.path().display()
            );
        }
    }
    if let (Some(h), false) = (&http, as_json) {
        println!(
            "and on {} (POST /api/v1/rpc, GET /api/v1/events; token in {})",
            h.url,
            crate::daemon_http::token_file(homes[0]).display()
        );
    }
    let tasks = tokio_util::task::TaskTracker::new();
    for (_, _, live, socket) in &served {
        let connection = (live.clone(), shutdown.clone());
        tasks.spawn(async move { connection.0.run(connection.1).await });
        let serving = (live.clone(), shutdown.clone());
        let socket = socket.clone();
        tasks.spawn(async move { socket.serve(serving.0, serving.1).await });
    }
    let web = http.map(|h| {
        let profiles = served
            .iter()
            .map(|(_, username, live, _)| (username.clone(), live.clone()))
            .collect();
        tokio::spawn(crate::daemon_http::serve(h, profiles, shutdown.clone()))
    });
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    if let Some(web) = web {
        web.await.context("the HTTP endpoint stopped")??;
    }
    // The sockets and daemon.json files go last, once nothing is served.
    drop(served);
    Ok(())
}

/// The live client of a profile this process holds; an error if a daemon holds it already.
fn held_by_this_process(home: &std::path::Path, session: Session) -> Result<(PathBuf, Live)> {
    match session {
        Session::Local { live, .. } => Ok((home.to_owned(), live)),
        Session::Remote(_) => bail!(
            "a daemon already serves the profile {} (see daemon.json there)",
            home.display()
        ),
    }
}

fn show_verification(v: &sealpost_sdk::Verification, json: bool) -> Result<()> {
    if json {
        return print_json(v);
    }
    println!(
        "safety number with {}:\n\n    {}\n",
        v.contact, v.safety_number
    );
    println!("{}", qr(&v.safety_number.replace(' ', ""), true));
    if v.verified {
        println!("{} is verified.", v.contact);
    } else {
        if v.changed {
            println!("{}'s account key CHANGED since you verified it.", v.contact);
        }
        println!(
            "Compare it with {} (in person, or by a call you trust), then run\n    sealpost verify {} --confirm '<the number>'",
            v.contact, v.contact
        );
    }
    Ok(())
}

/// A QR code for a terminal (two rows of modules per line), with the blank margin scanners
/// look for around it, or (where something else leaves room around it) without.
pub(crate) fn qr(data: &str, margin: bool) -> String {
    match qrcode::QrCode::new(data.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(margin)
            .build(),
        Err(_) => String::new(),
    }
}

async fn link(home: &std::path::Path, server: &str, username: &str, as_json: bool) -> Result<()> {
    let passphrase = crate::passphrase::for_new_profile(home).await?;
    let mut pending = sealpost_sdk::PendingLink::start(
        home,
        server,
        username,
        passphrase.as_ref().map(|p| p.as_str()),
    )
    .await
    .map_err(crate::rpc::RpcError::from)?;
    let code = pending.code();
    if as_json {
        print_json(&serde_json::json!({ "code": code, "waiting_minutes": 10 }))?;
    } else {
        println!("On a device of @{username}, run:\n\n    sealpost device approve {code}\n");
        println!("{}", qr(&format!("sealpost-link:{code}"), true));
        println!("Waiting for approval (up to 10 minutes; Ctrl-C to give up)...");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10 * 60);
    loop {
        match pending.try_finish().await? {
            sealpost_sdk::LinkStep::Linked(client) => {
                let me = client.whoami();
                if as_json {
                    return print_json(&me);
                }
                println!(
                    "linked: this device ({}) is now part of {}; run `sealpost sync` to receive its conversations",
                    me.device, me.username
                );
                return Ok(());
            }
            sealpost_sdk::LinkStep::Waiting(p) => pending = *p,
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "nobody approved this device within 10 minutes: run `sealpost device link` again"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn device(out: &Output<'_>, cmd: DeviceCommand) -> Result<()> {
    use serde_json::json;
    let as_json = out.json;
    match cmd {
        DeviceCommand::Link { .. } => Ok(()),
        DeviceCommand::Approve { code } => {
            let params = json!({ "code": code });
            out.settle("device.approve", params, |v: serde_json::Value| {
                if as_json {
                    return print_json(&v);
                }
                println!(
                    "approved device {}; it was added to your conversations",
                    v["device"].as_str().unwrap_or_default()
                );
                Ok(())
            })
            .await
        }
        DeviceCommand::List => {
            out.settle("device.list", json!({}), |devices| {
                list_devices(devices, as_json)
            })
            .await
        }
        DeviceCommand::Remove { device } => {
            let params = json!({ "device": device });
            out.settle("device.remove", params, |v: serde_json::Value| {
                if as_json {
                    return print_json(&v);
                }
                println!("removed device {device} from your account and your conversations");
                Ok(())
            })
            .await
        }
    }
}

fn list_devices(devices: Vec<sealpost_sdk::DeviceEntry>, json: bool) -> Result<()> {
    for d in devices {
        if json {
            print_json(&d)?;
        } else {
            let you = if d.you { "  (this device)" } else { "" };
            let bad = if d.certified {
                ""
            } else {
                "  NOT CERTIFIED BY YOUR ACCOUNT KEY: not trusted"
            };
            println!("{}{you}{bad}", d.device);
        }
    }
    Ok(())
}

async fn group(out: &Output<'_>, cmd: GroupCommand) -> Result<()> {
    use serde_json::json;
    let as_json = out.json;
    match cmd {
        GroupCommand::Create {
            name,
            members,
            ciphersuite,
        } => {
            let suite = match ciphersuite {
                SuiteArg::Pq => Suite::Pq,
                SuiteArg::Classic => Suite::Classic,
            };
            let params = json!({ "name": name, "members": users(&members)?, "ciphersuite": suite });
            out.settle(
                "group.create",
                params,
                |info: sealpost_sdk::ConversationInfo| {
                    if as_json {
                        return print_json(&info);
                    }
                    println!(
                        "created {} ({} members)",
                        safe(&info.conversation),
                        info.members
                    );
                    Ok(())
                },
            )
            .await
        }
        GroupCommand::Add { group, users: list } => {
            let params = json!({ "conversation": group, "users": users(&list)? });
            out.settle_done("group.add", params).await
        }
        GroupCommand::Remove { group, users: list } => {
            let params = json!({ "conversation": group, "users": users(&list)? });
            out.settle_done("group.remove", params).await
        }
        GroupCommand::Leave { group } => {
            out.settle_done("group.leave", json!({ "conversation": group }))
                .await
        }
        GroupCommand::Delete { group } => {
            out.settle_done("group.delete", json!({ "conversation": group }))
                .await
        }
        GroupCommand::Members { group } => {
            let members: Vec<sealpost_sdk::MemberInfo> = out
                .session
                .call("group.members", json!({ "conversation": group }))
                .await?;
            for m in members {
                if as_json {
                    print_json(&m)?;
                } else {
                    println!(
                        "{}{}  device {}{}",
                        m.member,
                        crate::render::shown_name(m.name.as_deref()),
                        m.device,
                        if m.you { "  (this device)" } else { "" }
                    );
                }
            }
            Ok(())
        }
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let config = args
        .config
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| Some(crate::client_config::default_server_file()).filter(|p| p.exists()));
    let mut settings = sealpost_server::Settings::load(config.as_deref())?;
    if let Some(l) = args.listen {
        settings.listen = l;
    }
    if let Some(d) = args.data {
        settings.data = d;
    }
    let data = settings.data.clone();
    if let Some(url) = args.database {
        settings.database = sealpost_server::config::ConnectionUrl(url);
    }
    if let Some(url) = args.nats {
        settings.nats = sealpost_server::config::ConnectionUrl(url);
    }
    if let (Some(certificate), Some(key)) = (args.tls_certificate, args.tls_key) {
        settings.tls_certificate = certificate;
        settings.tls_key = key;
    }
    if args.print_config {
        print!(
            "# The settings in effect: defaults, then the config file, then SEALPOST_* environment\n# variables, then the command line. Passwords in URLs are shown as \"…\".\n{}",
            settings.to_toml()
        );
        return Ok(());
    }
    let log = tracing_subscriber::fmt()
        .with_env_filter(log_filter()?)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => log.with_ansi(colour_stderr()).init(),
        LogFormat::Json => log.json().with_span_list(false).init(),
    }
    // Open the store, the key directory and the certificate first: a server that cannot run
    // says so before it announces an address.
    let scheme = if settings.tls() { "https" } else { "http" };
    let listen = settings.listen;
    let server = sealpost_server::Server::open(settings)
        .await
        .with_context(|| format!("cannot start the server on {}", data.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Install the signal handlers before announcing the address: a SIGTERM right after the
    // announcement must shut down gracefully, not kill the process.
    let shutdown = CancellationToken::new();
    let signals = Signals::install()?;
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    reload_on_sighup(server.tls_certificate())?;
    println!(
        "sealpost server listening on {scheme}://{}",
        listener.local_addr()?
    );
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// The server's log filter: `SEALPOST_LOG` if set (a mistake in it is an error, not a silent
/// fallback), else `info`.
fn log_filter() -> Result<tracing_subscriber::EnvFilter> {
    match std::env::var("SEALPOST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::builder()
            .parse(&v)
            .with_context(|| {
                format!(
                    "SEALPOST_LOG={v:?} is not a log filter: write a level (error, warn, info, debug, trace), optionally per module (info,sealpost_server=debug)"
                )
            }),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok("info".into()),
        Err(std::env::VarError::NotUnicode(_)) => bail!("SEALPOST_LOG is not valid UTF-8"),
    }
}

/// On SIGHUP, the server reads its TLS certificate and key again (after a renewal: no restart,
/// no connection dropped); a reload that fails is logged and the certificate in use stays.
/// Without TLS there is nothing to reload, and SIGHUP does not stop the server either.
fn reload_on_sighup(
    certificate: Option<std::sync::Arc<sealpost_server::TlsCertificate>>,
) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match &certificate {
                    None => {
                        tracing::info!("SIGHUP: nothing to reload (this server does not speak TLS)")
                    }
                    Some(c) => match c.reload() {
                        Ok(()) => tracing::info!("reloaded the TLS certificate and key"),
                        Err(e) => tracing::error!(
                            error = %e,
                            "could not reload the TLS certificate: still serving the one before"
                        ),
                    },
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = certificate;
    Ok(())
}

/// SIGINT and SIGTERM, registered with the runtime.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    pub(crate) async fn cancel_on_first(mut self, shutdown: CancellationToken) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
