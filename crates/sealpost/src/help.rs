//! What `sealpost` says about itself: the texts of `--help` that are more than a line, the
//! shell completion scripts and the manual pages (all made from the command-line definitions).

use anyhow::{Context as _, Result};

use crate::cli::Cli;
use crate::render::safe;

/// What `sealpost --help` says first.
pub const ABOUT: &str = "\
Sealpost: an end-to-end encrypted messenger. Messages, files and groups are encrypted on your \
devices for the devices of the people you write to; the server passes on what it cannot read.";

/// What `sealpost --help` says after the options.
pub const AFTER_HELP: &str = "\
Examples:
  sealpost register alice --server https://chat.example.org     an account on a server
  sealpost send @bob 'See you at six'                           a message
  sealpost send @bob --file photo.jpg --caption 'The view'      a photo
  sealpost group create friends --member @bob --member @carol   a group
  sealpost sync                                                 what came in since
  sealpost messages @bob                                        a conversation
  sealpost chat                                                 a full-screen chat (F1: help)
  sealpost web                                                  the chat in your browser
  sealpost listen                                               messages as they arrive
  sealpost verify @bob                                          compare your safety number
Environment:
  SEALPOST_HOME        the profile directory (as --home)
  SEALPOST_PASSPHRASE  the passphrase that protects the profile's key (set when registering
                       to use one, then whenever the profile is opened; or `sealpost
                       passphrase remember` once)
  XDG_DATA_HOME        where the profile lives by default (~/.local/share if unset)
  XDG_CONFIG_HOME      where the settings file is: sealpost/client.toml (~/.config if unset);
                       `sealpost config` shows the settings in effect
  XDG_RUNTIME_DIR      where `daemon` puts its socket by default
  NO_COLOR             set (not empty): no colours (sealpost colours only on a terminal)
  The server's own settings: sealpost server --help

Exit status:
  0    done
  1    failed (the error is on stderr)
  2    the command line is wrong
  3    a security event was shown, or a security check failed: see docs/threat-model.md
  130  interrupted (Ctrl-C) during a command; `listen` and `daemon` stop cleanly on Ctrl-C (0)";

pub const SEND_EXAMPLES: &str = "\
Examples:
  sealpost send @bob 'See you at six'
  sealpost send '#friends' 'Who is coming?'
  sealpost send @bob 'Yes!' --reply-to 0c4f2a71
  sealpost send @bob --file photo.jpg --caption 'The view'
  echo 'from a script' | sealpost send @bob -";

pub const REACT_EXAMPLES: &str = "\
Examples:
  sealpost react 0c4f2a71 👍
  sealpost react 0c4f2a71 👍 --remove";

pub const DISAPPEAR_EXAMPLES: &str = "\
Examples:
  sealpost disappear @bob 1d
  sealpost disappear '#friends' off";

pub const DOWNLOAD_EXAMPLES: &str = "\
Examples:
  sealpost download 0c4f2a71
  sealpost download 0c4f2a71 --out ~/Pictures/";

pub const MESSAGES_EXAMPLES: &str = "\
Examples:
  sealpost messages @bob
  sealpost messages '#friends' --limit 20";

pub const GROUP_EXAMPLES: &str = "\
Examples:
  sealpost group create friends --member @bob --member @carol
  sealpost group add '#friends' @dave
  sealpost group members '#friends'
  sealpost group leave '#friends'";

pub const VERIFY_EXAMPLES: &str = "\
Examples:
  sealpost verify @bob                        show the number; compare it with bob's
  sealpost verify @bob --confirm '12345 …'    the number bob read to you, once it matches";

/// What `sealpost completions --help` says after the options.
pub const COMPLETIONS_HELP: &str = "\
Install it where your shell looks (then open a new shell):
  bash  sealpost completions bash > ~/.local/share/bash-completion/completions/sealpost
  zsh   sealpost completions zsh > ~/.zfunc/_sealpost
        (and in ~/.zshrc, before compinit: fpath+=~/.zfunc)
  fish  sealpost completions fish > ~/.config/fish/completions/sealpost.fish";

/// What `sealpost man --help` says after the options.
pub const MAN_HELP: &str = "\
Install the pages for your user, then read them with man:
  sealpost man --out ~/.local/share/man/man1
  man sealpost-send
(man finds ~/.local/share/man when ~/.local/bin is on your PATH; otherwise:
  man -l ~/.local/share/man/man1/sealpost-send.1)
Read the main page without installing it: sealpost man | man -l -";

/// `sealpost completions SHELL`: the script, written whole (a closed pipe is an error, not a
/// panic).
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::for_display(), "sealpost", &mut script);
    write_stdout(&script)
}

/// `sealpost man [--out DIR]`: the main page on stdout, or every page into `out`.
pub fn man(out: Option<&std::path::Path>) -> Result<()> {
    let command = Cli::for_display();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        return write_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    println!(
        "wrote the manual pages into {} (sealpost.1, and sealpost-COMMAND.1 for each command)",
        safe(&dir.display().to_string())
    );
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}
#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The words of an example's command line: split at spaces outside single quotes, up to
    /// two spaces in a row (where the example's explanation starts); from after a `|`.
    fn words(line: &str) -> Vec<String> {
        let line = line.rsplit_once("| ").map_or(line, |(_, rest)| rest).trim();
        let (mut words, mut word, mut quoted, mut spaces) = (Vec::new(), String::new(), false, 0);
        for c in line.chars() {
            match c {
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    spaces += 1;
                    if spaces == 2 {
                        break;
                    }
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    continue;
                }
                c => word.push(c),
            }
            spaces = 0;
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn every_example_in_the_help_is_a_valid_command_line() {
        let mut seen = 0;
        for help in [
            AFTER_HELP,
            SEND_EXAMPLES,
            REACT_EXAMPLES,
            DISAPPEAR_EXAMPLES,
            DOWNLOAD_EXAMPLES,
            MESSAGES_EXAMPLES,
            GROUP_EXAMPLES,
            VERIFY_EXAMPLES,
        ] {
            for line in help.lines().filter(|l| l.contains("sealpost ")) {
                let words = words(line);
                if words.first().map(String::as_str) != Some("sealpost") {
                    continue;
                }
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{line:?} does not parse: {e}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 25, "{seen}");
    }
}
