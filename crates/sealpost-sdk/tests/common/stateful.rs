//! The stateful fuzz's driver: a seed (or a fuzzer's input) drives a sequence of actions by
//! four clients and a real server — texts, syncs, members added and removed — mixed with faults
//! a real network and real machines produce: a sync answer delivered twice over, a sync answer
//! that leaves the group's messages out, the answer to a send or a commit lost on the way back,
//! a client process restarted, the server restarted on its data. Each client talks to the
//! server through its own interceptor.
//!
//! When the sequence ends the faults stop and everyone catches up. Then, for every client's
//! history: every text shown was sent, by whom it says, to a group this client was in when it
//! was sent; none is shown twice; each sender's texts come in the order they were sent; every
//! text whose send was acknowledged is there for each member it was sent to; nothing is
//! unreadable, missing (a gap) or alarming (a security alert); and all members are at one
//! epoch and reach each other.
//!
//! Used by `tests/sdk/stateful.rs` (seeded) and by the `stateful` target in `fuzz/` (the fuzzer's
//! bytes choose the actions). `SEALPOST_STATEFUL_DEBUG=1` prints each step, what the syncs
//! brought and every history, and copies the server's data to
//! `$TMPDIR/sealpost-stateful-server` for a look with `sqlite3`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use sealpost_proto::{DeliveryKind, DeviceId};
use sealpost_sdk::{Client, Event, Suite};

use super::{Draw, Interceptor, People, TestServer, u};

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
const ROOM: &str = "#all";

/// The one-shot faults armed on a client's interceptor; each is used up by the first answer it
/// applies to.
#[derive(Default)]
struct Faults {
    duplicate_sync: bool,
    hold_back_sync: bool,
    lose_answer: bool,
}

/// A client with its interceptor and its faults.
struct Device {
    name: &'static str,
    client: Option<Client>,
    mitm: Interceptor,
    faults: Arc<Mutex<Faults>>,
}

impl Device {
    async fn new(people: &People, server: &TestServer, name: &'static str) -> Device {
        let mitm = Interceptor::start(&server.url).await;
        let client = people.register_at(&mitm.url, name).await;
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let f = faults.clone();
        mitm.rewrite_sync(move |ds| {
            let mut f = f.lock().unwrap();
            if std::mem::take(&mut f.hold_back_sync) {
                ds.retain(|d| d.kind != DeliveryKind::Group);
            } else if std::mem::take(&mut f.duplicate_sync) {
                let again = ds.clone();
                ds.extend(again);
            }
        });
        let f = faults.clone();
        mitm.rewrite("/v1/groups/", move |path, body| {
            let posted = path.ends_with("/messages") || path.ends_with("/commits");
            if posted && std::mem::take(&mut f.lock().unwrap().lose_answer) {
                b"\x00".to_vec()
            } else {
                body
            }
        });
        Device {
            name,
            client: Some(client),
            mitm,
            faults,
        }
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().unwrap()
    }

    /// The users (`@name`) in the room as this client sees it (none if it is not in it).
    fn room_members(&mut self) -> BTreeSet<String> {
        let client = self.client();
        let inside = client
            .conversations()
            .unwrap()
            .iter()
            .any(|c| c.conversation == ROOM && c.active);
        if !inside {
            return BTreeSet::new();
        }
        client
            .members(ROOM)
            .unwrap()
            .into_iter()
            .map(|m| m.member)
            .collect()
    }
}

/// A text sent, to whom (the users in the room as the sender saw it when sending, and as the
/// server had them when it took the text), and in which epoch.
struct Sent {
    from: String,
    to: BTreeSet<String>,
    on_server: BTreeSet<String>,
    epoch: u64,
    step: u64,
    acknowledged: bool,
}

/// Plays `actions` steps chosen by `draw` and checks every history (see the module's text);
/// panics with `replay` (how to play the run again) in the message when a check fails.
pub async fn run(draw: &mut impl Draw, actions: u64, replay: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");

    let mut server = TestServer::start_at(&data, "127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let people = People::new();
    let mut devices = Vec::new();
    for name in NAMES {
        devices.push(Device::new(&people, &server, name).await);
    }
    devices[0]
        .client()
        .create_group("all", &[u("bob"), u("carol")], Suite::Pq)
        .await
        .unwrap();
    let group = super::group_of(devices[0].client(), ROOM);
    let mut names = BTreeMap::new();
    for d in &mut devices {
        let id: DeviceId = d.client().whoami().device;
        names.insert(id, d.name);
    }

    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    // When (step) and at which epoch each user was added again: its state starts there, so a
    // text sent after that but encrypted to an earlier epoch (by a member who had not caught
    // up) is not for it, even if it was a member then too.
    let mut added: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut tally: BTreeMap<&str, u32> = BTreeMap::new();
    for step in 0..actions {
        let i = draw.below(devices.len());
        let roll = draw.below(100);
        let members = devices[i].room_members();
        let me = format!("@{}", devices[i].name);
        let action = match roll {
            0..40 if members.contains(&me) => {
                let text = format!("t{step}-{}", devices[i].name);
                let acknowledged = devices[i].client().send(ROOM, &text).await.is_ok();
                let to = devices[i].room_members();
                let epoch = devices[i].client().epoch(ROOM).unwrap();
                // A member removed before the text was taken cannot read it, though a sender
                // who had not yet seen the removal encrypted it to them.
                let on_server = server
                    .store
                    .group_devices(group)
                    .await
                    .unwrap()
                    .iter()
                    .map(|d| format!("@{}", names[d]))
                    .collect();
                sent.insert(
                    text,
                    Sent {
                        from: me.clone(),
                        to,
                        on_server,
                        epoch,
                        step,
                        acknowledged,
                    },
                );
                "send"
            }
            40..55 if members.contains(&me) => {
                let outside: Vec<&str> = NAMES
                    .iter()
                    .copied()
                    .filter(|n| !members.contains(&format!("@{n}")))
                    .collect();
                let inside: Vec<String> = members.iter().filter(|n| **n != me).cloned().collect();
                let client = devices[i].client();
                if !outside.is_empty() && (inside.len() < 2 || draw.below(2) == 0) {
                    let who = draw.pick(&outside);
                    let _ = client.add_members(ROOM, &[u(who)]).await;
                    // Whether it went through (its answer may be lost): the actor's log says.
                    let _ = client.sync().await;
                    let now = devices[i].room_members();
                    if now.contains(&format!("@{who}")) {
                        let epoch = devices[i].client().epoch(ROOM).unwrap();
                        added
                            .entry(format!("@{who}"))
                            .or_default()
                            .push((step, epoch));
                    }
                    "add"
                } else if inside.len() >= 2 {
                    let who = &inside[draw.below(inside.len())];
                    let _ = client.remove_members(ROOM, &[u(&who[1..])]).await;
                    "remove"
                } else {
                    "none"
                }
            }
            55..62 => {
                devices[i].faults.lock().unwrap().duplicate_sync = true;
                "duplicate a sync answer"
            }
            62..69 => {
                devices[i].faults.lock().unwrap().hold_back_sync = true;
                "hold back a sync answer"
            }
            69..76 => {
                devices[i].faults.lock().unwrap().lose_answer = true;
                "lose an answer"
            }
            76..82 => {
                drop(devices[i].client.take());
                let home = people.home(devices[i].name);
                devices[i].client = Some(Client::open(&home, None).unwrap());
                "restart a client"
            }
            82..87 => {
                server.stop().await;
                server = TestServer::start_at(&data, &addr).await;
                "restart the server"
            }
            _ => {
                let got = devices[i].client().sync().await;
                if std::env::var_os("SEALPOST_STATEFUL_DEBUG").is_some() {
                    println!("  {} got {got:?}", devices[i].name);
                }
                "sync"
            }
        };
        *tally.entry(action).or_default() += 1;
        if std::env::var_os("SEALPOST_STATEFUL_DEBUG").is_some() {
            println!("step {step}: {} {action}", devices[i].name);
        }
    }
    println!("stateful: {tally:?}");

    // The faults stop; everyone catches up.
    for d in &mut devices {
        d.mitm.clear();
        *d.faults.lock().unwrap() = Faults::default();
    }
    for _ in 0..2 {
        for d in &mut devices {
            d.client().sync().await.unwrap();
        }
    }

    if std::env::var_os("SEALPOST_STATEFUL_DEBUG").is_some() {
        let kept = std::env::temp_dir().join("sealpost-stateful-server");
        let _ = std::fs::remove_dir_all(&kept);
        std::process::Command::new("cp")
            .arg("-r")
            .arg(&data)
            .arg(&kept)
            .status()
            .unwrap();
        println!("server data copied to {}", kept.display());
    }
    let mut checked = 0;
    for d in &mut devices {
        let name = format!("@{}", d.name);
        let in_room = d
            .client()
            .conversations()
            .unwrap()
            .iter()
            .any(|c| c.conversation == ROOM);
        let history = if in_room {
            d.client().messages(ROOM, 100_000).unwrap()
        } else {
            Vec::new()
        };
        if std::env::var_os("SEALPOST_STATEFUL_DEBUG").is_some() {
            for e in &history {
                println!("{name}: {e:?}");
            }
        }
        let mut shown = BTreeSet::new();
        let mut last_of: BTreeMap<String, String> = BTreeMap::new();
        for e in &history {
            match e {
                Event::Message {
                    from, text, late, ..
                } => {
                    let s = sent
                        .get(text)
                        .unwrap_or_else(|| panic!("{name} shows {text:?}, never sent ({replay})"));
                    assert_eq!(*from, s.from, "{name}: {text} ({replay})");
                    assert!(
                        *from == name || s.to.contains(&name),
                        "{name} shows {text}, sent while it was not a member ({replay})"
                    );
                    assert!(
                        shown.insert(text.clone()),
                        "{name} shows {text} twice ({replay})"
                    );
                    assert!(!late, "{name}: {text} late ({replay})");
                    // Texts are named t<step>: later steps sort after earlier ones as numbers.
                    let step = |t: &str| t[1..t.find('-').unwrap()].parse::<u64>().unwrap();
                    if let Some(before) = last_of.insert(from.clone(), text.clone()) {
                        assert!(
                            step(&before) < step(text),
                            "{name}: {text} after {before} ({replay})"
                        );
                    }
                }
                Event::Undecryptable { .. } | Event::Gap { .. } | Event::Security { .. } => {
                    panic!("{name}: {e:?} ({replay})")
                }
                _ => {}
            }
        }
        for (text, s) in &sent {
            let rejoined_after = added
                .get(&name)
                .and_then(|adds| adds.iter().rfind(|(step, _)| *step < s.step))
                .is_some_and(|&(_, epoch)| epoch > s.epoch);
            let for_them = s.to.contains(&name) && s.on_server.contains(&name) && !rejoined_after;
            if s.acknowledged && s.from != name && for_them {
                assert!(
                    shown.contains(text),
                    "{name} never got {text} from {} ({replay})",
                    s.from
                );
                checked += 1;
            }
        }
    }

    // One epoch, and everybody in the room reaches everybody else.
    let inside: Vec<usize> = (0..devices.len())
        .filter(|&i| {
            let me = format!("@{}", devices[i].name);
            devices[i].room_members().contains(&me)
        })
        .collect();
    let epochs: BTreeSet<u64> = inside
        .iter()
        .map(|&i| devices[i].client().epoch(ROOM).unwrap())
        .collect();
    assert_eq!(epochs.len(), 1, "{epochs:?} ({replay})");
    for &i in &inside {
        let text = format!("last from {}", devices[i].name);
        devices[i].client().send(ROOM, &text).await.unwrap();
        for &j in inside.iter().filter(|&&j| j != i) {
            let got = super::texts(&devices[j].client().sync().await.unwrap());
            assert!(
                got.iter().any(|(_, t)| *t == text),
                "{} did not get {text:?}: {got:?} ({replay})",
                devices[j].name
            );
        }
    }
    println!(
        "stateful: {} texts sent, {checked} deliveries checked, {} members at the end",
        sent.len(),
        inside.len()
    );
}
