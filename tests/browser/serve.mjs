// The dashboard of a real `waymark serve` (started by tests/browser.rs) in Debian's
// chromium: the binary mounts it, migrates its sessions table, embeds its assets, and
// its pages follow the built-in `demo` workflow live. Environment: WAYMARK_URL,
// ADMIN_KEY (the bootstrap key it printed), ARTIFACTS.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.env.WAYMARK_URL;
const adminKey = process.env.ADMIN_KEY;
const artifacts = process.env.ARTIFACTS;
if (!base || !adminKey || !artifacts) throw new Error("WAYMARK_URL, ADMIN_KEY and ARTIFACTS are needed");
mkdirSync(artifacts, { recursive: true });
const DEADLINE = 20_000;
let checks = 0;
function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks += 1;
}

async function startDemo(input) {
  const response = await fetch(`${base}/v1/workflows/demo/runs?tenant=acme`, {
    method: "POST",
    headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
    body: JSON.stringify(input),
  });
  if (response.status !== 201) throw new Error(`start: ${response.status} ${await response.text()}`);
  return response.json();
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ baseURL: base });
  const page = await context.newPage();
  page.setDefaultTimeout(DEADLINE);
  page.on("pageerror", (error) => console.error(`page error: ${error}`));
  await page.goto("/");
  check(page.url().includes("/ui/login"), "/ sends a new visitor to the login");
  await page.getByLabel("API key").fill(adminKey);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL("**/ui/");
  const css = await page.evaluate(() => getComputedStyle(document.querySelector("header.top")).display);
  check(css === "flex", "the embedded stylesheet is served");

  await page.goto("/ui/runs?workflow=demo");
  const quick = await startDemo({ name: "Ada" });
  await page.locator(`tr[data-run="${quick.id}"] .s-completed`).waitFor();
  check(await page.locator(`tr[data-run="${quick.id}"]`).count() === 1, "a demo run appears and completes without a reload");
  const slow = await startDemo({ name: "Bo", wait: "2h" });
  await page.goto(`/ui/runs/${slow.id}`);
  await page.locator("#why").filter({ hasText: "Sleeping until" }).waitFor();
  check(await page.locator("#diagram svg g.current").count() === 1, "the diagram marks where it is");
  await page.screenshot({ path: `${artifacts}/serve-run-sleeping.png`, fullPage: true });
  check(await page.getByRole("button", { name: "Cancel run" }).count() === 1, "an admin may cancel it");
  console.log(`ok: ${checks} checks passed against waymark serve`);
} finally {
  await browser.close();
}
