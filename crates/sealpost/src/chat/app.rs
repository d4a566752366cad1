//! The state of `sealpost chat` and how it changes: what comes in (a key, an event of the
//! profile's log, the answer to a call) goes to [`App::update`], which changes the state and
//! says what to do ([`Effect`]: call a method, load the conversations, mark events seen). Nothing
//! here waits or draws, so that every step can be tested by itself.

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::{Value, json};

use sealpost_sdk::{
    Connection, ConversationId, ConversationInfo, ConversationKind, Event, EventId, HistoryEntry,
    LoggedEvent, MemberInfo, MessageId, Preferences, SecurityAlert, TYPING_HOLDS_MS,
    TYPING_REPEAT_MS, Transfer, Verification, Whoami,
};

use super::command::{self, Command};
use super::editor::Editor;
use crate::rpc::RpcError;

/// Entries of the open conversation loaded at first; scrolling past them loads as many more.
pub const PAGE: usize = 200;

/// Lines PgUp and PgDn move the messages by.
const SCROLL: usize = 10;

/// What comes in.
#[derive(Debug)]
pub enum Msg {
    /// A key, a paste, a resize.
    Term(TermEvent),
    /// An event of the profile's log.
    Logged(Box<LoggedEvent>),
    /// The server connection changed.
    Connection(Connection),
    /// A file transfer moved on.
    Transfer(Option<Transfer>),
    /// The conversations, and the open one's history, as loaded.
    Loaded(Loaded),
    /// A call's answer.
    Answer {
        then: Then,
        result: Result<Value, RpcError>,
    },
    /// A second passed (typing indicators run out).
    Tick,
}

/// What a load found.
#[derive(Debug)]
pub struct Loaded {
    /// Every conversation.
    pub conversations: Option<Vec<ConversationInfo>>,
    /// The open conversation's newest entries, oldest first.
    pub history: Option<(ConversationId, Vec<HistoryEntry>)>,
    /// What this account tells others (receipts, typing).
    pub preferences: Option<Preferences>,
    /// Why something could not be loaded.
    pub error: Option<String>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Call a method of [`crate::rpc`]; its answer comes back as [`Msg::Answer`].
    Call {
        method: &'static str,
        params: Value,
        then: Then,
    },
    /// Load the conversations, and the open one's newest `limit` entries after marking it
    /// read; comes back as [`Msg::Loaded`].
    Load {
        open: Option<ConversationId>,
        limit: usize,
    },
    /// Mark events of the log seen by the chat.
    Seen(Vec<EventId>),
    /// Leave.
    Quit,
}

/// What to do with a call's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Nothing to show.
    Nothing,
    /// A message was sent: if it was refused, its text goes back to the input line (when that
    /// is empty), to be sent again.
    Sent(String),
    /// Show this on success.
    Say(String),
    /// Open the conversation the answer describes.
    Open,
    /// Show the safety number it answers.
    Verification,
    /// Show the members it answers.
    Members(String),
    /// Tell where the file was saved.
    Saved,
}

/// A security alert not acknowledged yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its event.
    pub event_id: EventId,
    /// The conversation it happened in, if one.
    pub conversation: Option<String>,
    /// What kind.
    pub alert: SecurityAlert,
    /// What exactly.
    pub detail: String,
}

/// A box over the messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    /// The commands and keys.
    Help,
    /// A safety number.
    Verify(Verification),
    /// A conversation's members.
    Members {
        conversation: String,
        members: Vec<MemberInfo>,
    },
}

/// A line at the bottom saying how the last thing went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What.
    pub text: String,
    /// Whether it failed.
    pub error: bool,
}

/// Everything on the screen.
#[derive(Debug)]
pub struct App {
    /// Who this is.
    pub me: Whoami,
    /// Every conversation, as last loaded.
    pub conversations: Vec<ConversationInfo>,
    /// The open conversation.
    pub open: Option<ConversationId>,
    /// A 1:1 that does not exist yet: the first message starts it (`@user`).
    pub draft: Option<String>,
    /// The open conversation's entries, oldest first.
    pub history: Vec<HistoryEntry>,
    /// How many entries of it to load.
    pub limit: usize,
    /// Lines the messages are scrolled up by (0: the newest at the bottom).
    pub scroll: usize,
    /// The message picked (for commands about one).
    pub picked: Option<MessageId>,
    /// What is being written.
    pub editor: Editor,
    /// Security alerts not acknowledged yet, oldest first.
    pub alerts: VecDeque<Alert>,
    /// Who is typing where (conversation name, `@who`), until when (unix ms).
    pub typing: BTreeMap<(String, String), u64>,
    /// The server connection.
    pub connection: Connection,
    /// The file transfer going on.
    pub transfer: Option<Transfer>,
    /// How the last thing went.
    pub status: Option<Status>,
    /// A box shown over the messages.
    pub overlay: Option<Overlay>,
    /// Lines the box is scrolled down by.
    pub overlay_scroll: usize,
    /// Receipts and typing indicators.
    pub preferences: Preferences,
    /// A load is under way.
    loading: bool,
    /// Something changed while it was: load again when it is back.
    stale: bool,
    /// When this device last said it is typing, and where.
    said_typing: Option<(String, u64)>,
}

impl App {
    /// A chat for `me`, with nothing loaded yet.
    pub fn new(me: Whoami) -> App {
        App {
            me,
            conversations: Vec::new(),
            open: None,
            draft: None,
            history: Vec::new(),
            limit: PAGE,
            scroll: 0,
            picked: None,
            editor: Editor::default(),
            alerts: VecDeque::new(),
            typing: BTreeMap::new(),
            connection: Connection::Starting,
            transfer: None,
            status: None,
            overlay: None,
            overlay_scroll: 0,
            preferences: Preferences::default(),
            loading: false,
            stale: false,
            said_typing: None,
        }
    }

    /// The open conversation as listed.
    pub fn open_info(&self) -> Option<&ConversationInfo> {
        let open = self.open.as_ref()?;
        self.conversations.iter().find(|c| &c.id == open)
    }

    /// Where a message written now goes: the open conversation, or the 1:1 to start.
    pub fn target(&self) -> Option<String> {
        match (&self.open, &self.draft) {
            (_, Some(user)) => Some(user.clone()),
            (Some(id), None) => Some(id.to_string()),
            (None, None) => None,
        }
    }

    /// Who is typing in the open conversation now.
    pub fn typing_here(&self, now_ms: u64) -> Vec<&str> {
        let Some(here) = self.open_info() else {
            return Vec::new();
        };
        self.typing
            .iter()
            .filter(|((conv, _), until)| *conv == here.conversation && **until > now_ms)
            .map(|((_, who), _)| who.as_str())
            .collect()
    }

    /// The first thing to do: load everything.
    pub fn start(&mut self) -> Vec<Effect> {
        self.load()
    }

    fn load(&mut self) -> Vec<Effect> {
        if self.loading {
            self.stale = true;
            return Vec::new();
        }
        self.loading = true;
        vec![Effect::Load {
            open: self.open.clone(),
            limit: self.limit,
        }]
    }

    fn show(&mut self, overlay: Overlay) {
        self.overlay = Some(overlay);
        self.overlay_scroll = 0;
    }

    fn say(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
        });
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
        });
    }

    /// Takes in what came, at `now_ms` (unix milliseconds), and says what to do.
    pub fn update(&mut self, msg: Msg, now_ms: u64) -> Vec<Effect> {
        match msg {
            Msg::Term(TermEvent::Key(key)) if key.kind != KeyEventKind::Release => {
                self.key(key, now_ms)
            }
            Msg::Term(TermEvent::Paste(text)) => {
                self.editor
                    .insert(&text.replace("\r\n", "\n").replace('\r', "\n"));
                self.typed(now_ms)
            }
            Msg::Term(_) | Msg::Tick => {
                self.typing.retain(|_, until| *until > now_ms);
                Vec::new()
            }
            Msg::Connection(c) => {
                self.connection = c;
                Vec::new()
            }
            Msg::Transfer(t) => {
                self.transfer = t.filter(|t| t.done < t.total);
                Vec::new()
            }
            Msg::Logged(e) => self.logged(*e, now_ms),
            Msg::Loaded(loaded) => self.loaded(loaded),
            Msg::Answer { then, result } => self.answer(then, result),
        }
    }

    fn logged(&mut self, e: LoggedEvent, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        match e.event {
            Event::Security {
                conversation,
                alert,
                detail,
            } => {
                // Marked seen when acknowledged, not before: shown again after a crash.
                self.alerts.push_back(Alert {
                    event_id: e.event_id,
                    conversation,
                    alert,
                    detail,
                });
            }
            Event::Typing {
                conversation,
                from,
                typing,
            } => {
                if typing {
                    self.typing
                        .insert((conversation, from), now_ms + TYPING_HOLDS_MS);
                } else {
                    self.typing.remove(&(conversation, from));
                }
                return vec![Effect::Seen(vec![e.event_id])];
            }
            Event::Message {
                ref conversation,
                ref from,
                ..
            } => {
                // A message ends the typing that led to it.
                self.typing.remove(&(conversation.clone(), from.clone()));
                effects.push(Effect::Seen(vec![e.event_id]));
            }
            _ => effects.push(Effect::Seen(vec![e.event_id])),
        }
        effects.extend(self.load());
        effects
    }

    fn loaded(&mut self, loaded: Loaded) -> Vec<Effect> {
        self.loading = false;
        if let Some(conversations) = loaded.conversations {
            self.conversations = conversations;
        }
        if let Some(preferences) = loaded.preferences {
            self.preferences = preferences;
        }
        if let Some(e) = loaded.error {
            self.fail(crate::render::safe(&e));
        }
        if let Some(user) = &self.draft
            && let Some(c) = self
                .conversations
                .iter()
                .find(|c| c.kind == ConversationKind::Direct && &c.conversation == user)
        {
            // The first message started it.
            self.open = Some(c.id.clone());
            self.draft = None;
            self.stale = true;
        }
        if self.open.is_none()
            && self.draft.is_none()
            && let Some(first) = self.conversations.first()
        {
            self.open = Some(first.id.clone());
            self.stale = true;
        }
        match loaded.history {
            Some((id, entries)) if Some(&id) == self.open.as_ref() => self.history = entries,
            // Another conversation was opened meanwhile.
            Some(_) => self.stale = true,
            None if self.open.is_none() => self.history.clear(),
            // It could not be loaded: the error is shown.
            None => {}
        }
        if let Some(picked) = &self.picked
            && !self
                .history
                .iter()
                .any(|h| message_id(&h.event) == Some(picked))
        {
            self.picked = None;
        }
        if std::mem::take(&mut self.stale) {
            return self.load();
        }
        Vec::new()
    }

    fn answer(&mut self, then: Then, result: Result<Value, RpcError>) -> Vec<Effect> {
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                self.fail(crate::render::safe(&e.message));
                if let Then::Sent(text) = then
                    && self.editor.is_empty()
                {
                    self.editor.insert(&text);
                }
                return Vec::new();
            }
        };
        match then {
            Then::Nothing | Then::Sent(_) => {}
            Then::Say(text) => self.say(text),
            Then::Open => {
                if let Ok(info) = serde_json::from_value::<ConversationInfo>(value) {
                    self.say(format!(
                        "created {}",
                        crate::render::safe(&info.conversation)
                    ));
                    return self.open_conversation(info.id);
                }
            }
            Then::Verification => match serde_json::from_value(value) {
                Ok(v) => self.show(Overlay::Verify(v)),
                Err(e) => self.fail(format!("the answer does not parse: {e}")),
            },
            Then::Members(conversation) => match serde_json::from_value(value) {
                Ok(members) => self.show(Overlay::Members {
                    conversation,
                    members,
                }),
                Err(e) => self.fail(format!("the answer does not parse: {e}")),
            },
            Then::Saved => {
                let path = value["path"].as_str().unwrap_or_default();
                self.say(format!("saved to {}", crate::render::safe(path)));
            }
        }
        self.load()
    }

    fn open_conversation(&mut self, id: ConversationId) -> Vec<Effect> {
        if self.open.as_ref() != Some(&id) {
            self.history.clear();
            self.limit = PAGE;
            self.scroll = 0;
            self.picked = None;
        }
        self.open = Some(id);
        self.draft = None;
        self.load()
    }

    fn cycle(&mut self, forward: bool) -> Vec<Effect> {
        let n = self.conversations.len();
        if n == 0 {
            return Vec::new();
        }
        let at = self
            .open
            .as_ref()
            .and_then(|open| self.conversations.iter().position(|c| &c.id == open));
        let next = match (at, forward) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % n,
            (Some(i), false) => (i + n - 1) % n,
        };
        let id = self.conversations[next].id.clone();
        self.open_conversation(id)
    }

    /// Picks the message before (`older`) or after the one picked.
    fn pick(&mut self, older: bool) {
        let ids: Vec<&MessageId> = self
            .history
            .iter()
            .filter_map(|h| message_id(&h.event))
            .collect();
        let at = self
            .picked
            .as_ref()
            .and_then(|p| ids.iter().position(|id| *id == p));
        self.picked = match (at, older) {
            (None, true) => ids.last().map(|id| (*id).clone()),
            (None, false) => None,
            (Some(0), true) => Some(ids[0].clone()),
            (Some(i), true) => Some(ids[i - 1].clone()),
            (Some(i), false) => ids.get(i + 1).map(|id| (*id).clone()),
        };
    }

    fn key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') if ctrl => return vec![Effect::Quit],
            KeyCode::Char('d') if ctrl && self.editor.is_empty() => return vec![Effect::Quit],
            KeyCode::Char('g') if ctrl => return self.acknowledge(),
            KeyCode::Char('l') if ctrl => return Vec::new(),
            KeyCode::F(1) => {
                match self.overlay {
                    Some(Overlay::Help) => self.overlay = None,
                    _ => self.show(Overlay::Help),
                }
                return Vec::new();
            }
            KeyCode::Esc => {
                if self.overlay.take().is_none() {
                    self.picked = None;
                }
                return Vec::new();
            }
            _ => {}
        }
        if self.overlay.is_some() {
            match key.code {
                // Enter closes the box (nothing typed behind it is sent unseen).
                KeyCode::Enter => self.overlay = None,
                KeyCode::PageDown => self.overlay_scroll += SCROLL,
                KeyCode::Down => self.overlay_scroll += 1,
                KeyCode::PageUp => self.overlay_scroll = self.overlay_scroll.saturating_sub(SCROLL),
                KeyCode::Up => self.overlay_scroll = self.overlay_scroll.saturating_sub(1),
                _ => {}
            }
            return Vec::new();
        }
        match key.code {
            KeyCode::Tab => return self.cycle(true),
            KeyCode::BackTab => return self.cycle(false),
            KeyCode::Up if alt || ctrl => self.pick(true),
            KeyCode::Down if alt || ctrl => self.pick(false),
            KeyCode::PageUp => {
                self.scroll += SCROLL;
                if self.scroll >= self.history_lines_hint() && self.history.len() >= self.limit {
                    self.limit += PAGE;
                    return self.load();
                }
            }
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(SCROLL),
            KeyCode::Enter if alt => {
                self.editor.insert("\n");
                return self.typed(now_ms);
            }
            KeyCode::Enter => return self.submit(),
            KeyCode::Up if self.editor.on_first_line() => self.editor.older(),
            KeyCode::Up => self.editor.vertical(true),
            KeyCode::Down if self.editor.on_last_line() => self.editor.newer(),
            KeyCode::Down => self.editor.vertical(false),
            KeyCode::Left => self.editor.left(),
            KeyCode::Right => self.editor.right(),
            KeyCode::Home => self.editor.home(),
            KeyCode::End => self.editor.end(),
            KeyCode::Char('a') if ctrl => self.editor.home(),
            KeyCode::Char('e') if ctrl => self.editor.end(),
            KeyCode::Char('u') if ctrl => self.editor.delete_to_start(),
            KeyCode::Char('w') if ctrl => self.editor.delete_word(),
            KeyCode::Backspace => self.editor.backspace(),
            KeyCode::Delete => self.editor.delete(),
            KeyCode::Char(c) if !ctrl && !alt => {
                self.editor.insert(c.encode_utf8(&mut [0; 4]));
                return self.typed(now_ms);
            }
            _ => {}
        }
        Vec::new()
    }

    /// A rough count of the lines the loaded history takes (two for each entry), to know when
    /// scrolling reached its top.
    fn history_lines_hint(&self) -> usize {
        self.history.len() * 2
    }

    /// Something was typed: with typing indicators on, say so (again every few seconds).
    fn typed(&mut self, now_ms: u64) -> Vec<Effect> {
        let Some(to) = self.target() else {
            return Vec::new();
        };
        if !self.preferences.typing || self.editor.text().starts_with('/') {
            return Vec::new();
        }
        let fresh = matches!(&self.said_typing,
            Some((there, at)) if *there == to && now_ms < at + TYPING_REPEAT_MS);
        if fresh {
            return Vec::new();
        }
        self.said_typing = Some((to.clone(), now_ms));
        vec![Effect::Call {
            method: "typing",
            params: json!({ "to": to, "typing": true }),
            then: Then::Nothing,
        }]
    }

    fn acknowledge(&mut self) -> Vec<Effect> {
        match self.alerts.pop_front() {
            Some(alert) => vec![Effect::Seen(vec![alert.event_id])],
            None => {
                self.say("no security alert is waiting");
                Vec::new()
            }
        }
    }

    fn submit(&mut self) -> Vec<Effect> {
        let text = self.editor.take();
        if text.trim().is_empty() {
            return Vec::new();
        }
        self.status = None;
        let mut effects = Vec::new();
        if self.said_typing.take().is_some()
            && let Some(to) = self.target()
        {
            effects.push(Effect::Call {
                method: "typing",
                params: json!({ "to": to, "typing": false }),
                then: Then::Nothing,
            });
        }
        let text = match text.strip_prefix('/') {
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            Some(_) => {
                match command::parse(&text, self.picked.is_some()) {
                    Ok(c) => effects.extend(self.command(c)),
                    Err(e) => self.fail(e),
                }
                return effects;
            }
            None => text,
        };
        let Some(to) = self.target() else {
            self.fail("no conversation is open: /open @user starts one, /group NAME makes one");
            return effects;
        };
        self.scroll = 0;
        effects.push(Effect::Call {
            method: "send",
            params: json!({ "to": to, "text": text }),
            then: Then::Sent(text),
        });
        effects
    }

    /// The picked message, or the one named.
    fn message(&self, id: Option<String>) -> Option<String> {
        id.or_else(|| self.picked.as_ref().map(|p| p.to_string()))
    }

    fn command(&mut self, c: Command) -> Vec<Effect> {
        let call = |method, params, then| {
            vec![Effect::Call {
                method,
                params,
                then,
            }]
        };
        let here = self.target();
        let group = self.open_info().map(|c| (c.id.to_string(), c.kind));
        let in_group = || match &group {
            Some((id, ConversationKind::Group)) => Ok(id.clone()),
            _ => Err("open a group first (Tab goes through the conversations)".to_owned()),
        };
        match c {
            Command::Help => {
                self.show(Overlay::Help);
                Vec::new()
            }
            Command::Quit => vec![Effect::Quit],
            Command::Ack => self.acknowledge(),
            Command::Open(target) => self.open_target(&target),
            Command::Group { name, members } => call(
                "group.create",
                json!({ "name": name, "members": members }),
                Then::Open,
            ),
            Command::Add(users) => match in_group() {
                Ok(id) => call(
                    "group.add",
                    json!({ "conversation": id, "users": users }),
                    Then::Say(format!("added {}", users.join(" "))),
                ),
                Err(e) => self.refuse(e),
            },
            Command::Remove(users) => match in_group() {
                Ok(id) => call(
                    "group.remove",
                    json!({ "conversation": id, "users": users }),
                    Then::Say(format!("removed {}", users.join(" "))),
                ),
                Err(e) => self.refuse(e),
            },
            Command::Leave => match in_group() {
                Ok(id) => call(
                    "group.leave",
                    json!({ "conversation": id }),
                    Then::Say("you left the group".into()),
                ),
                Err(e) => self.refuse(e),
            },
            Command::Members => match self.open_info() {
                Some(info) => {
                    let name = info.conversation.clone();
                    call(
                        "group.members",
                        json!({ "conversation": info.id }),
                        Then::Members(name),
                    )
                }
                None => self.refuse("no conversation is open".into()),
            },
            Command::File { path, caption } => {
                let Some(to) = here else {
                    return self.refuse("no conversation is open".into());
                };
                match crate::cli::absolute(&path) {
                    Ok(file) => call(
                        "send",
                        json!({ "to": to, "file": file, "caption": caption }),
                        Then::Say(format!("sent {}", path.display())),
                    ),
                    Err(e) => self.refuse(e.to_string()),
                }
            }
            Command::Reply { id, text } => match (here, self.message(id)) {
                (Some(to), Some(id)) => {
                    self.picked = None;
                    let params = json!({ "to": to, "text": text, "reply_to": id });
                    call("send", params, Then::Sent(format!("/reply {id} {text}")))
                }
                _ => self.refuse("no conversation is open".into()),
            },
            Command::React { id, emoji, remove } => match self.message(id) {
                Some(id) => call(
                    "react",
                    json!({ "message": id, "emoji": emoji, "remove": remove }),
                    Then::Nothing,
                ),
                None => Vec::new(),
            },
            Command::Edit { id, text } => match self.message(id) {
                Some(id) => call(
                    "edit",
                    json!({ "message": id, "text": text }),
                    Then::Nothing,
                ),
                None => Vec::new(),
            },
            Command::Delete { id } => match self.message(id) {
                Some(id) => {
                    self.picked = None;
                    call("delete", json!({ "message": id }), Then::Nothing)
                }
                None => Vec::new(),
            },
            Command::Download { id, out } => match self.message(id) {
                Some(id) => {
                    let out = match out.map(|o| crate::cli::absolute(o.as_ref())).transpose() {
                        Ok(out) => out,
                        Err(e) => return self.refuse(e.to_string()),
                    };
                    call(
                        "download",
                        json!({ "message": id, "out": out }),
                        Then::Saved,
                    )
                }
                None => Vec::new(),
            },
            Command::Disappear(seconds) => match here {
                Some(to) => call(
                    "disappear",
                    json!({ "to": to, "seconds": seconds }),
                    Then::Nothing,
                ),
                None => self.refuse("no conversation is open".into()),
            },
            Command::Verify { user, confirm } => call(
                "verify",
                json!({ "user": user, "confirm": confirm }),
                Then::Verification,
            ),
            Command::Link(code) => call(
                "device.approve",
                json!({ "code": code }),
                Then::Say("approved: the new device is linked to your account".into()),
            ),
            Command::Name(name) => call(
                "profile",
                json!({ "name": name }),
                Then::Say(if name.is_empty() {
                    "you share no display name now".into()
                } else {
                    format!("you share the name \"{name}\" now")
                }),
            ),
            Command::Receipts(on) => call(
                "settings",
                json!({ "receipts": on }),
                Then::Say(format!("receipts {}", if on { "on" } else { "off" })),
            ),
            Command::Typing(on) => call(
                "settings",
                json!({ "typing": on }),
                Then::Say(format!(
                    "typing indicators {}",
                    if on { "on" } else { "off" }
                )),
            ),
        }
    }

    fn refuse(&mut self, why: String) -> Vec<Effect> {
        self.fail(why);
        Vec::new()
    }

    /// `/open`: a conversation by name or id, or a 1:1 to start with `@user`.
    fn open_target(&mut self, target: &str) -> Vec<Effect> {
        let found = self.conversations.iter().find(|c| {
            c.conversation == target
                || c.conversation.strip_prefix('#') == Some(target)
                || (target.len() >= 4 && c.id.as_str().starts_with(target))
        });
        if let Some(c) = found {
            let id = c.id.clone();
            return self.open_conversation(id);
        }
        match target.strip_prefix('@') {
            Some(user) if !user.is_empty() => {
                self.open = None;
                self.history.clear();
                self.picked = None;
                self.draft = Some(target.to_owned());
                Vec::new()
            }
            _ => self.refuse(format!(
                "no conversation {}: /open @user starts a 1:1, /group NAME creates a group",
                crate::render::safe(target)
            )),
        }
    }
}

/// The id of a message entry.
pub fn message_id(e: &Event) -> Option<&MessageId> {
    match e {
        Event::Message { id, .. } | Event::Unsupported { id, .. } => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Whoami {
        serde_json::from_value(json!({
            "username": "@alice",
            "device": "12648d8fd2a036c11f3b455b9f9cf970",
            "server": "https://chat.example.org",
        }))
        .unwrap()
    }

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Msg {
        Msg::Term(TermEvent::Key(KeyEvent::new(code, modifiers)))
    }

    fn type_line(app: &mut App, line: &str, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for c in line.chars() {
            effects.extend(app.update(key(KeyCode::Char(c), KeyModifiers::NONE), now));
        }
        effects.extend(app.update(key(KeyCode::Enter, KeyModifiers::NONE), now));
        effects
    }

    fn loaded(conversations: serde_json::Value, history: Option<serde_json::Value>) -> Msg {
        Msg::Loaded(Loaded {
            conversations: Some(serde_json::from_value(conversations).unwrap()),
            history: history.map(|h| {
                let entries: Vec<HistoryEntry> = serde_json::from_value(h).unwrap();
                (entries[0].conversation_id.clone(), entries)
            }),
            preferences: None,
            error: None,
        })
    }

    fn logged(id: u64, event: serde_json::Value) -> Msg {
        let mut e = event;
        e["event_id"] = json!(id);
        Msg::Logged(Box::new(serde_json::from_value(e).unwrap()))
    }

    const BOB: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

    fn with_bob() -> serde_json::Value {
        json!([{"conversation": "@bob", "id": BOB, "kind": "direct", "ciphersuite": "pq",
                "members": 2, "active": true}])
    }

    fn calls(effects: &[Effect]) -> Vec<(&'static str, Value)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call { method, params, .. } => Some((*method, params.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_alert_is_marked_seen_only_once_acknowledged() {
        let mut app = App::new(me());
        app.start();
        let effects = app.update(
            logged(
                7,
                json!({"event": "security", "alert": "split_view", "detail": "two roots"}),
            ),
            0,
        );
        assert!(
            !effects.contains(&Effect::Seen(vec![EventId(7)])),
            "{effects:?}"
        );
        let effects = app.update(
            logged(
                8,
                json!({"event": "member_added", "conversation": "#team", "member": "@bob",
                       "by": "@carol"}),
            ),
            0,
        );
        assert!(
            effects.contains(&Effect::Seen(vec![EventId(8)])),
            "{effects:?}"
        );
        assert_eq!(app.alerts.len(), 1);
        // Typing, Enter, Esc or Tab do not make it go: only Ctrl-G (or /ack).
        type_line(&mut app, "hello", 0);
        app.update(key(KeyCode::Esc, KeyModifiers::NONE), 0);
        assert_eq!(app.alerts.len(), 1);
        let effects = app.update(key(KeyCode::Char('g'), KeyModifiers::CONTROL), 0);
        assert_eq!(effects, vec![Effect::Seen(vec![EventId(7)])]);
        assert!(app.alerts.is_empty());
    }

    #[test]
    fn loads_do_not_pile_up() {
        let mut app = App::new(me());
        assert_eq!(app.start().len(), 1);
        let event = || json!({"event": "joined", "conversation": "@bob", "by": "@bob"});
        for id in 1..5 {
            let effects = app.update(logged(id, event()), 0);
            assert!(!effects.iter().any(|e| matches!(e, Effect::Load { .. })));
        }
        // What came meanwhile is loaded once more (and the first conversation is opened).
        let effects = app.update(loaded(with_bob(), None), 0);
        assert_eq!(
            effects,
            vec![Effect::Load {
                open: Some(serde_json::from_value(json!(BOB)).unwrap()),
                limit: PAGE
            }]
        );
        let history = json!([{"position": 1, "conversation_id": BOB, "event": "joined",
                               "conversation": "@bob", "by": "@bob"}]);
        assert!(app.update(loaded(with_bob(), Some(history)), 0).is_empty());
        assert_eq!(app.history.len(), 1);
    }

    #[test]
    fn a_first_message_to_someone_new_opens_what_it_started() {
        let mut app = App::new(me());
        app.start();
        app.update(loaded(json!([]), None), 0);
        assert!(type_line(&mut app, "/open @bob", 0).is_empty());
        assert_eq!(app.draft.as_deref(), Some("@bob"));
        let effects = type_line(&mut app, "hi bob", 0);
        assert_eq!(
            calls(&effects),
            vec![("send", json!({"to": "@bob", "text": "hi bob"}))]
        );
        app.update(loaded(with_bob(), None), 0);
        assert_eq!(app.draft, None);
        assert_eq!(app.open.as_ref().map(|o| o.as_str()), Some(BOB));
    }

    #[test]
    fn a_refused_message_goes_back_to_the_input_line() {
        let mut app = App::new(me());
        app.start();
        app.update(loaded(with_bob(), None), 0);
        let effects = type_line(&mut app, "are you there?", 0);
        let Some(Effect::Call { then, .. }) = effects.into_iter().next() else {
            panic!("nothing sent");
        };
        let refused = RpcError::params("refused for the test");
        app.update(
            Msg::Answer {
                then,
                result: Err(refused),
            },
            0,
        );
        assert_eq!(app.editor.text(), "are you there?");
        assert!(app.status.as_ref().is_some_and(|s| s.error));
    }

    #[test]
    fn typing_is_said_now_and_then_and_stopped_by_sending() {
        let mut app = App::new(me());
        app.start();
        app.update(loaded(with_bob(), None), 0);
        let typing = |effects: &[Effect]| {
            calls(effects)
                .into_iter()
                .filter(|(m, _)| *m == "typing")
                .map(|(_, p)| p["typing"].clone())
                .collect::<Vec<_>>()
        };
        let press =
            |app: &mut App, at: u64| app.update(key(KeyCode::Char('x'), KeyModifiers::NONE), at);
        // Off until the user switches it on.
        assert!(typing(&press(&mut app, 0)).is_empty());
        app.preferences.typing = true;
        assert_eq!(typing(&press(&mut app, 1)), vec![json!(true)]);
        assert!(typing(&press(&mut app, 2)).is_empty());
        assert_eq!(
            typing(&press(&mut app, 1 + TYPING_REPEAT_MS)),
            vec![json!(true)]
        );
        let effects = app.update(key(KeyCode::Enter, KeyModifiers::NONE), 20_000);
        assert_eq!(typing(&effects), vec![json!(false)]);
        assert_eq!(calls(&effects)[1].0, "send");
    }

    #[test]
    fn commands_about_a_message_are_about_the_picked_one() {
        let mut app = App::new(me());
        app.start();
        let first = format!("01{}", "11".repeat(31));
        let second = format!("01{}", "22".repeat(31));
        let history = json!([
            {"position": 1, "conversation_id": BOB, "event": "message", "conversation": "@bob",
             "from": "@bob", "text": "one", "id": first, "sent_at": 1},
            {"position": 2, "conversation_id": BOB, "event": "member_added",
             "conversation": "@bob", "member": "@carol", "by": "@bob"},
            {"position": 3, "conversation_id": BOB, "event": "message", "conversation": "@bob",
             "from": "@bob", "text": "two", "id": second, "sent_at": 2},
        ]);
        app.update(loaded(with_bob(), None), 0);
        app.update(loaded(with_bob(), Some(history)), 0);
        let up = key(KeyCode::Up, KeyModifiers::ALT);
        app.update(up, 0);
        app.update(key(KeyCode::Up, KeyModifiers::ALT), 0);
        assert_eq!(
            app.picked.as_ref().map(|p| p.as_str()),
            Some(first.as_str())
        );
        let effects = type_line(&mut app, "/react 👍", 0);
        assert_eq!(
            calls(&effects),
            vec![(
                "react",
                json!({"message": first, "emoji": "👍", "remove": false})
            )]
        );
        // A reply answers it and lets go of it.
        let effects = type_line(&mut app, "/reply sure", 0);
        assert_eq!(calls(&effects)[0].1["reply_to"], json!(first));
        assert_eq!(app.picked, None);
        // Without a pick, a command about a message needs its id.
        assert!(type_line(&mut app, "/delete", 0).is_empty());
        assert!(app.status.as_ref().is_some_and(|s| s.error));
        // A line starting with // is sent with one /.
        let effects = type_line(&mut app, "//shrug", 0);
        assert_eq!(calls(&effects)[0].1["text"], json!("/shrug"));
    }
}
