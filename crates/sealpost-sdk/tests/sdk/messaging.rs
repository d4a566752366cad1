//! End-to-end messaging through a real server.

use crate::common::{People, TestServer, texts, u};
use sealpost_sdk::{Error, Event, Preferences, Receipt, ReceiptStatus, Suite};

#[tokio::test]
async fn one_to_one_both_ways() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;

    let sent = alice.send("@bob", "hello bob").await.unwrap();
    let events = bob.sync().await.unwrap();
    // Both ends derive the same MIMI message id: 0x01 (SHA-256) and 31 octets of the hash.
    let id = |e: &Event| match e {
        Event::Message { id, .. } => id.as_str().to_owned(),
        other => panic!("not a message: {other:?}"),
    };
    let received = events
        .iter()
        .find(|e| matches!(e, Event::Message { .. }))
        .unwrap();
    assert_eq!(id(&sent), id(received));
    assert!(
        id(&sent).starts_with("01") && id(&sent).len() == 64,
        "{sent:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Joined { conversation, by } if conversation == "@alice" && by == "@alice")), "{events:?}");
    assert_eq!(
        texts(&events),
        vec![("@alice".to_string(), "hello bob".to_string())]
    );

    bob.send("@alice", "hi alice").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        vec![("@bob".to_string(), "hi alice".to_string())]
    );

    // Both see the same history, oldest first; nothing twice.
    let a = texts(&alice.messages("@bob", 100).unwrap());
    let b = texts(&bob.messages("@alice", 100).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(bob.sync().await.unwrap().is_empty());
}

#[tokio::test]
async fn group_add_remove_leave_on_both_suites() {
    for suite in [Suite::Classic, Suite::Pq] {
        let server = TestServer::start().await;
        let people = People::new();
        let names = ["ann", "ben", "cat", "dan", "eve"];
        let mut c = Vec::new();
        for n in names {
            c.push(people.register(&server, n).await);
        }
        let info = c[0]
            .create_group("team", &[u("ben"), u("cat"), u("dan"), u("eve")], suite)
            .await
            .unwrap();
        assert_eq!(info.conversation, "#team");
        assert_eq!(info.members, 5);
        assert_eq!(info.ciphersuite, suite);

        c[0].send("#team", "welcome all").await.unwrap();
        for client in c.iter_mut().skip(1) {
            let events = client.sync().await.unwrap();
            assert_eq!(
                texts(&events),
                vec![("@ann".into(), "welcome all".into())],
                "{suite:?}"
            );
            assert_eq!(client.members("#team").unwrap().len(), 5);
        }

        // Remove eve: she sees her removal and cannot read what follows.
        c[0].remove_members("#team", &[u("eve")]).await.unwrap();
        let events = c[4].sync().await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Removed { by, .. } if by == "@ann")),
            "{events:?}"
        );
        c[1].send("#team", "after eve left").await.unwrap();
        let events = c[4].sync().await.unwrap();
        assert!(
            texts(&events).is_empty(),
            "a removed member reads nothing: {events:?}"
        );
        assert!(c[4].send("#team", "still here?").await.is_err());

        // Dan leaves: another member commits his removal; he is out.
        c[3].sync().await.unwrap();
        c[3].leave("#team").await.unwrap();
        for client in c.iter_mut().take(3) {
            client.sync().await.unwrap();
        }
        c[2].send("#team", "dan is gone").await.unwrap();
        let events = c[3].sync().await.unwrap();
        assert!(
            !texts(&events).iter().any(|(_, t)| t == "dan is gone"),
            "{events:?}"
        );
        for client in c.iter_mut().take(3) {
            client.sync().await.unwrap();
            assert_eq!(client.members("#team").unwrap().len(), 3, "{suite:?}");
        }
        let history = texts(&c[1].messages("#team", 100).unwrap());
        assert_eq!(
            history.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            vec!["welcome all", "after eve left", "dan is gone"]
        );
    }
}

/// Ann and Ben in `#crew`, both caught up.
async fn crew(
    people: &People,
    server: &TestServer,
) -> (sealpost_sdk::Client, sealpost_sdk::Client) {
    let mut ann = people.register(server, "ann").await;
    let mut ben = people.register(server, "ben").await;
    ann.create_group("crew", &[u("ben")], Suite::Classic)
        .await
        .unwrap();
    ben.sync().await.unwrap();
    (ann, ben)
}

#[tokio::test]
async fn a_removed_member_added_again_rejoins_and_reads_what_follows() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut ann, mut ben) = crew(&people, &server).await;
    ann.remove_members("#crew", &[u("ben")]).await.unwrap();
    ben.sync().await.unwrap();
    ann.send("#crew", "while ben is out").await.unwrap();
    ann.add_members("#crew", &[u("ben")]).await.unwrap();
    let events = ben.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#crew")),
        "{events:?}"
    );
    assert!(
        texts(&events).is_empty(),
        "nothing from while he was out: {events:?}"
    );
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());
    assert_eq!(ben.members("#crew").unwrap().len(), 2);
    ann.send("#crew", "welcome back").await.unwrap();
    assert_eq!(
        texts(&ben.sync().await.unwrap()),
        vec![("@ann".to_string(), "welcome back".to_string())]
    );
    ben.send("#crew", "glad to be back").await.unwrap();
    assert_eq!(
        texts(&ann.sync().await.unwrap()),
        vec![("@ben".to_string(), "glad to be back".to_string())]
    );
}

/// Found by the stateful fuzz (`tests/sdk/stateful.rs`): Ben, offline, is removed and added back;
/// his one sync brings the removal (in the group's log) and the Welcome (in his inbox) at once.
/// He takes the removal first, then rejoins (before, the Welcome passed for a replay and he
/// never rejoined); and his next text follows his earlier ones (before, his numbering started
/// again and Ann showed it as late).
#[tokio::test]
async fn a_member_removed_and_added_again_while_offline_rejoins_and_stays_in_order() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut ann, mut ben) = crew(&people, &server).await;
    ben.send("#crew", "before").await.unwrap();
    ann.sync().await.unwrap();
    ann.remove_members("#crew", &[u("ben")]).await.unwrap();
    ann.send("#crew", "while ben is out").await.unwrap();
    ann.add_members("#crew", &[u("ben")]).await.unwrap();
    ann.send("#crew", "back").await.unwrap();

    let events = ben.sync().await.unwrap();
    let removed = events
        .iter()
        .position(|e| matches!(e, Event::Removed { .. }));
    let joined = events
        .iter()
        .position(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#crew"));
    assert!(
        matches!((removed, joined), (Some(r), Some(j)) if r < j),
        "{events:?}"
    );
    assert_eq!(
        texts(&events),
        vec![("@ann".to_string(), "back".to_string())]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. } | Event::Security { .. })),
        "{events:?}"
    );
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());

    ben.send("#crew", "after").await.unwrap();
    let got = ann.sync().await.unwrap();
    assert!(
        got.iter().any(|e| matches!(
            e,
            Event::Message { text, late: false, .. } if text == "after"
        )),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
}

/// A member who names the group something no Sealpost client makes — a name that would print
/// as the start of another sender's line — is not followed: the group keeps its name, and the
/// others are told a name was refused. A valid new name is taken.
#[tokio::test]
async fn a_group_name_that_could_forge_a_line_is_not_taken() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice
        .create_group("club", &[u("bob")], sealpost_sdk::Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let names = |c: &sealpost_sdk::Client| -> Vec<String> {
        c.conversations()
            .unwrap()
            .into_iter()
            .map(|c| c.conversation)
            .collect()
    };
    assert_eq!(names(&bob), ["#club"]);
    // (Alice's own name for it changes with each try: she names it by its id.)
    let id = alice.conversations().unwrap()[0].id.clone();
    for forged in [
        "x] @carol: the code is 4471",
        "club\n[@carol] @carol: hi",
        "club~0011",
        "@carol",
        "\u{1b}[2Jclub",
    ] {
        alice.rename_unchecked(id.as_str(), forged).await.unwrap();
        let events = bob.sync().await.unwrap();
        assert!(
            matches!(
                events.as_slice(),
                [sealpost_sdk::Event::Undecryptable { .. }]
            ),
            "{forged:?}: {events:?}"
        );
        assert_eq!(names(&bob), ["#club"], "{forged:?}");
    }
    alice
        .rename_unchecked(id.as_str(), "book-club")
        .await
        .unwrap();
    bob.sync().await.unwrap();
    assert_eq!(names(&bob), ["#book-club"]);
}

#[tokio::test]
async fn content_this_version_cannot_show_is_kept_and_shown_as_unsupported() {
    use sealpost_proto::mimi::{Content, Disposition, Extensions, NestedPart, Part};
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    bob.sync().await.unwrap();

    // What a later version or another MIMI client might send: a media type this one does not
    // know, and an extension it does not know.
    let mut extensions = Extensions::default();
    extensions
        .insert(
            sealpost_proto::mimi::ExtensionKey::Text("future".into()),
            sealpost_proto::mimi::Value::Bool(true),
        )
        .unwrap();
    let content = Content {
        salt: [9; 16],
        replaces: None,
        topic_id: Vec::new(),
        expires: None,
        in_reply_to: None,
        extensions,
        body: NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Single {
                content_type: "application/x-hologram".into(),
                content: vec![0, 1, 2, 3],
            },
        },
    };
    alice
        .send_content_unchecked("@bob", content.clone())
        .await
        .unwrap();
    alice.send("@bob", "after").await.unwrap();

    let events = bob.sync().await.unwrap();
    let unsupported: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Unsupported { from, what, id, .. } => Some((from, what, id)),
            _ => None,
        })
        .collect();
    assert_eq!(unsupported.len(), 1, "{events:?}");
    let (from, what, id) = unsupported[0];
    assert_eq!(from, "@alice");
    assert_eq!(what, "content of type application/x-hologram");
    // Its id is the draft's, with Sealpost's URIs (docs/protocol.md).
    let room = bob.conversations().unwrap()[0].id.clone();
    let expected = content.id(
        "mimi://sealpost.invalid/u/alice",
        &format!("mimi://sealpost.invalid/r/{room}"),
    );
    assert_eq!(id.as_str(), hex::encode(expected));
    // Nothing else was lost, and no gap is reported for the unnumbered message.
    assert_eq!(texts(&events), vec![("@alice".into(), "after".into())]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Gap { .. } | Event::Undecryptable { .. }))
    );
    // The history keeps it, in place.
    let history = bob.messages("@alice", 10).unwrap();
    let at = history
        .iter()
        .position(|e| matches!(e, Event::Unsupported { what, .. } if what.contains("hologram")))
        .unwrap_or_else(|| panic!("{history:?}"));
    assert!(matches!(&history[at - 1], Event::Message { text, .. } if text == "first"));
    assert!(matches!(&history[at + 1], Event::Message { text, .. } if text == "after"));
}

/// The message with id `id` in a history, as shown.
fn shown<'a>(history: &'a [Event], wanted: &str) -> &'a Event {
    history
        .iter()
        .find(|e| matches!(e, Event::Message { id, .. } if wanted == id.as_str()))
        .unwrap_or_else(|| panic!("no message {wanted} in {history:?}"))
}

#[tokio::test]
async fn replies_reactions_edits_and_deletes_reach_every_member_and_only_authors_change_messages() {
    use sealpost_proto::mimi::{Content, Disposition, Extensions, NestedPart, Part};
    use sealpost_sdk::{Error, Reaction, SecurityAlert};
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    alice
        .create_group("team", &[u("bob"), u("carol")], Suite::Classic)
        .await
        .unwrap();
    let Event::Message { id: pen, .. } = alice.send("#team", "a pen?").await.unwrap() else {
        panic!("not a message");
    };
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();

    // A reply names the message by the id people are shown.
    let reply = bob.reply("#team", &pen.short(), "here").await.unwrap();
    assert!(matches!(&reply, Event::Message { reply_to: Some(to), .. } if *to == pen));
    let events = carol.sync().await.unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Message { reply_to: Some(to), text, .. } if *to == pen && text == "here")
        ),
        "{events:?}"
    );

    // Mentions: the members a text names, as the sender's client lists them.
    carol
        .send("#team", "@bob has one, @alice (not @zed)")
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message { mentions, .. }
            if *mentions == ["@bob", "@alice"])),
        "{events:?}"
    );

    // A reaction, and taking it back.
    carol.react(&pen.short(), "\u{2764}").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Reacted { from, message, emoji, removed: false, .. }
            if from == "@carol" && *message == pen && emoji == "\u{2764}")
        ),
        "{events:?}"
    );
    let Event::Message { reactions, .. } =
        shown(&alice.messages("#team", 10).unwrap(), pen.as_str()).clone()
    else {
        unreachable!()
    };
    assert_eq!(
        reactions,
        vec![Reaction {
            from: "@carol".into(),
            emoji: "\u{2764}".into()
        }]
    );
    assert!(matches!(
        carol.unreact(pen.as_str(), "\u{1f44d}").await,
        Err(Error::NoSuchReaction(..))
    ));
    carol.unreact(pen.as_str(), "\u{2764}").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Reacted { removed: true, .. })),
        "{events:?}"
    );
    assert!(
        matches!(shown(&alice.messages("#team", 10).unwrap(), pen.as_str()),
        Event::Message { reactions, .. } if reactions.is_empty())
    );

    // Only the author edits or deletes: refused locally, and refused by every receiver when a
    // member sends it anyway.
    assert!(matches!(
        bob.edit(&pen.short(), "your Ferrari?").await,
        Err(Error::NotAuthor(_))
    ));
    assert!(matches!(
        bob.delete(&pen.short()).await,
        Err(Error::NotAuthor(_))
    ));
    let mut of = [0u8; 32];
    hex::decode_to_slice(pen.as_str(), &mut of).unwrap();
    let forged = Content {
        salt: [7; 16],
        replaces: Some(of),
        topic_id: Vec::new(),
        expires: None,
        in_reply_to: None,
        extensions: Extensions::default(),
        body: NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Single {
                content_type: "text/plain;charset=utf-8".into(),
                content: b"your Ferrari?".to_vec(),
            },
        },
    };
    bob.send_content_unchecked("#team", forged).await.unwrap();
    for member in [&mut alice, &mut carol] {
        let events = member.sync().await.unwrap();
        assert!(
            events.iter().any(|e| matches!(e, Event::Security { alert: SecurityAlert::NotAuthor, detail, .. } if detail.contains("@bob"))),
            "{events:?}"
        );
        assert!(
            matches!(shown(&member.messages("#team", 10).unwrap(), pen.as_str()),
            Event::Message { text, edited: false, .. } if text == "a pen?")
        );
    }

    // The author edits: everyone sees the new text, marked as edited.
    alice
        .edit(&pen.short(), "a pen, please, @bob?")
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Edited { message, text, .. } if *message == pen && text == "a pen, please, @bob?")),
        "{events:?}"
    );
    assert!(
        matches!(shown(&bob.messages("#team", 10).unwrap(), pen.as_str()),
        Event::Message { text, edited: true, mentions, .. }
            if text == "a pen, please, @bob?" && *mentions == ["@bob"])
    );

    // And deletes: the text is gone everywhere, the place stays; it can no longer be changed.
    carol.sync().await.unwrap();
    carol.react(&pen.short(), "\u{1f44d}").await.unwrap();
    alice.delete(&pen.short()).await.unwrap();
    for member in [&mut bob, &mut carol] {
        member.sync().await.unwrap();
        assert!(
            matches!(shown(&member.messages("#team", 10).unwrap(), pen.as_str()),
            Event::Message { text, deleted: true, reactions, .. } if text.is_empty() && reactions.is_empty())
        );
    }
    assert!(matches!(
        alice.edit(&pen.short(), "back").await,
        Err(Error::NotChangeable(_))
    ));
    assert!(matches!(
        carol.react(&pen.short(), "\u{1f44d}").await,
        Err(Error::NotChangeable(_))
    ));
    assert!(matches!(
        carol.react("ffffffff", "\u{1f44d}").await,
        Err(Error::UnknownMessage(_))
    ));
    assert!(matches!(
        carol.react(&reply_id(&reply), "two words").await,
        Err(Error::BadReaction)
    ));
}

fn reply_id(e: &Event) -> String {
    match e {
        Event::Message { id, .. } => id.short(),
        other => panic!("not a message: {other:?}"),
    }
}

/// The file of the message `event`, and the message's id.
fn file_of(event: &Event) -> Option<(sealpost_sdk::FileInfo, String, String)> {
    match event {
        Event::Message {
            file: Some(file),
            id,
            text,
            ..
        } => Some((file.clone(), id.as_str().to_owned(), text.clone())),
        _ => None,
    }
}

/// The files the embedded server holds, by name.
fn server_blobs(server: &TestServer) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(server.data.join("blobs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A server, a proxy before it, and Alice (through the proxy) and Bob, who share a conversation.
async fn file_senders() -> (
    TestServer,
    crate::common::Interceptor,
    People,
    sealpost_sdk::Client,
    sealpost_sdk::Client,
) {
    let server = TestServer::start().await;
    let proxy = crate::common::Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&proxy.url, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    bob.sync().await.unwrap();
    (server, proxy, people, alice, bob)
}

/// A file goes end to end: sealed under a fresh key, uploaded (and taken up again where the
/// server stood after the connection broke), named with its caption in a message, fetched,
/// checked and saved by the receiver. The server holds only ciphertext, and deletes it once
/// every recipient device has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_sent_resumed_after_an_interruption_fetched_and_then_deleted_from_the_server() {
    let (server, proxy, _people, mut alice, mut bob) = file_senders().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holiday photo.jpg");
    let marker = b"FILE-CANARY-7d1f";
    let content: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .flat_map(|i: u32| {
            if i.is_multiple_of(4096) {
                marker.to_vec()
            } else {
                vec![(i % 251) as u8]
            }
        })
        .collect();
    std::fs::write(&path, &content).unwrap();

    // A reply to a message that is not there is refused before anything is uploaded.
    let refused = alice
        .send_file("@bob", &path, "", Some("0123abcd"), &mut |_| {})
        .await;
    assert!(
        matches!(refused, Err(Error::UnknownMessage(_))),
        "{refused:?}"
    );
    assert!(server_blobs(&server).is_empty());

    // The first request of the upload breaks after 1.5 MB reached the server.
    proxy.cut("PATCH", "/v1/uploads/", 1_500_000, 1);
    proxy.take_seen();
    let mut progress = Vec::new();
    let sent = alice
        .send_file("@bob", &path, "the beach", None, &mut |p| progress.push(p))
        .await
        .unwrap();
    let (info, id, caption) = file_of(&sent).unwrap();
    assert_eq!(info.name, "holiday photo.jpg");
    assert_eq!(info.media_type, "image/jpeg");
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(caption, "the beach");
    let last = progress.last().unwrap();
    assert_eq!(last.done, last.total);
    let patches: Vec<_> = proxy
        .take_seen()
        .into_iter()
        .filter(|s| s.path.contains("/blobs") || s.path.contains("/uploads/"))
        .collect();
    let methods: Vec<_> = patches
        .iter()
        .map(|s| (s.method.as_str(), s.status))
        .collect();
    assert_eq!(
        methods,
        [("POST", 201), ("PATCH", 502), ("HEAD", 204), ("PATCH", 200)],
        "{patches:?}"
    );
    // Taken up where the server stood: the bytes it had were not sent again.
    assert!(
        patches[3].len < content.len() - 1_400_000,
        "{}",
        patches[3].len
    );

    // The server holds the blob, and no byte of the file in the clear.
    let held = server_blobs(&server);
    assert_eq!(held.len(), 1);
    assert!(
        !held[0].1.windows(marker.len()).any(|w| w == marker),
        "the file is readable on the server"
    );

    let events = bob.sync().await.unwrap();
    let (info, received_id, caption) = events.iter().find_map(file_of).unwrap();
    assert_eq!(
        (received_id.as_str(), caption.as_str()),
        (id.as_str(), "the beach")
    );
    assert_eq!(info.size, content.len() as u64);
    let out = dir.path().join("saved");
    std::fs::create_dir(&out).unwrap();
    let saved = bob.download(&id, Some(&out), &mut |_| {}).await.unwrap();
    assert_eq!(saved, out.join("holiday photo.jpg"));
    assert!(std::fs::read(&saved).unwrap() == content);
    // Never over a file that is there.
    assert!(matches!(
        bob.download(&id, Some(&out), &mut |_| {}).await,
        Err(sealpost_sdk::Error::FileExists(_))
    ));
    // Its only recipient device has it: gone from the server.
    assert!(server_blobs(&server).is_empty());

    // The last request arrives whole, but its answer is lost: the upload is finished, and
    // nothing is sent again.
    proxy.cut("PATCH", "/v1/uploads/", usize::MAX, 1);
    proxy.take_seen();
    alice
        .send_file("@bob", &path, "", None, &mut |_| {})
        .await
        .unwrap();
    let uploads: Vec<_> = proxy
        .take_seen()
        .into_iter()
        .filter(|s| s.path.contains("/uploads/"))
        .map(|s| (s.method, s.status))
        .collect();
    assert_eq!(
        uploads,
        [("PATCH".to_owned(), 502), ("HEAD".to_owned(), 204)]
    );
    let events = bob.sync().await.unwrap();
    let (_, again, _) = events.iter().find_map(file_of).unwrap();
    let saved = bob
        .download(&again, Some(&out.join("second.jpg")), &mut |_| {})
        .await
        .unwrap();
    assert!(std::fs::read(&saved).unwrap() == content);
    // A text has no file.
    let text = alice.send("@bob", "no file here").await.unwrap();
    let Event::Message { id: text_id, .. } = text else {
        panic!("{text:?}")
    };
    bob.sync().await.unwrap();
    assert!(matches!(
        bob.download(text_id.as_str(), None, &mut |_| {}).await,
        Err(sealpost_sdk::Error::NoFile(_))
    ));
}

/// Broken transfers go on where they stopped. An upload cut off with the process that made it
/// is taken up after a restart, under the same key and where the server stands, when the same
/// file is sent to the same conversation again (one whose file changed since starts again); a
/// download whose connection breaks goes on with a range request, not from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transfers_go_on_where_they_stopped_even_across_a_restart() {
    let (_server, proxy, people, alice, mut bob) = file_senders().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("film.bin");
    let content: Vec<u8> = (0..9 * 1024 * 1024 + 77u32)
        .map(|i| (i % 253) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    let uploads = |proxy: &crate::common::Interceptor| -> Vec<(String, u16)> {
        proxy
            .take_seen()
            .into_iter()
            .filter(|s| s.path.contains("/uploads") || s.path.contains("/blobs"))
            .map(|s| (s.method, s.status))
            .collect()
    };

    // The process ends as soon as the server has stored the first part.
    let len = content.len() as u64;
    let cut_off = |mut alice: sealpost_sdk::Client| {
        let path = path.clone();
        async move {
            let (stored, mut first) = tokio::sync::mpsc::unbounded_channel();
            let mut progress = move |p: sealpost_sdk::Progress| {
                if p.done > 0 {
                    let _ = stored.send(p.done);
                }
            };
            tokio::select! {
                sent = alice.send_file("@bob", &path, "", None, &mut progress) => {
                    panic!("sent before it was cut off: {sent:?}")
                }
                Some(done) = first.recv() => assert!(done < len),
            }
        }
    };
    // A restart, and the same file sent again: where its upload started.
    let restart_and_send = || async {
        let mut alice = sealpost_sdk::Client::open(&people.home("alice"), None).unwrap();
        let mut progress = Vec::new();
        alice
            .send_file("@bob", &path, "", None, &mut |p| progress.push(p))
            .await
            .unwrap();
        (alice, progress[0].done)
    };
    cut_off(alice).await;
    let first = uploads(&proxy);
    assert_eq!(first[0], ("POST".to_owned(), 201), "{first:?}");

    // After the restart: no new upload, and the bytes the server had are not sent again.
    let (mut alice, from) = restart_and_send().await;
    assert!(from >= 4 * 1024 * 1024, "{from}");
    let again = uploads(&proxy);
    assert_eq!(again[0], ("HEAD".to_owned(), 204), "{again:?}");
    assert!(!again.iter().any(|(m, _)| m == "POST"), "{again:?}");
    let events = bob.sync().await.unwrap();
    let (_, id, _) = events.iter().find_map(file_of).unwrap();

    // A download whose connection breaks twice goes on from where each break left it (a range
    // request each time), and what is saved is the file.
    proxy.cut_answer("GET", "/v1/blobs/", 2_000_000, 2);
    let mut progress = Vec::new();
    let own = alice
        .download(&id, Some(&dir.path().join("own.bin")), &mut |p| {
            progress.push(p)
        })
        .await
        .unwrap();
    assert!(std::fs::read(&own).unwrap() == content);
    let fetches: Vec<_> = uploads(&proxy)
        .into_iter()
        .filter(|(m, _)| m == "GET")
        .collect();
    assert_eq!(
        fetches,
        [
            ("GET".to_owned(), 200),
            ("GET".to_owned(), 206),
            ("GET".to_owned(), 206)
        ]
    );
    // Never counted back: no byte was fetched twice.
    assert!(
        progress.windows(2).all(|w| w[0].done <= w[1].done),
        "{progress:?}"
    );
    let saved = bob
        .download(&id, Some(&dir.path().join("got.bin")), &mut |_| {})
        .await
        .unwrap();
    assert!(std::fs::read(&saved).unwrap() == content);

    // Sent: nothing is left to take up, and sending it again is a new upload.
    alice
        .send_file("@bob", &path, "", None, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(uploads(&proxy)[0], ("POST".to_owned(), 201));

    // Cut off again, then the file changes: what the server has is dropped, and the changed
    // file goes from the start.
    cut_off(alice).await;
    uploads(&proxy);
    std::fs::write(&path, [&content[..], b"and more"].concat()).unwrap();
    let (_, from) = restart_and_send().await;
    assert_eq!(from, 0);
    let fresh = uploads(&proxy);
    assert_eq!(
        fresh[..2],
        [("DELETE".to_owned(), 204), ("POST".to_owned(), 201)],
        "{fresh:?}"
    );
}

/// What the server serves in place of a file is checked before anything is saved: another
/// valid blob, a cut one and an extended one are each refused, and no file (nor part of one)
/// is left behind. The honest blob then opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_truncated_or_extended_blob_is_refused_and_nothing_is_saved() {
    let server = TestServer::start().await;
    let proxy = crate::common::Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register_at(&proxy.url, "bob").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, vec![b'a'; 200_000]).unwrap();
    std::fs::write(&b, vec![b'b'; 200_000]).unwrap();
    alice
        .send_file("@bob", &a, "", None, &mut |_| {})
        .await
        .unwrap();
    alice
        .send_file("@bob", &b, "", None, &mut |_| {})
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    let ids: Vec<String> = events.iter().filter_map(file_of).map(|f| f.1).collect();
    assert_eq!(ids.len(), 2);
    let blobs: Vec<Vec<u8>> = server_blobs(&server).into_iter().map(|b| b.1).collect();
    assert_eq!(blobs.len(), 2);

    let out = dir.path().join("saved");
    std::fs::create_dir(&out).unwrap();
    type Tamper = Box<dyn Fn(Vec<u8>) -> Vec<u8> + Send + Sync>;
    let tamperings: [(&str, Tamper); 3] = [
        (
            "replaced or altered",
            Box::new(move |body| {
                if body == blobs[0] {
                    blobs[1].clone()
                } else {
                    blobs[0].clone()
                }
            }),
        ),
        (
            "cut short",
            Box::new(|mut body| {
                body.truncate(body.len() - 10);
                body
            }),
        ),
        (
            "longer than the message says",
            Box::new(|mut body| {
                body.extend_from_slice(&[0; 16]);
                body
            }),
        ),
    ];
    for (why, tamper) in tamperings {
        proxy.clear();
        proxy.rewrite("/v1/blobs/", move |_, body| tamper(body));
        let err = bob
            .download(&ids[0], Some(&out), &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, sealpost_sdk::Error::FileRefused(m) if m.contains(why)),
            "{why}: {err}"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "{why}");
    }
    proxy.clear();
    let saved = bob
        .download(&ids[0], Some(&out), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved).unwrap(), vec![b'a'; 200_000]);
}

/// The sealed bytes of the history row of message `id` in the profile at `home`, read as they
/// lie in its database.
fn sealed_row(home: &std::path::Path, id: &str) -> Vec<u8> {
    let db = rusqlite::Connection::open(home.join("profile.db")).unwrap();
    db.query_row("SELECT item FROM history WHERE msg_id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Whether `needle` lies anywhere in the profile's database files.
fn in_profile_files(home: &std::path::Path, needle: &[u8]) -> bool {
    ["profile.db", "profile.db-wal"].iter().any(|f| {
        std::fs::read(home.join(f))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

/// Disappearing messages: any member sets the timer, and every member sees it; messages sent
/// from then on carry it and disappear from every device once their time is up (a sync does
/// it): gone from the profile's files, not only from view, with what was said about them.
/// Messages from before stay; 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_are_gone_from_every_store_once_their_time_is_up() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "before the timer").await.unwrap();
    bob.sync().await.unwrap();

    let set = bob.disappear("@alice", 3600).await.unwrap();
    assert!(
        matches!(&set, Event::Timer { by, seconds: 3600, .. } if by == "@bob"),
        "{set:?}"
    );
    let seen = alice.sync().await.unwrap();
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Timer { by, seconds: 3600, .. } if by == "@bob")),
        "{seen:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let sent = alice.send("@bob", "this will vanish").await.unwrap();
    let Event::Message {
        id,
        expires_at: Some(expires),
        ..
    } = sent
    else {
        panic!("{sent:?}")
    };
    assert!(expires >= now + 3_599_000, "{expires} {now}");
    let events = bob.sync().await.unwrap();
    let received = events
        .iter()
        .find_map(|e| match e {
            Event::Message {
                id: got,
                expires_at,
                ..
            } if got == &id => Some(*expires_at),
            _ => None,
        })
        .unwrap();
    let received = received.unwrap();
    assert!(received >= now + 3_599_000, "{received}");
    bob.react(id.as_str(), "👍").await.unwrap();
    alice
        .edit(id.as_str(), "edited, and still vanishing")
        .await
        .unwrap();
    bob.sync().await.unwrap();
    alice.sync().await.unwrap();

    for (client, name, at) in [(&mut alice, "alice", expires), (&mut bob, "bob", received)] {
        let home = people.home(name);
        let sealed = sealed_row(&home, id.as_str());
        assert!(in_profile_files(&home, &sealed[..32]));
        // Not before its time.
        assert_eq!(client.purge_expired_at(at - 1).unwrap(), 0, "{name}");
        assert_eq!(client.purge_expired_at(at).unwrap(), 1, "{name}");
        let shown = client
            .messages(if name == "alice" { "@bob" } else { "@alice" }, 50)
            .unwrap();
        assert!(
            !shown.iter().any(|e| format!("{e:?}").contains("vanish")),
            "{name}: {shown:?}"
        );
        assert_eq!(texts(&shown).len(), 1, "{name}: {shown:?}");
        let logged = client
            .events_after(sealpost_sdk::EventId::START, 1000)
            .unwrap();
        assert!(
            !logged.iter().any(|e| format!("{e:?}").contains("vanish")),
            "{name}: the event log still has it"
        );
        assert!(
            !in_profile_files(&home, &sealed[..32]),
            "{name}: the sealed message is still in the profile's files"
        );
    }

    // Off again: messages stay.
    alice.disappear("@bob", 0).await.unwrap();
    let kept = alice.send("@bob", "for ever").await.unwrap();
    assert!(
        matches!(
            kept,
            Event::Message {
                expires_at: None,
                ..
            }
        ),
        "{kept:?}"
    );
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Timer { seconds: 0, .. }))
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Message { expires_at: None, text, .. } if text == "for ever")
        )
    );
}

/// The server keeps what it holds of a conversation with disappearing messages no longer than
/// the timer, delivered or not: a message not yet fetched and a file not yet downloaded are
/// deleted there once their time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_deletes_what_it_holds_of_a_disappearing_conversation_past_its_time() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    bob.sync().await.unwrap();
    alice.disappear("@bob", 60).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("note.txt");
    std::fs::write(&path, b"a note").unwrap();
    alice
        .send_file("@bob", &path, "", None, &mut |_| {})
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    let (_, file_message, _) = events.iter().find_map(file_of).unwrap();
    alice.send("@bob", "not fetched in time").await.unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(server.store.purge_expiring(now).await.unwrap(), 0);
    // A minute and more later, by the server's purge: the message and the file are gone.
    assert!(server.store.purge_expiring(now + 61_000).await.unwrap() >= 2);
    let events = bob.sync().await.unwrap();
    assert!(
        !texts(&events)
            .iter()
            .any(|(_, t)| t == "not fetched in time"),
        "{events:?}"
    );
    let err = bob
        .download(
            &file_message,
            Some(&dir.path().join("got.txt")),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            sealpost_sdk::Error::Server {
                code: sealpost_proto::ErrorCode::NotFound,
                ..
            }
        ),
        "{err}"
    );
}

/// The receipts among `events`: (from, status, messages).
fn receipts(events: &[Event]) -> Vec<(String, ReceiptStatus, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Receipt {
                from,
                status,
                messages,
                ..
            } => Some((
                from.clone(),
                *status,
                messages.iter().map(|m| m.as_str().to_owned()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn typing(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Typing { from, typing, .. } => Some((from.clone(), *typing)),
            _ => None,
        })
        .collect()
}

fn sent_id(e: &Event) -> String {
    match e {
        Event::Message { id, .. } => id.as_str().to_owned(),
        _ => panic!("{e:?}"),
    }
}

fn receipts_on(typing: bool) -> Preferences {
    Preferences {
        receipts: true,
        typing,
    }
}

#[tokio::test]
async fn receipts_and_typing_go_only_between_those_who_switched_them_on() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    assert_eq!(alice.preferences(), Preferences::default());

    // Off by default: reading sends nothing, typing sends nothing.
    let one = sent_id(&alice.send("@bob", "one").await.unwrap());
    bob.sync().await.unwrap();
    assert_eq!(bob.mark_read("@alice").await.unwrap(), 1);
    assert!(!bob.typing("@alice", true).await.unwrap());
    let seen = alice.sync().await.unwrap();
    assert!(
        receipts(&seen).is_empty() && typing(&seen).is_empty(),
        "{seen:?}"
    );

    // Bob's on, Alice's off: Alice does not take his (it works both ways).
    bob.set_preferences(receipts_on(true)).unwrap();
    let two = sent_id(&alice.send("@bob", "two").await.unwrap());
    bob.sync().await.unwrap();
    assert!(bob.typing("@alice", true).await.unwrap());
    let seen = alice.sync().await.unwrap();
    assert!(
        receipts(&seen).is_empty() && typing(&seen).is_empty(),
        "{seen:?}"
    );

    // Both on: delivered as soon as Bob's device has it, read once he was shown it.
    alice.set_preferences(receipts_on(true)).unwrap();
    let three = sent_id(&alice.send("@bob", "three").await.unwrap());
    let got = bob.sync().await.unwrap();
    assert_eq!(texts(&got), vec![("@alice".into(), "three".into())]);
    assert_eq!(
        receipts(&alice.sync().await.unwrap()),
        vec![("@bob".into(), ReceiptStatus::Delivered, vec![three.clone()])]
    );
    assert!(bob.typing("@alice", true).await.unwrap());
    assert_eq!(
        typing(&alice.sync().await.unwrap()),
        vec![("@bob".into(), true)]
    );
    // The conversation list counts them (his own messages are never unread), with the newest.
    bob.send("@alice", "mine").await.unwrap();
    let listed = bob.conversations().unwrap().remove(0);
    assert_eq!(listed.unread, 2, "{listed:?}");
    assert!(
        matches!(listed.latest.as_deref(), Some(Event::Message { text, .. }) if text == "mine"),
        "{listed:?}"
    );
    // Marked read: the messages shown since the last time (two and three; one was read before).
    assert_eq!(bob.mark_read("@alice").await.unwrap(), 2);
    assert_eq!(bob.mark_read("@alice").await.unwrap(), 0, "once");
    assert_eq!(bob.conversations().unwrap()[0].unread, 0);
    let seen = alice.sync().await.unwrap();
    assert_eq!(
        receipts(&seen),
        vec![(
            "@bob".into(),
            ReceiptStatus::Read,
            vec![two.clone(), three.clone()]
        )]
    );
    let history = alice.messages("@bob", 10).unwrap();
    let status_of = |id: &str| match history
        .iter()
        .find(|e| matches!(e, Event::Message { id: m, .. } if m.as_str() == id))
    {
        Some(Event::Message { receipts, .. }) => receipts.clone(),
        other => panic!("{other:?}"),
    };
    assert!(status_of(&one).is_empty());
    let read = vec![Receipt {
        from: "@bob".into(),
        status: ReceiptStatus::Read,
    }];
    assert_eq!(status_of(&two), read);
    assert_eq!(status_of(&three), read);
    // Bob's reports named Alice's messages: his own history takes none of them.
    assert!(
        bob.messages("@alice", 10)
            .unwrap()
            .iter()
            .all(|e| !matches!(e, Event::Message { receipts, .. } if !receipts.is_empty()))
    );

    // In a group, a receipt goes to every member, but only the author takes it.
    let mut carol = people.register(&server, "carol").await;
    carol.set_preferences(receipts_on(false)).unwrap();
    alice
        .create_group("team", &[u("bob"), u("carol")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    alice.sync().await.unwrap();
    let hello = sent_id(&alice.send("#team", "hello").await.unwrap());
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let mut from_members: Vec<_> = receipts(&alice.sync().await.unwrap());
    from_members.sort();
    assert_eq!(
        from_members,
        vec![
            ("@bob".into(), ReceiptStatus::Delivered, vec![hello.clone()]),
            (
                "@carol".into(),
                ReceiptStatus::Delivered,
                vec![hello.clone()]
            ),
        ]
    );
    let seen = carol.sync().await.unwrap();
    assert!(receipts(&seen).is_empty(), "{seen:?}");

    // Switched off again: nothing more goes out.
    bob.set_preferences(Preferences::default()).unwrap();
    alice.send("#team", "again").await.unwrap();
    bob.sync().await.unwrap();
    bob.mark_read("#team").await.unwrap();
    assert!(!bob.typing("#team", true).await.unwrap());
    let seen = alice.sync().await.unwrap();
    assert!(
        receipts(&seen).iter().all(|(from, ..)| from != "@bob") && typing(&seen).is_empty(),
        "{seen:?}"
    );
}

#[tokio::test]
async fn profiles_travel_encrypted_and_the_same_name_stays_told_apart() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    alice.send("@bob", "before").await.unwrap();
    bob.sync().await.unwrap();

    let images = tempfile::tempdir().unwrap();
    let png = images.path().join("me.png");
    let picture: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(&png, &picture).unwrap();
    let mine = alice
        .set_profile(Some("Alice Smith"), Some(Some(&png)))
        .await
        .unwrap();
    assert_eq!(mine.name, "Alice Smith");
    // The profile keeps its own copy: the original can go.
    std::fs::remove_file(&png).unwrap();
    assert_eq!(std::fs::read(mine.avatar.unwrap()).unwrap(), picture);

    let seen = bob.sync().await.unwrap();
    let shared = seen
        .iter()
        .find_map(|e| match e {
            Event::Profile {
                from, name, avatar, ..
            } if from == "@alice" => Some((name.clone(), avatar.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(shared.0, "Alice Smith");
    assert_eq!(shared.1.unwrap().media_type, "image/png");
    let known = bob.profile_of("@alice").unwrap();
    assert_eq!(known.name, "Alice Smith");
    assert_eq!(std::fs::read(known.avatar.unwrap()).unwrap(), picture);
    // Shown beside the username, on old messages and new ones.
    alice.send("@bob", "after").await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::Message { from, sender_name: Some(n), text, .. }
            if from == "@alice" && n == "Alice Smith" && text == "after")
        ),
        "{seen:?}"
    );
    assert!(bob.messages("@alice", 10).unwrap().iter().all(|e| !matches!(
        e, Event::Message { from, sender_name, .. } if from == "@alice" && sender_name.as_deref() != Some("Alice Smith")
    )));

    // Carol takes the same name; in a group, each stays told apart by their username, and
    // a member added later learns both profiles.
    carol.set_profile(Some("Alice Smith"), None).await.unwrap();
    alice
        .create_group("twins", &[u("carol")], Suite::Classic)
        .await
        .unwrap();
    carol.sync().await.unwrap();
    alice.sync().await.unwrap();
    alice.add_members("#twins", &[u("bob")]).await.unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    alice.sync().await.unwrap();
    carol.send("#twins", "it's me").await.unwrap();
    alice.send("#twins", "no, me").await.unwrap();
    let seen = bob.sync().await.unwrap();
    let said: Vec<(String, Option<String>, String)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                from,
                sender_name,
                text,
                ..
            } => Some((from.clone(), sender_name.clone(), text.clone())),
            _ => None,
        })
        .collect();
    let twin = Some("Alice Smith".to_owned());
    assert_eq!(
        said,
        vec![
            ("@carol".into(), twin.clone(), "it's me".into()),
            ("@alice".into(), twin.clone(), "no, me".into()),
        ]
    );
    let members = bob.members("#twins").unwrap();
    assert!(
        members.iter().filter(|m| m.name == twin).count() == 2,
        "{members:?}"
    );

    // Names and avatars Sealpost does not send are refused, and change nothing.
    for bad in ["@bob", "say \"hi\"", "line\nbreak", &"x".repeat(65)] {
        assert!(
            matches!(
                alice.set_profile(Some(bad), None).await,
                Err(Error::BadProfile(_))
            ),
            "{bad:?}"
        );
    }
    let text = images.path().join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    let big = images.path().join("big.png");
    std::fs::write(&big, vec![0u8; 1024 * 1024 + 1]).unwrap();
    for bad in [&text, &big] {
        assert!(
            matches!(
                alice.set_profile(None, Some(Some(bad))).await,
                Err(Error::BadProfile(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(alice.own_profile().unwrap().name, "Alice Smith");
    // Taken away.
    alice.set_profile(Some(""), Some(None)).await.unwrap();
    bob.sync().await.unwrap();
    let known = bob.profile_of("@alice").unwrap();
    assert_eq!((known.name.as_str(), known.avatar), ("", None));
}
