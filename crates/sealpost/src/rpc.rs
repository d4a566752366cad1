//! The client's methods as JSON-RPC 2.0: one table that the daemon serves (docs/jsonrpc.md) and
//! that the command line calls too — in process when it holds the profile, through the daemon's
//! socket when a daemon does. Every CLI action is a method here, so the two cannot drift apart.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sealpost_sdk::{EventId, Live, Suite, TransferKind, Username};

/// The version of the method table and of the shapes it returns (`sealpost.version` answers it;
/// `--json` output follows the same shapes).
pub const SCHEMA_VERSION: u32 = 1;

/// A JSON-RPC error object. `data.kind` says what went wrong in a word a program can match:
/// `security` (with `data.alert`), `invalid`, `unknown_conversation`, `unknown_message`,
/// `not_author`, `ambiguous`, `unreachable`, `refused` (by the server), `too_large`, `store`, `not_registered`,
/// `device_removed`, `method`, `params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcError {
    /// The JSON-RPC code: -32601 no such method, -32602 bad params, -32000 the call failed.
    pub code: i64,
    /// For a person.
    pub message: String,
    /// For a program.
    pub data: ErrorData,
}

/// What kind of failure an [`RpcError`] is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorData {
    /// See [`RpcError`].
    pub kind: String,
    /// For `security`: the alert (as in events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<sealpost_sdk::SecurityAlert>,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    fn new(code: i64, kind: &str, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: ErrorData {
                kind: kind.to_owned(),
                alert: None,
            },
        }
    }

    /// No such method.
    pub fn no_method(method: &str) -> RpcError {
        RpcError::new(
            -32601,
            "method",
            format!("no method {method:?} (see docs/jsonrpc.md)"),
        )
    }

    /// The parameters do not fit the method.
    pub fn params(why: impl std::fmt::Display) -> RpcError {
        RpcError::new(-32602, "params", format!("invalid params: {why}"))
    }

    /// Whether the call failed a security check (the command line exits with status 3).
    pub fn is_security(&self) -> bool {
        self.data.kind == "security"
    }
}

impl From<sealpost_sdk::Error> for RpcError {
    fn from(e: sealpost_sdk::Error) -> RpcError {
        use sealpost_sdk::Error as E;
        let kind = match &e {
            E::Security { .. } => "security",
            E::UnknownConversation(_) => "unknown_conversation",
            E::AmbiguousConversation(..) | E::AmbiguousDevice(..) => "ambiguous",
            E::UnknownUser(_) => "unknown_user",
            E::BadDeviceId(_) | E::UnknownDevice(_) => "unknown_device",
            E::BadMessageId(_) | E::UnknownMessage(_) => "unknown_message",
            E::AmbiguousMessage(..) => "ambiguous",
            E::NotAuthor(_) => "not_author",
            E::Busy | E::ChangePending => "busy",
            E::ServerUnreachable { .. } => "unreachable",
            E::Server { .. } => "refused",
            E::Store(_) => "store",
            E::NotRegistered => "not_registered",
            E::DeviceRemoved => "device_removed",
            E::TooLarge { .. }
            | E::FileTooLarge { .. }
            | E::GroupTooLarge { .. }
            | E::CommitTooLarge { .. } => "too_large",
            E::FileRefused(_) => "file_refused",
            E::BadTimer => "invalid",
            E::NoFile(_) => "no_file",
            E::FileExists(_) | E::NotAFile(_) | E::File(_) | E::FileChanged(_) => "file",
            E::Unconfirmed { .. } => "unconfirmed",
            _ => "invalid",
        };
        let message = match &e {
            E::DeviceRemoved => format!(
                "{e}; to use this computer again, link it as a new device: `sealpost --home <a new \
                 directory> device link <username> --server <url>`, approved on a device of the \
                 account"
            ),
            E::NotRegistered => {
                format!("{e}: run `sealpost register <username> --server <URL>` first")
            }
            E::AlreadyRegistered(_) => format!("{e}; use another --home for another account"),
            E::PassphraseRequired => {
                format!(
                    "{e}: set SEALPOST_PASSPHRASE, run the command on a terminal to type it, or \
                     keep it in the system's keyring with `sealpost passphrase remember`"
                )
            }
            E::BadDeviceId(_) | E::UnknownDevice(_) => {
                format!("{e} (`sealpost device list` shows them)")
            }
            E::NoLinkWaiting => {
                format!("{e}: check it, or start `sealpost device link` again on the new device")
            }
            E::RemoveSelf => format!("{e} (`sealpost group leave`)"),
            E::BadMessageId(_) | E::UnknownMessage(_) | E::AmbiguousMessage(..) => format!(
                "{e} (`sealpost messages <conversation>` shows each message's id after the \
                 conversation's name)"
            ),
            E::AuditOfAnotherServer { .. } => format!("{e}; use another --state file"),
            _ => e.to_string(),
        };
        let alert = match &e {
            E::Security { alert, .. } => Some(*alert),
            _ => None,
        };
        RpcError {
            code: -32000,
            message,
            data: ErrorData {
                kind: kind.to_owned(),
                alert,
            },
        }
    }
}

fn params<T: DeserializeOwned>(value: Value) -> Result<T, RpcError> {
    // A method without parameters takes `{}`, `[]` or none at all.
    let value = match value {
        Value::Null => json!({}),
        Value::Array(a) if a.is_empty() => json!({}),
        v => v,
    };
    serde_json::from_value(value).map_err(RpcError::params)
}

fn answer(v: impl Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(-32603, "internal", e.to_string()))
}

fn users(list: &[String]) -> Result<Vec<Username>, RpcError> {
    list.iter()
        .map(|u| {
            Username::new(u.strip_prefix('@').unwrap_or(u))
                .map_err(|e| RpcError::params(format!("{u}: {e}")))
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    to: String,
    /// The text (none with a file: its caption is `caption`).
    #[serde(default)]
    text: String,
    /// The message this one answers (its id, or the start of it).
    #[serde(default)]
    reply_to: Option<String>,
    /// A file to send: its absolute path, as the daemon's process sees it.
    #[serde(default)]
    file: Option<String>,
    /// The file's caption.
    #[serde(default)]
    caption: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disappear {
    to: String,
    /// Seconds; 0 turns it off.
    seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    receipts: Option<bool>,
    #[serde(default)]
    typing: Option<bool>,
    #[serde(default)]
    auditors: Option<Vec<String>>,
}

/// The answer to `settings`: the preferences, and the auditors roots are compared with.
#[derive(Serialize, Deserialize)]
pub struct SettingsInEffect {
    #[serde(flatten)]
    pub preferences: sealpost_sdk::Preferences,
    #[serde(default)]
    pub auditors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileChange {
    /// Another user's profile, as this device knows it (nothing is changed).
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// An absolute path, as the daemon's process sees it; `null` takes the avatar away (left
    /// out: unchanged).
    #[serde(default, deserialize_with = "present")]
    avatar: Option<Option<String>>,
}

/// A field that is there (perhaps `null`), told apart from one left out.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Typing {
    to: String,
    typing: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Download {
    message: String,
    /// Where to save it: an absolute path of a file or a directory; by default the daemon's
    /// working directory.
    #[serde(default)]
    out: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct React {
    message: String,
    emoji: String,
    #[serde(default)]
    remove: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    message: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Messages {
    conversation: String,
    #[serde(default = "fifty")]
    limit: usize,
    /// Entries before this position (a page further back).
    #[serde(default)]
    before: Option<u64>,
}

fn fifty() -> usize {
    50
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversation {
    conversation: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreate {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    ciphersuite: Suite,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupUsers {
    conversation: String,
    users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Code {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Device {
    device: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Verify {
    user: String,
    #[serde(default)]
    confirm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unseen {
    consumer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    consumer: String,
    ids: Vec<EventId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct After {
    #[serde(default)]
    after: Option<EventId>,
    #[serde(default = "fifty")]
    limit: usize,
}

/// The methods (also the list `docs/jsonrpc.md` documents; a test keeps the two the same).
#[cfg(test)]
pub const METHODS: &[&str] = &[
    "sealpost.version",
    "whoami",
    "send",
    "react",
    "edit",
    "delete",
    "disappear",
    "download",
    "settings",
    "typing",
    "profile",
    "sync",
    "conversations",
    "messages",
    "read",
    "outbox",
    "outbox.give_up",
    "group.create",
    "group.add",
    "group.remove",
    "group.leave",
    "group.delete",
    "group.members",
    "device.list",
    "device.approve",
    "device.remove",
    "verify",
    "events.after",
    "events.unseen",
    "events.seen",
    "subscribe",
    "unsubscribe",
];

/// Runs one method (all but `subscribe`/`unsubscribe`, which belong to a connection) on the
/// live client.
pub async fn dispatch(live: &Live, method: &str, p: Value) -> Result<Value, RpcError> {
    match method {
        "sealpost.version" => {
            params::<NoParams>(p)?;
            answer(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "schema": SCHEMA_VERSION,
            }))
        }
        "whoami" => {
            params::<NoParams>(p)?;
            answer(live.lock().await.whoami())
        }
        "send" => {
            let Send {
                to,
                text,
                reply_to,
                file,
                caption,
            } = params(p)?;
            if let Some(file) = file {
                if !text.is_empty() {
                    return Err(RpcError::params(
                        "a file is sent with a caption, not a text: give it as caption",
                    ));
                }
                let path = std::path::Path::new(&file);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut progress = live.reporter(TransferKind::Upload, &name);
                let mut client = live.lock().await;
                return answer(
                    client
                        .send_file(&to, path, &caption, reply_to.as_deref(), &mut progress)
                        .await?,
                );
            }
            if text.is_empty() {
                return Err(RpcError::params("the message is empty"));
            }
            let mut client = live.lock().await;
            answer(match reply_to {
                None => client.send(&to, &text).await?,
                Some(id) => client.reply(&to, &id, &text).await?,
            })
        }
        "react" => {
            let React {
                message,
                emoji,
                remove,
            } = params(p)?;
            let mut client = live.lock().await;
            answer(if remove {
                client.unreact(&message, &emoji).await?
            } else {
                client.react(&message, &emoji).await?
            })
        }
        "edit" => {
            let Edit { message, text } = params(p)?;
            if text.is_empty() {
                return Err(RpcError::params(
                    "the new text is empty (to take a message back, delete it)",
                ));
            }
            answer(live.lock().await.edit(&message, &text).await?)
        }
        "delete" => {
            let Message { message } = params(p)?;
            answer(live.lock().await.delete(&message).await?)
        }
        "disappear" => {
            let Disappear { to, seconds } = params(p)?;
            answer(live.lock().await.disappear(&to, seconds).await?)
        }
        "download" => {
            let Download { message, out } = params(p)?;
            let mut progress = live.reporter(TransferKind::Download, &message);
            let saved = live
                .lock()
                .await
                .download(
                    &message,
                    out.as_deref().map(std::path::Path::new),
                    &mut progress,
                )
                .await?;
            answer(json!({ "path": saved }))
        }
        "settings" => {
            let Settings {
                receipts,
                typing,
                auditors,
            } = params(p)?;
            let mut client = live.lock().await;
            let mut prefs = client.preferences();
            if receipts.is_some() || typing.is_some() {
                prefs.receipts = receipts.unwrap_or(prefs.receipts);
                prefs.typing = typing.unwrap_or(prefs.typing);
                client.set_preferences(prefs)?;
            }
            if let Some(auditors) = auditors {
                client.set_auditors(auditors)?;
            }
            answer(SettingsInEffect {
                preferences: prefs,
                auditors: client.auditors().to_vec(),
            })
        }
        "typing" => {
            let Typing { to, typing } = params(p)?;
            let sent = live.lock().await.typing(&to, typing).await?;
            answer(json!({ "sent": sent }))
        }
        "profile" => {
            let ProfileChange { user, name, avatar } = params(p)?;
            let mut client = live.lock().await;
            if let Some(user) = user {
                if name.is_some() || avatar.is_some() {
                    return Err(RpcError::params(
                        "`user` shows another person's profile; only your own can be changed",
                    ));
                }
                let user = users(std::slice::from_ref(&user))?.remove(0);
                return answer(client.profile_of(user.as_str()).unwrap_or(
                    sealpost_sdk::SharedProfile {
                        user: format!("@{user}"),
                        ..Default::default()
                    },
                ));
            }
            let changed = if name.is_some() || avatar.is_some() {
                let avatar = avatar
                    .as_ref()
                    .map(|a| a.as_deref().map(std::path::Path::new));
                client.set_profile(name.as_deref(), avatar).await?
            } else {
                client.own_profile()?
            };
            answer(changed)
        }
        "read" => {
            let Conversation { conversation } = params(p)?;
            let read = live.lock().await.mark_read(&conversation).await?;
            answer(json!({ "read": read }))
        }
        "sync" => {
            params::<NoParams>(p)?;
            // What it found goes to the event log: read it with events.* or subscribe.
            live.lock().await.sync().await?;
            answer(json!({}))
        }
        "outbox" => {
            params::<NoParams>(p)?;
            answer(live.lock().await.unconfirmed()?)
        }
        "outbox.give_up" => {
            let Conversation { conversation } = params(p)?;
            let given_up = live.lock().await.give_up_unconfirmed(&conversation)?;
            answer(json!({ "given_up": given_up }))
        }
        "conversations" => {
            params::<NoParams>(p)?;
            answer(live.lock().await.conversations()?)
        }
        "messages" => {
            let Messages {
                conversation,
                limit,
                before,
            } = params(p)?;
            answer(live.lock().await.history(&conversation, before, limit)?)
        }
        "group.create" => {
            let GroupCreate {
                name,
                members,
                ciphersuite,
            } = params(p)?;
            let members = users(&members)?;
            let name = name.strip_prefix('#').unwrap_or(&name);
            answer(
                live.lock()
                    .await
                    .create_group(name, &members, ciphersuite)
                    .await?,
            )
        }
        "group.add" => {
            let GroupUsers {
                conversation,
                users: list,
            } = params(p)?;
            let list = users(&list)?;
            live.lock().await.add_members(&conversation, &list).await?;
            answer(json!({}))
        }
        "group.remove" => {
            let GroupUsers {
                conversation,
                users: list,
            } = params(p)?;
            let list = users(&list)?;
            live.lock()
                .await
                .remove_members(&conversation, &list)
                .await?;
            answer(json!({}))
        }
        "group.leave" => {
            let Conversation { conversation } = params(p)?;
            live.lock().await.leave(&conversation).await?;
            answer(json!({}))
        }
        "group.delete" => {
            let Conversation { conversation } = params(p)?;
            live.lock().await.delete_conversation(&conversation)?;
            answer(json!({}))
        }
        "group.members" => {
            let Conversation { conversation } = params(p)?;
            answer(live.lock().await.members(&conversation)?)
        }
        "device.list" => {
            params::<NoParams>(p)?;
            answer(live.lock().await.devices().await?)
        }
        "device.approve" => {
            let Code { code } = params(p)?;
            let device = live.lock().await.approve_link(&code).await?;
            answer(json!({ "device": device.to_string() }))
        }
        "device.remove" => {
            let Device { device } = params(p)?;
            let mut client = live.lock().await;
            let device = client.own_device(&device).await?;
            client.remove_device(device).await?;
            answer(json!({}))
        }
        "verify" => {
            let Verify { user, confirm } = params(p)?;
            let user = users(std::slice::from_ref(&user))?.remove(0);
            let mut client = live.lock().await;
            answer(match confirm {
                Some(number) => client.confirm_verification(&user, &number).await?,
                None => client.verification(&user).await?,
            })
        }
        "events.after" => {
            let After { after, limit } = params(p)?;
            let after = after.unwrap_or(EventId::START);
            answer(live.lock().await.events_after(after, limit.min(1000))?)
        }
        "events.unseen" => {
            let Unseen { consumer } = params(p)?;
            answer(live.lock().await.unseen_events(&consumer, usize::MAX)?)
        }
        "events.seen" => {
            let Seen { consumer, ids } = params(p)?;
            live.lock().await.mark_seen(&consumer, &ids)?;
            answer(json!({}))
        }
        other => Err(RpcError::no_method(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method is documented in docs/jsonrpc.md (as a `### \`method\`` heading under
    /// "Methods"), in this order, and nothing else is.
    #[test]
    fn every_method_is_documented() {
        let doc = include_str!("../../../docs/jsonrpc.md");
        let methods = doc.split("\n## Methods\n").nth(1).unwrap_or_default();
        let methods = methods.split("\n## ").next().unwrap_or_default();
        let documented: Vec<&str> = methods
            .lines()
            .filter_map(|l| l.strip_prefix("### `"))
            .filter_map(|l| l.strip_suffix('`'))
            .collect();
        assert_eq!(documented, METHODS);
    }
}
