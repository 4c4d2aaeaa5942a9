// Drives the router's /console in headless chromium (puppeteer-core), as an operator would:
//   node console_test.js HTTP_URL API_KEY GRPC_ADDR SHARDSERVE_BIN WORKER_PID LAYERS OUT_DIR
// LAYERS is the expected stage layer ranges of each pipeline, e.g. "0-2,3-4".
// 1. The page asks for the API key; once typed, it shows every pipeline and stage with the
//    right layer ranges, and no key is in any URL the page requested.
// 2. Under `shardserve bench` load the tokens/s figure and plot rise above 0.
// 3. After SIGKILL of WORKER_PID, its stage turns unhealthy and a failover event appears within
//    5 s.
// Each state is saved as a screenshot in OUT_DIR. Prints one JSON line of findings; exits 1
// with the reason on the first failed check.
"use strict";
const { spawn } = require("child_process");
const path = require("path");
const puppeteer = require("puppeteer-core");

const [url, key, grpcAddr, shardserve, workerPid, layers, outDir] = process.argv.slice(2);
const findings = { console_errors: [], urls_with_key: [] };

function fail(why) {
  console.log(JSON.stringify(findings));
  console.error("console_test: " + why);
  process.exit(1);
}

async function waitFor(page, fn, timeoutMs, what, arg) {
  try {
    await page.waitForFunction(fn, { timeout: timeoutMs, polling: 100 }, arg);
  } catch (e) {
    await page.screenshot({ path: path.join(outDir, "console-failed.png"), fullPage: true });
    fail(what + " (" + e.message + ")");
  }
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  let bench = null;
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    page.on("console", (m) => { if (m.type() === "error") findings.console_errors.push(m.text()); });
    page.on("pageerror", (e) => findings.console_errors.push(String(e)));
    page.on("request", (r) => { if (key && r.url().includes(key)) findings.urls_with_key.push(r.url()); });

    // 1. The key, then the topology.
    await page.goto(url + "/console", { waitUntil: "load" });
    await waitFor(page, () => !document.getElementById("login").classList.contains("hidden"),
                  10000, "the page did not ask for the API key");
    await page.screenshot({ path: path.join(outDir, "console-key.png") });
    await page.type("#key", key);
    await page.click("#login-form button");
    await waitFor(page, () => document.querySelectorAll(".pipeline[data-ready=true]").length >= 2 &&
                    [...document.querySelectorAll(".stage")].every((s) => s.dataset.healthy === "true"),
                  15000, "the console did not show 2 ready pipelines with healthy stages");
    findings.pipelines = await page.$$eval(".pipeline", (ps) => ps.map((p) =>
      [...p.querySelectorAll(".stage")].map((s) => s.dataset.layers).join(",")));
    for (const p of findings.pipelines) {
      if (p !== layers) fail(`a pipeline shows layers ${p}, not ${layers}`);
    }
    await page.screenshot({ path: path.join(outDir, "console-ready.png"), fullPage: true });

    // 2. Load.
    bench = spawn(shardserve, ["bench", "--server", grpcAddr, "--concurrency", "4",
                               "--prompt-tokens", "32", "--max-tokens", "64", "--requests", "400",
                               "--temperature", "0"], { env: { ...process.env, SHARDSERVE_API_KEY: key },
                                                       stdio: "ignore" });
    await waitFor(page, () => parseFloat(document.getElementById("tokens-per-second").textContent) > 0,
                  20000, "tokens/s did not rise above 0 under bench load");
    await waitFor(page, () => [...document.querySelectorAll(".stage")].some((s) =>
                    /busy <b>[1-9]/.test(s.innerHTML)), 10000, "no stage showed a busy fraction");
    // Let the plot draw a few seconds of load.
    await waitFor(page, () => parseFloat(document.getElementById("tps-now").textContent) > 0,
                  10000, "the tokens/s plot's figure did not rise above 0");
    findings.tokens_per_second = parseFloat(await page.$eval("#tokens-per-second", (e) => e.textContent));
    await page.screenshot({ path: path.join(outDir, "console-load.png"), fullPage: true });

    // 3. A worker dies.
    const killedAt = Date.now();
    process.kill(Number(workerPid), "SIGKILL");
    await waitFor(page, () => document.querySelector(".stage[data-healthy=false]") !== null &&
                    document.querySelector("#events tr[data-kind=failover]") !== null,
                  5000, "no unhealthy stage and failover event within 5 s of the kill");
    findings.failover_seen_ms = Date.now() - killedAt;
    await page.screenshot({ path: path.join(outDir, "console-failover.png"), fullPage: true });
    if (findings.console_errors.length) fail("console errors: " + findings.console_errors.join("; "));
    if (findings.urls_with_key.length) fail("the key went into a URL: " + findings.urls_with_key[0]);
    console.log(JSON.stringify(findings));
  } finally {
    if (bench) bench.kill("SIGKILL");
    await browser.close();
  }
})().catch((e) => fail(String(e && e.stack || e)));
