// Drives Debian's Chromium through playwright-core for tests/console.rs: one scenario
// per run (`node drive.cjs SCENARIO 'JSON arguments'`), printing one JSON result line.
// Every wait is on something on the page, with a deadline; nothing sleeps.
"use strict";

const path = require("path");
const modules = process.env.SLUICE_NODE_MODULES;
if (!modules) throw new Error("SLUICE_NODE_MODULES is not set (cargo xtask setup installs playwright-core)");
const { chromium } = require(path.join(modules, "playwright-core"));

const TIMEOUT = 20000;

async function browser() {
  return chromium.launch({
    executablePath: process.env.SLUICE_CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

async function newPage(b) {
  const context = await b.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  return page;
}

async function shot(page, args, name) {
  if (args.shots) await page.screenshot({ path: path.join(args.shots, name + ".png"), fullPage: true });
}

// Opens the one-time URL and presses "Sign in"; returns the page and where it landed.
async function signIn(page, url) {
  await page.goto(url);
  await page.click("#sign-in");
  await page.waitForLoadState("domcontentloaded");
  await page.waitForSelector("body[data-ready=true], .error:not(:empty)");
  return page.evaluate(() => ({
    signedIn: document.body.dataset.ready === "true",
    heading: (document.querySelector("h1") || {}).textContent || "",
    message: (document.querySelector(".error") || {}).textContent || "",
  }));
}

async function ready(page, url) {
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]");
}

const scenarios = {
  // The URL signs in once; a second browser with the same URL is refused.
  async login_once(b, args) {
    const first = await newPage(b);
    const one = await signIn(first, args.url);
    await shot(first, args, "sessions");
    const second = await newPage(b);
    const two = await signIn(second, args.url);
    await shot(second, args, "sign-in-refused");
    return { first: one, second: two, path: new URL(first.url()).pathname };
  },

  async sign_in(b, args) {
    return signIn(await newPage(b), args.url);
  },

  // Approves or denies held approval `id` with `reason` from its stable page; with
  // `live`, from the queue opened before anything is held: it prints READY once the
  // queue is open and takes the first hold that the server pushes to it.
  async decide(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    if (args.live) {
      await ready(page, args.base + "/approvals");
      await page.waitForSelector("#held[data-loaded=true] #none-held");
      process.stdout.write("READY\n");
      const card = await page.waitForSelector("#held article[data-approval]", { timeout: 60000 });
      args.id = Number(await card.getAttribute("data-approval"));
    } else {
      await ready(page, args.base + "/approvals/" + args.id);
    }
    await page.waitForSelector(`#approval-${args.id}`);
    await page.fill(`#reason-${args.id}`, args.reason);
    await shot(page, args, "approvals");
    await page.click(`#approval-${args.id} button.${args.verb}`);
    const decided = await page.waitForSelector(`#decided li[data-approval="${args.id}"]`);
    const text = await decided.textContent();
    // The queue is live: the decided card leaves without a reload.
    await page.waitForSelector(`#approval-${args.id}`, { state: "detached" });
    await shot(page, args, "approvals-decided");
    return { id: args.id, decided: text };
  },

  // A viewer sees the held operation but no buttons; a forged POST with its own valid
  // CSRF token is refused.
  async viewer(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    await ready(page, args.base + "/approvals");
    await page.waitForSelector(`#approval-${args.id}`);
    await shot(page, args, "approvals-viewer");
    const buttons = await page.$$(`#approval-${args.id} button`);
    const forged = await page.evaluate(async (id) => {
      const me = await (await fetch("/api/me")).json();
      const response = await fetch(`/api/v1/approvals/${id}/approve`, { method: "POST",
        headers: { "content-type": "application/json", "x-sluice-csrf": me.csrf },
        body: JSON.stringify({ reason: "forged by a viewer" }) });
      return { status: response.status, body: await response.text(), role: me.user.role };
    }, args.id);
    return { buttons: buttons.length, forged };
  },

  // An approver's POST without the CSRF header, and with a wrong one, are refused.
  async csrf(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    await ready(page, args.base + "/approvals");
    await page.waitForSelector(`#approval-${args.id}`);
    return page.evaluate(async (id) => {
      const post = async (headers) => {
        const response = await fetch(`/api/v1/approvals/${id}/approve`, { method: "POST",
          headers: Object.assign({ "content-type": "application/json" }, headers),
          body: JSON.stringify({ reason: "no token" }) });
        return { status: response.status, body: await response.text() };
      };
      return { missing: await post({}), wrong: await post({ "x-sluice-csrf": "not-the-token" }) };
    }, args.id);
  },

  // The sessions page with filters from the form; returns the rows shown each time.
  async filters(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    const rows = async () => page.$$eval("#sessions tbody tr", (trs) => trs.map((tr) => ({
      id: Number(tr.dataset.session), agent: tr.children[2].textContent, decision: tr.children[5].textContent })));
    await ready(page, args.base + "/sessions");
    await page.waitForSelector("#sessions thead");
    const all = await rows();
    const results = { all };
    for (const [name, filter] of Object.entries(args.filters)) {
      await ready(page, args.base + "/sessions");
      for (const [field, value] of Object.entries(filter)) {
        const input = await page.$(`#f-${field}`);
        if ((await input.evaluate((n) => n.tagName)) === "SELECT") await input.selectOption(value);
        else await input.fill(value);
      }
      await page.press("#f-agent", "Enter"); // keyboard: Enter submits the filter form
      await page.waitForURL((url) => url.search.length > 1);
      await page.waitForSelector("body[data-ready=true]");
      await page.waitForSelector("#sessions thead");
      results[name] = { url: page.url(), rows: await rows() };
      await shot(page, args, "sessions-" + name);
    }
    return results;
  },

  // Plays the session's first recording at 8× until it ends; returns the screen's text.
  async replay(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    await ready(page, args.base + "/sessions/" + args.session);
    await page.waitForSelector(".player");
    await page.selectOption(".player .speed", "8");
    await page.click(".player .play");
    await page.waitForSelector(".player[data-ended=true]");
    await shot(page, args, "session-replay");
    const screen = await page.textContent(".player .screen");
    // Seeking back to the start clears the screen; to the end shows it all again.
    await page.$eval(".player .seek", (seek) => { seek.value = "0"; seek.dispatchEvent(new Event("input")); });
    const atStart = await page.textContent(".player .screen");
    return { screen, atStart, timeline: await page.textContent("#timeline") };
  },

  // Signs in through the identity provider as `login` (its development login and
  // consent pages), then, for an approver, decides approval `id`.
  async oidc(b, args) {
    const page = await newPage(b);
    await page.goto(args.base + "/sessions");
    await shot(page, args, "sign-in-" + args.login);
    await page.click("#oidc-sign-in");
    await page.waitForSelector("input[name=login]");
    await page.fill("input[name=login]", args.login);
    await page.fill("input[name=password]", "any password");
    await shot(page, args, "provider-login-" + args.login);
    await page.click("button[type=submit]");
    // The consent page (first sign-in of this account to this client) or the console.
    const next = await page.waitForSelector("button:has-text('Continue'), body[data-ready=true]");
    if ((await next.evaluate((node) => node.tagName)) === "BUTTON") await next.click();
    await page.waitForURL((url) => url.origin === args.base && url.pathname === "/sessions");
    await page.waitForSelector("body[data-ready=true]");
    const who = await page.textContent("#who");
    const result = { who };
    if (args.id !== undefined) {
      await ready(page, args.base + "/approvals/" + args.id);
      await page.waitForSelector(`#approval-${args.id}`);
      result.buttons = (await page.$$(`#approval-${args.id} button`)).length;
      if (args.reason) {
        await page.fill(`#reason-${args.id}`, args.reason);
        await page.click(`#approval-${args.id} button.approve`);
        const decided = await page.waitForSelector(`#decided li[data-approval="${args.id}"]`);
        result.decided = await decided.textContent();
        await shot(page, args, "approved-by-" + args.login);
      }
    }
    return result;
  },

  // Creates a grant with the form, then revokes it (the reason typed in the prompt).
  async grants(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    await ready(page, args.base + "/grants");
    await page.fill("#g-agent", args.agent);
    await page.fill("#g-resource", args.resource);
    await page.fill("#g-operations", args.operations);
    await page.fill("#g-minutes", "15");
    await page.fill("#g-reason", args.reason);
    await page.press("#g-reason", "Enter");
    const row = await page.waitForSelector("#grants tbody tr[data-grant]");
    const created = await row.textContent();
    await shot(page, args, "grants");
    page.once("dialog", (dialog) => dialog.accept(args.revoke_reason));
    await page.click("#grants tbody tr[data-grant] button");
    await page.waitForSelector("#grants tbody tr[data-grant]:not(:has(button))");
    const revoked = await page.textContent("#grants tbody tr[data-grant]");
    return { created, revoked };
  },

  // Visits each page and keeps a screenshot of it.
  async screenshots(b, args) {
    const page = await newPage(b);
    await signIn(page, args.url);
    const seen = {};
    for (const [name, at, selector] of [["sessions", "/sessions", "#sessions thead"],
      ["session", "/sessions/" + args.session, "dl.facts"], ["approvals", "/approvals", "#held[data-loaded=true]"],
      ["grants", "/grants", "#grants thead"], ["status", "/status", "#containment"]]) {
      await ready(page, args.base + at);
      await page.waitForSelector(selector);
      await shot(page, args, "page-" + name);
      seen[name] = await page.textContent("h1");
    }
    return seen;
  },
};

(async () => {
  const [name, json] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (!scenario) throw new Error("no scenario " + name);
  const args = JSON.parse(json || "{}");
  const b = await browser();
  try {
    const result = await scenario(b, args);
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    await b.close();
  }
})().catch((error) => {
  process.stderr.write(String(error && error.stack || error) + "\n");
  process.exit(1);
});
