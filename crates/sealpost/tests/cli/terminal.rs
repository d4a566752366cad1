//! Tests on a real terminal: each runs sealpost in a pane of a tmux server of its own, types
//! into it and reads the screen back (with its colours), as a person at the keyboard would.

use std::process::Command;

use super::{InProcessServer, ServerProcess, register_all, run_ok, sealpost};

/// A tmux server of this test's own, whose one pane runs a shell command on a real terminal.
struct Terminal {
    socket: String,
}

impl Terminal {
    /// `None` (the test says so and skips) where tmux is not installed; `.ci/run` installs it.
    fn start(command: &str) -> Option<Terminal> {
        Terminal::start_sized(command, 160, 50)
    }

    /// [`start`](Self::start) on a terminal of `columns` × `rows`.
    fn start_sized(command: &str, columns: u16, rows: u16) -> Option<Terminal> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipping: tmux is not installed (apt-get install tmux)");
            return None;
        }
        static TERMINALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let socket = format!(
            "sealpost-test-{}-{}",
            std::process::id(),
            TERMINALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d"])
            .args(["-x", &columns.to_string(), "-y", &rows.to_string()])
            .arg(command)
            .status()
            .unwrap();
        assert!(status.success());
        Some(Terminal { socket })
    }

    /// What the terminal shows, with its colours as escape sequences.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-e",
                "-J",
                "-S",
                "-100",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text` (`seen` times), and returns it.
    fn wait_for(&self, text: &str, seen: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= seen {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never showed:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Saves what the screen shows (as text, without colours) as `target/screenshots/NAME.txt`
    /// (or in `$SEALPOST_SCREENSHOTS`), for people to look at.
    fn save(&self, name: &str) {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        let dir = std::env::var_os("SEALPOST_SCREENSHOTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), out.stdout).unwrap();
    }

    /// Waits until the screen no longer shows `text`, and returns it.
    fn wait_gone(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if !screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never went:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Presses keys, in tmux's names (`F1`, `C-g`, `M-Up`, `Escape`).
    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0"])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn type_line(&self, line: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0", "-l", line])
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0", "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The server's log is coloured on a terminal, and not while `NO_COLOR` is set.
#[test]
fn no_color_is_respected_on_a_terminal() {
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sealpost");
    for (no_color, coloured) in [("", true), ("1", false)] {
        let script = format!(
            "env NO_COLOR={no_color} SEALPOST_LOG=info '{bin}' server --listen 127.0.0.1:0 \
             --data '{}'; sleep 600",
            data.path().join(no_color).display()
        );
        let Some(terminal) = Terminal::start(&script) else {
            return;
        };
        let screen = terminal.wait_for("scheme", 1);
        assert_eq!(
            screen.contains('\u{1b}'),
            coloured,
            "NO_COLOR={no_color}:\n{screen}"
        );
    }
}

/// On a terminal, registering asks for a passphrase (twice, never echoed) and every later
/// command asks for it again, once more after a wrong one; without a terminal nothing waits,
/// and the profile opens only with the passphrase.
#[test]
fn a_passphrase_typed_on_the_terminal_protects_the_profile() {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let home = homes.path().join("alice");
    let secret = "correct horse battery";
    let bin = env!("CARGO_BIN_EXE_sealpost");
    let script = format!(
        "env -u SEALPOST_PASSPHRASE SEALPOST_HOME='{home}' sh -c \
         \"'{bin}' register alice --server {url}; echo register said \\$?; \
         '{bin}' whoami; echo whoami said \\$?; \
         '{bin}' register alice --server {url}; echo again said \\$?; sleep 600\"",
        home = home.display(),
        url = server.url,
    );
    let Some(terminal) = Terminal::start(&script) else {
        return;
    };
    terminal.wait_for("Passphrase to protect this profile", 1);
    terminal.type_line(secret);
    terminal.wait_for("The same passphrase again", 1);
    terminal.type_line("something else");
    terminal.wait_for("The two passphrases differ", 1);
    terminal.wait_for("Passphrase to protect this profile", 2);
    terminal.type_line(secret);
    terminal.wait_for("The same passphrase again", 2);
    terminal.type_line(secret);
    terminal.wait_for("register said 0", 1);
    terminal.wait_for("Passphrase for the profile", 1);
    terminal.type_line("wrong");
    terminal.wait_for("does not open this profile", 1);
    terminal.wait_for("Passphrase for the profile", 2);
    terminal.type_line(secret);
    let screen = terminal.wait_for("whoami said 0", 1);
    assert!(screen.contains("@alice"), "{screen}");
    // Registering again on the protected profile asks for its passphrase (not a new one), and
    // then says what is in the way.
    terminal.wait_for("Passphrase for the profile", 3);
    terminal.type_line(secret);
    let screen = terminal.wait_for("again said 1", 1);
    assert!(screen.contains("already"), "{screen}");
    assert_eq!(
        screen.matches("Passphrase to protect").count(),
        2,
        "asked to choose a passphrase again:\n{screen}"
    );
    assert!(
        !screen.contains(secret),
        "the passphrase was echoed:\n{screen}"
    );

    // Not on a terminal: no prompt, no wait; the profile opens with the passphrase only.
    let out = sealpost()
        .env_remove("SEALPOST_PASSPHRASE")
        .arg("--home")
        .arg(&home)
        .arg("whoami")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("protected by a passphrase"), "{error}");
    let out = sealpost()
        .env("SEALPOST_PASSPHRASE", secret)
        .arg("--home")
        .arg(&home)
        .arg("whoami")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("@alice"));
}

/// `sealpost chat` for the profile in `home`, then what it exited with.
fn chat(home: &std::path::Path) -> String {
    format!(
        "'{}' --home '{}' chat; echo chat said $?; sleep 600",
        env!("CARGO_BIN_EXE_sealpost"),
        home.display()
    )
}

/// Two people chat in `sealpost chat` on real 80×24 terminals against a real server: a 1:1
/// started from the chat, messages both ways as they are typed, a reaction to a picked message,
/// another command going through the running chat, a peer's escape sequences shown as text,
/// the help, and a security alert that stays on screen until it is acknowledged.
#[test]
fn two_people_chat_in_the_terminal() {
    let server = InProcessServer::start();
    let homes = tempfile::tempdir().unwrap();
    let [a, b, _carol] = register_all(&server.url, homes.path(), ["alice", "bob", "carol"]);
    let Some(alice) = Terminal::start_sized(&chat(&a), 80, 24) else {
        return;
    };
    let Some(bob) = Terminal::start_sized(&chat(&b), 80, 24) else {
        return;
    };
    alice.wait_for("No conversations yet", 1);
    bob.wait_for("No conversations yet", 1);

    alice.type_line("/open @bob");
    alice.wait_for("No conversation with @bob yet", 1);
    alice.type_line("hello from the chat");
    bob.wait_for("hello from the chat", 1);
    bob.type_line("hi alice, typed live");
    alice.wait_for("hi alice, typed live", 1);
    alice.save("chat-conversation");

    // Bob picks alice's message (the one before his own) and reacts to it.
    bob.keys(&["M-Up"]);
    bob.keys(&["M-Up"]);
    bob.wait_for("Picked", 1);
    bob.type_line("/react 👍");
    alice.wait_for("👍 @bob", 1);

    // Another command on bob's profile goes through his running chat; what it sends cannot
    // move alice's cursor, clear her screen or set her title.
    run_ok(
        &b,
        &["send", "@alice", "\u{1b}[2J\u{1b}]0;pwned\u{7}sneaky"],
    );
    let screen = alice.wait_for("sneaky", 1);
    assert!(screen.contains("\\u{1b}[2J"), "{screen}");
    assert!(screen.contains("hello from the chat"), "{screen}");

    alice.keys(&["F1"]);
    alice.wait_for("/verify @user", 1);
    alice.save("chat-help");
    alice.keys(&["Escape"]);
    alice.wait_gone("/verify @user");

    // The server lists a device of its own under carol's name: alice's first message to her
    // is refused, and the alert stays until she acknowledges it.
    server.list_rogue_device("carol", 0xc0);
    alice.type_line("/open @carol");
    alice.type_line("hi carol");
    let screen = alice.wait_for("SECURITY ALERT", 1);
    assert!(screen.contains("unapproved_device"), "{screen}");
    alice.save("chat-security-alert");
    alice.keys(&["Tab"]);
    alice.wait_for("@bob ·", 1);
    alice.wait_for("SECURITY ALERT", 1);
    alice.keys(&["C-g"]);
    alice.wait_gone("SECURITY ALERT");
    alice.type_line("/verify @bob");
    alice.wait_for("Safety number with @bob", 1);
    alice.save("chat-verify");
    alice.keys(&["Escape"]);

    alice.type_line("/quit");
    alice.wait_for("chat said 0", 1);
    bob.keys(&["C-c"]);
    bob.wait_for("chat said 0", 1);
}
