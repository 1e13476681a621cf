// Sluice's web UI in a real browser: Playwright drives Debian's Chromium
// against a real `sluice serve` with a real repository, set up by the Rust
// test `browser::the_dashboard_in_a_real_browser`, which passes:
//   SLUICE_URL, ADMIN_TOKEN, ANA_TOKEN (approver), VIC_TOKEN (viewer),
//   REPO (the git repository), SHOTS (where screenshots go).
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const { SLUICE_URL, ADMIN_TOKEN, ANA_TOKEN, VIC_TOKEN, REPO, SHOTS } = process.env;
mkdirSync(SHOTS, { recursive: true });

function step(text) {
  console.log(`[${new Date().toISOString().slice(11, 19)}] ${text}`);
}

async function api(path, { token = ADMIN_TOKEN, method = "GET", body } = {}) {
  const response = await fetch(`${SLUICE_URL}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function until(what, check, seconds = 90) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function envRelease(env) {
  const all = await api("/status?service=shop");
  return all.find((e) => e.environment === env);
}

async function signIn(browser, token, viewport) {
  const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${SLUICE_URL}/changes`);
  // Not signed in: sent to the sign-in page, and back after it.
  await page.waitForURL(/\/login\?next=/);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${SLUICE_URL}/changes`);
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

function commit(message) {
  const env = { ...process.env, GIT_AUTHOR_DATE: "@1795694400 +0000", GIT_COMMITTER_DATE: "@1795694400 +0000" };
  execFileSync("git", ["-C", REPO, "commit", "-q", "--allow-empty", "-m", message], { env });
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
let traffic = false;
try {
  // Sign in; a running job's log lines appear live.
  const ana = await signIn(browser, ANA_TOKEN);
  step("signed in as ana");
  const run = await until("run 1 to start", async () => {
    const runs = await api("/runs");
    return runs.find((r) => r.status === "running");
  });
  await ana.goto(`${SLUICE_URL}/runs/${run.id}`);
  const log = ana.locator("#log .line");
  const first = await log.count();
  await until("new log lines on the open page", async () => (await log.count()) > first + 2, 60);
  step(`log grew live from ${first} to ${await log.count()} lines`);
  // The last line arrives coloured, as the job printed it.
  await ana.locator("#log .ansi-2", { hasText: "all green" }).waitFor({ timeout: 60000 });
  await ana.locator("#run-status", { hasText: "success" }).waitFor({ timeout: 60000 });
  await shot(ana, "run");

  // A pending promotion: a viewer sees why they cannot approve; an approver approves.
  await until("dev to run v1", async () => (await envRelease("dev"))?.release === 1);
  const promotion = await api("/promotions", { method: "POST", body: { service: "shop", to: "prod" } });
  step(`promotion ${promotion.id} of v1 to prod waits for an approval`);
  const vic = await signIn(browser, VIC_TOKEN);
  await vic.goto(`${SLUICE_URL}/promotions`);
  const vicButton = vic.getByRole("button", { name: `Approve promotion ${promotion.id}` });
  if (!(await vicButton.isDisabled())) throw new Error("a viewer has a working approve button");
  await vic.getByText("Approving needs the approver role").waitFor();
  await shot(vic, "promotions-as-viewer");
  await ana.goto(`${SLUICE_URL}/promotions`);
  await shot(ana, "promotions");
  await ana.getByRole("button", { name: `Approve promotion ${promotion.id}` }).click();
  await ana.getByText(`You approved promotion ${promotion.id}.`).waitFor();
  step("ana approved");
  await ana.goto(`${SLUICE_URL}/services/shop/environments/prod`);
  await until("prod's page to show v1", async () => {
    await ana.reload();
    return (await ana.locator("main p").first().textContent()).includes("v1");
  });
  await shot(ana, "environment");

  // v2 goes to prod as an experiment; its charts gain points while users come.
  commit("v2");
  await until("dev to run v2", async () => (await envRelease("dev"))?.release === 2, 120);
  const second = await api("/promotions", { method: "POST", body: { service: "shop", to: "prod" } });
  await api(`/promotions/${second.id}/approve`, { token: ANA_TOKEN, method: "POST" });
  const prod = await envRelease("prod");
  traffic = true;
  (async () => {
    while (traffic) {
      await fetch(`http://${prod.listen}/`).catch(() => {});
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const experiment = await until("the experiment to start", async () => {
    const all = await api("/experiments?service=shop");
    return all.find((x) => x.status === "running");
  });
  await ana.goto(`${SLUICE_URL}/experiments/${experiment.id}`);
  const points = async () =>
    ana.locator("svg.chart").evaluateAll((charts) =>
      charts.reduce((sum, c) => sum + Number(c.getAttribute("data-points")), 0));
  const before = await points();
  await until("the charts to gain points", async () => (await points()) > before, 60);
  step(`the charts grew from ${before} to ${await points()} points without a reload`);
  await shot(ana, "experiment");

  // prod's page says what each instance answered, A's and B's alike.
  await ana.goto(`${SLUICE_URL}/services/shop/environments/prod`);
  const variants = async () =>
    ana.evaluate(() => {
      const table = [...document.querySelectorAll("table")].find((t) =>
        t.caption?.textContent.includes("What each instance answered"));
      return table ? [...table.tBodies[0].rows].map((r) => r.cells[1].textContent) : [];
    });
  await until("prod's page to show instances of both variants", async () => {
    await ana.reload();
    const seen = await variants();
    return seen.includes("a") && seen.includes("b");
  }, 60);
  step(`prod's traffic table has rows for variants ${(await variants()).join(", ")}`);
  if (await ana.getByRole("heading", { name: "Drift" }).count()) {
    throw new Error("an experiment's B instances are shown as drift");
  }
  await shot(ana, "environment-traffic");

  // Every other page, and the overview on a phone.
  for (const [name, path] of [
    ["overview", "/"],
    ["changes", "/changes"],
    ["incidents", "/incidents"],
    ["rules", "/rules"],
    ["changelog", "/changelog?env=prod&since=1h"],
    ["notifications", "/channels"],
  ]) {
    await ana.goto(`${SLUICE_URL}${path}`);
    await shot(ana, name);
  }
  await ana.goto(`${SLUICE_URL}/`);
  await ana.keyboard.press("Tab");
  const focused = await ana.evaluate(() => document.activeElement.textContent);
  if (!focused.includes("Skip to the content")) throw new Error(`the first Tab stop is "${focused}"`);
  const phone = await signIn(browser, VIC_TOKEN, { width: 375, height: 740 });
  await phone.goto(`${SLUICE_URL}/`);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the overview is ${overflow}px wider than a phone`);
  await shot(phone, "overview-phone");
  step(`screenshots in ${SHOTS}`);
} finally {
  traffic = false;
  await browser.close();
}
