// Browser spec for examples/chat: headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core) opens the chat page twice,
// a message typed in one page appears in the other; then the chat handler
// file is edited and the next message shows the new format while both
// pages keep their original WebSocket (no reconnect).
//
// Usage: node chat_test.js PORT APP_LUA [--no-reload]
// Prints "ok <step>" lines and exits non-zero on failure.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [port, appFile, flag] = process.argv.slice(2);
const base = `http://127.0.0.1:${port}/`;

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function lines(page) {
  return page.$$eval('#log li', (els) => els.map((e) => e.textContent));
}

async function waitForLine(page, wanted, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if ((await lines(page)).includes(wanted)) return true;
    await sleep(50);
  }
  throw new Error(`line ${JSON.stringify(wanted)} never appeared; page has ${JSON.stringify(await lines(page))}`);
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'moonwire-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const a = await ctx.newPage();
    const b = await ctx.newPage();
    await a.goto(base + '?nick=alice&room=spec');
    await b.goto(base + '?nick=bob&room=spec');
    for (const p of [a, b]) await p.waitForFunction(() => document.getElementById('status').textContent === 'online');
    await waitForLine(a, '* bob joined spec', 5000);
    console.log('ok both pages connected');

    await say(a, 'hello from alice');
    await waitForLine(b, 'alice: hello from alice', 5000);
    await waitForLine(a, 'alice: hello from alice', 5000);
    await say(b, 'hi alice');
    await waitForLine(a, 'bob: hi alice', 5000);
    console.log('ok messages cross between the pages');

    if (flag !== '--no-reload') {
      // Edit the handler: a new line format.
      const src = fs.readFileSync(appFile, 'utf8');
      const old = 'return nick .. ": " .. text';
      if (!src.includes(old)) throw new Error('format line not found in ' + appFile);
      fs.writeFileSync(appFile, src.replace(old, 'return "<" .. nick .. "> " .. text'));
      // The server reloads within a moment; keep saying the same thing
      // until a line in the new format arrives.
      const deadline = Date.now() + 10000;
      let seen = false;
      for (let i = 0; Date.now() < deadline && !seen; i++) {
        await say(a, 'after reload ' + i);
        await sleep(200);
        const got = await lines(b);
        seen = got.some((l) => /^<alice> after reload \d+$/.test(l));
      }
      if (!seen) throw new Error('no message in the new format: ' + JSON.stringify(await lines(b)));
      for (const p of [a, b]) {
        const stats = await p.evaluate(() => ({ opens: window.chatStats.opens,
          status: document.getElementById('status').textContent }));
        if (stats.opens !== 1 || stats.status !== 'online') {
          throw new Error('a page reconnected or went offline: ' + JSON.stringify(stats));
        }
      }
      console.log('ok reloaded handler formats the next message, no page reconnected');
    }
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log('done');
})().catch((e) => { console.error(e && e.stack || e); process.exit(1); });
