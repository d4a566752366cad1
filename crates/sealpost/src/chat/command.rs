//! The commands typed in `sealpost chat` (a line starting with `/`), each one method of the
//! client's table ([`crate::rpc`]) — the same the command line and the daemon call.

use std::path::PathBuf;

/// One command, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Shows the help.
    Help,
    /// Leaves the chat.
    Quit,
    /// Opens a conversation, or starts a 1:1 with a user.
    Open(String),
    /// Creates a group.
    Group { name: String, members: Vec<String> },
    /// Adds members to the open group.
    Add(Vec<String>),
    /// Removes members from the open group.
    Remove(Vec<String>),
    /// Leaves the open group.
    Leave,
    /// Lists the open conversation's members.
    Members,
    /// Sends a file to the open conversation.
    File { path: PathBuf, caption: String },
    /// Answers a message.
    Reply { id: Option<String>, text: String },
    /// Reacts to a message, or takes the reaction back.
    React {
        id: Option<String>,
        emoji: String,
        remove: bool,
    },
    /// Changes one's own message.
    Edit { id: Option<String>, text: String },
    /// Takes one's own message back, for everyone.
    Delete { id: Option<String> },
    /// Saves a message's file.
    Download {
        id: Option<String>,
        out: Option<String>,
    },
    /// Sets the open conversation's disappearing-messages timer (seconds; 0 is off).
    Disappear(u64),
    /// Shows the safety number with a contact, or confirms it.
    Verify {
        user: String,
        confirm: Option<String>,
    },
    /// Approves a new device of this account by the code it shows.
    Link(String),
    /// Sets the display name this account shares.
    Name(String),
    /// Switches receipts on or off.
    Receipts(bool),
    /// Switches typing indicators on or off.
    Typing(bool),
    /// Acknowledges the oldest security alert shown.
    Ack,
}

/// The commands as the help shows them: how each is written, and what it does.
pub const HELP: &[(&str, &str)] = &[
    (
        "/open @user | #group",
        "open a conversation, or start one with a user",
    ),
    ("/group NAME [@user ...]", "create a group"),
    ("/add @user ...", "add members to this group"),
    ("/remove @user ...", "remove members from this group"),
    ("/leave", "leave this group"),
    ("/members", "who is in this conversation"),
    ("/file PATH [caption]", "send a file"),
    ("/reply [ID] TEXT", "answer a message"),
    (
        "/react [ID] EMOJI",
        "react to a message (/unreact takes it back)",
    ),
    ("/edit [ID] TEXT", "change a message of yours"),
    ("/delete [ID]", "take a message of yours back, for everyone"),
    ("/download [ID] [PATH]", "save a message's file"),
    ("/disappear 1h | 7d | off", "make new messages disappear"),
    (
        "/verify @user [NUMBER]",
        "compare safety numbers; confirm one",
    ),
    ("/link CODE", "approve a new device of yours"),
    ("/name NAME", "the display name you share"),
    ("/receipts on|off", "read receipts, both ways"),
    ("/typing on|off", "typing indicators, both ways"),
    ("/ack", "acknowledge a security alert (Ctrl-G)"),
    ("/help", "this help (F1)"),
    ("/quit", "leave the chat (Ctrl-C)"),
];

/// The keys as the help shows them.
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "send"),
    ("Alt-Enter", "new line"),
    ("Tab / Shift-Tab", "next / previous conversation"),
    ("Alt-Up / Alt-Down", "pick a message (ID then left out)"),
    ("Esc", "drop the pick; close this help"),
    ("PgUp / PgDn", "scroll the messages"),
    ("Up / Down", "lines sent before"),
    ("Ctrl-G", "acknowledge a security alert"),
    ("Ctrl-L", "draw the screen again"),
];

/// Reads a line starting with `/`. `picked`: a message is picked, so commands about one take
/// no id (an id is still taken when the first word is one of 8 or more hex digits).
pub fn parse(line: &str, picked: bool) -> Result<Command, String> {
    let line = line.trim();
    let (name, rest) = match line.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (line, ""),
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let id_and_rest = |rest: &str| -> (Option<String>, String) {
        let (first, after) = match rest.split_once(char::is_whitespace) {
            Some((first, after)) => (first, after.trim_start()),
            None => (rest, ""),
        };
        let hex = !first.is_empty() && first.chars().all(|c| c.is_ascii_hexdigit());
        if hex && (!picked || first.len() >= 8) {
            (Some(first.to_owned()), after.to_owned())
        } else {
            (None, rest.to_owned())
        }
    };
    let need = |what: &str| Err(format!("{name} needs {what} (see /help)"));
    let switch = |on_off: &str| match on_off {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{name} takes on or off")),
    };
    let about_message = |id: Option<String>| -> Result<Option<String>, String> {
        if id.is_none() && !picked {
            return Err(format!(
                "{name} needs a message: its ID (shown after the sender), or pick one with \
                 Alt-Up"
            ));
        }
        Ok(id)
    };
    Ok(match name {
        "/help" | "/?" => Command::Help,
        "/quit" | "/exit" => Command::Quit,
        "/ack" => Command::Ack,
        "/leave" => Command::Leave,
        "/members" => Command::Members,
        "/open" | "/msg" | "/query" => match words.as_slice() {
            [target] => Command::Open((*target).to_owned()),
            _ => return need("one @user or #group"),
        },
        "/group" => match words.split_first() {
            Some((group, members)) => Command::Group {
                name: (*group).to_owned(),
                members: members.iter().map(|m| (*m).to_owned()).collect(),
            },
            None => return need("a name"),
        },
        "/add" | "/remove" if words.is_empty() => return need("one @user or more"),
        "/add" => Command::Add(words.iter().map(|w| (*w).to_owned()).collect()),
        "/remove" | "/kick" => Command::Remove(words.iter().map(|w| (*w).to_owned()).collect()),
        "/file" | "/send" => {
            let (path, caption) = match rest.split_once(char::is_whitespace) {
                Some((path, caption)) => (path, caption.trim()),
                None => (rest, ""),
            };
            if path.is_empty() {
                return need("a file's path");
            }
            Command::File {
                path: expand_home(path),
                caption: caption.to_owned(),
            }
        }
        "/reply" | "/edit" => {
            let (id, text) = id_and_rest(rest);
            let id = about_message(id)?;
            if text.is_empty() {
                return need("a text");
            }
            if name == "/reply" {
                Command::Reply { id, text }
            } else {
                Command::Edit { id, text }
            }
        }
        "/react" | "/unreact" => {
            let (id, emoji) = id_and_rest(rest);
            let id = about_message(id)?;
            if emoji.is_empty() {
                return need("an emoji");
            }
            Command::React {
                id,
                emoji,
                remove: name == "/unreact",
            }
        }
        "/delete" => {
            let (id, extra) = id_and_rest(rest);
            if !extra.is_empty() {
                return Err("/delete takes only a message's ID".into());
            }
            Command::Delete {
                id: about_message(id)?,
            }
        }
        "/download" | "/save" => {
            let (id, out) = id_and_rest(rest);
            Command::Download {
                id: about_message(id)?,
                out: (!out.is_empty()).then(|| expand_home(&out).to_string_lossy().into_owned()),
            }
        }
        "/disappear" => match words.as_slice() {
            [duration] => {
                Command::Disappear(crate::cli::parse_duration(duration).map_err(|e| e.to_string())?)
            }
            _ => return need("a duration such as 1h or 7d, or off"),
        },
        "/verify" => match words.as_slice() {
            [user] => Command::Verify {
                user: (*user).to_owned(),
                confirm: None,
            },
            [user, number @ ..] => Command::Verify {
                user: (*user).to_owned(),
                confirm: Some(number.join(" ")),
            },
            [] => return need("a @user"),
        },
        "/link" | "/approve" => match words.as_slice() {
            [code] => Command::Link((*code).to_owned()),
            _ => return need("the code the new device shows"),
        },
        "/name" => Command::Name(rest.to_owned()),
        "/receipts" => match words.as_slice() {
            [s] => Command::Receipts(switch(s)?),
            _ => return need("on or off"),
        },
        "/typing" => match words.as_slice() {
            [s] => Command::Typing(switch(s)?),
            _ => return need("on or off"),
        },
        _ => {
            return Err(format!(
                "no command {name} (/help lists them; to send a line starting with /, start it \
                 with //)"
            ));
        }
    })
}

/// A path as typed, with a leading `~/` meaning the home directory.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_in_the_help_parses() {
        for (usage, _) in HELP {
            let typed: String = usage
                .split(" | ")
                .next()
                .unwrap_or_default()
                .replace("[ID]", "1a2b3c4d")
                .replace("on|off", "on")
                .replace(['[', ']'], "")
                .replace("NAME", "team")
                .replace("PATH", "/tmp/x")
                .replace("TEXT", "hello")
                .replace("EMOJI", "👍")
                .replace("NUMBER", "12345")
                .replace("CODE", "abc")
                .replace("caption", "a caption")
                .replace(" ...", "");
            assert!(
                parse(&typed, false).is_ok(),
                "{typed}: {:?}",
                parse(&typed, false)
            );
        }
    }

    #[test]
    fn a_message_id_is_taken_when_given_and_left_out_when_one_is_picked() {
        assert_eq!(
            parse("/react 1a2b3c4d 👍", false),
            Ok(Command::React {
                id: Some("1a2b3c4d".into()),
                emoji: "👍".into(),
                remove: false
            })
        );
        assert_eq!(
            parse("/reply cafe ok then", true),
            Ok(Command::Reply {
                id: None,
                text: "cafe ok then".into()
            })
        );
        assert!(parse("/react 👍", false).is_err());
        assert_eq!(
            parse("/unreact 👍", true),
            Ok(Command::React {
                id: None,
                emoji: "👍".into(),
                remove: true
            })
        );
        assert_eq!(parse("/delete", true), Ok(Command::Delete { id: None }));
    }

    #[test]
    fn mistakes_are_explained() {
        for (typed, says) in [
            ("/nope", "no command /nope"),
            ("/add", "needs one @user"),
            ("/disappear 5x", "not a duration"),
            ("/typing maybe", "on or off"),
            ("/edit 1a2b3c4d", "needs a text"),
        ] {
            let e = parse(typed, false).unwrap_err();
            assert!(e.contains(says), "{typed}: {e}");
        }
    }
}
