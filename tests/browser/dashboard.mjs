// The dashboard end to end in Debian's chromium, driven by playwright-core. Started by
// tests/browser.rs (through ./test.sh) against a Waymark it started, with keys and runs
// it prepared; every check that fails throws, and the process exits non-zero.
//
// Environment: WAYMARK_URL, ADMIN_KEY, OPERATOR_KEY and READER_KEY (tenant acme), OTHER_KEY (an
// operator of tenant beta), HELD_RUN (held after failing), STUCK_RUN (a compensation
// failed), ARTIFACTS (where screenshots go).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";

// axe-core, pinned in package.json, checks each page for accessibility problems.
const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("WAYMARK_URL");
const operatorKey = env("OPERATOR_KEY");
const readerKey = env("READER_KEY");
const otherKey = env("OTHER_KEY");
const adminKey = env("ADMIN_KEY");
const heldRun = env("HELD_RUN");
const stuckRun = env("STUCK_RUN");
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

// Waits are deadlines for conditions, never pauses.
const DEADLINE = 20_000;
let checks = 0;
const began = Date.now();
function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks += 1;
  console.log(`${((Date.now() - began) / 1000).toFixed(1)} s: ${what}`);
}

async function api(method, path, key, body) {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const startRun = (key, workflow, input) => api("POST", `/v1/workflows/${workflow}/runs`, key, input);

async function waitForStatus(id, status) {
  const until = Date.now() + DEADLINE;
  for (;;) {
    const run = await api("GET", `/v1/runs/${id}`, operatorKey);
    if (run.status === status) return run;
    if (Date.now() > until) throw new Error(`run ${id} never reached ${status} (is ${run.status})`);
    await new Promise((r) => setTimeout(r, 50)); // polling interval, not synchronisation
  }
}

async function shot(page, name) {
  await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
}

async function login(browser, key, options = {}) {
  const context = await browser.newContext({ baseURL: base, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(DEADLINE);
  page.on("dialog", (dialog) => dialog.accept()); // every action asks first: say yes
  // The page's own errors belong in the test's output.
  page.on("pageerror", (error) => console.error(`page error: ${error}`));
  page.on("console", (message) => {
    if (message.type() === "error") console.error(`page console: ${message.text()}`);
  });
  await page.goto("/ui/login");
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL("**/ui/");
  return page;
}

// axe-core's serious and critical findings on the page as it is now. (Its context
// bypasses the page's CSP, which rightly refuses the injected script.)
async function accessible(page, name) {
  await page.addScriptTag({ path: axePath });
  const found = await page.evaluate(async () =>
    (await window.axe.run(document, { resultTypes: ["violations"] })).violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}) at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`));
  for (const f of found) console.error(`accessibility, ${name}: ${f}`);
  inaccessible.push(...found.map((f) => `${name}: ${f}`));
  if (found.length === 0) check(true, `no serious or critical accessibility findings on ${name}`);
}
const inaccessible = [];

// Posts a form from the page itself, as a forged request from its session would.
async function forge(page, path, withToken) {
  return page.evaluate(
    async ([path, withToken]) => {
      const form = new URLSearchParams({ reason: "forged" });
      if (withToken) form.set("csrf", document.querySelector("input[name=csrf]").value);
      const response = await fetch(path, { method: "POST", body: form, redirect: "manual" });
      return response.status;
    },
    [path, withToken],
  );
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  // --- Logging in: / goes to the dashboard, which wants a session.
  {
    const context = await browser.newContext({ baseURL: base });
    const page = await context.newPage();
    page.setDefaultTimeout(DEADLINE);
    await page.goto("/");
    check(page.url().includes("/ui/login"), "/ without a session lands on the login");
    await page.getByLabel("API key").fill("wmk_000000000000_" + "x".repeat(43));
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("alert").waitFor();
    check((await page.getByRole("alert").textContent()).includes("not valid"), "a wrong key is refused");
    await shot(page, "login");
    await context.close();
  }

  const page = await login(browser, operatorKey);
  await shot(page, "overview");

  // --- Runs appear and complete without reloading.
  await page.goto("/ui/runs");
  await page.evaluate(() => { window.notReloaded = true; });
  const rung = await startRun(operatorKey, "doorbell", { note: "live" });
  const row = page.locator(`tr[data-run="${rung.id}"]`);
  await row.waitFor();
  await waitForStatus(rung.id, "waiting");
  await api("POST", `/v1/runs/${rung.id}/signals/ring`, operatorKey, { by: "the test" });
  await row.locator(".s-completed").waitFor();
  check(await page.evaluate(() => window.notReloaded === true), "the list updated without a reload");
  // Filters stay as the operator set them while the list updates.
  await page.getByLabel("Workflow").selectOption("doorbell");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL("**workflow=doorbell**");
  await shot(page, "runs");

  // --- Why is it waiting?
  const sleeping = await startRun(operatorKey, "sleeper", { days: 2 });
  await waitForStatus(sleeping.id, "sleeping");
  await page.goto(`/ui/runs/${sleeping.id}`);
  check((await page.locator("#why").textContent()).startsWith("Sleeping until"), "a sleeping run's line");
  const waiting = await startRun(operatorKey, "doorbell", {});
  await waitForStatus(waiting.id, "waiting");
  await page.goto(`/ui/runs/${waiting.id}`);
  check((await page.locator("#why").textContent()).includes("Waiting for signal `ring`"), "a waiting run's line");
  check(await page.locator("#diagram svg g.current").count() === 1, "the current state is marked");
  await shot(page, "run-waiting");

  // --- A half-typed payload survives live updates.
  const payload = page.getByLabel("Payload (JSON)");
  await payload.fill('{"by": "half');
  const before = Number(await page.evaluate(() => document.body.dataset.liveUpdates || 0));
  await startRun(operatorKey, "doorbell", {}); // a notification: the page looks again
  await page.waitForFunction((n) => Number(document.body.dataset.liveUpdates || 0) > n, before);
  check((await payload.inputValue()) === '{"by": "half', "the typed payload is kept");

  // --- Signals from the page: refused payloads show next to the field.
  await payload.fill('{"by": 42}');
  await page.getByRole("button", { name: "Send signal" }).click();
  await page.locator("#signal-error").waitFor();
  check((await page.locator("#signal-error").textContent()).includes("expected a string"), "the type error is shown");
  check((await page.getByLabel("Payload (JSON)").inputValue()) === '{"by": 42}', "the refused payload is kept");
  await shot(page, "signal-refused");
  await page.getByLabel("Payload (JSON)").fill('{"by": "Ada"}');
  await page.getByRole("button", { name: "Send signal" }).click();
  await page.locator("#run-head .s-completed").waitFor();
  check(await page.locator("#diagram svg path.taken").count() >= 1, "the taken path is drawn");
  check((await page.locator("#diagram svg").textContent()).includes("×1"), "edges carry counts");
  await shot(page, "run-completed");

  // --- Cancel, retry a held run, skip a failed compensation.
  const doomed = await startRun(operatorKey, "doorbell", {});
  await waitForStatus(doomed.id, "waiting");
  await page.goto(`/ui/runs/${doomed.id}`);
  await page.locator("form[action$='/cancel']").getByLabel("Reason").fill("changed our minds");
  await page.getByRole("button", { name: "Cancel run" }).click();
  await page.locator("#run-head .s-cancelled").waitFor();
  await page.goto(`/ui/runs/${heldRun}`);
  check((await page.locator("#why").textContent()).startsWith("Held for an operator"), "a held run's line");
  await page.getByRole("button", { name: "Retry" }).click();
  await page.locator("#run-head .s-completed").waitFor();
  await page.goto(`/ui/runs/${stuckRun}`);
  await shot(page, "run-compensation-failed");
  await page.getByRole("button", { name: "Skip compensation" }).click();
  await page.locator("#run-head .s-failed").waitFor();

  // --- Forged requests.
  check((await forge(page, `/ui/runs/${waiting.id}/cancel`, false)) === 403, "a POST without the CSRF token is 403");
  for (const [path, name] of [["/ui/workflows", "workflows"], ["/ui/workers", "workers"], ["/ui/audit", "audit"]]) {
    await page.goto(path);
    await shot(page, name);
  }
  check((await page.content()).includes(`run:${doomed.id}`), "the audit log has the cancel");

  // --- A reader sees, but cannot act.
  const victim = await startRun(operatorKey, "doorbell", {});
  await waitForStatus(victim.id, "waiting");
  const reader = await login(browser, readerKey);
  await reader.goto(`/ui/runs/${victim.id}`);
  check(await reader.locator("#actions").count() === 0, "a reader sees no actions");
  check(await reader.getByRole("button", { name: "Cancel run" }).count() === 0, "no cancel button");
  check((await forge(reader, `/ui/runs/${victim.id}/cancel`, true)) === 403, "a reader's forged POST is 403");
  check((await api("GET", `/v1/runs/${victim.id}`, operatorKey)).status === "waiting", "the forged POST changed nothing");
  await shot(reader, "run-as-reader");

  // --- Another tenant sees nothing of this one.
  const other = await login(browser, otherKey);
  for (const path of ["/ui/", "/ui/runs", "/ui/audit"]) {
    await other.goto(path);
    const html = await other.content();
    check(!html.includes(victim.id) && !html.includes("acme"), `tenant beta sees nothing of acme on ${path}`);
  }
  const response = await other.goto(`/ui/runs/${victim.id}`);
  check(response.status() === 404, "another tenant's run is not found");

  // --- The management pages, as an admin: each opens, is screenshot, and is checked
  // for accessibility; times are in the browser's zone with UTC on hover.
  await api("POST", "/v1/schedules", operatorKey,
    { name: "nightly", cron: "0 2 * * *", timezone: "Europe/Paris", workflow: "doorbell", input: {} });
  const pages = [["/ui/", "overview"], ["/ui/runs", "runs"], [`/ui/runs/${waiting.id}`, "run"],
    ["/ui/workflows", "workflows"], ["/ui/schedules", "schedules"], ["/ui/workers", "workers"],
    ["/ui/audit", "audit"], ["/ui/dead-letters", "dead-letters"], ["/ui/keys", "keys"], ["/ui/tenants", "tenants"]];
  const admin = await login(browser, adminKey, { bypassCSP: true, timezoneId: "Asia/Tokyo" });
  for (const [path, name] of pages) {
    const response = await admin.goto(path);
    check(response.status() === 200, `${path} opens for an admin`);
    await shot(admin, `admin-${name}`);
    await accessible(admin, name);
  }
  await admin.goto("/ui/schedules");
  const fire = admin.locator("td.yours time").first();
  check((await fire.getAttribute("title")).endsWith("UTC"), "a time has UTC on hover");
  check(!(await fire.textContent()).includes("UTC"), "and shows the browser's zone");
  check((await admin.locator("td.zone").first().textContent()).includes("02:00 CE"), "the schedule's own zone too");
  // Keyboard: the first Tab lands on the skip link, and focus is visible.
  await admin.keyboard.press("Tab");
  check(await admin.evaluate(() => document.activeElement.classList.contains("skip")
    && getComputedStyle(document.activeElement).outlineStyle !== "none"), "focus is visible from the first Tab");
  {
    const login = await browser.newContext({ baseURL: base, bypassCSP: true });
    const p = await login.newPage();
    await p.goto("/ui/login");
    await accessible(p, "login");
    await login.close();
  }

  // --- On a phone: every page fits the screen's width (wide tables scroll in their
  // own box) and passes the same accessibility check.
  const phone = await login(browser, adminKey,
    { bypassCSP: true, viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  for (const [path, name] of pages) {
    await phone.goto(path);
    const fits = await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
    check(fits, `${name} fits a phone's width`);
    await shot(phone, `phone-${name}`);
    await accessible(phone, `${name} on a phone`);
  }

  check(inaccessible.length === 0, `no serious or critical accessibility findings anywhere (${inaccessible.length} found)`);

  // --- Another tenant's operator sees nothing of acme's keys, schedules, dead letters.
  for (const path of ["/ui/keys", "/ui/schedules", "/ui/dead-letters"]) {
    await other.goto(path);
    const html = await other.content();
    check(!html.includes("acme") && !html.includes("nightly"), `tenant beta sees nothing of acme on ${path}`);
  }

  // --- Logging out ends the session; so does revoking the key.
  await reader.getByRole("button", { name: "Log out" }).click();
  await reader.waitForURL("**/ui/login");
  await reader.goto("/ui/runs");
  check(reader.url().includes("/ui/login"), "after logout, pages want a login again");
  const me = await api("GET", "/v1/whoami", otherKey);
  await api("DELETE", `/v1/keys/${me.key_id}`, adminKey);
  await other.goto("/ui/runs");
  check(other.url().includes("/ui/login"), "a revoked key's session is over");

  console.log(`ok: ${checks} checks passed, screenshots in ${artifacts}`);
} finally {
  await browser.close();
}
