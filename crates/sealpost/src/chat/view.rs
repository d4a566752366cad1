//! How `sealpost chat` looks: [`draw`] turns the state into a frame, and nothing else. Every
//! text that came from someone else (names, messages, file names, reasons) is passed through
//! [`safe`] first, so that it can never reach the terminal as a control sequence.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Clear, Paragraph, Wrap};
use unicode_width::UnicodeWidthStr;

use sealpost_sdk::{
    Connection, ConversationKind, Event, HistoryEntry, MAX_UNREAD_COUNTED, ReceiptStatus,
    TransferKind,
};

use super::app::{Alert, App, Overlay};
use super::command;
use crate::render::{line, safe, shown_name, size_text};

/// Width of the conversation list.
const LIST_WIDTH: u16 = 24;

/// How the chat is drawn beyond the state.
#[derive(Debug, Clone)]
pub struct Look {
    /// Colours (off with `NO_COLOR`: then bold, reverse and underline still mark things).
    pub colour: bool,
    /// The time zone times are shown in.
    pub zone: jiff::tz::TimeZone,
    /// Now (unix milliseconds), for who is typing.
    pub now_ms: u64,
}

impl Look {
    fn fg(&self, c: Color) -> Style {
        if self.colour {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn dim(&self) -> Style {
        if self.colour {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    fn alarm(&self) -> Style {
        let s = Style::new().add_modifier(Modifier::BOLD);
        if self.colour {
            s.fg(Color::White).bg(Color::Red)
        } else {
            s.add_modifier(Modifier::REVERSED)
        }
    }

    fn time(&self, unix_ms: u64) -> String {
        jiff::Timestamp::from_millisecond(unix_ms as i64)
            .map(|t| {
                t.to_zoned_datetime(self.zone.clone())
                    .strftime("%H:%M")
                    .to_string()
            })
            .unwrap_or_else(|_| "--:--".into())
    }
}

/// Draws the whole screen.
pub fn draw(app: &App, look: &Look, frame: &mut Frame) {
    let area = frame.area();
    let (input_lines, _) = app.editor.lines();
    let input_height = (input_lines.len().min(5) as u16) + 2;
    let banner_height = match app.alerts.front() {
        None => 0,
        Some(alert) => alert_lines(alert, area.width.saturating_sub(2) as usize).len() as u16 + 2,
    };
    let [banner, main, input, status] = Layout::vertical([
        Constraint::Length(banner_height),
        Constraint::Min(3),
        Constraint::Length(input_height),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_width = if area.width >= 60 { LIST_WIDTH } else { 0 };
    let [list, messages] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
    if let Some(alert) = app.alerts.front() {
        draw_alert(alert, app.alerts.len(), look, frame, banner);
    }
    if list_width > 0 {
        draw_list(app, look, frame, list);
    }
    draw_messages(app, look, frame, messages);
    draw_input(app, look, frame, input);
    draw_status(app, look, frame, status);
    if let Some(overlay) = &app.overlay {
        draw_overlay(overlay, app.overlay_scroll, look, frame, main);
    }
}

/// What the banner of a security alert says, in lines of `width`.
fn alert_lines(alert: &Alert, width: usize) -> Vec<String> {
    let kind = serde_json::to_value(alert.alert)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let place = match &alert.conversation {
        Some(c) => format!("in {}: ", safe(c)),
        None => String::new(),
    };
    let mut lines = wrap(
        &format!("{place}{} ({kind})", one_line(&alert.detail)),
        width,
    );
    lines.truncate(3);
    lines.extend(wrap(
        "What it means and what to do: docs/threat-model.md. Ctrl-G: I have read it.",
        width,
    ));
    lines
}

fn draw_alert(alert: &Alert, waiting: usize, look: &Look, frame: &mut Frame, area: Rect) {
    let title = if waiting > 1 {
        format!(" SECURITY ALERT (1 of {waiting}) ")
    } else {
        " SECURITY ALERT ".to_owned()
    };
    let text: Vec<Line> = alert_lines(alert, area.width.saturating_sub(2) as usize)
        .into_iter()
        .map(Line::raw)
        .collect();
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Thick)
        .title(title)
        .style(look.alarm());
    frame.render_widget(Paragraph::new(text).block(block).style(look.alarm()), area);
}

fn draw_list(app: &App, look: &Look, frame: &mut Frame, area: Rect) {
    let block = Block::new().borders(Borders::ALL).title(" Conversations ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let mut lines = Vec::new();
    for c in &app.conversations {
        let open = app.open.as_ref() == Some(&c.id);
        let name = safe(&c.conversation);
        let badge = match c.unread {
            0 => String::new(),
            MAX_UNREAD_COUNTED.. => format!(" {MAX_UNREAD_COUNTED}+"),
            n => format!(" {n}"),
        };
        let marker = if open { "▸" } else { " " };
        let room = width.saturating_sub(1 + badge.width());
        let mut style = Style::new();
        if open {
            style = style.add_modifier(Modifier::REVERSED);
        }
        if c.unread > 0 {
            style = style.add_modifier(Modifier::BOLD);
        }
        let name = fit(&name, room);
        let pad = " ".repeat(room.saturating_sub(name.width()));
        lines.push(Line::from(vec![
            Span::styled(format!("{marker}{name}{pad}"), style),
            Span::styled(badge, style.patch(look.fg(Color::Yellow))),
        ]));
        let preview = if c.active {
            c.latest.as_deref().map(preview).unwrap_or_default()
        } else {
            "(no longer a member)".to_owned()
        };
        lines.push(Line::styled(
            format!(" {}", fit(&preview, width.saturating_sub(1))),
            look.dim(),
        ));
    }
    if app.conversations.is_empty() && app.draft.is_none() {
        lines.push(Line::styled("(none yet)", look.dim()));
    }
    if let Some(user) = &app.draft {
        lines.push(Line::styled(
            format!("▸{}", fit(&safe(user), width.saturating_sub(1))),
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    // The open conversation stays in view.
    let open_at = app
        .open
        .as_ref()
        .and_then(|o| app.conversations.iter().position(|c| &c.id == o))
        .unwrap_or(0)
        * 2;
    let skip = (open_at + 2).saturating_sub(inner.height as usize);
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()),
        inner,
    );
}

/// One line about a conversation's newest entry.
fn preview(e: &Event) -> String {
    match e {
        Event::Message {
            from,
            text,
            file,
            deleted,
            ..
        } => {
            let what = if *deleted {
                "(deleted)".to_owned()
            } else if let Some(f) = file {
                format!("[file {}] {}", one_line(&f.name), one_line(text))
            } else {
                one_line(text)
            };
            format!("{}: {what}", safe(from))
        }
        other => without_conversation(other),
    }
}

/// [`line`] of an event, without the `[conversation]` it starts with.
fn without_conversation(e: &Event) -> String {
    let shown = line(e);
    match shown.strip_prefix('[').and_then(|s| s.split_once("] ")) {
        Some((_, rest)) => rest.to_owned(),
        None => shown,
    }
}

/// A text from someone else on one line: made safe, its line breaks shown as spaces.
fn one_line(s: &str) -> String {
    safe(&s.replace('\n', " "))
}

/// `s` cut to `width` columns, with an ellipsis when cut.
fn fit(s: &str, width: usize) -> String {
    let flat = s.replace('\n', " ");
    if flat.width() <= width {
        return flat;
    }
    let mut out = String::new();
    for c in flat.chars() {
        if out.width() + c.to_string().width() + 1 > width {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// `s` broken into lines of at most `width` columns, at spaces where it can.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut out = Vec::new();
    for para in s.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let sep = usize::from(!line.is_empty());
            if line.width() + sep + word.width() <= width {
                if sep == 1 {
                    line.push(' ');
                }
                line.push_str(word);
                continue;
            }
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            // A word longer than the line is broken inside.
            for c in word.chars() {
                if line.width() + c.to_string().width() > width {
                    out.push(std::mem::take(&mut line));
                }
                line.push(c);
            }
        }
        out.push(line);
    }
    out
}

fn draw_messages(app: &App, look: &Look, frame: &mut Frame, area: Rect) {
    let title = match (app.open_info(), &app.draft) {
        (_, Some(user)) => format!(" {} (new) ", safe(user)),
        (Some(c), None) => {
            let kind = match c.kind {
                ConversationKind::Direct => "1:1".to_owned(),
                ConversationKind::Group => format!("{} devices", c.members),
            };
            let suite = match c.ciphersuite {
                sealpost_sdk::Suite::Pq => "post-quantum",
                sealpost_sdk::Suite::Classic => "classic",
            };
            format!(" {} · {kind} · {suite} ", safe(&c.conversation))
        }
        (None, None) => " Sealpost ".to_owned(),
    };
    let block = Block::new().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    if let Some(user) = &app.draft {
        let intro = format!(
            "No conversation with {} yet: your first message starts one.",
            safe(user)
        );
        for l in wrap(&intro, width) {
            lines.push(Line::styled(l, look.dim()));
        }
    } else if app.open.is_none() {
        for l in [
            "No conversations yet.",
            "",
            "/open @user    starts a conversation",
            "/group NAME    creates a group",
            "F1             shows every command and key",
        ] {
            lines.push(Line::styled(l, look.dim()));
        }
    }
    for entry in &app.history {
        entry_lines(app, entry, look, width, &mut lines);
    }
    let height = inner.height as usize;
    let end = lines
        .len()
        .saturating_sub(app.scroll.min(lines.len().saturating_sub(height)));
    let start = end.saturating_sub(height);
    // The newest at the bottom, as in every chat: a short history sits low.
    let mut shown = vec![Line::raw(""); height.saturating_sub(end - start)];
    shown.extend(lines.drain(start..end));
    frame.render_widget(Paragraph::new(shown), inner);
    if start > 0 || end < start + height && app.scroll > 0 {
        let more = if app.scroll > 0 {
            " more below: PgDn "
        } else {
            " PgUp: older "
        };
        let w = more.width() as u16;
        if area.width > w + 2 {
            frame.render_widget(
                Paragraph::new(Span::styled(more, look.dim())),
                Rect::new(area.x + area.width - w - 1, area.y + area.height - 1, w, 1),
            );
        }
    }
}

/// The lines of one history entry.
fn entry_lines(app: &App, entry: &HistoryEntry, look: &Look, width: usize, out: &mut Vec<Line>) {
    let body_width = width.saturating_sub(2);
    match &entry.event {
        Event::Message {
            from,
            text,
            id,
            sent_at,
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
            let picked = app.picked.as_ref() == Some(id);
            let mine = *from == app.me.username;
            let who = if mine {
                look.fg(Color::Green)
            } else {
                look.fg(Color::Cyan)
            }
            .add_modifier(Modifier::BOLD);
            let mut notes = Vec::new();
            if *edited && !*deleted {
                notes.push("edited".to_owned());
            }
            if expires_at.is_some() {
                notes.push("disappearing".to_owned());
            }
            if *late {
                notes.push("late".to_owned());
            }
            if mine {
                let who = |status: ReceiptStatus| -> Vec<String> {
                    receipts
                        .iter()
                        .filter(|r| r.status == status)
                        .map(|r| safe(&r.from))
                        .collect()
                };
                let (read, delivered) = (who(ReceiptStatus::Read), who(ReceiptStatus::Delivered));
                let list = |names: &[String]| match names.len() {
                    1 | 2 => names.join(", "),
                    n => format!("{n} people"),
                };
                if !read.is_empty() {
                    notes.push(format!("read by {}", list(&read)));
                } else if !delivered.is_empty() {
                    notes.push(format!("delivered to {}", list(&delivered)));
                }
            }
            let mut head = vec![
                Span::styled(if picked { "▸" } else { " " }, Style::new()),
                Span::styled(format!("{} ", look.time(*sent_at)), look.dim()),
                Span::styled(safe(from), who),
                Span::raw(shown_name(sender_name.as_deref())),
                Span::styled(format!(" {}", safe(&id.short())), look.dim()),
            ];
            if !notes.is_empty() {
                head.push(Span::styled(format!(" ({})", notes.join(", ")), look.dim()));
            }
            if let Some(why) = failed {
                head.push(Span::styled(
                    format!(" NOT SENT: {}", safe(why)),
                    look.fg(Color::Red).add_modifier(Modifier::BOLD),
                ));
            } else if *unconfirmed {
                head.push(Span::styled(" (sending…)", look.fg(Color::Yellow)));
            }
            let mut head = Line::from(head);
            if picked {
                head = head.patch_style(Style::new().add_modifier(Modifier::REVERSED));
            }
            out.push(head);
            if let Some(to) = reply_to {
                let quoted = app
                    .history
                    .iter()
                    .find_map(|h| match &h.event {
                        Event::Message { id, from, text, .. } if id == to => {
                            Some(format!("{}: {}", safe(from), one_line(text)))
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("message {}", safe(&to.short())));
                out.push(Line::styled(
                    format!("  ↪ {}", fit(&quoted, body_width.saturating_sub(2))),
                    look.dim(),
                ));
            }
            if *deleted {
                out.push(Line::styled(
                    "  (deleted)",
                    look.dim().add_modifier(Modifier::ITALIC),
                ));
            } else {
                if let Some(f) = file {
                    let shown = format!(
                        "[file {} ({}, {})] /download {}",
                        one_line(&f.name),
                        one_line(&f.media_type),
                        size_text(f.size),
                        safe(&id.short())
                    );
                    for l in wrap(&shown, body_width) {
                        out.push(Line::styled(format!("  {l}"), look.fg(Color::Magenta)));
                    }
                }
                if !text.is_empty() {
                    // Each line made safe by itself, so that its breaks stay breaks.
                    let safe_text: Vec<String> = text.split('\n').map(safe).collect();
                    for l in wrap(&safe_text.join("\n"), body_width) {
                        out.push(Line::raw(format!("  {l}")));
                    }
                }
            }
            if !reactions.is_empty() {
                let shown: Vec<String> = reactions
                    .iter()
                    .map(|r| format!("{} {}", safe(&r.emoji), safe(&r.from)))
                    .collect();
                for l in wrap(&shown.join("  "), body_width) {
                    out.push(Line::styled(format!("  {l}"), look.fg(Color::Yellow)));
                }
            }
        }
        Event::Security { .. } => {
            for l in wrap(&format!("⚠ {}", without_conversation(&entry.event)), width) {
                out.push(Line::styled(l, look.alarm()));
            }
        }
        other => {
            for l in wrap(&format!("· {}", without_conversation(other)), width) {
                out.push(Line::styled(l, look.dim()));
            }
        }
    }
}

fn draw_input(app: &App, look: &Look, frame: &mut Frame, area: Rect) {
    let title = match (&app.picked, app.target()) {
        (Some(id), _) => format!(
            " Picked {}: /reply /react /edit /delete /download · Esc drops it ",
            safe(&id.short())
        ),
        (None, Some(_)) => " Enter sends · Alt-Enter new line · F1 help ".to_owned(),
        (None, None) => " /open @user to start · F1 help ".to_owned(),
    };
    let block = Block::new()
        .borders(Borders::ALL)
        .title(Span::styled(title, look.dim()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let (lines, (row, column)) = app.editor.lines();
    let height = inner.height as usize;
    let first = (row + 1).saturating_sub(height);
    let width = inner.width as usize;
    let cursor_x: usize = lines[row].chars().take(column).collect::<String>().width();
    let left = (cursor_x + 1).saturating_sub(width);
    let shown: Vec<Line> = lines
        .iter()
        .skip(first)
        .take(height)
        .map(|l| {
            // Typed text is the user's own, but a paste may bring anything: shown safe.
            let l = safe(l);
            let mut cut = String::new();
            let mut at = 0;
            for c in l.chars() {
                let w = c.to_string().width();
                if at >= left {
                    cut.push(c);
                }
                at += w;
            }
            Line::raw(cut)
        })
        .collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if app.overlay.is_none() {
        frame.set_cursor_position(Position::new(
            inner.x + (cursor_x - left) as u16,
            inner.y + (row - first) as u16,
        ));
    }
}

fn draw_status(app: &App, look: &Look, frame: &mut Frame, area: Rect) {
    let mut spans = Vec::new();
    match &app.connection {
        Connection::Starting => spans.push(Span::styled("connecting…", look.fg(Color::Yellow))),
        Connection::Connected { .. } => {
            spans.push(Span::styled("connected", look.fg(Color::Green)))
        }
        Connection::Disconnected { reason, .. } => spans.push(Span::styled(
            format!("offline ({}), trying again", safe(reason)),
            look.fg(Color::Red),
        )),
    }
    spans.push(Span::styled(
        format!(" · {}", safe(&app.me.username)),
        look.dim(),
    ));
    if let Some(t) = &app.transfer {
        let arrow = match t.kind {
            TransferKind::Upload => "↑",
            TransferKind::Download => "↓",
        };
        let percent = t
            .done
            .saturating_mul(100)
            .checked_div(t.total)
            .unwrap_or(100);
        spans.push(Span::raw(format!(
            " · {arrow} {} {percent}%",
            safe(&t.name)
        )));
    }
    let typing = app.typing_here(look.now_ms);
    if !typing.is_empty() {
        let who: Vec<String> = typing.iter().map(|w| safe(w)).collect();
        spans.push(Span::styled(
            format!(" · {} typing…", who.join(", ")),
            look.fg(Color::Cyan),
        ));
    }
    if let Some(s) = &app.status {
        let style = if s.error {
            look.fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(format!(" · {}", s.text), style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_overlay(overlay: &Overlay, scroll: usize, look: &Look, frame: &mut Frame, area: Rect) {
    let (title, lines): (String, Vec<Line>) = match overlay {
        Overlay::Help => {
            let mut lines = Vec::new();
            for table in [command::HELP, command::KEYS] {
                for (what, does) in table {
                    lines.push(Line::from(vec![
                        Span::styled(
                            format!("{what:<26}"),
                            Style::new().add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(*does),
                    ]));
                }
                lines.push(Line::raw(""));
            }
            lines.push(Line::styled(
                "A line starting with // sends it with one /. Esc closes this.",
                look.dim(),
            ));
            (" Help ".to_owned(), lines)
        }
        Overlay::Verify(v) => {
            draw_verify(v, look, frame, area);
            return;
        }
        Overlay::Members {
            conversation,
            members,
        } => {
            let lines = members
                .iter()
                .map(|m| {
                    Line::raw(format!(
                        "{}{} device {}{}",
                        safe(&m.member),
                        shown_name(m.name.as_deref()),
                        m.device,
                        if m.you { " (this device)" } else { "" }
                    ))
                })
                .collect();
            (format!(" Members of {} ", safe(conversation)), lines)
        }
    };
    let height = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x,
        area.y + (area.height - height) / 2,
        area.width,
        height,
    );
    let room = height.saturating_sub(2) as usize;
    let scroll = scroll.min(lines.len().saturating_sub(room));
    let more = if scroll + room < lines.len() {
        " Esc closes · PgDn: more "
    } else {
        " Esc closes "
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).scroll((scroll as u16, 0)).block(
            Block::new()
                .borders(Borders::ALL)
                .border_type(BorderType::Double)
                .title(title)
                .title_bottom(more),
        ),
        rect,
    );
}

/// The safety number with a contact, its QR code beside it.
fn draw_verify(v: &sealpost_sdk::Verification, look: &Look, frame: &mut Frame, area: Rect) {
    let code: Vec<String> = crate::cli::qr(&v.safety_number.replace(' ', ""), false)
        .lines()
        .map(|l| format!(" {l} "))
        .collect();
    let code_width = code.iter().map(|l| l.width()).max().unwrap_or(0) as u16;
    let mut text = vec![
        Line::raw(format!("Safety number with {}:", safe(&v.contact))),
        Line::raw(""),
    ];
    // Twelve groups of five digits, four to a line.
    let groups: Vec<&str> = v.safety_number.split(' ').collect();
    for row in groups.chunks(4) {
        text.push(Line::styled(
            format!("  {}", safe(&row.join(" "))),
            Style::new().add_modifier(Modifier::BOLD),
        ));
    }
    text.push(Line::raw(""));
    if v.verified {
        text.push(Line::styled(
            format!("{} is verified.", safe(&v.contact)),
            look.fg(Color::Green),
        ));
    } else {
        if v.changed {
            text.push(Line::styled(
                format!(
                    "{}'s account key CHANGED since you verified it.",
                    safe(&v.contact)
                ),
                look.alarm(),
            ));
        }
        text.push(Line::raw(format!(
            "Compare it with {} in person, or on a call you trust (or scan the code), then type:",
            safe(&v.contact)
        )));
        text.push(Line::raw(""));
        text.push(Line::raw(format!(
            "/verify {} <the number>",
            safe(&v.contact)
        )));
    }
    let height = (code.len().max(text.len()) as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x,
        area.y + (area.height - height) / 2,
        area.width,
        height,
    );
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .title(" Verify ")
        .title_bottom(" Esc closes ");
    let inner = block.inner(rect);
    frame.render_widget(Clear, rect);
    frame.render_widget(block, rect);
    let [left, right] =
        Layout::horizontal([Constraint::Length(code_width), Constraint::Min(10)]).areas(inner);
    let code: Vec<Line> = code.into_iter().map(Line::raw).collect();
    frame.render_widget(Paragraph::new(code), left);
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }),
        right.inner(ratatui::layout::Margin::new(1, 0)),
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;
    use crate::chat::app::{Alert, Msg, Overlay};

    const NOW: u64 = 1_796_534_865_000;

    fn id(n: u8) -> String {
        format!("01{}", hex::encode([n; 31]))
    }

    /// Alice's chat: three conversations, the group open with a bit of everything in it.
    fn alice() -> App {
        let me = serde_json::from_value(json!({
            "username": "@alice",
            "device": "12648d8fd2a036c11f3b455b9f9cf970",
            "server": "https://chat.example.org",
        }))
        .unwrap();
        let mut app = App::new(me);
        let team = "c05f0d0a55e3b6e2a0b1c2d3e4f55d28";
        let conversations = json!([
            {"conversation": "#team", "id": team, "kind": "group", "ciphersuite": "pq",
             "members": 3, "active": true, "unread": 0,
             "latest": {"event": "message", "conversation": "#team", "from": "@carol",
                        "text": "see you there", "id": id(6), "sent_at": NOW}},
            {"conversation": "@bob", "id": "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0", "kind": "direct",
             "ciphersuite": "pq", "members": 2, "active": true, "unread": 2,
             "latest": {"event": "message", "conversation": "@bob", "from": "@bob",
                        "text": "are you coming tonight? I have the tickets", "id": id(9),
                        "sent_at": NOW}},
            {"conversation": "#old-project", "id": "0ld0000000000000000000000000000a", "kind": "group",
             "ciphersuite": "classic", "members": 0, "active": false, "unread": 1000},
        ]);
        let entry = |position: u64, event: serde_json::Value| {
            let mut e = event;
            e["position"] = json!(position);
            e["conversation_id"] = json!(team);
            e["conversation"] = json!("#team");
            e
        };
        let history = json!([
            entry(
                1,
                json!({"event": "member_added", "member": "@bob", "by": "@alice"})
            ),
            entry(
                2,
                json!({"event": "message", "from": "@alice", "text": "the plan for saturday:\nmeet at ten, bring boots", "id": id(1), "sent_at": NOW - 3_600_000,
                "receipts": [{"from": "@bob", "status": "read"}, {"from": "@carol", "status": "delivered"}],
                "reactions": [{"from": "@bob", "emoji": "👍"}, {"from": "@carol", "emoji": "🎉"}]})
            ),
            entry(
                3,
                json!({"event": "message", "from": "@bob", "sender_name": "Bob B.", "text": "count me in", "id": id(2), "sent_at": NOW - 3_000_000, "reply_to": id(1), "edited": true})
            ),
            entry(
                4,
                json!({"event": "message", "from": "@carol", "text": "", "id": id(3), "sent_at": NOW - 2_000_000,
                "file": {"name": "route.pdf", "media_type": "application/pdf", "size": 734_003}})
            ),
            entry(
                5,
                json!({"event": "message", "from": "@bob", "text": "", "id": id(4), "sent_at": NOW - 1_000_000, "deleted": true})
            ),
            entry(
                6,
                json!({"event": "timer", "by": "@carol", "seconds": 604_800})
            ),
            entry(
                7,
                json!({"event": "message", "from": "@carol", "text": "\u{1b}[2J\u{1b}]0;pwned\u{7}see you there", "id": id(6), "sent_at": NOW, "expires_at": NOW + 604_800_000})
            ),
        ]);
        app.update(
            Msg::Loaded(crate::chat::app::Loaded {
                conversations: Some(serde_json::from_value(conversations).unwrap()),
                history: None,
                preferences: None,
                error: None,
            }),
            NOW,
        );
        app.history = serde_json::from_value(history).unwrap();
        app.connection = sealpost_sdk::Connection::Connected { since: NOW };
        app.typing
            .insert(("#team".into(), "@bob".into()), NOW + 10_000);
        app
    }

    fn look(colour: bool) -> Look {
        Look {
            colour,
            zone: jiff::tz::TimeZone::UTC,
            now_ms: NOW,
        }
    }

    fn screen(app: &App, look: &Look, width: u16, height: u16) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(app, look, f)).unwrap();
        terminal
    }

    fn text(terminal: &Terminal<TestBackend>) -> String {
        terminal.backend().to_string()
    }

    #[test]
    fn a_group_with_a_bit_of_everything() {
        let app = alice();
        insta::assert_snapshot!(text(&screen(&app, &look(true), 80, 24)));
    }

    #[test]
    fn a_picked_message_and_a_line_being_written() {
        let mut app = alice();
        app.picked = serde_json::from_value(json!(id(2))).unwrap();
        app.editor.insert("sounds good,\nsee you at ten");
        insta::assert_snapshot!(text(&screen(&app, &look(true), 80, 24)));
    }

    #[test]
    fn a_security_alert_stands_above_everything() {
        let mut app = alice();
        for n in 0..2 {
            app.alerts.push_back(Alert {
                event_id: sealpost_sdk::EventId(40 + n),
                conversation: Some("@dave".into()),
                alert: sealpost_sdk::SecurityAlert::UnapprovedDevice,
                detail: "@dave's directory entry lists device 0b0b0b0b that their account key \
                         did not certify"
                    .into(),
            });
        }
        insta::assert_snapshot!(text(&screen(&app, &look(true), 80, 24)));
    }

    #[test]
    fn the_help_and_the_safety_number() {
        let mut app = alice();
        app.overlay = Some(Overlay::Help);
        let help = text(&screen(&app, &look(true), 80, 24));
        app.overlay = Some(Overlay::Verify(sealpost_sdk::Verification {
            contact: "@bob".into(),
            safety_number: "65135 23958 93622 91770 51091 92302 55960 45495 16898 22900 12726 \
                            55847"
                .into(),
            verified: false,
            changed: false,
        }));
        let verify = text(&screen(&app, &look(true), 80, 24));
        insta::assert_snapshot!(format!("{help}\n{verify}"));
    }

    #[test]
    fn it_fits_a_small_terminal_and_a_large_one() {
        let app = alice();
        let small = text(&screen(&app, &look(true), 50, 16));
        let large = text(&screen(&app, &look(true), 120, 30));
        insta::assert_snapshot!(format!("{small}\n{large}"));
    }

    /// Nothing a peer sends reaches the terminal as anything but printable text.
    #[test]
    fn no_cell_holds_a_control_character() {
        let app = alice();
        let terminal = screen(&app, &look(true), 80, 24);
        for cell in terminal.backend().buffer().content() {
            assert!(
                !cell.symbol().chars().any(char::is_control),
                "{:?}",
                cell.symbol()
            );
        }
        assert!(text(&terminal).contains("\\u{1b}[2J"));
    }

    /// With `NO_COLOR`, no cell has a colour; the alert still stands out (reversed, bold).
    #[test]
    fn no_color_means_no_colour() {
        let mut app = alice();
        app.alerts.push_back(Alert {
            event_id: sealpost_sdk::EventId(1),
            conversation: None,
            alert: sealpost_sdk::SecurityAlert::SplitView,
            detail: "two roots for one epoch".into(),
        });
        let terminal = screen(&app, &look(false), 80, 24);
        let buffer = terminal.backend().buffer();
        for cell in buffer.content() {
            assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "{cell:?}");
        }
        let banner = buffer.cell((5, 1)).unwrap();
        assert!(banner.modifier.contains(Modifier::REVERSED), "{banner:?}");
        let coloured = screen(&app, &look(true), 80, 24);
        assert!(
            coloured
                .backend()
                .buffer()
                .content()
                .iter()
                .any(|c| c.fg != Color::Reset)
        );
    }
}
