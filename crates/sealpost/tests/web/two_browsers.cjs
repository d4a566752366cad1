// Two people in two browser sessions of `sealpost web`, driven in Debian's Chromium by
// Playwright: run by tests/cli/web.rs, which starts the server and both web apps.
//
//   node two_browsers.cjs PLAYWRIGHT_DIR ALICE_URL BOB_URL SCREENSHOT_DIR FILE
//
// ALICE_URL and BOB_URL are the addresses the apps printed (with their one-time token). The
// server lists a device of its own under @carol before this starts.

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");

const [, , playwrightDir, aliceUrl, bobUrl, shots, fileToSend] = process.argv;
const { chromium } = require(playwrightDir);

const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function signIn(browser, url, who) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => {
    throw new Error(`${who}'s page: ${e.message}`);
  });
  await page.goto(url);
  await page.locator("#me", { hasText: who }).waitFor();
  await page.locator("#connection.up").waitFor();
  return { context, page };
}

async function newChat(page, user) {
  await page.click("#new-chat");
  await page.fill("dialog input[name=user]", user);
  await page.click("dialog button.ok");
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_FLAGS });
  try {
    const alice = await signIn(browser, aliceUrl, "@alice");
    const bob = await signIn(browser, bobUrl, "@bob");
    const aliceOrigin = new URL(aliceUrl).origin;

    // The printed address works once: the token in it is spent, the cookie is what counts.
    const stranger = await (await browser.newContext()).newPage();
    assert.equal((await stranger.goto(aliceUrl)).status(), 401);
    assert.equal((await stranger.goto(`${aliceOrigin}/`)).status(), 401);

    // Alice starts a 1:1 with Bob; what she types shows up on his page.
    await newChat(alice.page, "@bob");
    await alice.page.fill("#text", "hello from the browser");
    await alice.page.press("#text", "Enter");
    await bob.page.locator(".message .text", { hasText: "hello from the browser" }).waitFor();

    // Bob answers with a file; Alice downloads it, and it is the same file.
    const name = path.basename(fileToSend);
    await bob.page.setInputFiles("#file", fileToSend);
    const link = alice.page.locator(".file", { hasText: name });
    await link.waitFor();
    const [download] = await Promise.all([alice.page.waitForEvent("download"), link.click()]);
    assert.equal(download.suggestedFilename(), name);
    assert.deepEqual(fs.readFileSync(await download.path()), fs.readFileSync(fileToSend));

    // A reaction, from Bob to Alice's message.
    await bob.page.locator(".message", { hasText: "hello from the browser" }).getByRole("button", { name: "React 👍" }).click();
    await alice.page.locator(".reactions", { hasText: "👍 @bob" }).waitFor();
    await alice.page.screenshot({ path: path.join(shots, "web-conversation.png") });

    // The safety number, with its QR code.
    await alice.page.click("#verify-button");
    await alice.page.locator("dialog .safety").waitFor();
    await alice.page.waitForFunction(() => document.querySelector("dialog img.qr")?.naturalWidth > 0);
    await alice.page.screenshot({ path: path.join(shots, "web-verify.png") });
    await alice.page.getByRole("button", { name: "Cancel" }).click();

    // Another origin (Bob's page) tries to use Alice's app with her cookie: the browser says
    // where the request comes from, and it is refused. So is a request naming another origin.
    await bob.page.evaluate(async (origin) => {
      await fetch(`${origin}/api/rpc`, {
        method: "POST",
        mode: "no-cors",
        credentials: "include",
        headers: { "Content-Type": "text/plain" },
        body: JSON.stringify({ method: "send", params: { to: "@bob", text: "forged by another page" } }),
      }).catch(() => {});
    }, aliceOrigin);
    const cookie = (await alice.context.cookies()).map((c) => `${c.name}=${c.value}`).join("; ");
    const forged = await fetch(`${aliceOrigin}/api/rpc`, {
      method: "POST",
      headers: { Origin: "http://evil.example", Cookie: cookie, "Content-Type": "application/json" },
      body: JSON.stringify({ method: "send", params: { to: "@bob", text: "forged by another page" } }),
    });
    assert.equal(forged.status, 403);
    const withoutCookie = await fetch(`${aliceOrigin}/api/rpc`, {
      method: "POST",
      headers: { Origin: aliceOrigin, "Content-Type": "application/json" },
      body: JSON.stringify({ method: "whoami" }),
    });
    assert.equal(withoutCookie.status, 401);
    const policy = (await fetch(`${aliceOrigin}/`, { headers: { Cookie: cookie } })).headers.get("content-security-policy");
    assert.match(policy, /default-src 'none'/);

    // Phone-sized: the conversation, back to the list, and into the conversation again.
    await alice.page.setViewportSize({ width: 390, height: 760 });
    await alice.page.locator("#sidebar").waitFor({ state: "hidden" });
    await alice.page.screenshot({ path: path.join(shots, "web-phone-conversation.png") });
    await alice.page.click("#back");
    await alice.page.locator("#main").waitFor({ state: "hidden" });
    await alice.page.screenshot({ path: path.join(shots, "web-phone-list.png") });
    await alice.page.locator("#conversations li", { hasText: "@bob" }).click();
    await alice.page.locator(".message .text", { hasText: "hello from the browser" }).waitFor();
    await alice.page.setViewportSize({ width: 1100, height: 720 });

    // A group, made in the page: Bob finds it in his list, and what Alice writes there.
    await alice.page.click("#new-group");
    await alice.page.fill("dialog input[name=name]", "family");
    await alice.page.fill("dialog input[name=members]", "@bob");
    await alice.page.click("dialog button.ok");
    await alice.page.locator("#title", { hasText: "#family" }).waitFor();
    await alice.page.fill("#text", "dinner at eight");
    await alice.page.press("#text", "Enter");
    await bob.page.locator("#conversations li", { hasText: "#family" }).click();
    await bob.page.locator(".message .text", { hasText: "dinner at eight" }).waitFor();
    await bob.page.click("#members-button");
    await bob.page.locator("dialog li", { hasText: "@alice" }).waitFor();
    await bob.page.screenshot({ path: path.join(shots, "web-group-members.png") });
    await bob.page.getByRole("button", { name: "Cancel" }).click();

    // The server put a device of its own under @carol: Alice's first message to her is refused,
    // and the alert stays on top until she says she read it.
    await newChat(alice.page, "@carol");
    await alice.page.fill("#text", "hi carol");
    await alice.page.press("#text", "Enter");
    const alert = alice.page.locator("#alert");
    await alert.waitFor({ state: "visible" });
    assert.match(await alert.textContent(), /unapproved_device/);
    await alice.page.screenshot({ path: path.join(shots, "web-security-alert.png") });
    await alice.page.click("#alert-ack");
    await alert.waitFor({ state: "hidden" });

    // Nothing forged reached Bob: Alice's next message comes, and nothing before it.
    await alice.page.locator("#conversations li", { hasText: "@bob" }).click();
    await alice.page.fill("#text", "last one");
    await alice.page.press("#text", "Enter");
    await bob.page.locator("#conversations li[data-conversation=\"@alice\"]").click();
    await bob.page.locator(".message .text", { hasText: "last one" }).waitFor();
    assert.equal(await bob.page.locator("text=forged by another page").count(), 0);
    await bob.page.screenshot({ path: path.join(shots, "web-bob.png") });
  } finally {
    await browser.close();
  }
}

main().then(
  () => console.log("the two browsers chatted"),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
