// End-to-end test of the console in headless Chromium: a real nats-server
// (JetStream), the real daemon binary, conversations published through
// `zhijian publish`, and the page driven by playwright-core.
//
// What it shows: labels in zh-CN by default, English at the press of a
// button (remembered); one row per utterance, listing every rule it broke
// and highlighting every matched span of all of them (the same violations,
// by id, as `zhijian scan` finds offline), categories by their
// display names (counters and filter options from the categories present),
// verdicts with their notes, critical escalations standing out; counters,
// ranking, filters (kept in the URL: a shared URL filters on load),
// pause/resume and the conversation view work; transcripts with
// <script> and <img onerror> render as text; phone numbers are masked; after
// the daemon restarts the feed resumes with what was published meanwhile and
// nothing twice. The desk: the live conversations board (most urgent
// first), an alert acknowledged on one daemon instance's console seen on a
// second's, work done while the second is down caught up when it is back,
// notifications denied (sound only) and granted, the tab title counting
// open critical alerts, an agent's shift, the score by scorecard section,
// markup in agent ids, conversation ids, names, assignees and notes shown as
// text; and 5,000 alerts in the page filtered and re-rendered a page of
// rows at a time (the time it takes, median of five, printed, not asserted). A screenshot is left in
// target/browser-artifacts/.
//
//   ZJ_BIN (target/debug/zhijian; not ZHIJIAN_BIN, which the daemon would read as a setting), NATS_SERVER_BIN (.local/nats/...),
//   CHROMIUM_BIN (/usr/bin/chromium), ARTIFACTS_DIR (target/browser-artifacts)

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ZHIJIAN = process.env.ZJ_BIN || path.join(ROOT, 'target/debug/zhijian');
const NATS = process.env.NATS_SERVER_BIN || path.join(ROOT, '.local/nats/bin/nats-server');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = process.env.ARTIFACTS_DIR || path.join(ROOT, 'target/browser-artifacts');
const TIMEOUT = 30000;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zhijian-browser-'));
const children = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(name, bin, args) {
  const log = fs.openSync(path.join(dir, `${name}.log`), 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log] });
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  children.push(child);
  return child;
}

async function waitHttp(url, what) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready at ${url}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- the conversations ----
const now = Date.now();
function seg(tenant, conv, agent, seq, speaker, text) {
  const e = { conversation_id: conv, tenant, channel: 'call', seq, speaker, text, ts_ms: now + seq * 1000 };
  if (speaker === 'agent') e.agent_id = agent;
  return JSON.stringify(e);
}
const end = (tenant, conv) => JSON.stringify({ conversation_id: conv, tenant, type: 'end' });

const XSS_SCRIPT = '<script>window.__pwned = 1; alert("xss")</script>不关我的事';
const XSS_IMG = '<img src=x onerror="window.__pwned = 2">你问我我问谁，你打13812345678去问';
const XSS_AGENT = '<img/src=x/onerror=window.__pwned=3>';
const XSS_NAME = '<b onmouseover="window.__pwned=4">质检员</b>';
const XSS_ASSIGNEE = '<img src=x onerror="window.__pwned=5">王五';
const XSS_NOTE = '<script>window.__pwned = 6</script>已回电，客户接受';
// Open (no end): the board's live conversations.
const LIVE = [
  seg('acme', 'live-x', XSS_AGENT, 0, 'agent', '您好，很高兴为您服务'),
  seg('acme', 'live-x', XSS_AGENT, 1, 'customer', '你们再拖我就投诉到消协'),
  seg('acme', 'live-x', XSS_AGENT, 2, 'agent', '急什么'),
];
// A conversation id that is markup (no '>': it is a NATS subject token).
// No '.' in a conversation id: a partitioned input (the test runs two
// instances with [cluster]) takes `<prefix>.<tenant>.<id>` only.
const XSS_CONV = "<img/src=x/onerror=window['__pwned']=7//";
const LIVE2 = [
  seg('globex', XSS_CONV, 'agent-zhou', 0, 'agent', '您好'),
  seg('globex', XSS_CONV, 'agent-zhou', 1, 'customer', '我要打12315投诉你们'),
];
const batches = [
  [
    seg('acme', 'call-a1', 'agent-li', 0, 'agent', '您好，很高兴为您服务'),
    seg('acme', 'call-a1', 'agent-li', 1, 'customer', '我家宽带又断了，再不修我就投诉'),
    seg('acme', 'call-a1', 'agent-li', 2, 'agent', '急什么，我这不是在查吗'),
    seg('acme', 'call-a1', 'agent-li', 3, 'agent', XSS_SCRIPT),
    seg('acme', 'call-a1', 'agent-li', 4, 'agent', XSS_IMG),
    seg('acme', 'call-a1', 'agent-li', 5, 'agent', '感谢您的来电，再见'),
    end('acme', 'call-a1'),
    seg('globex', 'chat-g1', 'agent-wang', 0, 'agent', '啊，这个我看一下'),
    seg('globex', 'chat-g1', 'agent-wang', 1, 'customer', '好的'),
    seg('globex', 'chat-g1', 'agent-wang', 2, 'agent', '喂，还在吗'),
    seg('globex', 'chat-g1', 'agent-wang', 3, 'agent', '都下班了你不知道呀'), // two rules, one span
    seg('globex', 'chat-g1', 'agent-wang', 4, 'agent', '啊，急什么，这不归我管'), // two categories, three spans
    end('globex', 'chat-g1'),
  ],
  [ // published while the page is paused
    seg('acme', 'call-a3', 'agent-zhao', 0, 'agent', '您好'),
    seg('acme', 'call-a3', 'agent-zhao', 1, 'agent', '这不归我管'),
    end('acme', 'call-a3'),
  ],
  [ // published while the daemon is down
    seg('globex', 'chat-g2', 'agent-wang', 0, 'agent', '你问我我问谁'),
    seg('globex', 'chat-g2', 'agent-wang', 1, 'agent', '不关我的事'),
    end('globex', 'chat-g2'),
  ],
];

function writeBatch(i) {
  const file = path.join(dir, `batch-${i}.jsonl`);
  fs.writeFileSync(file, batches[i].join('\n') + '\n');
  return file;
}

// What `zhijian scan` finds offline: the violations the page must show.
function expected(upTo) {
  const file = path.join(dir, `expected-${upTo}.jsonl`);
  fs.writeFileSync(file, batches.slice(0, upTo + 1).flat().join('\n') + '\n');
  const out = execFileSync(ZHIJIAN, ['scan', '--lexicons', path.join(ROOT, 'lexicons'), file], { encoding: 'utf8' });
  const events = out.trim().split('\n').map((l) => JSON.parse(l));
  return {
    violations: events.filter((e) => e.type === 'violation'),
    summaries: events.filter((e) => e.type === 'summary'),
  };
}

// The page's rows: the violations of one utterance (tenant, conversation,
// segment) are one row.
function utterances(violations) {
  const byKey = new Map();
  for (const v of violations) {
    const key = JSON.stringify([v.tenant, v.conversation_id, v.seq]);
    if (!byKey.has(key)) byKey.set(key, []);
    byKey.get(key).push(v);
  }
  return byKey;
}

const SEVERITIES = ['critical', 'high', 'medium', 'low'];
const SEV_ZH = { critical: '严重', high: '高', medium: '中', low: '低' };
const worst = (vs) => vs.map((v) => v.severity).sort((a, b) => SEVERITIES.indexOf(a) - SEVERITIES.indexOf(b))[0];

// The highlighted pieces of an utterance: the union of its violations'
// spans, as contiguous runs of its text.
function markedRuns(vs) {
  const cps = Array.from(vs[0].text);
  const on = cps.map(() => false);
  for (const v of vs) {
    assert.equal(v.text_start || 0, 0, 'fixture: whole segments');
    for (const [s, e] of v.spans || []) for (let i = s; i < e && i < cps.length; i++) on[i] = true;
  }
  const runs = [];
  for (let i = 0; i < cps.length;) {
    let j = i;
    while (j < cps.length && on[j] === on[i]) j++;
    if (on[i]) runs.push(cps.slice(i, j).join(''));
    i = j;
  }
  return runs;
}

function publish(natsUrl, i, lines) {
  let file;
  if (lines) {
    file = path.join(dir, `extra-${i}.jsonl`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
  } else {
    file = writeBatch(i);
  }
  execFileSync(ZHIJIAN, ['publish', '--nats-url', natsUrl, file], { stdio: 'ignore' });
}

async function main() {
  for (const [what, p] of [['zhijian', ZHIJIAN], ['nats-server', NATS], ['chromium', CHROMIUM]]) {
    assert.ok(fs.existsSync(p), `${what} not found at ${p}`);
  }
  const [natsPort, monitorPort, metricsPort, consolePort] =
    [await freePort(), await freePort(), await freePort(), await freePort()];
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  start('nats', NATS, ['-a', '127.0.0.1', '-p', String(natsPort), '-m', String(monitorPort), '-js', '-sd', path.join(dir, 'store')]);
  await waitHttp(`http://127.0.0.1:${monitorPort}/healthz?js-enabled-only=true`, 'nats-server');

  const config = path.join(dir, 'zhijian.toml');
  fs.writeFileSync(config, [
    '[nats]', `url = "${natsUrl}"`,
    '[engine]', `lexicons = "${path.join(ROOT, 'lexicons')}"`,
    '[daemon]', 'shutdown_grace_s = 10',
    '[metrics]', `addr = "127.0.0.1:${metricsPort}"`,
    '[console]', `addr = "127.0.0.1:${consolePort}"`, 'history = 20000',
    // Two instances share the work (steps 10 and 11): the partitions.
    '[cluster]', 'partitions = 2', 'instance = "a"', 'heartbeat_ms = 100', 'lease_ms = 400', 'checkpoint_ms = 100',
    '[log]', 'level = "warn"', '',
  ].join('\n'));
  const startDaemon = async () => {
    const d = start('daemon', ZHIJIAN, ['run', '--config', config]);
    await waitHttp(`http://127.0.0.1:${metricsPort}/readyz`, 'zhijian');
    return d;
  };
  let daemon = await startDaemon();
  // A second instance (same NATS, the partitions shared) with its
  // own console, for steps 10 and 11.
  const [metricsPortB, consolePortB] = [await freePort(), await freePort()];
  const configB = path.join(dir, 'zhijian-b.toml');
  fs.writeFileSync(configB, fs.readFileSync(config, 'utf8')
    .replace(`addr = "127.0.0.1:${metricsPort}"`, `addr = "127.0.0.1:${metricsPortB}"`)
    .replace(`addr = "127.0.0.1:${consolePort}"`, `addr = "127.0.0.1:${consolePortB}"`)
    .replace('instance = "a"', 'instance = "b"'));
  const startDaemonB = async () => {
    const d = start('daemon-b', ZHIJIAN, ['run', '--config', configB]);
    await waitHttp(`http://127.0.0.1:${metricsPortB}/readyz`, 'zhijian (second instance)');
    return d;
  };

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // One profile (localStorage) for the page and the shared view of step 8.
  const context = await browser.newContext({ viewport: { width: 1500, height: 900 }, locale: 'zh-CN' });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  try {
    await page.goto(`http://127.0.0.1:${consolePort}/`);
    await page.waitForSelector('#status[data-state="live"]');
    const rows = () => page.locator('#feed tr');
    const waitRows = (n) => page.waitForFunction((n) => document.querySelectorAll('#feed tr').length === n, n);

    // 0. zh-CN labels by default.
    const headers = () => page.locator('#feed-view table.feed th').allTextContents();
    assert.deepEqual(await headers(), ['时间', '租户', '坐席', '会话', '类别', '严重程度', '规则', '话语', '处理']);
    assert.equal(await page.locator('#status').textContent(), '实时');
    assert.equal(await page.locator('#pause').textContent(), '暂停');
    assert.equal(await page.locator('#lang').textContent(), 'English');
    assert.equal(await page.locator('#empty').textContent(), '暂无告警。');
    assert.deepEqual(await page.locator('#f-severity option').allTextContents(), ['全部', '严重', '高', '中', '低']);
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');

    // 1. Alerts appear, exactly the offline verdicts, one row per
    // utterance, every span of every rule it broke highlighted.
    publish(natsUrl, 0);
    const want0 = expected(0);
    const rows0 = utterances(want0.violations);
    assert.ok(want0.violations.length >= 6, `fixture too thin: ${want0.violations.length} violations`);
    assert.ok(rows0.size < want0.violations.length, 'fixture: an utterance with several violations');
    await waitRows(rows0.size);
    await page.waitForFunction((n) => [...document.querySelectorAll('#feed tr')]
      .reduce((sum, tr) => sum + Number(tr.dataset.count), 0) === n, want0.violations.length);
    const shownIds = await rows().evaluateAll((trs) => trs.map((tr) => tr.dataset.ids.split(' ')));
    assert.deepEqual(shownIds.flat().sort(), want0.violations.map((v) => v.id).sort(), 'the page shows the offline verdicts');
    // The page masks numbers (every digit but the last four) in what it
    // highlights too; `zhijian scan` does not.
    const masked = (m) => (/\d{7,}/.test(m) ? m.replace(/\d(?=(?:\D*\d){4})/g, '*') : m);
    const rowOf = (vs) => page.locator(`#feed tr[data-ids~="${vs[0].id}"]`);
    for (const vs of rows0.values()) {
      const row = rowOf(vs);
      assert.deepEqual((await row.getAttribute('data-ids')).split(' ').sort(), vs.map((v) => v.id).sort(), `one row for ${vs[0].text}`);
      const marks = await row.locator('td.text mark').allTextContents();
      assert.deepEqual(marks, markedRuns(vs).map(masked), `highlight of ${vs.map((v) => v.rule_id)} in ${vs[0].text}`);
    }

    // 1b. Categories by their display names (the lexicon's), rule ids as
    // the detail; a verdict shows its note, a violation the rules it stands
    // for; the row's severity is its worst, in Chinese; critical alerts
    // (escalation) stand out.
    for (const vs of rows0.values()) {
      const row = rowOf(vs);
      const cats = await row.locator('td.category .cat').evaluateAll((es) => es.map((e) => [e.dataset.category, e.textContent]));
      const wantCats = [...new Map(vs.map((v) => [v.category, v.category_name])).entries()];
      assert.deepEqual(cats.sort(), wantCats.sort(), `categories of ${vs[0].text}`);
      assert.deepEqual((await row.locator('td.rule .rule-id').allTextContents()).sort(), vs.map((v) => v.rule_id).sort());
      assert.equal(await row.getAttribute('data-severity'), worst(vs));
      assert.equal(await row.locator('td.sev').textContent(), SEV_ZH[worst(vs)]);
      assert.deepEqual((await row.locator('.note').allTextContents()).sort(), vs.filter((v) => v.note).map((v) => v.note).sort(),
        `notes of ${vs[0].text}`);
      const also = await row.locator('.also').allTextContents();
      const alsos = vs.flatMap((v) => v.also || []);
      assert.equal(also.length, alsos.length ? 1 : 0, `also of ${vs[0].text}`);
      for (const a of alsos) assert.ok(also[0].includes(a.rule_id), `${a.rule_id} in ${also[0]}`);
    }
    // Two categories and three spans of one utterance: one row.
    const twice = [...rows0.values()].find((vs) => vs[0].text === '啊，急什么，这不归我管');
    assert.ok(twice && new Set(twice.map((v) => v.category)).size >= 2, 'fixture: one utterance, two categories');
    const twiceRow = rowOf(twice);
    assert.equal(await page.locator('#feed tr[data-conversation="chat-g1"][data-seq="4"]').count(), 1);
    const twiceCats = await twiceRow.locator('td.category .cat').allTextContents();
    assert.ok(twiceCats.includes('服务忌语') && twiceCats.includes('语气词'), `both categories in ${twiceCats}`);
    assert.deepEqual(await twiceRow.locator('td.text mark').allTextContents(), ['啊', '急什么', '不归我管']);
    assert.equal(await twiceRow.locator('td.sev').textContent(), '高');
    const escalations = want0.violations.filter((v) => v.category === 'escalation');
    assert.ok(escalations.length >= 1, 'fixture: an escalation');
    assert.ok(want0.violations.some((v) => v.note), 'fixture: a verdict with a note');
    assert.ok(want0.violations.some((v) => (v.also || []).length), 'fixture: a violation standing for another rule');
    for (const v of escalations) {
      const row = page.locator(`#feed tr[data-ids~="${v.id}"]`);
      assert.ok((await row.locator('td.category .cat').allTextContents()).includes('客户投诉升级'));
      assert.equal(await row.getAttribute('class'), 'sev-critical');
      assert.equal(await row.locator('td.sev').textContent(), '严重');
      const [bg, sevBg] = await row.evaluate((tr) => [getComputedStyle(tr.cells[0]).backgroundColor,
        getComputedStyle(tr.querySelector('td.sev')).backgroundColor]);
      assert.notEqual(bg, 'rgb(255, 255, 255)', 'a critical row is tinted');
      assert.equal(sevBg, 'rgb(176, 0, 32)', 'its severity is a red badge');
    }

    // 1c. The English switch: every label, the severities; back to zh-CN.
    await page.click('#lang');
    assert.deepEqual(await headers(), ['Time', 'Tenant', 'Agent', 'Conversation', 'Category', 'Severity', 'Rule', 'Utterance', 'Handling']);
    assert.equal(await page.locator('#status').textContent(), 'live');
    assert.equal(await page.locator('#pause').textContent(), 'Pause');
    assert.equal(await page.locator('#lang').textContent(), '中文');
    assert.deepEqual(await page.locator('#f-severity option').allTextContents(), ['all', 'critical', 'high', 'medium', 'low']);
    assert.equal(await twiceRow.locator('td.sev').textContent(), 'high');
    assert.equal(await page.evaluate(() => localStorage.getItem('zhijian-lang')), 'en');
    assert.equal(await rows().count(), rows0.size, 'switching language keeps the rows');
    await page.click('#lang');
    assert.equal(await page.locator('#status').textContent(), '实时');
    assert.equal(await twiceRow.locator('td.sev').textContent(), '高');
    assert.equal(await page.evaluate(() => localStorage.getItem('zhijian-lang')), 'zh-CN');

    // 2. Untrusted text stays text; phone numbers are masked.
    const texts = await page.locator('#feed td.text').allTextContents();
    assert.ok(texts.some((t) => t.startsWith(XSS_SCRIPT)), 'the <script> transcript is shown literally');
    assert.ok(texts.some((t) => t.startsWith('<img src=x onerror=')), 'the <img> transcript is shown literally');
    assert.equal(await page.locator('#feed script, #feed img, #detail script, #detail img').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined, 'no transcript ran as code');
    const body = await page.locator('body').innerText();
    assert.ok(!body.includes('13812345678'), 'the phone number is masked');
    assert.ok(body.includes('*******5678'), 'the masked phone number keeps its last four digits');

    // 3. Counters and the agent ranking.
    // One counter and one filter option per category the alerts have,
    // by display name: the lexicon's categories, not a fixed list.
    const byCategory = (vs, c) => vs.filter((v) => v.category === c).length;
    const names = new Map(want0.violations.map((v) => [v.category, v.category_name]));
    const present = [...names.keys()].sort();
    for (const c of present) {
      await page.waitForFunction(([c, n]) => document.querySelector(`.counter[data-category="${c}"] b`)?.textContent === String(n),
        [c, byCategory(want0.violations, c)]);
      const label = await page.locator(`.counter[data-category="${c}"]`).textContent();
      assert.equal(label, `${names.get(c)} ${byCategory(want0.violations, c)}`);
    }
    assert.deepEqual(await page.locator('.counter').evaluateAll((cs) => cs.map((c) => c.dataset.category)), present);
    assert.ok(await page.locator('.counter.critical[data-category="escalation"]').count() === 1, 'the escalation counter stands out');
    const options = await page.locator('#f-category option').evaluateAll((os) => os.map((o) => [o.value, o.textContent]));
    assert.deepEqual(options, [['', '全部'], ...present.map((c) => [c, names.get(c)])]);
    const perAgent = new Map();
    for (const v of want0.violations) perAgent.set(v.agent_id, (perAgent.get(v.agent_id) || 0) + 1);
    const [topAgent, topCount] = [...perAgent.entries()].sort((a, b) => b[1] - a[1])[0];
    const first = page.locator('#ranking li').first();
    assert.equal(await first.getAttribute('data-agent'), topAgent);
    assert.equal(await first.getAttribute('data-count'), String(topCount));

    // 4. Filters: rows with any violation that passes; each filter in the
    // URL (replaceState).
    const visible = () => rows().evaluateAll((trs) => trs.map((tr) => ({ ...tr.dataset })));
    const groups0 = [...rows0.values()];
    const rowsWith = (pred) => groups0.filter((vs) => vs.some(pred)).length;
    const checkFilter = async (select, value, field, wantCount) => {
      await page.selectOption(select, value);
      const shown = await visible();
      assert.equal(shown.length, wantCount, `${select}=${value}`);
      assert.ok(shown.every((r) => r[field].split(' ').includes(value)), `${select}=${value} shows only ${value}`);
      assert.equal(new URL(page.url()).searchParams.get(select.slice(3)), value, `${select}=${value} in the URL`);
      await page.selectOption(select, '');
      assert.equal(new URL(page.url()).searchParams.get(select.slice(3)), null, `${select} cleared from the URL`);
    };
    await checkFilter('#f-category', 'filler', 'categories', rowsWith((v) => v.category === 'filler'));
    await checkFilter('#f-category', 'escalation', 'categories', rowsWith((v) => v.category === 'escalation'));
    await checkFilter('#f-tenant', 'globex', 'tenant', rowsWith((v) => v.tenant === 'globex'));
    const sev = want0.violations[0].severity;
    await page.selectOption('#f-severity', sev);
    assert.equal((await visible()).length, rowsWith((v) => v.severity === sev), `severity ${sev}`);
    await page.selectOption('#f-severity', '');
    await page.fill('#f-agent', 'agent-li');
    const liRows = await visible();
    assert.equal(liRows.length, rowsWith((v) => v.agent_id === 'agent-li'));
    assert.ok(liRows.every((r) => r.agent === 'agent-li'), JSON.stringify(liRows));
    assert.equal(new URL(page.url()).searchParams.get('agent'), 'agent-li');
    await page.fill('#f-agent', '');
    await waitRows(rows0.size);
    assert.equal(new URL(page.url()).search, '', 'no filter, no query string');

    // 5. A conversation: its segments, highlighted, and its score.
    await page.locator('#feed tr[data-tenant="acme"] button.conv', { hasText: 'call-a1' }).first().click();
    await page.waitForFunction(() => document.querySelectorAll('#detail-segments li').length === 6);
    const summary = want0.summaries.find((s) => s.conversation_id === 'call-a1');
    await page.waitForSelector(`#detail-summary[data-score="${summary.score}"]`);
    // Its counts: every category it broke, by name.
    const broke = Object.entries(summary.counts).filter(([, n]) => n > 0).sort(([a], [b]) => a.localeCompare(b));
    assert.ok(broke.some(([c]) => c === 'escalation'), 'fixture: call-a1 escalates');
    const counted = await page.locator('#detail-summary .cat-count').evaluateAll((es) => es.map((e) => [e.dataset.category, e.textContent]));
    assert.deepEqual(counted, broke.map(([c, n]) => [c, `${names.get(c) || c} ${n}`]));
    assert.ok(await page.locator('#detail-segments li[data-seq="2"] mark').count() >= 1, 'violations highlighted in the conversation');
    const detailText = await page.locator('#detail').innerText();
    assert.ok(detailText.includes('<script>'), 'the conversation view shows transcripts as text');
    assert.ok(!detailText.includes('13812345678'), 'the conversation view masks numbers');
    // The score by scorecard section, by the lexicon's names, adding up.
    const sections = await page.locator('#detail-sections li').evaluateAll((es) => es.map((e) => [e.dataset.section, Number(e.dataset.deducted), e.textContent]));
    assert.deepEqual(sections.map(([id]) => id), ['professional', 'attitude', 'service_language']);
    assert.ok(sections.some(([, , text]) => text.startsWith('服务用语')), JSON.stringify(sections));
    assert.equal(Math.round((100 - sections.reduce((a, [, d]) => a + d, 0)) * 1e6) / 1e6, summary.score);
    assert.equal(new URL(page.url()).searchParams.get('conv'), 'acme/call-a1', 'the open conversation is in the URL');

    // 6. Pause holds new alerts back; resume shows them.
    await page.click('#pause');
    publish(natsUrl, 1);
    const want1 = expected(1);
    const newWhilePaused = want1.violations.length - want0.violations.length;
    assert.ok(newWhilePaused > 0);
    await page.waitForSelector(`#waiting[data-count="${newWhilePaused}"]`);
    assert.equal(await page.locator('#waiting').textContent(), `${newWhilePaused} 条新告警（已暂停）`);
    assert.equal(await page.locator('#pause').textContent(), '继续');
    assert.equal(await rows().count(), rows0.size, 'paused: the table does not move');
    await page.click('#pause');
    await waitRows(utterances(want1.violations).size);

    // 7. The daemon restarts; what was published meanwhile appears, once.
    daemon.kill('SIGTERM');
    const exit = await daemon.exited;
    assert.equal(exit.code, 0, 'the daemon stops cleanly on SIGTERM');
    await page.waitForSelector('#status[data-state="reconnecting"]');
    publish(natsUrl, 2);
    daemon = await startDaemon();
    await page.waitForSelector('#status[data-state="live"]');
    const want2 = expected(2);
    const rows2 = utterances(want2.violations);
    await waitRows(rows2.size);
    await new Promise((r) => setTimeout(r, 1000)); // anything extra would show by now
    const finalRows = await visible();
    assert.equal(finalRows.length, rows2.size);
    assert.equal(new Set(finalRows.map((r) => r.key)).size, finalRows.length, 'no utterance shown twice');
    const finalIds = finalRows.flatMap((r) => r.ids.split(' '));
    assert.equal(new Set(finalIds).size, finalIds.length, 'no alert shown twice');
    assert.deepEqual(finalIds.sort(), want2.violations.map((v) => v.id).sort());
    assert.equal(await page.locator('#status').getAttribute('data-duplicates'), null, 'the server resent nothing');

    // 8. A shared view: a URL with filters applies them on load; the
    // language chosen is remembered (same browser profile).
    await page.click('#lang');
    const shared = await context.newPage();
    shared.setDefaultTimeout(TIMEOUT);
    shared.on('pageerror', (e) => pageErrors.push(String(e)));
    await shared.goto(`http://127.0.0.1:${consolePort}/?tenant=globex&category=forbidden`);
    await shared.waitForSelector('#status[data-state="live"]');
    const wantShared = [...rows2.values()].filter((vs) => vs[0].tenant === 'globex' && vs.some((v) => v.category === 'forbidden'));
    assert.ok(wantShared.length >= 1 && wantShared.length < rows2.size, 'fixture: the shared view filters');
    await shared.waitForFunction((n) => document.querySelectorAll('#feed tr').length === n, wantShared.length);
    assert.equal(await shared.locator('#f-tenant').inputValue(), 'globex');
    assert.equal(await shared.locator('#f-category').inputValue(), 'forbidden');
    const sharedRows = await shared.locator('#feed tr').evaluateAll((trs) => trs.map((tr) => ({ ...tr.dataset })));
    assert.ok(sharedRows.every((r) => r.tenant === 'globex' && r.categories.split(' ').includes('forbidden')));
    assert.equal(await shared.locator('#lang').textContent(), '中文', 'the English choice is remembered');
    assert.equal(await shared.locator('#feed-view table.feed th').first().textContent(), 'Time');
    await shared.selectOption('#f-severity', 'critical');
    assert.equal(new URL(shared.url()).search, '?tenant=globex&category=forbidden&severity=critical');
    await shared.close();

    // 9. The live conversations board: an open conversation whose
    // customer threatens to complain comes first, with its agent (an id
    // that is markup, shown as text), channel and running score; closed
    // conversations below it. The view is in the URL.
    await page.click('#lang'); // back to zh-CN (English since step 8)
    assert.equal(await page.locator('#lang').getAttribute('data-lang'), 'zh-CN');
    publish(natsUrl, 'live', LIVE);
    await page.click('#v-board');
    assert.equal(new URL(page.url()).searchParams.get('view'), 'board');
    await page.waitForFunction(() => document.querySelector('#board tr')?.dataset.conversation === 'live-x');
    const boardRows = await page.locator('#board tr').evaluateAll((trs) => trs.map((tr) => ({ ...tr.dataset })));
    assert.equal(boardRows[0].severity, 'critical');
    assert.equal(boardRows[0].open, 'true');
    assert.ok(Number(boardRows[0].score) < 100, `running score ${boardRows[0].score}`);
    assert.equal(boardRows[0].agent, XSS_AGENT);
    const firstBoard = page.locator('#board tr').first();
    assert.equal(await firstBoard.locator('td.agent').textContent(), XSS_AGENT, 'the agent id is shown as text');
    assert.equal(await firstBoard.locator('td.worst .sev').textContent(), '严重');
    assert.equal(await firstBoard.locator('td.worst .cat').textContent(), '客户投诉升级');
    assert.equal(await firstBoard.locator('td.channel').textContent(), '电话');
    assert.ok(boardRows.some((r) => r.conversation === 'call-a1' && r.open === 'false'), 'closed conversations stay a while');
    const rank = (r) => (r.severity ? SEVERITIES.indexOf(r.severity) : 4);
    for (let i = 1; i < boardRows.length; i++) assert.ok(rank(boardRows[i - 1]) <= rank(boardRows[i]), 'most urgent first');
    await page.click('#v-feed');

    // 10. Acknowledge on one console, seen on a second (another browser
    // profile, another daemon instance); the tab titles count the open
    // critical alerts. The second daemon is then stopped: the first
    // supervisor works an alert meanwhile, and the second page catches up
    // when its daemon is back.
    const other = await browser.newContext({ viewport: { width: 1500, height: 900 }, locale: 'zh-CN' });
    const page2 = await other.newPage();
    page2.setDefaultTimeout(TIMEOUT);
    page2.on('pageerror', (e) => pageErrors.push(String(e)));
    page2.on('dialog', (d) => {
      dialogs.push(d.message());
      d.dismiss();
    });
    let daemonB = await startDaemonB();
    await page2.goto(`http://127.0.0.1:${consolePortB}/`);
    await page2.waitForSelector('#status[data-state="live"]');
    const liveRow = (p) => p.locator('#feed tr[data-conversation="live-x"][data-severity="critical"]');
    await liveRow(page2).waitFor();
    const critical = want2.violations.filter((v) => v.severity === 'critical').length + 1;
    const titleCount = (p) => p.evaluate(() => document.title);
    await page.waitForFunction((n) => document.title === `(${n}) 质检 · 实时告警`, critical);
    await page2.waitForFunction((n) => document.title === `(${n}) 质检 · 实时告警`, critical);
    // Without a name, an action says what is missing.
    await liveRow(page).locator('button.ack').click();
    await page.waitForFunction(() => document.querySelector('#notice').textContent.includes('名字'));
    await page.fill('#me', XSS_NAME);
    await page.locator('#me').dispatchEvent('change');
    await liveRow(page).locator('button.ack').click();
    await page2.waitForSelector('#feed tr[data-conversation="live-x"][data-severity="critical"][data-status="acknowledged"]');
    const badge = await liveRow(page2).locator('.st').textContent();
    assert.ok(badge.startsWith(`已确认 · ${XSS_NAME} `), badge);
    assert.equal(await titleCount(page2), `(${critical - 1}) 质检 · 实时告警`);
    await page.waitForFunction((n) => document.title === `(${n}) 质检 · 实时告警`, critical - 1);

    daemonB.kill('SIGTERM');
    assert.equal((await daemonB.exited).code, 0);
    await page2.waitForSelector('#status[data-state="reconnecting"]');
    // Meanwhile, on the first console: assign, note (markup, as text), a
    // false alarm on one rule of a two-rule utterance.
    const workRow = page.locator('#feed tr[data-conversation="chat-g1"][data-seq="4"]');
    const workIds = (await workRow.getAttribute('data-ids')).split(' ');
    assert.ok(workIds.length >= 2, 'fixture: an utterance with several alerts');
    await workRow.locator('button.work').click();
    await page.fill('#work-assignee', XSS_ASSIGNEE);
    await page.click('#work-assign');
    await page.fill('#work-note', XSS_NOTE);
    await page.click('#work-add-note');
    await page.waitForFunction(() => document.querySelector('#work-note').value === '');
    await page.locator(`#work-rules li[data-id="${workIds[0]}"] button.false_alarm`).click();
    await page.waitForSelector(`#work-rules li[data-id="${workIds[0]}"][data-status="false_alarm"]`);
    const log = await page.locator('#work-log').innerText();
    assert.ok(log.includes(XSS_NOTE) && log.includes(XSS_ASSIGNEE) && log.includes(XSS_NAME), log);
    // A note too long is refused with the server's reason.
    await page.evaluate(() => { document.querySelector('#work-note').maxLength = 5000; });
    await page.fill('#work-note', '长'.repeat(1001));
    await page.click('#work-add-note');
    await page.waitForFunction(() => document.querySelector('#work-error').textContent.includes('over the limit of 1000'));

    daemonB = await startDaemonB();
    await page2.waitForSelector('#status[data-state="live"]');
    const row2 = page2.locator('#feed tr[data-conversation="chat-g1"][data-seq="4"]');
    await page2.waitForFunction(() => document.querySelector('#feed tr[data-conversation="chat-g1"][data-seq="4"] .assignee') !== null);
    assert.equal(await row2.locator('.assignee').textContent(), `指派给 ${XSS_ASSIGNEE}`);
    await row2.locator('button.work').click();
    await page2.waitForFunction((note) => document.querySelector('#work-log').innerText.includes(note), XSS_NOTE);
    assert.equal(await page2.locator(`#work-rules li[data-id="${workIds[0]}"]`).getAttribute('data-status'), 'false_alarm');
    // The false alarm, exported for the QA lead: rule, span, lexicon version.
    const csv = await page2.evaluate(async () => (await fetch('/api/false-alarms?format=csv')).text());
    const fa = want2.violations.find((v) => v.id === workIds[0]);
    const faLine = csv.split('\n').find((l) => l.startsWith(fa.id));
    assert.ok(faLine && faLine.includes(fa.rule_id) && faLine.includes(fa.lexicon_version)
      && faLine.includes(`${fa.spans[0][0]}-${fa.spans[0][1]}`), csv);

    // 11. Attention: notifications denied (the second profile) leave the
    // sound; granted (the first), a new critical alert is signalled.
    await page2.click('#notify');
    await page2.waitForSelector('#notify[data-on="1"]');
    const perm2 = await page2.locator('#notify').getAttribute('data-permission');
    assert.ok(perm2 === 'denied' || perm2 === 'default', perm2);
    assert.equal(await page2.locator('#notify').textContent(), '通知被拒绝（仅声音）');
    await context.grantPermissions(['notifications'], { origin: `http://127.0.0.1:${consolePort}` });
    await page.click('#notify');
    await page.waitForSelector('#notify[data-permission="granted"][data-on="1"]');
    assert.equal(await page.locator('#notify').textContent(), '提醒已开启');
    publish(natsUrl, 'live2', LIVE2);
    await page.waitForFunction(() => Number(document.body.dataset.beeps) >= 1);
    await page2.waitForFunction(() => Number(document.body.dataset.beeps) >= 1);
    const beeps = Number(await page2.evaluate(() => document.body.dataset.beeps));
    await page2.waitForFunction((n) => document.title === `(${n}) 质检 · 实时告警`, critical - 1 + beeps);

    // 12. One agent over the shift: alerts and average score.
    await page.goto(`http://127.0.0.1:${consolePort}/?view=agent&agent=agent-wang`);
    await page.waitForSelector('#status[data-state="live"]');
    const wangAlerts = want2.violations.filter((v) => v.agent_id === 'agent-wang').length;
    const wangScores = want2.summaries.filter((s) => s.agent_id === 'agent-wang').map((s) => s.score);
    await page.waitForSelector(`#agent-stats[data-alerts="${wangAlerts}"]`);
    const avg = Number(await page.locator('#agent-stats .avg').getAttribute('data-score'));
    assert.equal(avg, Math.round((wangScores.reduce((a, b) => a + b, 0) / wangScores.length) * 100) / 100);
    assert.equal(await page.locator('#agent-alerts tr').count(), wangAlerts);
    assert.ok((await page.locator('#agent-title').textContent()).startsWith('坐席 agent-wang'));

    // 13. Markup typed or said anywhere stays text.
    const xssConvRow = page2.locator('#feed tr[data-conversation^="<img/src=x"]').first();
    assert.equal(await xssConvRow.locator('button.conv').textContent(), XSS_CONV);
    await page2.click('#v-board');
    await page2.waitForFunction((c) => [...document.querySelectorAll('#board tr')].some((tr) => tr.dataset.conversation === c), XSS_CONV);
    await page2.locator('#board tr[data-tenant="globex"] button.conv', { hasText: "__pwned']=7" }).click();
    await page2.waitForFunction((c) => document.querySelector('#detail-title').textContent === `globex / ${c}`, XSS_CONV);
    for (const p of [page, page2]) {
      assert.equal(await p.evaluate(() => window.__pwned), undefined, 'nothing ran as code');
      assert.equal(await p.locator('main img, main script, aside img, aside script, header img').count(), 0);
    }

    // 14. Speed: 5,000 alerts in the page, filtering and rendering.
    await page.goto(`http://127.0.0.1:${consolePort}/`);
    await page.waitForSelector('#status[data-state="live"]');
    await page.waitForFunction(() => Number(document.body.dataset.alerts) > 0);
    const before = Number(await page.evaluate(() => document.body.dataset.alerts));
    const perf = [];
    for (let c = 0; c < 500; c++) {
      for (let i = 0; i < 10; i++) perf.push(seg('perf', `perf-${c}`, `agent-p${c % 20}`, i, 'agent', i ? `急什么，第${i}遍` : '您好，急什么'));
    }
    publish(natsUrl, 'perf', perf);
    await page.waitForFunction((n) => Number(document.body.dataset.alerts) >= n, before + 5000, { timeout: 120000 });
    // Each change five times over (the machine may be busy with builds):
    // the median, script and layout included.
    const timings = await page.evaluate(async () => {
      const set = (id, v) => {
        const e = document.getElementById(id);
        e.value = v;
        e.dispatchEvent(new Event(e.tagName === 'INPUT' ? 'input' : 'change'));
      };
      const measure = (change) => {
        const t0 = performance.now();
        change();
        void document.body.offsetHeight; // layout included
        return performance.now() - t0;
      };
      const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
      const runs = { tenant: [], severity: [], agent: [], more: [], clear: [] };
      const rows = {};
      const count = () => document.querySelectorAll('#feed tr').length;
      for (let i = 0; i < 5; i++) {
        runs.tenant.push(measure(() => set('f-tenant', 'perf')));
        rows.tenant = count();
        runs.severity.push(measure(() => set('f-severity', 'high')));
        runs.agent.push(measure(() => set('f-agent', 'agent-p7')));
        rows.agent = count();
        document.getElementById('more').click(); // 200 rows
        runs.more.push(measure(() => document.getElementById('more').click()));
        rows.more = count();
        runs.clear.push(measure(() => {
          for (const id of ['f-tenant', 'f-severity']) document.getElementById(id).value = '';
          set('f-agent', '');
        }));
        rows.clear = count();
      }
      const out = { alerts: Number(document.body.dataset.alerts), rows, all: {} };
      for (const [k, xs] of Object.entries(runs)) {
        out.all[k] = xs.map((x) => Math.round(x));
        out[k] = median(xs);
      }
      return out;
    });
    console.log(`5,000-alert filter/render, median of 5 (ms, ${timings.alerts} alerts in the page): `
      + ['tenant', 'severity', 'agent', 'more', 'clear'].map((k) => `${k} ${timings[k].toFixed(1)}`).join(', ')
      + `; rows ${JSON.stringify(timings.rows)}; every run ${JSON.stringify(timings.all)}`);
    assert.ok(timings.alerts >= 5000);
    assert.deepEqual(timings.rows, { tenant: 100, agent: 100, more: 250, clear: 100 },
      'a page of rows; agent-p7 has 25 conversations of 10 alerts');
    // The times are printed, not asserted (a busy machine is no bug): what
    // keeps them low is checked above, a page of rows rendered whatever the
    // alerts held.
    await other.close();

    assert.deepEqual(dialogs, [], 'no dialog opened');
    assert.deepEqual(pageErrors, [], 'no script errors');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'console.png'), fullPage: true });
    console.log(`console e2e: ok (${want2.violations.length} alerts in ${rows2.size} rows, restart resumed without duplicates); screenshot ${path.join(ARTIFACTS, 'console.png')}`);
  } catch (e) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-failure.png'), fullPage: true }).catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error('console e2e FAILED:', e);
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.log'))) {
    console.error(`--- ${f}\n${fs.readFileSync(path.join(dir, f), 'utf8').slice(-4000)}`);
  }
} finally {
  for (const c of children) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
