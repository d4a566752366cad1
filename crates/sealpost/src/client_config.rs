//! The client's settings file, `$XDG_CONFIG_HOME/sealpost/client.toml` (by default
//! `~/.config/sealpost/client.toml`): the profile directory, and the server that `register`,
//! `device link` and `audit` use when the command line names none. A setting on the command
//! line or in the environment wins over the file, and the file over the built-in default.
//! `sealpost config` prints the settings in effect, in the file's own form.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// What the file may say (anything else in it is refused, so that a misspelt key is not
/// silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    home: Option<String>,
    server: Option<String>,
}

/// Where a setting in effect came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The command line or the environment.
    CommandLine,
    /// The settings file.
    File,
    /// Sealpost's own default.
    Default,
    /// Nowhere: not set.
    Unset,
}

impl Origin {
    fn says(self) -> &'static str {
        match self {
            Origin::CommandLine => "the command line or the environment",
            Origin::File => "the settings file",
            Origin::Default => "the default",
            Origin::Unset => "not set",
        }
    }
}

/// One setting in effect.
#[derive(Debug, Clone, Serialize)]
pub struct Setting<T> {
    pub value: Option<T>,
    pub from: Origin,
}

/// The client's settings in effect.
#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    /// The settings file, whether or not it exists.
    pub file: PathBuf,
    /// Whether it exists.
    pub found: bool,
    /// The profile directory.
    pub home: Setting<PathBuf>,
    /// The server for `register`, `device link` and `audit` when the command line names none.
    pub server: Setting<String>,
}

/// `$variable/sealpost`, or `~/{otherwise}/sealpost` where the variable is not set (the XDG
/// base directories).
fn xdg(variable: &str, otherwise: &str) -> PathBuf {
    std::env::var_os(variable)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(otherwise)))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("sealpost")
}

/// `$XDG_CONFIG_HOME/sealpost/client.toml`, or `~/.config/sealpost/client.toml`.
pub fn default_file() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("client.toml")
}

/// `$XDG_CONFIG_HOME/sealpost/server.toml`, or `~/.config/sealpost/server.toml`: the server's
/// config file when neither `--config` nor `SEALPOST_CONFIG` names one (used if it exists).
pub fn default_server_file() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("server.toml")
}

/// The profile directory when nothing names one: `$XDG_DATA_HOME/sealpost/client`, or
/// `~/.local/share/sealpost/client`.
fn default_home() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("client")
}

/// `~/x` as the user's `x`; anything else as it is.
fn expand_tilde(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

impl ClientConfig {
    /// The settings in effect: `home` from the command line or environment if given, then the
    /// file at `file`, then the defaults. A file that does not parse, or says what this version
    /// does not know, is an error that names it.
    pub fn load(file: &Path, home: Option<PathBuf>) -> Result<ClientConfig> {
        let (found, settings) = match std::fs::read_to_string(file) {
            Ok(text) => (
                true,
                toml::from_str::<FileSettings>(&text).with_context(|| {
                    format!("the settings file {} is not valid", file.display())
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (false, FileSettings::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", file.display()));
            }
        };
        let home = match (home, settings.home) {
            (Some(h), _) => Setting {
                value: Some(h),
                from: Origin::CommandLine,
            },
            (None, Some(h)) if h.trim().is_empty() => {
                bail!("the settings file {} gives an empty `home`", file.display())
            }
            (None, Some(h)) => Setting {
                value: Some(expand_tilde(&h)),
                from: Origin::File,
            },
            (None, None) => Setting {
                value: Some(default_home()),
                from: Origin::Default,
            },
        };
        let server = match settings.server {
            Some(s) => Setting {
                value: Some(s),
                from: Origin::File,
            },
            None => Setting {
                value: None,
                from: Origin::Unset,
            },
        };
        Ok(ClientConfig {
            file: file.to_owned(),
            found,
            home,
            server,
        })
    }

    /// The profile directory in effect.
    pub fn home(&self) -> PathBuf {
        self.home.value.clone().unwrap_or_else(default_home)
    }

    /// The server a command uses: `given` on its command line, or the file's.
    pub fn server(&self, given: Option<String>) -> Result<String> {
        match given.or_else(|| self.server.value.clone()) {
            Some(server) => Ok(server),
            None => bail!(
                "which server? Give it with --server URL, or once for all in {} as: \
                 server = \"URL\"",
                self.file.display()
            ),
        }
    }

    /// The settings in the file's own form, each with what it is and where it came from.
    pub fn render(&self) -> String {
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let line = |name: &str, value: Option<String>, example: &str| match value {
            Some(v) => format!("{name} = {}\n", quoted(&v)),
            None => format!("# {name} = {}\n", quoted(example)),
        };
        let mut out = format!(
            "# Sealpost's client settings in effect (`sealpost config`).\n\
             # The settings file: {} ({}).\n\
             # A setting comes from the command line or the environment first, then that file,\n\
             # then Sealpost's default. The file takes the lines below as they are.\n\n",
            crate::render::safe(&self.file.display().to_string()),
            if self.found { "found" } else { "none yet" },
        );
        out.push_str(
            "# The profile directory: this device's keys and history (--home, SEALPOST_HOME).\n",
        );
        out.push_str(&format!("# From: {}.\n", self.home.from.says()));
        out.push_str(&line(
            "home",
            self.home
                .value
                .as_ref()
                .map(|h| h.to_string_lossy().into_owned()),
            "~/.local/share/sealpost/client",
        ));
        out.push_str(
            "\n# The server that `register`, `device link` and `audit` use without --server.\n",
        );
        out.push_str(&format!("# From: {}.\n", self.server.from.says()));
        out.push_str(&line(
            "server",
            self.server.value.clone(),
            "https://chat.example.org",
        ));
        out
    }
}
