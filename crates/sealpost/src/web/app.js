// Sealpost's web app: a thin page over the client's methods (POST /api/rpc, the same methods
// as docs/jsonrpc.md) and the profile's events (GET /api/events). Everything anyone else wrote
// is put on the page as text (textContent), never as markup.

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  prefs: { receipts: false, typing: false },
  conversations: [],
  open: null, // the open conversation's id
  draft: null, // "@user": a 1:1 the first message starts
  history: [],
  alerts: [], // security events not acknowledged yet
  replyTo: null, // a message entry
  typing: new Map(), // "@who" -> until (ms), in the open conversation
  saidTyping: 0,
  reading: false, // on a phone: the conversation is shown (not the list)
};

// ---- calls ----

async function rpc(method, params = {}) {
  const answer = await fetch("/api/rpc", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  const body = await answer.json();
  if (body.error) throw new Error(body.error.message);
  return body.result;
}

function say(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function attempt(what) {
  try {
    return await what();
  } catch (e) {
    say(e.message, true);
    return undefined;
  }
}

// ---- loading ----

let loading = null;
let again = false;

async function load() {
  if (loading) {
    again = true;
    return;
  }
  loading = (async () => {
    if (state.open) await rpc("read", { conversation: state.open }).catch(() => {});
    state.conversations = await rpc("conversations");
    if (state.draft) {
      const started = state.conversations.find(
        (c) => c.kind === "direct" && c.conversation === state.draft,
      );
      if (started) {
        state.open = started.id;
        state.draft = null;
      }
    }
    if (!state.open && !state.draft && state.conversations.length > 0) {
      state.open = state.conversations[0].id;
    }
    state.history = state.open
      ? await rpc("messages", { conversation: state.open, limit: 200 })
      : [];
    render();
  })();
  try {
    await loading;
  } catch (e) {
    say(e.message, true);
  }
  loading = null;
  if (again) {
    again = false;
    load();
  }
}

// ---- drawing ----

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function size(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${v} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

function short(id) {
  return id.startsWith("01") && id.length === 66 ? id.slice(2, 10) : id.slice(0, 8);
}

function duration(s) {
  for (const [unit, n] of [["w", 604800], ["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= n && s % n === 0) return `${s / n}${unit}`;
  }
  return `${s}s`;
}

/// One line for an entry that is not a message.
function describe(e) {
  switch (e.event) {
    case "member_added": return `${e.by} added ${e.member}`;
    case "member_removed": return `${e.by} removed ${e.member}`;
    case "member_left": return `${e.member} left`;
    case "joined": return `${e.by} added you`;
    case "removed": return `${e.by} removed you`;
    case "device_added": return `${e.by} added a device of ${e.member} (${e.device})`;
    case "device_removed": return `${e.by} removed a device of ${e.member} (${e.device})`;
    case "timer": return e.seconds === 0
      ? `${e.by} turned disappearing messages off`
      : `${e.by} set messages to disappear ${duration(e.seconds)} after they are sent`;
    case "gap": return `${e.missing} message(s) from ${e.from} are missing: the server dropped or holds them back`;
    case "undecryptable": return `a message could not be read: ${e.reason}`;
    case "unsupported": return `${e.from} sent something this version cannot show (${e.what})`;
    case "security": return `SECURITY (${e.alert}): ${e.detail}`;
    case "profile": return `${e.from} shares the name "${e.name}"`;
    default: return e.event.replaceAll("_", " ");
  }
}

function preview(c) {
  if (!c.active) return "(no longer a member)";
  const e = c.latest;
  if (!e) return "";
  if (e.event === "message") {
    if (e.deleted) return `${e.from}: (deleted)`;
    if (e.file) return `${e.from}: [file ${e.file.name}] ${e.text}`;
    return `${e.from}: ${e.text}`;
  }
  return describe(e);
}

function render() {
  $("me").textContent = state.me ? state.me.username : "";
  const list = $("conversations");
  list.replaceChildren();
  for (const c of state.conversations) {
    const open = c.id === state.open && !state.draft;
    const li = el("li", {
      class: `${open ? "open" : ""} ${c.active ? "" : "left"}`,
      "data-conversation": c.conversation,
      onclick: () => openConversation(c.id),
    }, [
      el("span", { class: "name", text: c.conversation }),
      c.unread > 0 ? el("span", { class: "unread", text: c.unread >= 1000 ? "1000+" : String(c.unread) }) : el("span"),
      el("span", { class: "preview", text: preview(c) }),
    ]);
    list.append(li);
  }
  if (state.draft) {
    list.append(el("li", { class: "open" }, [el("span", { class: "name", text: state.draft })]));
  }
  const info = state.conversations.find((c) => c.id === state.open);
  $("app").classList.toggle("reading", state.reading && Boolean(state.draft || info));
  if (state.draft) {
    $("title").textContent = state.draft;
    $("conv-info").textContent = "new: your first message starts it";
  } else if (info) {
    $("title").textContent = info.conversation;
    const kind = info.kind === "direct" ? "1:1" : `${info.members} devices`;
    $("conv-info").textContent = `${kind} · ${info.ciphersuite === "pq" ? "post-quantum" : "classic"}`;
  } else {
    $("title").textContent = "Sealpost";
    $("conv-info").textContent = "start with New chat";
  }
  $("members-button").hidden = !info || state.draft !== null;
  $("verify-button").hidden = !info || info.kind !== "direct" || state.draft !== null;
  renderMessages();
  renderTyping();
}

function renderMessages() {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.replaceChildren();
  const byId = new Map();
  for (const h of state.history) if (h.event === "message") byId.set(h.id, h);
  for (const h of state.history) {
    if (h.event !== "message") {
      box.append(el("li", { class: `event ${h.event === "security" ? "security" : ""}`, text: describe(h) }));
      continue;
    }
    const mine = state.me && h.from === state.me.username;
    const head = el("div", { class: "head" }, [
      el("span", { class: "from", text: h.from }),
      h.sender_name ? el("span", { text: `"${h.sender_name}"` }) : null,
      el("span", { text: time(h.sent_at) }),
      el("span", { class: "id", text: short(h.id) }),
      h.edited && !h.deleted ? el("span", { text: "(edited)" }) : null,
      h.expires_at ? el("span", { text: "(disappearing)" }) : null,
      mine && h.receipts && h.receipts.length
        ? el("span", { text: h.receipts.some((r) => r.status === "read") ? "read" : "delivered" })
        : null,
    ]);
    const parts = [head];
    if (h.reply_to) {
      const q = byId.get(h.reply_to);
      parts.push(el("div", { class: "quote", text: q ? `${q.from}: ${q.text}` : `message ${short(h.reply_to)}` }));
    }
    if (h.deleted) {
      parts.push(el("div", { class: "deleted", text: "(deleted)" }));
    } else {
      if (h.file) {
        parts.push(el("a", {
          class: "file",
          href: `/api/download/${encodeURIComponent(h.id)}`,
          download: h.file.name,
          text: `${h.file.name} (${h.file.media_type}, ${size(h.file.size)}) · download`,
        }));
      }
      if (h.text) parts.push(el("div", { class: "text", text: h.text }));
    }
    if (h.failed) parts.push(el("div", { class: "failed", text: `NOT SENT: ${h.failed}` }));
    if (h.reactions && h.reactions.length) {
      parts.push(el("div", { class: "reactions", text: h.reactions.map((r) => `${r.emoji} ${r.from}`).join("  ") }));
    }
    if (!h.deleted) {
      const actions = [
        el("button", { type: "button", text: "Reply", onclick: () => replyTo(h) }),
        el("button", { type: "button", text: "👍", "aria-label": "React 👍", onclick: () => react(h, "👍") }),
        el("button", { type: "button", text: "❤️", "aria-label": "React ❤️", onclick: () => react(h, "❤️") }),
      ];
      if (mine) {
        actions.push(el("button", { type: "button", text: "Edit", onclick: () => edit(h) }));
        actions.push(el("button", { type: "button", text: "Delete", onclick: () => remove(h) }));
      }
      parts.push(el("div", { class: "actions" }, actions));
    }
    box.append(el("li", { class: `message ${mine ? "mine" : ""}`, "data-id": h.id }, parts));
  }
  if (state.draft) {
    box.append(el("li", { class: "event", text: `No conversation with ${state.draft} yet: your first message starts one.` }));
  }
  // The newest in view, unless the reader scrolled back (a new conversation starts at it).
  if (atBottom || box.dataset.shown !== String(state.open)) box.scrollTop = box.scrollHeight;
  box.dataset.shown = String(state.open);
}

function renderTyping() {
  const now = Date.now();
  const who = [...state.typing].filter(([, until]) => until > now).map(([w]) => w);
  if (who.length) say(`${who.join(", ")} typing…`);
}

function renderAlert() {
  const box = $("alert");
  const alert = state.alerts[0];
  box.hidden = !alert;
  if (!alert) return;
  $("alert-count").textContent = state.alerts.length > 1 ? `(1 of ${state.alerts.length})` : "";
  const where = alert.conversation ? `In ${alert.conversation}: ` : "";
  $("alert-text").textContent = `${where}${alert.detail} (${alert.alert})`;
}

// ---- actions ----

function target() {
  return state.draft || state.open;
}

function openConversation(id) {
  state.open = id;
  state.draft = null;
  state.replyTo = null;
  state.reading = true;
  $("replying").hidden = true;
  load();
}

async function send() {
  const box = $("text");
  const text = box.value;
  const to = target();
  if (!text.trim() || !to) return;
  box.value = "";
  const params = { to, text };
  if (state.replyTo) params.reply_to = state.replyTo.id;
  const sent = await attempt(() => rpc("send", params));
  if (sent === undefined) {
    if (!box.value) box.value = text;
    return;
  }
  say("");
  state.replyTo = null;
  $("replying").hidden = true;
  if (state.prefs.typing) rpc("typing", { to, typing: false }).catch(() => {});
  state.saidTyping = 0;
  load();
}

function replyTo(h) {
  state.replyTo = h;
  $("replying-text").textContent = `Replying to ${h.from}: ${h.text}`;
  $("replying").hidden = false;
  $("text").focus();
}

async function react(h, emoji) {
  const mine = (h.reactions || []).some((r) => r.from === state.me.username && r.emoji === emoji);
  await attempt(() => rpc("react", { message: h.id, emoji, remove: mine }));
}

async function edit(h) {
  const text = await ask("Edit your message", [["text", "New text", h.text]]);
  if (text) await attempt(() => rpc("edit", { message: h.id, text: text.text }));
}

async function remove(h) {
  if (await confirmed("Take this message back, for everyone?")) {
    await attempt(() => rpc("delete", { message: h.id }));
  }
}

async function sendFile(file) {
  const to = target();
  if (!to) return say("open a conversation first", true);
  say(`sending ${file.name}…`);
  const query = new URLSearchParams({ to, name: file.name, caption: $("text").value });
  const answer = await fetch(`/api/upload?${query}`, { method: "POST", body: file });
  const body = await answer.json().catch(() => ({ error: { message: "the upload failed" } }));
  if (body.error) return say(body.error.message, true);
  $("text").value = "";
  say(`sent ${file.name}`);
  load();
}

function typed() {
  const to = target();
  if (!state.prefs.typing || !to || $("text").value.startsWith("/")) return;
  const now = Date.now();
  if (now - state.saidTyping < 10000) return;
  state.saidTyping = now;
  rpc("typing", { to, typing: true }).catch(() => {});
}

// ---- dialogs ----

/// Asks for some fields; resolves to their values, or null when cancelled.
function ask(title, fields, extra = []) {
  return new Promise((resolve) => {
    const dialog = $("dialog");
    const inputs = fields.map(([name, label, value]) => [name, el("input", { type: "text", name, value: value || "" })]);
    const done = (ok) => {
      dialog.close();
      resolve(ok ? Object.fromEntries(inputs.map(([n, i]) => [n, i.value])) : null);
    };
    dialog.replaceChildren(
      el("h2", { text: title }),
      ...extra,
      ...fields.map(([, label], i) => el("label", { text: label }, [inputs[i][1]])),
      el("div", { class: "buttons" }, [
        el("button", { type: "button", text: "Cancel", onclick: () => done(false) }),
        fields.length ? el("button", { type: "button", class: "ok", text: "OK", onclick: () => done(true) }) : null,
      ]),
    );
    for (const [, input] of inputs) {
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") done(true);
      });
    }
    dialog.showModal();
    if (inputs.length) inputs[0][1].focus();
  });
}

async function confirmed(question) {
  return (await ask(question, [["confirm", "Type yes", ""]]))?.confirm === "yes";
}

async function newChat() {
  const got = await ask("New chat", [["user", "With (@username)", "@"]]);
  if (!got) return;
  const user = got.user.trim().startsWith("@") ? got.user.trim() : `@${got.user.trim()}`;
  const existing = state.conversations.find((c) => c.kind === "direct" && c.conversation === user);
  if (existing) return openConversation(existing.id);
  state.draft = user;
  state.reading = true;
  state.open = null;
  state.history = [];
  render();
  $("text").focus();
}

async function newGroup() {
  const got = await ask("New group", [["name", "Name", ""], ["members", "Members (@alice @bob)", ""]]);
  if (!got || !got.name.trim()) return;
  const members = got.members.split(/[\s,]+/).filter(Boolean);
  const info = await attempt(() => rpc("group.create", { name: got.name.trim(), members }));
  if (info) openConversation(info.id);
}

async function members() {
  const info = state.conversations.find((c) => c.id === state.open);
  if (!info) return;
  const list = await attempt(() => rpc("group.members", { conversation: info.id }));
  if (!list) return;
  const items = el("ul", {}, list.map((m) => el("li", {
    text: `${m.member}${m.name ? ` "${m.name}"` : ""} · device ${m.device.slice(0, 8)}${m.you ? " (this device)" : ""}`,
  })));
  if (info.kind !== "group") return ask(`Members of ${info.conversation}`, [], [items]);
  const got = await ask(`Members of ${info.conversation}`, [
    ["add", "Add (@username …)", ""],
    ["remove", "Remove (@username …)", ""],
    ["leave", "Type leave to leave the group", ""],
  ], [items]);
  if (!got) return;
  const users = (s) => s.split(/[\s,]+/).filter(Boolean);
  if (users(got.add).length) await attempt(() => rpc("group.add", { conversation: info.id, users: users(got.add) }));
  if (users(got.remove).length) await attempt(() => rpc("group.remove", { conversation: info.id, users: users(got.remove) }));
  if (got.leave.trim() === "leave") await attempt(() => rpc("group.leave", { conversation: info.id }));
  load();
}

async function verify() {
  const info = state.conversations.find((c) => c.id === state.open);
  if (!info || info.kind !== "direct") return;
  const v = await attempt(() => rpc("verify", { user: info.conversation }));
  if (!v) return;
  const digits = v.safety_number.replaceAll(" ", "");
  const extra = [
    el("p", { text: `Safety number with ${v.contact}:` }),
    el("p", { class: "safety", text: v.safety_number }),
    el("img", { class: "qr", alt: "The safety number as a QR code", src: `/api/qr?text=${digits}` }),
    el("p", {
      text: v.verified
        ? `${v.contact} is verified.`
        : `${v.changed ? `${v.contact}'s account key CHANGED since you verified it. ` : ""}Compare it with ${v.contact} in person or on a call you trust; if it is the same, type it below.`,
    }),
  ];
  const got = await ask(`Verify ${v.contact}`, v.verified ? [] : [["number", "The number you compared", ""]], extra);
  if (got && got.number) {
    const done = await attempt(() => rpc("verify", { user: v.contact, confirm: got.number }));
    if (done) say(`${v.contact} is verified`);
  }
}

// ---- events ----

let seen = [];
let seenTimer = null;

function markSeen(id) {
  seen.push(id);
  if (seenTimer) return;
  seenTimer = setTimeout(() => {
    const ids = seen;
    seen = [];
    seenTimer = null;
    rpc("events.seen", { consumer: "web", ids }).catch(() => {});
  }, 200);
}

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    if (e.event === "security") {
      state.alerts.push(e);
      renderAlert();
      load();
      return;
    }
    markSeen(e.event_id);
    if (e.event === "typing") {
      const here = state.conversations.find((c) => c.id === state.open);
      if (here && e.conversation === here.conversation) {
        if (e.typing) state.typing.set(e.from, Date.now() + 15000);
        else state.typing.delete(e.from);
        renderTyping();
      }
      return;
    }
    if (e.event === "message") state.typing.delete(e.from);
    load();
  });
  source.addEventListener("connection", (m) => {
    const c = JSON.parse(m.data);
    const shown = $("connection");
    shown.className = `connection ${c.state === "connected" ? "up" : c.state === "disconnected" ? "down" : ""}`;
    shown.textContent = c.state === "connected"
      ? "connected"
      : c.state === "disconnected" ? `offline (${c.reason}), trying again` : "connecting…";
  });
  source.addEventListener("transfer", (m) => {
    const t = JSON.parse(m.data);
    const box = $("transfer");
    box.hidden = !t || t.done >= t.total;
    if (!t) return;
    const percent = t.total ? Math.floor((t.done * 100) / t.total) : 100;
    $("transfer-bar").value = percent;
    $("transfer-text").textContent = `${t.kind === "upload" ? "sending" : "receiving"} ${t.name}: ${percent}%`;
  });
}

// ---- start ----

$("send").addEventListener("click", send);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    send();
  }
});
$("text").addEventListener("input", typed);
$("file").addEventListener("change", (e) => {
  const [file] = e.target.files;
  e.target.value = "";
  if (file) sendFile(file);
});
$("reply-cancel").addEventListener("click", () => {
  state.replyTo = null;
  $("replying").hidden = true;
});
$("new-chat").addEventListener("click", newChat);
$("new-group").addEventListener("click", newGroup);
$("members-button").addEventListener("click", members);
$("verify-button").addEventListener("click", verify);
$("back").addEventListener("click", () => {
  state.reading = false;
  state.draft = null;
  render();
});
$("alert-ack").addEventListener("click", async () => {
  const alert = state.alerts.shift();
  if (alert) await rpc("events.seen", { consumer: "web", ids: [alert.event_id] }).catch(() => {});
  renderAlert();
});
setInterval(renderTyping, 1000);

(async () => {
  state.me = await attempt(() => rpc("whoami"));
  state.prefs = (await attempt(() => rpc("settings"))) || state.prefs;
  await load();
  listen();
})();
