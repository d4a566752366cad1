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

/// A private extension: the sending device's number for this message in the conversation, from
/// 1 (a receiver sees from the numbers when messages are missing or arrive late).
pub(crate) const NUMBER: i64 = -1;

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
    message(
        salt,
        NestedPart {
            disposition: Disposition::UNSPECIFIED,
            language: String::new(),
            part: Part::Single {
                content_type: CONVERSATION.to_owned(),
                content: value.to_cbor(),
            },
        },
    )
}

/// Numbers a message (see [`NUMBER`]).
pub(crate) fn set_number(content: &mut Content, n: u64) {
    // An integer key with an unsigned value is always accepted.
    let _ = content
        .extensions
        .insert(ExtensionKey::Int(NUMBER), Value::Uint(n));
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
    /// What it is.
    pub(crate) body: Body,
}

/// What a message is, as far as this version knows.
#[derive(Debug, PartialEq)]
pub(crate) enum Body {
    /// A text.
    Text(String),
    /// What the conversation is.
    Conversation {
        kind: ConversationKind,
        name: String,
    },
    /// Well-formed, but not something this version shows: what it is, for a person, and the
    /// message as it came (kept, so that a later version can show it).
    Unsupported { what: String, content: Vec<u8> },
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
    Ok(Incoming { id, number, body })
}

/// What this version makes of a message, if it knows it.
fn interpret(content: &Content) -> Option<Body> {
    if content.replaces.is_some() || content.in_reply_to.is_some() || content.expires.is_some() {
        // Edits, deletes, reactions, replies and expiry: not applied by this version, so not
        // shown as if they were a plain message.
        return None;
    }
    if let Part::Single {
        content_type,
        content,
    } = &content.body.part
        && content_type == CONVERSATION
    {
        return conversation_of(content);
    }
    shown_text(&content.body).map(Body::Text)
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
        return "a change to an earlier message (an edit, a deletion or a reaction)".into();
    }
    let what = describe_part(&content.body);
    if content.in_reply_to.is_some() {
        format!("a reply: {what}")
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
            body: Body::Text(body),
        }),
        Ok(Legacy::Meta { kind, name }) => Ok(Incoming {
            id: String::new(),
            number: 0,
            body: Body::Conversation { kind, name },
        }),
        Err(_) => Err("unknown message format".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(got.body, Body::Text("hello\nworld".into()));
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
        // So is a reply, until replies are shown.
        let mut reply = text([4; 16], "yes");
        reply.in_reply_to = Some([1; 32]);
        let bytes = encode(&reply, &alice(), group()).bytes;
        assert!(matches!(
            read(&bytes, &alice(), group()).unwrap().body,
            Body::Unsupported { .. }
        ));
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
            Body::Text("hi".into())
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
        assert_eq!(got.body, Body::Text("hi".into()));
        let meta = br#"{"t":"meta","kind":"group","name":"team"}"#;
        assert!(matches!(
            read(meta, &alice(), group()).unwrap().body,
            Body::Conversation { .. }
        ));
        assert!(read(b"{\"t\":\"x\"}", &alice(), group()).is_err());
        assert!(read(b"\xff", &alice(), group()).is_err());
    }
}
