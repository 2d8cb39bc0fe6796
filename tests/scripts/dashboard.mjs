// Drives the dashboard in headless Chromium (Debian's chromium, through playwright-core)
// for tests/tests/dashboard.rs: opens the president's view of a node with its API token,
// watches the hierarchy, a project's phases advancing and an alert, opens a governor's
// view, saves a screenshot at each step, and prints what it saw as JSON. It fails when
// the page loads anything from another origin or logs an error.
//
//   node dashboard.mjs BASE_URL TOKEN PROJECT_ID SCREENSHOT_DIR
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, token, project, shots] = process.argv.slice(2);
const LIMIT_MS = 240_000;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const seen = { foreign: [], errors: [], phases: [], screenshots: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("request", (request) => {
    if (!request.url().startsWith(base)) seen.foreign.push(request.url());
  });
  page.on("console", (message) => {
    if (message.type() === "error") seen.errors.push(message.text());
  });
  page.on("pageerror", (error) => seen.errors.push(String(error)));
  const shot = async (name) => {
    const path = `${shots}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    seen.screenshots.push(path);
  };

  // Without a token: the sign-in form, and no data.
  await page.goto(`${base}/dashboard`);
  await page.waitForSelector("#login:not([hidden])");
  await shot("0-sign-in");

  // With the token in the fragment (never sent to the server).
  await page.goto(`${base}/dashboard#token=${token}`);
  await page.waitForSelector("#hierarchy .tree .role.president", { timeout: LIMIT_MS });
  await page.waitForSelector("#live.on", { timeout: LIMIT_MS });
  seen.states = await page.locator("#hierarchy .state-node").count();
  seen.governed = await page.locator("#hierarchy .state-node").evaluateAll(
    (nodes) => nodes.filter((node) => !node.textContent.includes("governor —")).length);
  seen.url_after_token = page.url();
  await shot("1-president");

  // The project's phases advance: the count of done phases in its row, as it changes.
  const row = page.locator(`#projects tr.project[data-id="${project}"]`);
  await row.waitFor({ timeout: LIMIT_MS });
  const deadline = Date.now() + LIMIT_MS;
  let last = -1;
  while (Date.now() < deadline) {
    const done = await row.locator(".phase.done").count();
    if (done !== last) {
      seen.phases.push(done);
      if (done === 1 || done === 4) await shot(`2-phases-${done}`);
      last = done;
    }
    if (done === 8) break;
    await page.waitForTimeout(200);
  }
  seen.status = (await row.locator("td").nth(1).textContent()).trim();

  // An alert, live.
  await page.waitForSelector("#alerts li.alert", { timeout: LIMIT_MS });
  seen.alert = (await page.locator("#alerts li.alert").first().textContent()).trim();
  seen.events = await page.locator("#events li").count();
  await shot("3-alert");

  // A governor's view.
  await page.click("#tab-governor");
  await page.waitForSelector("#governor:not([hidden]) #state-tree .tree");
  seen.governor_cards = await page.locator("#state-overview .card").count();
  await shot("4-governor");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
