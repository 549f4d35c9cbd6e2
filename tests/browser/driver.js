#!/usr/bin/env node
// Drives headless Chromium through page.html and judges what the page reports.
// Usage: node driver.js CHROMIUM_PATH URL... (run.sh passes the broker's ws:// and wss:// URLs).
// Exit 0: every case passed; 1: anything else, with the reason on stderr.
'use strict';

const path = require('node:path');
const { pathToFileURL } = require('node:url');
const puppeteer = require('puppeteer-core');

const [chromium, ...urls] = process.argv.slice(2);
const totalMs = Number(process.env.BROWSER_TEST_TIMEOUT_MS || 60000);
const protocolVersions = [5, 4]; // MQTT 5.0 and 3.1.1

function fail(message) {
  console.error(`browser test FAILED: ${message}`);
  process.exitCode = 1;
}

async function main() {
  if (!chromium || urls.length === 0) throw new Error('usage: node driver.js CHROMIUM_PATH URL...');
  const cases = [];
  for (const url of urls) for (const protocolVersion of protocolVersions) cases.push({ url, protocolVersion });
  // Leaves time for the browser to start and stop inside the total budget.
  const caseMs = Math.max(3000, Math.floor((totalMs - 15000) / cases.length));
  for (const c of cases) c.timeoutMs = caseMs;

  // A hung browser or page must not outlive the budget: kill the browser and report.
  let browser = null;
  const watchdog = setTimeout(() => {
    fail(`no result within ${totalMs} ms`);
    browser?.process()?.kill('SIGKILL');
    process.exit(1);
  }, totalMs);
  try {
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      // The wss:// listener uses a self-signed certificate made for this run.
      acceptInsecureCerts: true,
      // --no-sandbox: CI runs as root, where Chromium refuses to start sandboxed.
      args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
      timeout: 20000,
    });
    const page = await browser.newPage();
    page.on('console', (m) => console.error(`[page ${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
    await page.goto(pathToFileURL(path.join(__dirname, 'page.html')).href, { waitUntil: 'load' });
    if (!(await page.evaluate(() => typeof window.runBrokerTest === 'function' && typeof window.mqtt === 'object'))) {
      throw new Error('page.html did not load MQTT.js and page.js (is node_modules installed?)');
    }
    const out = await page.evaluate((cs) => window.runBrokerTest(cs), cases);

    console.log(`browser: ${out.userAgent}`);
    for (const r of out.results) {
      const what = `${r.url} MQTT ${r.protocolVersion === 5 ? '5.0' : '3.1.1'}`;
      if (r.ok) {
        console.log(`PASS ${what}: ${r.received}/${r.sent} messages, ${r.bytes} payload bytes, ${r.ms} ms ${JSON.stringify(r.stepMs)}`);
      } else {
        console.log(`FAIL ${what}: ${r.received}/${r.sent} messages, ${r.ms} ms ${JSON.stringify(r.stepMs)}`);
        for (const p of r.problems) console.log(`    ${p}`);
      }
    }
    const passed = out.results.filter((r) => r.ok).length;
    // The plain closing line CI reads as a test count.
    console.log(`${passed} passed, ${out.results.length - passed} failed`);
    if (!out.ok) fail(`${out.results.length - passed} of ${out.results.length} cases failed`);
  } finally {
    if (browser) await browser.close();
    clearTimeout(watchdog);
  }
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
