// Open a notebook in JupyterLab with headless Chromium, run every cell, check what a person
// would see (the live plot image, the frame-browser widget), press Play, save, screenshot.
//
// usage: node run_notebook.mjs <lab url with ?token=...> <notebook path relative to the server
//        root> <screenshot.png> [timeout seconds]
// Exit code 0 when everything rendered; otherwise a line starting "FAIL:" says what did not.
// Uses Debian's /usr/bin/chromium (CHROMIUM env overrides) through playwright-core: nothing is
// downloaded.
import { chromium } from "playwright-core";

const [labUrl, notebook, screenshot, timeoutArg] = process.argv.slice(2);
if (!labUrl || !notebook || !screenshot) {
  console.error("usage: node run_notebook.mjs <lab url with ?token=...> <notebook> <screenshot.png> [timeout s]");
  process.exit(2);
}
const timeoutMs = Number(timeoutArg ?? 180) * 1000;
const url = new URL(labUrl);
const token = url.searchParams.get("token");
if (!token) {
  console.error("FAIL: the lab url carries no ?token=...; start JupyterLab with a token");
  process.exit(2);
}
const notebookUrl = `${url.origin}/lab/tree/${notebook}?token=${token}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const started = Date.now();
const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);

async function fail(page, message) {
  console.log(`FAIL: ${message}`);
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}

const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(60_000);
try {
  await page.goto(notebookUrl, { waitUntil: "domcontentloaded" });
  await page.locator(".jp-NotebookPanel .jp-Cell").first().waitFor();
  // JupyterLab may ask which kernel to start although the notebook names python3: accept it.
  const kernelDialog = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept");
  await kernelDialog.waitFor({ timeout: 10_000 }).then(() => kernelDialog.click()).catch(() => {});
  // The kernel is ready when the toolbar's status says idle.
  await page.waitForFunction(
    () => document.querySelector(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")
      ?.getAttribute("data-status") === "idle",
    null,
    { timeout: 90_000 },
  );
  log("notebook open, kernel idle");

  await page.locator(".lm-MenuBar-itemLabel", { hasText: /^Run$/ }).click();
  await page.locator(".lm-Menu-itemLabel", { hasText: /^Run All Cells$/ }).click();
  log("Run All Cells");

  // Every code cell shows an execution count once run; an error stops the run early.
  await page.waitForFunction(
    () => {
      const prompts = [...document.querySelectorAll(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")];
      const errored = document.querySelector(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg");
      return errored || document.querySelector(".jp-Dialog") || (prompts.length > 0 && prompts.every((p) => /\[\d+\]/.test(p.textContent)));
    },
    null,
    { timeout: timeoutMs, polling: 1000 },
  );
  if (await page.locator(".jp-Dialog").count()) {
    await fail(page, `a dialog interrupted the run: ${await page.locator(".jp-Dialog").innerText()}`);
  }
  const traceback = await page.locator(".jp-OutputArea-output", { hasText: "Traceback" }).count();
  if (traceback) {
    const text = await page.locator(".jp-OutputArea-output", { hasText: "Traceback" }).first().innerText();
    await fail(page, `a cell raised:\n${text.split("\n").slice(-12).join("\n")}`);
  }
  log("all cells ran");

  const images = await page.locator(".jp-RenderedImage img").count();
  if (images < 3) await fail(page, `expected the live plot, filmstrip and GIF images, found ${images}`);
  const plot = page.locator(".jp-RenderedImage img").first();
  const plotWidth = await plot.evaluate((img) => img.naturalWidth);
  if (plotWidth < 100) await fail(page, `the live plot image did not load (natural width ${plotWidth})`);

  const frame = page.locator("img.widget-image");
  await frame.waitFor({ state: "visible" });
  await page.locator(".widget-slider").first().waitFor({ state: "visible" });
  await frame.scrollIntoViewIfNeeded();
  const before = await frame.getAttribute("src");
  await page.locator(".widget-play button").first().click();
  await page.waitForFunction(
    (src) => document.querySelector("img.widget-image")?.getAttribute("src") !== src,
    before,
    { timeout: 15_000 },
  ).catch(() => {});
  const after = await frame.getAttribute("src");
  if (after === before) await fail(page, "pressing Play did not change the frame-browser image");
  log("frame browser: Play moved the frame");

  await page.keyboard.press("Control+s");
  await page.waitForFunction(
    () => !document.querySelector(".jp-NotebookPanel.jp-mod-dirty, .lm-TabBar-tab.jp-mod-dirty"),
    null,
    { timeout: 30_000 },
  );
  log("notebook saved");
  await page.screenshot({ path: screenshot, fullPage: false });
  log(`screenshot ${screenshot}`);
} catch (error) {
  await fail(page, String(error).split("\n")[0]);
}
await browser.close();
console.log(`OK seconds=${((Date.now() - started) / 1000).toFixed(1)}`);
