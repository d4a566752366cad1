//! How events and other text are printed for a person: one line per event (a message may go on
//! over indented lines), with everything that someone else chose made safe for a terminal.

use sealpost_sdk::{Event, Receipt, ReceiptStatus};

/// Text that others chose (a message, a name, a reason the server gave), made safe to print as
/// one line: control characters, escape sequences, line and paragraph separators and
/// bidirectional overrides are shown escaped (`\u{1b}`), so that nobody can colour the terminal,
/// set its title, move the cursor, or start what looks like a line of its own.
pub fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_safe(&mut out, c);
    }
    out
}

/// A message body, made safe like [`safe`], but with its line breaks kept: each following line
/// is indented, so that it can never pass for the start of another sender's message.
pub fn safe_body(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\n' {
            out.push_str(CONTINUATION);
        } else {
            push_safe(&mut out, c);
        }
    }
    out
}

/// What starts the second and later lines of a message: no event line starts with a space.
const CONTINUATION: &str = "\n    | ";

/// What starts the line of a message's reactions (never the start of one of its lines).
const REACTIONS: &str = "\n    + ";

fn push_safe(out: &mut String, c: char) {
    let hidden = c.is_control()
        || matches!(c,
            // Bidirectional embeddings, overrides and isolates, and the marks.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            // Line and paragraph separators.
            | '\u{2028}' | '\u{2029}');
    if hidden {
        out.push_str(&c.escape_unicode().to_string());
    } else {
        out.push(c);
    }
}

/// One line of human-readable output for an event (a message may continue on indented lines).
/// Everything in it that someone else chose is passed through [`safe`].
pub fn line(e: &Event) -> String {
    match e {
        Event::Message {
            conversation,
            from,
            text,
            id,
            late,
            failed,
            unconfirmed,
            reply_to,
            edited,
            deleted,
            reactions,
            file,
            expires_at,
            receipts,
            sender_name,
            ..
        } => {
            let mut notes = Vec::new();
            notes.extend(receipts_note(receipts));
            if expires_at.is_some() {
                notes.push("disappearing".to_owned());
            }
            if let Some(to) = reply_to {
                notes.push(format!("reply to {}", short_id(to)));
            }
            if *deleted {
                notes.push("deleted".to_owned());
            } else if *edited {
                notes.push("edited".to_owned());
            }
            if let Some(why) = failed {
                notes.push(format!("NOT SENT: {}", safe(why)));
            } else if *unconfirmed {
                notes.push("not confirmed yet: sync sends it again".to_owned());
            } else if *late {
                notes.push("late, sent before earlier lines".to_owned());
            }
            let mut line = format!(
                "[{}] {} {}{}",
                safe(conversation),
                short_id(id),
                safe(from),
                shown_name(sender_name.as_deref())
            );
            if !notes.is_empty() {
                line.push_str(&format!(" ({})", notes.join(", ")));
            }
            if !*deleted {
                line.push_str(": ");
                if let Some(file) = file {
                    line.push_str(&format!(
                        "[file {} ({}, {}): sealpost download {}]",
                        safe(&file.name),
                        safe(&file.media_type),
                        size_text(file.size),
                        short_id(id),
                    ));
                    if !text.is_empty() {
                        line.push(' ');
                    }
                }
                line.push_str(&safe_body(text));
            }
            if !reactions.is_empty() {
                let shown: Vec<String> = reactions
                    .iter()
                    .map(|r| format!("{} {}", safe(&r.emoji), safe(&r.from)))
                    .collect();
                line.push_str(REACTIONS);
                line.push_str(&shown.join(", "));
            }
            line
        }
        Event::Reacted {
            conversation,
            from,
            message,
            emoji,
            removed,
        } => format!(
            "[{}] {} {} {} to {}",
            safe(conversation),
            safe(from),
            if *removed {
                "took back the reaction"
            } else {
                "reacted"
            },
            safe(emoji),
            short_id(message)
        ),
        Event::Edited {
            conversation,
            from,
            message,
            text,
        } => format!(
            "[{}] {} edited {}: {}",
            safe(conversation),
            safe(from),
            short_id(message),
            safe_body(text)
        ),
        Event::Deleted {
            conversation,
            from,
            message,
        } => format!(
            "[{}] {} deleted {}",
            safe(conversation),
            safe(from),
            short_id(message)
        ),
        Event::Receipt {
            conversation,
            from,
            status,
            messages,
        } => {
            let mut shown: Vec<String> = messages.iter().take(5).map(short_id).collect();
            if messages.len() > shown.len() {
                shown.push(format!("and {} more", messages.len() - shown.len()));
            }
            format!(
                "[{}] {} {} {}",
                safe(conversation),
                safe(from),
                match status {
                    ReceiptStatus::Delivered => "received",
                    ReceiptStatus::Read => "read",
                },
                shown.join(", ")
            )
        }
        Event::Profile {
            conversation,
            from,
            name,
            avatar,
        } => {
            let mut shared = Vec::new();
            if !name.is_empty() {
                shared.push(format!("the name \"{}\"", safe(name)));
            }
            if let Some(a) = avatar {
                shared.push(format!(
                    "an avatar ({}, {})",
                    safe(&a.media_type),
                    size_text(a.size)
                ));
            }
            if shared.is_empty() {
                shared.push("no name and no avatar".into());
            }
            format!(
                "[{}] {} shares {}",
                safe(conversation),
                safe(from),
                shared.join(" and ")
            )
        }
        Event::Typing {
            conversation,
            from,
            typing,
        } => format!(
            "[{}] {} {}",
            safe(conversation),
            safe(from),
            if *typing {
                "is typing"
            } else {
                "stopped typing"
            }
        ),
        Event::Timer {
            conversation,
            by,
            seconds: 0,
        } => format!(
            "[{}] {} turned disappearing messages off",
            safe(conversation),
            safe(by)
        ),
        Event::Timer {
            conversation,
            by,
            seconds,
        } => format!(
            "[{}] {} set messages to disappear {} after they are sent",
            safe(conversation),
            safe(by),
            duration_text(*seconds)
        ),
        Event::Unsupported {
            conversation,
            from,
            what,
            ..
        } => format!(
            "[{}] {} sent a message this version of Sealpost cannot show ({}); it is kept, and a newer version will show it",
            safe(conversation),
            safe(from),
            safe(what)
        ),
        Event::Sent { conversation, id } => format!(
            "[{}] your message {} was confirmed by the server: it was sent once",
            safe(conversation),
            short_id(id)
        ),
        Event::NotSent {
            conversation,
            id,
            reason,
        } => format!(
            "[{}] your message {} was NOT sent: {}",
            safe(conversation),
            short_id(id),
            safe(reason)
        ),
        Event::Gap {
            conversation,
            from,
            missing,
        } => format!(
            "[{}] {missing} message(s) from {} are missing here: \
             the server dropped or is holding them back",
            safe(conversation),
            safe(from)
        ),
        Event::MemberAdded {
            conversation,
            member,
            by,
        } => format!(
            "[{}] {} added {}",
            safe(conversation),
            safe(by),
            safe(member)
        ),
        Event::MemberRemoved {
            conversation,
            member,
            by,
        } => format!(
            "[{}] {} removed {}",
            safe(conversation),
            safe(by),
            safe(member)
        ),
        Event::MemberLeft {
            conversation,
            member,
        } => format!("[{}] {} left", safe(conversation), safe(member)),
        Event::DeviceAdded {
            conversation,
            member,
            device,
            by,
            ..
        } => format!(
            "[{}] {} added device {} of {}",
            safe(conversation),
            safe(by),
            safe(device),
            safe(member)
        ),
        Event::DeviceRemoved {
            conversation,
            member,
            device,
            by,
            ..
        } => format!(
            "[{}] {} removed device {} of {}",
            safe(conversation),
            safe(by),
            safe(device),
            safe(member)
        ),
        Event::AccountDevice {
            device,
            change,
            epoch,
            ..
        } => match change {
            sealpost_sdk::DeviceChange::Added => format!(
                "device {0} was linked to your account (the server's key directory says so from \
                 its version {epoch} on); if you did not link it, remove it at once: sealpost \
                 device remove {0} (see docs/threat-model.md)",
                safe(device)
            ),
            sealpost_sdk::DeviceChange::Removed => format!(
                "device {} was removed from your account (the server's key directory says so from \
                 its version {epoch} on)",
                safe(device)
            ),
        },
        Event::Joined { conversation, by } => {
            format!("[{}] {} added you", safe(conversation), safe(by))
        }
        Event::Removed { conversation, by } => {
            format!("[{}] {} removed you", safe(conversation), safe(by))
        }
        Event::Undecryptable {
            conversation,
            seq,
            reason,
        } => format!(
            "[{}] message #{seq} could not be read: {}",
            safe(conversation),
            safe(reason)
        ),
        Event::Security {
            conversation,
            alert,
            detail,
        } => {
            let alert = serde_json::to_value(alert)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match conversation {
                Some(c) => format!("[{}] SECURITY ({alert}): {}", safe(c), safe(detail)),
                None => format!("SECURITY ({alert}): {}", safe(detail)),
            }
        }
    }
}

/// A message id as people are shown it, and as commands take it: 8 hex digits (after the
/// `01` that starts every MIMI message id).
fn short_id(id: &sealpost_sdk::MessageId) -> String {
    safe(&id.short())
}

/// A sender's display name as shown after their `@username`: in quotes (which a name cannot
/// hold), or nothing.
pub fn shown_name(name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!(" \"{}\"", safe(name)),
        _ => String::new(),
    }
}

/// Who has or read a message of one's own, as a note: "read by @bob, delivered to @carol" (a
/// count beyond three names).
fn receipts_note(receipts: &[Receipt]) -> Option<String> {
    let who = |status: ReceiptStatus| {
        let names: Vec<String> = receipts
            .iter()
            .filter(|r| r.status == status)
            .map(|r| safe(&r.from))
            .collect();
        match names.len() {
            0 => None,
            1..=3 => Some(names.join(", ")),
            n => Some(format!("{n} members")),
        }
    };
    let parts: Vec<String> = [
        who(ReceiptStatus::Read).map(|w| format!("read by {w}")),
        who(ReceiptStatus::Delivered).map(|w| format!("delivered to {w}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A size for people: bytes, KiB, MiB or GiB.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A timer for people: the largest unit it is a whole number of (`90m`, `7d`).
fn duration_text(seconds: u64) -> String {
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}
