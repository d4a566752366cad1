//! What an application message carries: MIMI content (draft-ietf-mimi-content), as Sealpost
//! writes and reads it. docs/protocol.md ("MIMI content") is the description for other
//! implementations; this module is the one place that builds and interprets it.
//!
//! Sending: a text is one inline `text/plain;charset=utf-8` part; what a conversation is (its
//! kind and name, told to new members) is one part of Sealpost's own media type. Each message
//! gets a fresh random salt, and its id is the draft's: a hash over the sender's and the room's
//! URIs, the encoded message and its salt.
//!
//! Receiving: what this version can show is shown; anything else that is well-formed MIMI
//! content (another media type, an attachment, an edit this version does not apply) is kept,
//! encoded as it came, and shown as a message this version cannot show. Messages of the JSON
//! format used before MIMI content are still read, so that what the server holds from an older
//! client stays readable.

use sealpost_proto::mimi::{
    self, Content, Disposition, ExtensionKey, Extensions, MimiId, NestedPart, Part, PartSemantics,
    Value,
};
use sealpost_proto::{GroupId, Username};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::model::ConversationKind;

/// The authority of Sealpost's MIMI URIs. Sealpost does not federate, and one server is reached
/// under different URLs (a name, an address, a proxy): a name taken from the URL would give one
/// message different ids on different devices. `.invalid` (RFC 6761) says that it names no host.
const AUTHORITY: &str = "sealpost.invalid";

/// The media type of a text.
pub(crate) const TEXT: &str = "text/plain;charset=utf-8";

/// The media type of what a conversation is: a CBOR map `{"kind": "direct" / "group", "name":
/// tstr}`.
pub(crate) const CONVERSATION: &str = "application/vnd.sealpost.conversation+cbor";

/// The media type of a conversation's disappearing-messages timer: a CBOR unsigned integer,
/// seconds (0: off).
pub(crate) const TIMER: &str = "application/vnd.sealpost.timer+cbor";

/// The media type of a message status report (draft-mahy-mimi-message-status): a CBOR array
/// of `[message id, status]` pairs. Sealpost sends `delivered` (1) and `read` (2).
pub(crate) const STATUS: &str = "application/mimi-message-status";

/// A status report's `delivered`: a device of the reporting user has the message.
pub(crate) const DELIVERED: u8 = 1;

/// A status report's `read`: the reporting user was shown the message.
pub(crate) const READ: u8 = 2;

/// Most statuses taken from one report (a report of more is shown as unsupported).
pub(crate) const MAX_STATUSES: usize = 1024;

/// The media type of a typing indicator: a CBOR `true` (the sender is typing) or `false`
/// (stopped). No IETF format exists for it yet.
pub(crate) const TYPING: &str = "application/vnd.sealpost.typing+cbor";

/// The longest timer taken: a year (the draft's expiry is a 32-bit number of seconds).
pub(crate) const MAX_TIMER: u64 = sealpost_proto::GroupExpiry::MAX;

/// A private extension: the sending device's number for this message in the conversation, from
/// 1 (a receiver sees from the numbers when messages are missing or arrive late).
pub(crate) const NUMBER: i64 = -1;

/// A private extension: the users a text mentions, as an array of their MIMI URIs. Sealpost
/// sends plain text, where the draft marks mentions as links in Markdown; a receiver takes a
/// listed user as mentioned only where the text names them (`@username`), so that nobody is
/// notified by a mention they cannot see.
pub(crate) const MENTIONS: i64 = -2;

/// A private extension: the SHA-256 of a file sent as an attachment (its plaintext; the
/// external part's `contentHash` is that of the encrypted blob). See [`FileRef`].
pub(crate) const FILE_HASH: i64 = -3;

/// Most mentions taken from one message.
const MAX_MENTIONS: usize = 256;

/// The longest topic id taken (the draft's security considerations: longer is malicious).
const MAX_TOPIC: usize = 4096;

/// A user's MIMI URI.
pub(crate) fn sender_uri(user: &Username) -> String {
    format!("mimi://{AUTHORITY}/u/{user}")
}

/// A conversation's MIMI URI.
pub(crate) fn room_uri(group: GroupId) -> String {
    format!("mimi://{AUTHORITY}/r/{group}")
}

/// A message with nothing set but its salt and body.
fn message(salt: [u8; 16], body: NestedPart) -> Content {
    Content {
        salt,
        replaces: None,
        topic_id: Vec::new(),
        expires: None,
        in_reply_to: None,
        extensions: Extensions::default(),
        body,
    }
}

/// A text message.
pub(crate) fn text(salt: [u8; 16], text: &str) -> Content {
    message(
        salt,
        NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Single {
                content_type: TEXT.to_owned(),
                content: text.as_bytes().to_vec(),
            },
        },
    )
}

/// A text that answers the message `to`.
pub(crate) fn reply(salt: [u8; 16], body: &str, to: MimiId) -> Content {
    let mut content = text(salt, body);
    content.in_reply_to = Some(to);
    content
}

/// A reaction (`emoji`) to the message `to` (the draft: a reply with disposition `reaction`).
pub(crate) fn reaction(salt: [u8; 16], to: MimiId, emoji: &str) -> Content {
    let mut content = reply(salt, emoji, to);
    content.body.disposition = Disposition::REACTION;
    content
}

/// A new text for the message `of` (an edit). `in_reply_to` is the original's: an edit
/// changes the text, nothing else.
pub(crate) fn edit(salt: [u8; 16], of: MimiId, in_reply_to: Option<MimiId>, body: &str) -> Content {
    let mut content = text(salt, body);
    content.replaces = Some(of);
    content.in_reply_to = in_reply_to;
    content
}

/// Takes back the message `of` (a deletion) or, with `reaction`, the reaction `of` to the
/// message `in_reply_to`: an empty body in its place.
pub(crate) fn retract(
    salt: [u8; 16],
    of: MimiId,
    in_reply_to: Option<MimiId>,
    reaction: bool,
) -> Content {
    let mut content = message(
        salt,
        NestedPart {
            disposition: if reaction {
                Disposition::REACTION
            } else {
                Disposition::RENDER
            },
            language: String::new(),
            part: Part::Null,
        },
    );
    content.replaces = Some(of);
    content.in_reply_to = in_reply_to;
    content
}

/// A file sent in a message, with what its receivers need to fetch, open and check it: the
/// draft's external part, with Sealpost's encryption of it (`attachment`): a key-committing
/// STREAM over AES-128-GCM, whose nonce field is the 7-octet STREAM prefix. Kept, sealed, in
/// the history of every device that has the message (it holds the file's key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileRef {
    /// The server's id of the blob (32 hex digits).
    pub(crate) blob: String,
    /// The URL the sender gave (only the id in it is used: files are fetched from one's own
    /// server, however the sender reached it).
    pub(crate) url: String,
    /// The key (hex).
    pub(crate) key: String,
    /// The STREAM nonce prefix (hex).
    pub(crate) nonce: String,
    /// The blob's size.
    pub(crate) size: u64,
    /// SHA-256 of the blob (hex).
    pub(crate) blob_hash: String,
    /// SHA-256 of the file (hex).
    pub(crate) file_hash: String,
    /// Its media type, as the sender said.
    pub(crate) media_type: String,
    /// Its name, as the sender said (made safe before it names a file here).
    pub(crate) name: String,
}

impl FileRef {
    /// What is shown of it.
    pub(crate) fn info(&self) -> crate::model::FileInfo {
        crate::model::FileInfo {
            name: self.name.clone(),
            media_type: self.media_type.clone(),
            size: crate::attachment::plain_len(self.size).unwrap_or(0),
        }
    }
}

/// The hash algorithm of `contentHash`: sha-256 in the IANA Named Information registry.
const SHA_256: u8 = 1;

/// A file message: the file, and its caption (the external part's description).
pub(crate) fn file(salt: [u8; 16], file: &FileRef, caption: &str) -> Content {
    let mut content = message(salt, external(file, caption, Disposition::ATTACHMENT));
    set_file_hash(&mut content, file);
    content
}

/// Names the SHA-256 of the message's file (of its one external part).
fn set_file_hash(content: &mut Content, file: &FileRef) {
    // An integer key with a byte string is always accepted.
    let _ = content.extensions.insert(
        ExtensionKey::Int(FILE_HASH),
        Value::Bytes(hex::decode(&file.file_hash).unwrap_or_default()),
    );
}

/// The external part that names `file`, with its caption.
fn external(file: &FileRef, caption: &str, disposition: Disposition) -> NestedPart {
    let hex = |s: &str| hex::decode(s).unwrap_or_default();
    NestedPart {
        disposition,
        language: String::new(),
        part: Part::External(Box::new(mimi::ExternalPart {
            content_type: file.media_type.clone(),
            url: file.url.clone(),
            expires: 0,
            size: file.size,
            enc_alg: crate::attachment::AES_128_GCM,
            key: hex(&file.key),
            nonce: hex(&file.nonce),
            aad: Vec::new(),
            hash_alg: SHA_256,
            content_hash: hex(&file.blob_hash),
            description: caption.to_owned(),
            filename: file.name.clone(),
        })),
    }
}

/// The id of the blob a file URL names: its last path segment, after `/v1/blobs/`.
pub(crate) fn blob_of_url(url: &str) -> Option<String> {
    let (_, id) = url.rsplit_once("/v1/blobs/")?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// A file this version can fetch and open: encrypted as Sealpost does, with every check value.
fn file_of(content: &Content) -> Option<(FileRef, String)> {
    let shown = matches!(
        content.body.disposition,
        Disposition::ATTACHMENT | Disposition::RENDER | Disposition::INLINE
    );
    if !shown {
        return None;
    }
    external_of(content, &content.body)
}

/// The file the external part `part` of `content` names, and its caption, if this version can
/// fetch and open it.
fn external_of(content: &Content, part: &NestedPart) -> Option<(FileRef, String)> {
    use crate::attachment::{AES_128_GCM, KEY, NONCE_PREFIX, plain_len};
    let Part::External(x) = &part.part else {
        return None;
    };
    let Some(Value::Bytes(file_hash)) = content.extensions.get(&ExtensionKey::Int(FILE_HASH))
    else {
        return None;
    };
    let ok = x.enc_alg == AES_128_GCM
        && x.key.len() == KEY
        && x.nonce.len() == NONCE_PREFIX
        && x.aad.is_empty()
        && x.hash_alg == SHA_256
        && x.content_hash.len() == 32
        && file_hash.len() == 32
        && plain_len(x.size).is_some();
    if !ok {
        return None;
    }
    let file = FileRef {
        blob: blob_of_url(&x.url)?,
        url: x.url.clone(),
        key: hex::encode(&x.key),
        nonce: hex::encode(&x.nonce),
        size: x.size,
        blob_hash: hex::encode(&x.content_hash),
        file_hash: hex::encode(file_hash),
        media_type: x.content_type.clone(),
        name: x.filename.clone(),
    };
    Some((file, x.description.clone()))
}

/// The message that tells members what a conversation is.
pub(crate) fn conversation(salt: [u8; 16], kind: ConversationKind, name: &str) -> Content {
    let kind = match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    };
    let value = Value::Map(vec![
        (Value::Text("kind".into()), Value::Text(kind.into())),
        (Value::Text("name".into()), Value::Text(name.into())),
    ]);
    sealpost_part(salt, CONVERSATION, &value)
}

/// The message that sets a conversation's disappearing-messages timer.
pub(crate) fn timer(salt: [u8; 16], seconds: u64) -> Content {
    sealpost_part(salt, TIMER, &Value::Uint(seconds))
}

/// The longest display name taken, in characters.
pub(crate) const MAX_NAME: usize = 64;

/// Whether `name` is a display name Sealpost sends and shows: up to [`MAX_NAME`] characters,
/// no control characters, line or paragraph separators, no `@` (a name never looks like the
/// `@username` shown beside it) and no `"` (it is shown in quotes, which it cannot close).
/// Empty: no name.
pub(crate) fn valid_name(name: &str) -> bool {
    name.chars().count() <= MAX_NAME
        && name.trim() == name
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, '@' | '"' | '\u{2028}' | '\u{2029}'))
}

/// What a member shares of themselves: a display name (perhaps empty), and an avatar, as a
/// message of the draft's `profile` disposition: the name as a text part, and with an avatar,
/// the two in a `processAll` multipart whose second part is the avatar, an external part of
/// disposition `icon`.
pub(crate) fn profile(salt: [u8; 16], name: &str, avatar: Option<&FileRef>) -> Content {
    let name = NestedPart {
        disposition: Disposition::PROFILE,
        language: String::new(),
        part: Part::Single {
            content_type: TEXT.to_owned(),
            content: name.as_bytes().to_vec(),
        },
    };
    let Some(avatar) = avatar else {
        return message(salt, name);
    };
    let body = NestedPart {
        disposition: Disposition::PROFILE,
        language: String::new(),
        part: Part::Multi {
            semantics: PartSemantics::ProcessAll,
            parts: vec![name, external(avatar, "", Disposition::ICON)],
        },
    };
    let mut content = message(salt, body);
    set_file_hash(&mut content, avatar);
    content
}

/// The display name and avatar of a profile message, if it is one this version reads.
fn profile_of(content: &Content) -> Option<Body> {
    let name_of = |p: &NestedPart| match &p.part {
        Part::Single {
            content_type,
            content,
        } if p.disposition == Disposition::PROFILE && is_text(content_type) => {
            String::from_utf8(content.clone())
                .ok()
                .filter(|n| valid_name(n))
        }
        _ => None,
    };
    match &content.body.part {
        Part::Single { .. } => Some(Body::Profile {
            name: name_of(&content.body)?,
            avatar: None,
        }),
        Part::Multi {
            semantics: PartSemantics::ProcessAll,
            parts,
        } => match parts.as_slice() {
            [name, icon] if icon.disposition == Disposition::ICON => Some(Body::Profile {
                name: name_of(name)?,
                avatar: Some(external_of(content, icon)?.0),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// A status report: the status of each message (by id) for the sender.
pub(crate) fn status(salt: [u8; 16], statuses: &[(MimiId, u8)]) -> Content {
    let report = statuses
        .iter()
        .map(|(id, status)| {
            Value::Array(vec![
                Value::Bytes(id.to_vec()),
                Value::Uint(u64::from(*status)),
            ])
        })
        .collect();
    sealpost_part(salt, STATUS, &Value::Array(report))
}

/// A typing indicator: the sender started (`true`) or stopped typing.
pub(crate) fn typing(salt: [u8; 16], typing: bool) -> Content {
    sealpost_part(salt, TYPING, &Value::Bool(typing))
}

/// A message of one part of a Sealpost media type: `value` in CBOR.
fn sealpost_part(salt: [u8; 16], media_type: &str, value: &Value) -> Content {
    message(
        salt,
        NestedPart {
            disposition: Disposition::UNSPECIFIED,
            language: String::new(),
            part: Part::Single {
                content_type: media_type.to_owned(),
                content: value.to_cbor(),
            },
        },
    )
}

/// Makes a message disappear `seconds` after it is received (the draft's relative expiry).
pub(crate) fn set_expiry(content: &mut Content, seconds: u64) {
    content.expires = Some(mimi::Expiration {
        relative: true,
        time: u32::try_from(seconds).unwrap_or(u32::MAX),
    });
}

/// Numbers a message (see [`NUMBER`]).
pub(crate) fn set_number(content: &mut Content, n: u64) {
    // An integer key with an unsigned value is always accepted.
    let _ = content
        .extensions
        .insert(ExtensionKey::Int(NUMBER), Value::Uint(n));
}

/// The usernames a text names as `@username` (each once, in order): a `@` at the start or
/// after a character that is not part of a username, then a valid username, then the end or
/// such a character.
pub(crate) fn named_users(text: &str) -> Vec<Username> {
    let part = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out: Vec<Username> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        if c == '@' && !previous.is_some_and(|p| part(p) || p.is_alphanumeric()) {
            let rest = &text[at + 1..];
            let end = rest.find(|c: char| !part(c)).unwrap_or(rest.len());
            let followed_ok = !rest[end..].starts_with(|c: char| c.is_alphanumeric());
            if let (true, Ok(user)) = (followed_ok, Username::new(&rest[..end]))
                && !out.contains(&user)
            {
                out.push(user);
            }
        }
        previous = Some(c);
    }
    out
}

/// Lists the users a text mentions (see [`MENTIONS`]); none: no extension.
pub(crate) fn set_mentions(content: &mut Content, users: &[Username]) {
    if users.is_empty() {
        return;
    }
    let uris = users
        .iter()
        .take(MAX_MENTIONS)
        .map(|u| Value::Text(sender_uri(u)))
        .collect();
    // An integer key with an array of text is always accepted.
    let _ = content
        .extensions
        .insert(ExtensionKey::Int(MENTIONS), Value::Array(uris));
}

/// The users `content` mentions and its `text` names, as `@username`.
fn mentions_of(content: &Content, text: &str) -> Vec<String> {
    let Some(Value::Array(uris)) = content.extensions.get(&ExtensionKey::Int(MENTIONS)) else {
        return Vec::new();
    };
    let prefix = format!("mimi://{AUTHORITY}/u/");
    let named = named_users(text);
    let mut out: Vec<String> = Vec::new();
    for uri in uris.iter().take(MAX_MENTIONS) {
        let Value::Text(uri) = uri else { continue };
        let Some(Ok(user)) = uri.strip_prefix(&prefix).map(Username::new) else {
            continue;
        };
        let shown = format!("@{user}");
        if named.contains(&user) && !out.contains(&shown) {
            out.push(shown);
        }
    }
    out
}

/// A message ready to be encrypted: its encoding and its id.
pub(crate) struct Encoded {
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    pub(crate) id: MimiId,
}

/// Encodes `content` as sent by `sender` in `group`.
pub(crate) fn encode(content: &Content, sender: &Username, group: GroupId) -> Encoded {
    let bytes = Zeroizing::new(content.encode());
    let id = mimi::message_id(&bytes, &content.salt, &sender_uri(sender), &room_uri(group));
    Encoded { bytes, id }
}

/// A message as read.
#[derive(Debug, PartialEq)]
pub(crate) struct Incoming {
    /// Its id, in hex.
    pub(crate) id: String,
    /// The sender device's number for it (0: none).
    pub(crate) number: u64,
    /// The users its text (or its new text) mentions, as `@username`.
    pub(crate) mentions: Vec<String>,
    /// When it disappears: seconds after it was received (`true`), or at a unix time.
    pub(crate) expires: Option<(bool, u64)>,
    /// What it is.
    pub(crate) body: Body,
}

/// What a message is, as far as this version knows.
#[derive(Debug, PartialEq)]
pub(crate) enum Body {
    /// A text, perhaps answering another message (its id in hex).
    Text {
        text: String,
        reply_to: Option<String>,
    },
    /// A file, with its caption, perhaps answering another message.
    File {
        file: FileRef,
        caption: String,
        reply_to: Option<String>,
    },
    /// A change to an earlier message: a reaction, an edit, a deletion.
    Change(ChangeKind),
    /// What the conversation is.
    Conversation {
        kind: ConversationKind,
        name: String,
    },
    /// How long messages in the conversation last from now on (seconds; 0: for ever).
    Timer(u64),
    /// A status report: what became of messages at the sender's (ids in hex, and the draft's
    /// status values, 0 to 255).
    Status(Vec<(String, u8)>),
    /// The sender started (`true`) or stopped typing.
    Typing(bool),
    /// What the sender shares of themselves: a display name (empty: none) and an avatar.
    Profile {
        name: String,
        avatar: Option<FileRef>,
    },
    /// Well-formed, but not something this version shows: what it is, for a person, and the
    /// message as it came (kept, so that a later version can show it).
    Unsupported { what: String, content: Vec<u8> },
}

/// What a change to an earlier message does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChangeKind {
    /// A reaction to the message `to`.
    React { to: String, emoji: String },
    /// Something in the place of the message (or reaction) `of`, sent earlier.
    Replace { of: String, with: Replacement },
}

/// What a message puts in the place of an earlier one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Replacement {
    /// A new text (an edit).
    Text(String),
    /// Another reaction.
    Reaction(String),
    /// Nothing: the earlier message or reaction is taken back.
    Nothing,
}

/// Reads a decrypted, unpadded message sent by `sender` in `group`. An error says why it is
/// not a message at all.
pub(crate) fn read(bytes: &[u8], sender: &Username, group: GroupId) -> Result<Incoming, String> {
    if bytes.first() == Some(&b'{') {
        // A MIMI message is a CBOR array; this is the JSON of clients before it.
        return read_legacy(bytes);
    }
    let content = Content::decode(bytes).map_err(|e| e.to_string())?;
    let (sender_uri, room_uri) = (sender_uri(sender), room_uri(group));
    if content
        .extensions
        .sender_uri()
        .is_some_and(|u| u != sender_uri)
    {
        return Err("the message names a sender other than the one who sent it".into());
    }
    if content.extensions.room_uri().is_some_and(|u| u != room_uri) {
        return Err("the message names another conversation".into());
    }
    if content.topic_id.len() > MAX_TOPIC {
        return Err("the message's topic id is longer than 4096 octets".into());
    }
    let number = match content.extensions.get(&ExtensionKey::Int(NUMBER)) {
        None => 0,
        Some(Value::Uint(n)) => *n,
        Some(_) => return Err("the message's number is not an unsigned integer".into()),
    };
    let id = hex::encode(mimi::message_id(
        bytes,
        &content.salt,
        &sender_uri,
        &room_uri,
    ));
    let body = interpret(&content).unwrap_or_else(|| Body::Unsupported {
        what: describe(&content),
        content: bytes.to_vec(),
    });
    let mentions = match &body {
        Body::Text { text, .. }
        | Body::File { caption: text, .. }
        | Body::Change(ChangeKind::Replace {
            with: Replacement::Text(text),
            ..
        }) => mentions_of(&content, text),
        _ => Vec::new(),
    };
    let expires = content
        .expires
        .as_ref()
        .map(|e| (e.relative, u64::from(e.time)));
    Ok(Incoming {
        id,
        number,
        mentions,
        expires,
        body,
    })
}

/// What this version makes of a message, if it knows it.
fn interpret(content: &Content) -> Option<Body> {
    let body = &content.body;
    if body.disposition == Disposition::PROFILE && content.replaces.is_none() {
        return profile_of(content);
    }
    let reaction = body.disposition == Disposition::REACTION;
    if let Some(of) = content.replaces {
        // What the replacement answers is the original's (the draft: an edit changes the
        // content, nothing else), so `in_reply_to` is not read here.
        let with = match &body.part {
            Part::Null => Replacement::Nothing,
            _ if reaction => Replacement::Reaction(reaction_of(body)?),
            _ => Replacement::Text(shown_text(body)?),
        };
        return Some(Body::Change(ChangeKind::Replace {
            of: hex::encode(of),
            with,
        }));
    }
    if reaction {
        return Some(Body::Change(ChangeKind::React {
            to: hex::encode(content.in_reply_to?),
            emoji: reaction_of(body)?,
        }));
    }
    if let Part::Single {
        content_type,
        content,
    } = &body.part
    {
        // Sealpost's own kinds of message, and the IETF's status report.
        let value = || Value::from_cbor(content).ok();
        match content_type.as_str() {
            CONVERSATION => return conversation_of(content),
            TIMER => {
                return match value()? {
                    Value::Uint(seconds) if seconds <= MAX_TIMER => Some(Body::Timer(seconds)),
                    _ => None,
                };
            }
            STATUS => return statuses_of(content).map(Body::Status),
            TYPING => {
                return match value()? {
                    Value::Bool(typing) => Some(Body::Typing(typing)),
                    _ => None,
                };
            }
            _ => {}
        }
    }
    if let Part::External(_) = &body.part {
        let (file, caption) = file_of(content)?;
        return Some(Body::File {
            file,
            caption,
            reply_to: content.in_reply_to.map(hex::encode),
        });
    }
    Some(Body::Text {
        text: shown_text(body)?,
        reply_to: content.in_reply_to.map(hex::encode),
    })
}

/// The statuses of a status report, if it is one this version reads.
fn statuses_of(cbor: &[u8]) -> Option<Vec<(String, u8)>> {
    let Ok(Value::Array(report)) = Value::from_cbor(cbor) else {
        return None;
    };
    if report.len() > MAX_STATUSES {
        return None;
    }
    report
        .into_iter()
        .map(|entry| match entry {
            Value::Array(pair) => match pair.as_slice() {
                [Value::Bytes(id), Value::Uint(status)] if id.len() == mimi::MESSAGE_ID_LEN => {
                    Some((hex::encode(id), u8::try_from(*status).ok()?))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The longest reaction taken, in octets (a few emoji, each up to a few code points).
pub(crate) const MAX_REACTION: usize = 64;

/// Whether `emoji` is a reaction Sealpost sends and shows: 1 to [`MAX_REACTION`] octets, no
/// white space or control characters.
pub(crate) fn valid_reaction(emoji: &str) -> bool {
    !emoji.is_empty()
        && emoji.len() <= MAX_REACTION
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The text of a reaction part.
fn reaction_of(p: &NestedPart) -> Option<String> {
    match &p.part {
        Part::Single {
            content_type,
            content,
        } if is_text(content_type) => String::from_utf8(content.clone())
            .ok()
            .filter(|e| valid_reaction(e)),
        _ => None,
    }
}

/// The text of a part that is shown as text: an inline plain or Markdown text, a choice among
/// alternatives of which one is, or parts that all are.
fn shown_text(p: &NestedPart) -> Option<String> {
    // Unknown dispositions are taken as `render` (the draft); profile data, icons, attachments,
    // sessions, previews and reactions are something else.
    let shown = matches!(
        p.disposition,
        Disposition::UNSPECIFIED | Disposition::RENDER | Disposition::INLINE
    ) || p.disposition.0 > Disposition::PREVIEW.0;
    if !shown {
        return None;
    }
    match &p.part {
        Part::Single {
            content_type,
            content,
        } if is_text(content_type) => String::from_utf8(content.clone()).ok(),
        Part::Multi {
            semantics: PartSemantics::ChooseOne,
            parts,
        } => parts.iter().find_map(shown_text),
        Part::Multi { parts, .. } => parts
            .iter()
            .map(shown_text)
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.join("\n")),
        _ => None,
    }
}

/// Whether a media type is a text this version shows as it is: `text/plain` or `text/markdown`,
/// in UTF-8 (the default when no charset is given).
fn is_text(media_type: &str) -> bool {
    let mut fields = media_type.split(';');
    let essence = fields.next().unwrap_or("").trim();
    if !["text/plain", "text/markdown"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
    {
        return false;
    }
    fields.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        !name.trim().eq_ignore_ascii_case("charset")
            || value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    })
}

fn conversation_of(cbor: &[u8]) -> Option<Body> {
    let Ok(Value::Map(entries)) = Value::from_cbor(cbor) else {
        return None;
    };
    let [
        (Value::Text(k1), Value::Text(kind)),
        (Value::Text(k2), Value::Text(name)),
    ] = entries.as_slice()
    else {
        return None;
    };
    let kind = match (k1.as_str(), k2.as_str(), kind.as_str()) {
        ("kind", "name", "direct") => ConversationKind::Direct,
        ("kind", "name", "group") => ConversationKind::Group,
        _ => return None,
    };
    Some(Body::Conversation {
        kind,
        name: name.clone(),
    })
}

/// What a message this version does not show is, for a person.
fn describe(content: &Content) -> String {
    if content.replaces.is_some() {
        return "a change to an earlier message".into();
    }
    let what = describe_part(&content.body);
    if content.body.disposition == Disposition::REACTION {
        format!("a reaction: {what}")
    } else if content.expires.is_some() {
        format!("a disappearing message: {what}")
    } else {
        what
    }
}

fn describe_part(p: &NestedPart) -> String {
    match &p.part {
        Part::Null => "an empty message".into(),
        Part::Single { content_type, .. } => format!("content of type {content_type}"),
        Part::External(x) if x.filename.is_empty() => {
            format!("an attachment of type {}", x.content_type)
        }
        Part::External(x) => format!(
            "an attachment of type {} named {}",
            x.content_type, x.filename
        ),
        Part::Multi { parts, .. } => format!("{} parts", parts.len()),
    }
}

/// What clients before MIMI content sent.
#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Legacy {
    Text {
        id: String,
        body: String,
        #[serde(default)]
        n: u64,
    },
    Meta {
        kind: ConversationKind,
        name: String,
    },
}

fn read_legacy(bytes: &[u8]) -> Result<Incoming, String> {
    match serde_json::from_slice::<Legacy>(bytes) {
        Ok(Legacy::Text { id, body, n }) => Ok(Incoming {
            id,
            number: n,
            mentions: Vec::new(),
            expires: None,
            body: Body::Text {
                text: body,
                reply_to: None,
            },
        }),
        Ok(Legacy::Meta { kind, name }) => Ok(Incoming {
            id: String::new(),
            number: 0,
            mentions: Vec::new(),
            expires: None,
            body: Body::Conversation { kind, name },
        }),
        Err(_) => Err("unknown message format".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_body(t: &str) -> Body {
        Body::Text {
            text: t.into(),
            reply_to: None,
        }
    }

    fn round_trip(content: &Content) -> Body {
        let sent = encode(content, &alice(), group());
        read(&sent.bytes, &alice(), group()).unwrap().body
    }

    #[test]
    fn replies_reactions_edits_and_retractions_read_back() {
        let to = [0x01; 32];
        let of = [0x02; 32];
        assert_eq!(
            round_trip(&reply([1; 16], "yes", to)),
            Body::Text {
                text: "yes".into(),
                reply_to: Some(hex::encode(to))
            }
        );
        assert_eq!(
            round_trip(&reaction([2; 16], to, "\u{2764}")),
            Body::Change(ChangeKind::React {
                to: hex::encode(to),
                emoji: "\u{2764}".into()
            })
        );
        assert_eq!(
            round_trip(&edit([3; 16], of, Some(to), "better")),
            Body::Change(ChangeKind::Replace {
                of: hex::encode(of),
                with: Replacement::Text("better".into())
            })
        );
        for as_reaction in [false, true] {
            assert_eq!(
                round_trip(&retract([4; 16], of, Some(to), as_reaction)),
                Body::Change(ChangeKind::Replace {
                    of: hex::encode(of),
                    with: Replacement::Nothing
                })
            );
        }
        // A reaction that could pass for more (white space, control characters, a novel) is
        // not one.
        for bad in ["", "a b", "\u{1b}[2J", &"x".repeat(MAX_REACTION + 1)] {
            assert!(matches!(
                round_trip(&reaction([5; 16], to, bad)),
                Body::Unsupported { .. }
            ));
        }
    }

    /// The draft's own examples of each kind are read as what they are.
    #[test]
    fn the_drafts_examples_are_read_as_what_they_are() {
        let example = |name: &str| {
            let path = format!(
                "{}/../sealpost-proto/testdata/mimi/{name}.cbor",
                env!("CARGO_MANIFEST_DIR")
            );
            interpret(&Content::decode(&std::fs::read(&path).unwrap()).unwrap())
        };
        assert!(matches!(
            example("original"),
            Some(Body::Text { reply_to: None, .. })
        ));
        assert!(matches!(
            example("reply"),
            Some(Body::Text {
                reply_to: Some(_),
                ..
            })
        ));
        assert!(
            matches!(example("reaction"), Some(Body::Change(ChangeKind::React { emoji, .. })) if emoji == "\u{2764}")
        );
        assert!(matches!(
            example("edit"),
            Some(Body::Change(ChangeKind::Replace {
                with: Replacement::Text(_),
                ..
            }))
        ));
        for retraction in ["delete", "unlike"] {
            assert!(matches!(
                example(retraction),
                Some(Body::Change(ChangeKind::Replace {
                    with: Replacement::Nothing,
                    ..
                }))
            ));
        }
        // An expiring text is a text (its expiry is read with it: see the test of expiry).
        assert!(matches!(example("expiring"), Some(Body::Text { .. })));
        // The draft's attachment is not encrypted as Sealpost's files are (no key commitment,
        // one AES-GCM message): not fetched.
        for unsupported in ["attachment", "conferencing"] {
            assert_eq!(example(unsupported), None, "{unsupported}");
        }
    }

    #[test]
    fn mentions_are_the_listed_users_the_text_names() {
        let names =
            |t: &str| -> Vec<String> { named_users(t).iter().map(|u| u.to_string()).collect() };
        assert_eq!(names("@bob and @carol_2, again @bob"), ["bob", "carol_2"]);
        assert_eq!(
            names("mail bob@example.com or @Bob or @bo or @bob."),
            ["bob"]
        );
        // Inside a word it is not a name; before a hyphen it is.
        assert_eq!(names("x@bob @bob-x @éric"), ["bob"]);
        let mut content = text([1; 16], "ask @carol, not @dave");
        let users: Vec<Username> = ["carol", "dave", "zed"]
            .iter()
            .map(|u| Username::new(u).unwrap())
            .collect();
        set_mentions(&mut content, &users);
        let bytes = encode(&content, &alice(), group()).bytes;
        // Zed is listed but not named in the text: not taken.
        assert_eq!(
            read(&bytes, &alice(), group()).unwrap().mentions,
            ["@carol", "@dave"]
        );
        // Without the list, a name in the text is not a mention.
        let bytes = encode(&text([1; 16], "ask @carol"), &alice(), group()).bytes;
        assert!(read(&bytes, &alice(), group()).unwrap().mentions.is_empty());
    }

    fn alice() -> Username {
        Username::new("alice").unwrap()
    }

    fn group() -> GroupId {
        GroupId::from_bytes([7; 16])
    }

    #[test]
    fn a_text_reads_back_with_the_id_it_was_sent_with() {
        let mut content = text([1; 16], "hello\nworld");
        set_number(&mut content, 42);
        let sent = encode(&content, &alice(), group());
        let got = read(&sent.bytes, &alice(), group()).unwrap();
        assert_eq!(got.id, hex::encode(sent.id));
        assert_eq!(got.number, 42);
        assert_eq!(got.body, text_body("hello\nworld"));
        // The id is the draft's: the sender and the room are part of it.
        let bob = Username::new("bob").unwrap();
        assert_ne!(read(&sent.bytes, &bob, group()).unwrap().id, got.id);
        assert_ne!(
            read(&sent.bytes, &alice(), GroupId::from_bytes([8; 16]))
                .unwrap()
                .id,
            got.id
        );
    }

    #[test]
    fn what_a_conversation_is_reads_back() {
        for kind in [ConversationKind::Direct, ConversationKind::Group] {
            let sent = encode(&conversation([2; 16], kind, "team"), &alice(), group());
            let got = read(&sent.bytes, &alice(), group()).unwrap();
            assert_eq!(
                got.body,
                Body::Conversation {
                    kind,
                    name: "team".into()
                }
            );
        }
    }

    #[test]
    fn unknown_content_is_kept_and_called_unsupported() {
        let mut content = text([3; 16], "");
        content.body.part = Part::Single {
            content_type: "application/x-future".into(),
            content: vec![1, 2, 3],
        };
        let bytes = encode(&content, &alice(), group()).bytes;
        let got = read(&bytes, &alice(), group()).unwrap();
        assert_eq!(
            got.body,
            Body::Unsupported {
                what: "content of type application/x-future".into(),
                content: bytes.to_vec(),
            }
        );
        // An expiring message is read with its expiry.
        let mut expiring = text([4; 16], "soon gone");
        set_expiry(&mut expiring, 60);
        let bytes = encode(&expiring, &alice(), group()).bytes;
        let got = read(&bytes, &alice(), group()).unwrap();
        assert_eq!(got.body, text_body("soon gone"));
        assert_eq!(got.expires, Some((true, 60)));
    }

    #[test]
    fn texts_in_other_shapes_are_shown() {
        for media_type in [
            "text/plain",
            "text/plain; charset=UTF-8",
            "text/markdown;charset=utf-8;variant=GFM",
        ] {
            assert!(is_text(media_type), "{media_type}");
        }
        for media_type in ["text/plain;charset=latin1", "text/html", "image/png"] {
            assert!(!is_text(media_type), "{media_type}");
        }
        let part = |t: &str| NestedPart {
            disposition: Disposition::RENDER,
            language: "en".into(),
            part: Part::Single {
                content_type: TEXT.into(),
                content: t.as_bytes().to_vec(),
            },
        };
        let mut content = text([5; 16], "");
        content.body.part = Part::Multi {
            semantics: PartSemantics::ChooseOne,
            parts: vec![
                NestedPart {
                    disposition: Disposition::RENDER,
                    language: String::new(),
                    part: Part::Single {
                        content_type: "text/html".into(),
                        content: b"<b>hi</b>".to_vec(),
                    },
                },
                part("hi"),
            ],
        };
        let bytes = encode(&content, &alice(), group()).bytes;
        assert_eq!(
            read(&bytes, &alice(), group()).unwrap().body,
            text_body("hi")
        );
    }

    #[test]
    fn a_claimed_sender_or_room_must_be_the_real_one() {
        let mut content = text([6; 16], "hi");
        content
            .extensions
            .insert(
                ExtensionKey::Int(mimi::SENDER_URI),
                Value::Text(sender_uri(&Username::new("mallory").unwrap())),
            )
            .unwrap();
        let bytes = encode(&content, &alice(), group()).bytes;
        assert!(read(&bytes, &alice(), group()).is_err());
        let mut content = text([6; 16], "hi");
        content
            .extensions
            .insert(
                ExtensionKey::Int(mimi::ROOM_URI),
                Value::Text(room_uri(group())),
            )
            .unwrap();
        let bytes = encode(&content, &alice(), group()).bytes;
        assert!(read(&bytes, &alice(), group()).is_ok());
        assert!(read(&bytes, &alice(), GroupId::from_bytes([9; 16])).is_err());
    }

    #[test]
    fn the_json_of_older_clients_is_still_read() {
        let old = br#"{"t":"text","id":"00112233445566778899aabbccddeeff","body":"hi","sent_at":5,"n":3}"#;
        let got = read(old, &alice(), group()).unwrap();
        assert_eq!(got.id, "00112233445566778899aabbccddeeff");
        assert_eq!(got.number, 3);
        assert_eq!(got.body, text_body("hi"));
        let meta = br#"{"t":"meta","kind":"group","name":"team"}"#;
        assert!(matches!(
            read(meta, &alice(), group()).unwrap().body,
            Body::Conversation { .. }
        ));
        assert!(read(b"{\"t\":\"x\"}", &alice(), group()).is_err());
        assert!(read(b"\xff", &alice(), group()).is_err());
    }

    /// The report of draft-mahy-mimi-message-status-01, section 5 (its hex form): read, read,
    /// unread, expired.
    const DRAFT_STATUS_REPORT: &str = concat!(
        "84",
        "825820017ce54837404c3696e0c747b985cb172716d0ed0a3d249ca63ace7d82a096f402",
        "825820015354973c2b65ca937bf1e035ae53a5ab80e947afa43d46920d4202e5cc0b2702",
        "825820018d825adf9f6be00dcafc5704c4102f5022e74219d0b603e4ba7622654042af00",
        "82582001e59db8173939facc2c8a4a0f0ae8d0c7a11a81239626630c9464a8d6717a0303",
    );

    #[test]
    fn status_reports_are_the_drafts_and_typing_reads_back() {
        let draft = hex::decode(DRAFT_STATUS_REPORT).unwrap();
        let statuses = statuses_of(&draft).unwrap();
        assert_eq!(
            statuses.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            vec![2, 2, 0, 3]
        );
        assert!(statuses[0].0.starts_with("017ce548"));
        // What Sealpost sends of the same statuses is the draft's report, byte for byte.
        let ids: Vec<(MimiId, u8)> = statuses
            .iter()
            .map(|(id, s)| (hex::decode(id).unwrap().try_into().unwrap(), *s))
            .collect();
        let sent = status([7; 16], &ids);
        let Part::Single { content, .. } = &sent.body.part else {
            panic!("one part")
        };
        assert_eq!(content, &draft);
        assert_eq!(round_trip(&sent), Body::Status(statuses));
        assert_eq!(round_trip(&typing([8; 16], true)), Body::Typing(true));
        assert_eq!(round_trip(&typing([8; 16], false)), Body::Typing(false));
        // Anything else under these media types is kept as unsupported.
        for (media_type, value) in [
            (
                STATUS,
                Value::Array(vec![Value::Array(vec![
                    Value::Bytes(vec![1; 31]),
                    Value::Uint(1),
                ])]),
            ),
            (
                STATUS,
                Value::Array(vec![Value::Array(vec![
                    Value::Bytes(vec![1; 32]),
                    Value::Uint(256),
                ])]),
            ),
            (
                STATUS,
                Value::Array(vec![Value::Array(vec![
                    Value::Uint(1),
                    Value::Bytes(vec![1; 32]),
                ])]),
            ),
            (
                STATUS,
                Value::Array(vec![
                    Value::Array(vec![
                        Value::Bytes(vec![1; 32]),
                        Value::Uint(1)
                    ]);
                    MAX_STATUSES + 1
                ]),
            ),
            (TYPING, Value::Uint(1)),
        ] {
            assert!(
                matches!(
                    round_trip(&sealpost_part([9; 16], media_type, &value)),
                    Body::Unsupported { .. }
                ),
                "{media_type} {value:?}"
            );
        }
    }
}
