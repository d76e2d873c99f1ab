// Browser spec for the admin dashboard (GET / on the admin listener, lua/moonwire/admin_page.lua):
// headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) opens the page while
// this script sends line-echo traffic to the server, waits for at least three refreshes, saves a
// screenshot and checks in the page that every chart drew its series (coloured pixels on the
// canvas, data-points > 0) and that the traffic shows up in the charts.
//
// Usage: node dashboard_test.js ADMIN_PORT SERVER_PORT [SCREENSHOT.png]
// Prints "ok <step>" lines and the screenshot path; exits non-zero on failure.
'use strict';
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [adminPort, serverPort, shotArg] = process.argv.slice(2);
const shot = shotArg || path.join(os.tmpdir(), `moonwire-dashboard-${process.pid}.png`);

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// A few connections that send a line every 20 ms and read the echoes, until stopped.
function traffic(nconns) {
  const socks = [];
  let replies = 0;
  for (let i = 0; i < nconns; i++) {
    const s = net.connect(Number(serverPort), '127.0.0.1');
    s.on('data', (d) => { replies += d.length; });
    s.on('error', () => {});
    socks.push(s);
  }
  const line = 'dashboard traffic '.repeat(20) + '\n';
  const timer = setInterval(() => socks.forEach((s) => s.write(line)), 20);
  return {
    replies: () => replies,
    stop: () => { clearInterval(timer); socks.forEach((s) => s.destroy()); },
  };
}

// In the page: for each chart, how many pixels belong to a series line (saturated colour,
// opaque) rather than the transparent background, the grey grid or the labels.
function inspectCharts() {
  return [...document.querySelectorAll('canvas[data-metric]')].map((c) => {
    const g = c.getContext('2d');
    const { data } = g.getImageData(0, 0, c.width, c.height);
    let drawn = 0; let coloured = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, gr, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 0) drawn++;
      if (a > 200 && Math.max(r, gr, b) - Math.min(r, gr, b) > 80) coloured++;
    }
    return { metric: c.dataset.metric, width: c.width, height: c.height, points: Number(c.dataset.points || 0),
      drawn, coloured, now: c.parentElement.querySelector('.now').textContent };
  });
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'moonwire-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const load = traffic(4);
  try {
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(`http://127.0.0.1:${adminPort}/`);
    await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 3, null,
      { timeout: 15000 });
    const updates = await page.evaluate(() => Number(document.body.dataset.updates));
    console.log(`ok dashboard refreshed ${updates} times`);
    if (load.replies() === 0) throw new Error('the echo traffic got no replies');

    // Wait (bounded) for the traffic to reach the per-second rates the charts show.
    const deadline = Date.now() + 5000;
    let charts = await page.evaluate(inspectCharts);
    while (Date.now() < deadline && !charts.find((c) => c.metric === 'msgs' && c.now !== 'now: 0')) {
      await sleep(250);
      charts = await page.evaluate(inspectCharts);
    }
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot ${shot}`);

    const want = ['conns', 'msgs', 'bytes', 'lag', 'lua'];
    const got = charts.map((c) => c.metric);
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`charts ${JSON.stringify(got)}`);
    for (const c of charts) {
      if (c.width === 0 || c.height === 0) throw new Error(`chart ${c.metric} has no size`);
      if (c.points <= 0) throw new Error(`chart ${c.metric} has no data points`);
      if (c.coloured < 50) throw new Error(`chart ${c.metric} drew no series: ${JSON.stringify(c)}`);
    }
    console.log('ok every chart drew its series: ' +
      charts.map((c) => `${c.metric} ${c.points} points ${c.coloured} px`).join(', '));
    for (const m of ['conns', 'msgs', 'bytes', 'lua']) {
      const c = charts.find((x) => x.metric === m);
      if (c.now === 'now: 0') throw new Error(`chart ${m} shows no activity: ${JSON.stringify(c)}`);
    }
    console.log('ok traffic shows: ' + charts.map((c) => `${c.metric} ${c.now}`).join(', '));

    const table = await page.$$eval('#loops tr', (rows) => rows.length);
    const summary = await page.textContent('#summary');
    if (table < 3) throw new Error(`loop table has ${table} rows`);
    if (!/^2 loop\(s\)/.test(summary)) throw new Error(`summary: ${summary}`);
    console.log('ok loop table and summary: ' + summary);
    if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  } finally {
    load.stop();
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log('done');
})().catch((e) => { console.error(e && e.stack || e); process.exit(1); });
