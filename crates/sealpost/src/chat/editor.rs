//! The input line of `sealpost chat`: text with a cursor, several lines when asked for, and the
//! history of what was sent (Up and Down, as in a shell).

/// Most lines the history of sent lines keeps.
const HISTORY: usize = 200;

/// The text being written, and what was written before.
#[derive(Debug, Default)]
pub struct Editor {
    /// The text, as characters (the cursor moves by character).
    text: Vec<char>,
    /// Where the cursor is: before `text[cursor]`.
    cursor: usize,
    /// Lines sent, oldest first.
    history: Vec<String>,
    /// While going through the history: which entry is shown, and the text that was being
    /// written before (given back past the newest entry).
    browsing: Option<(usize, Vec<char>)>,
}

impl Editor {
    /// The text.
    pub fn text(&self) -> String {
        self.text.iter().collect()
    }

    /// Whether there is no text.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The text's lines, and the cursor's line and column (in characters).
    pub fn lines(&self) -> (Vec<String>, (usize, usize)) {
        let mut lines = vec![String::new()];
        let mut at = (0, 0);
        for (i, c) in self.text.iter().enumerate() {
            if i == self.cursor {
                at = (
                    lines.len() - 1,
                    lines.last().map_or(0, |l| l.chars().count()),
                );
            }
            if *c == '\n' {
                lines.push(String::new());
            } else if let Some(line) = lines.last_mut() {
                line.push(*c);
            }
        }
        if self.cursor == self.text.len() {
            at = (
                lines.len() - 1,
                lines.last().map_or(0, |l| l.chars().count()),
            );
        }
        (lines, at)
    }

    /// Types `s` at the cursor (a paste keeps its line breaks; other control characters are
    /// left out).
    pub fn insert(&mut self, s: &str) {
        self.browsing = None;
        for c in s.chars().filter(|c| *c == '\n' || !c.is_control()) {
            self.text.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.text.remove(self.cursor);
        }
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    /// Deletes the word before the cursor (and the spaces after it).
    pub fn delete_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        while start > 0 && !self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        self.text.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Deletes from the start of the cursor's line to the cursor.
    pub fn delete_to_start(&mut self) {
        let start = self.line_start();
        self.text.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Moves the cursor one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Moves the cursor one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.len());
    }

    /// Moves the cursor to the start of its line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Moves the cursor to the end of its line.
    pub fn end(&mut self) {
        while self.cursor < self.text.len() && self.text[self.cursor] != '\n' {
            self.cursor += 1;
        }
    }

    fn line_start(&self) -> usize {
        let mut start = self.cursor;
        while start > 0 && self.text[start - 1] != '\n' {
            start -= 1;
        }
        start
    }

    /// Whether the cursor is on the first line (Up goes to the history there).
    pub fn on_first_line(&self) -> bool {
        !self.text[..self.cursor].contains(&'\n')
    }

    /// Whether the cursor is on the last line (Down goes to the history there).
    pub fn on_last_line(&self) -> bool {
        !self.text[self.cursor..].contains(&'\n')
    }

    /// Moves the cursor a line up or down within the text, keeping its column where it can.
    pub fn vertical(&mut self, up: bool) {
        let (lines, (line, column)) = self.lines();
        let target = if up {
            line.saturating_sub(1)
        } else {
            (line + 1).min(lines.len() - 1)
        };
        let mut at = 0;
        for l in &lines[..target] {
            at += l.chars().count() + 1;
        }
        self.cursor = at + column.min(lines[target].chars().count());
    }

    /// Shows the line sent before the one shown (Up).
    pub fn older(&mut self) {
        let next = match &self.browsing {
            None if self.history.is_empty() => return,
            None => self.history.len() - 1,
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
        };
        let draft = match self.browsing.take() {
            Some((_, draft)) => draft,
            None => std::mem::take(&mut self.text),
        };
        self.show(next, draft);
    }

    /// Shows the line sent after the one shown, or, past the newest, the text that was being
    /// written (Down).
    pub fn newer(&mut self) {
        let Some((i, draft)) = self.browsing.take() else {
            return;
        };
        if i + 1 < self.history.len() {
            self.show(i + 1, draft);
        } else {
            self.text = draft;
            self.cursor = self.text.len();
        }
    }

    fn show(&mut self, i: usize, draft: Vec<char>) {
        self.text = self.history[i].chars().collect();
        self.cursor = self.text.len();
        self.browsing = Some((i, draft));
    }

    /// Takes the text out (to send it), keeping it in the history.
    pub fn take(&mut self) -> String {
        let text: String = std::mem::take(&mut self.text).into_iter().collect();
        self.cursor = 0;
        self.browsing = None;
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(text.clone());
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editing_moves_by_characters_and_keeps_line_breaks() {
        let mut e = Editor::default();
        e.insert("héllo wörld");
        e.delete_word();
        assert_eq!(e.text(), "héllo ");
        e.insert("\u{1b}[31mthere\nsecond");
        // The escape is dropped, the line break kept.
        assert_eq!(e.text(), "héllo [31mthere\nsecond");
        assert_eq!(e.lines().1, (1, 6));
        e.vertical(true);
        assert_eq!(e.lines().1, (0, 6));
        e.delete_to_start();
        assert_eq!(e.text(), "[31mthere\nsecond");
        e.end();
        e.backspace();
        e.home();
        e.delete();
        assert_eq!(e.text(), "31mther\nsecond");
        assert!(e.on_first_line() && !e.on_last_line());
    }

    #[test]
    fn the_history_gives_back_what_was_sent_and_the_draft() {
        let mut e = Editor::default();
        for line in ["one", "two", "two", " "] {
            e.insert(line);
            e.take();
        }
        e.insert("draft");
        e.older();
        assert_eq!(e.text(), "two");
        e.older();
        assert_eq!(e.text(), "one");
        e.older();
        assert_eq!(e.text(), "one");
        e.newer();
        e.newer();
        assert_eq!(e.text(), "draft");
    }
}
