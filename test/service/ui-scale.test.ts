/**
 * The web UI with 3,000 disks in Debian's headless chromium (playwright-core): the disk table asks
 * the server for pages (`/api/disks?limit=`) as it scrolls and never for the whole list, keeps only
 * the rows in view in the DOM, sorts and filters on the server (each click or filter a new request,
 * the rows in the order of a sort the test does itself of the whole list), follows only the rows
 * on screen on the live stream (a change to one of them shows, and the totals follow the stream's
 * summary messages), shows the totals `/api/summary` gives, and says so when a page fails (then
 * asks again on Retry only). The disks are sparse raw
 * files of distinct sizes (no filesystem: each is analysed in a moment, and nothing in them is
 * reclaimable), 2,000 in one domain and 1,000 in another.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, waitFor, TOKEN, type Server } from './service-helpers.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const DISKS = 3000;
/** The rows a virtualized table may hold: a screen and its overscan, far below the disks loaded. */
const MAX_ROWS_IN_DOM = 80;

interface ListedDisk {
  id: string;
  name: string;
  domainId: string;
  virtualSize: number | null;
  actualSize: number;
  status: string;
  needsSparsify: boolean;
}

/** vm-0000.raw ... vm-2999.raw; every third in domain b; virtual sizes all different and in another order than the names. */
function makeDisks(a: string, b: string): void {
  mkdirSync(a, { recursive: true });
  mkdirSync(b, { recursive: true });
  for (let i = 0; i < DISKS; i++) {
    const fd = openSync(join(i % 3 === 2 ? b : a, `vm-${String(i).padStart(4, '0')}.raw`), 'w');
    try {
      ftruncateSync(fd, (((i * 7919) % DISKS) + 1) * 4096);
    } finally {
      closeSync(fd);
    }
  }
}

/** The order the contract gives: by the key, unknown sizes as smallest, ties by disk id. */
function sorted(disks: ListedDisk[], key: (d: ListedDisk) => string | number, dir: 1 | -1): string[] {
  const cmp = (x: string | number, y: string | number) => (x < y ? -1 : x > y ? 1 : 0);
  return [...disks].sort((p, q) => dir * (cmp(key(p), key(q)) || cmp(p.id, q.id))).map((d) => d.name);
}

/** The rendered rows as [index in the list, name]. */
function renderedRows(page: Page): Promise<Array<[number, string]>> {
  return page.locator('[data-testid=disk-row]').evaluateAll((rows) => rows.map((r) => [Number(r.getAttribute('data-index')), r.getAttribute('data-disk-name') ?? ''] as [number, string]));
}

/** Every rendered row holds the disk the expected order puts at its index. */
async function assertOrder(page: Page, expected: string[], what: string): Promise<void> {
  const rows = await renderedRows(page);
  assert.ok(rows.length > 0, `${what}: no rows rendered`);
  for (const [i, name] of rows) assert.equal(name, expected[i], `${what}: row ${i}`);
}

/** Scroll the table to its end until the server says there is no next page. */
async function scrollToEnd(page: Page, pages: string[]): Promise<void> {
  const table = page.getByTestId('disks-table');
  for (let step = 0; (await table.getAttribute('data-more')) !== 'false'; step++) {
    assert.ok(step < 100, 'the table kept loading after 100 scrolls');
    const loaded = await table.getAttribute('data-loaded');
    await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
    await page.waitForFunction((n) => {
      const t = document.querySelector('[data-testid=disks-table]');
      return t && (t.getAttribute('data-loaded') !== n || t.getAttribute('data-more') === 'false');
    }, loaded, { timeout: 20_000 }).catch((e: Error) => {
      throw new Error(`no page came after ${loaded} rows (requests: ${pages.slice(-3).join(' ')}): ${e.message}`);
    });
  }
  // The last rows render once the scroll settles.
  await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
}

describe('web UI with 3,000 disks: paged, sorted and filtered by the server', { skip: chromiumMissing() ?? false, timeout: 240_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let server: Server;
  let browser: Browser;
  let page: Page;
  let all: ListedDisk[] = [];
  /** Every /api/disks request the page made, and every stream it opened. */
  const diskRequests: string[] = [];
  const streams: string[] = [];
  const summaryRequests: string[] = [];
  const errors: string[] = [];

  before(async () => {
    ensureWebBuilt();
    tmp = tempDir('sparsify-ui-scale-');
    const a = join(tmp.dir, 'images-a');
    const b = join(tmp.dir, 'images-b');
    makeDisks(a, b);
    server = await startServer({ dataDir: join(tmp.dir, 'data'), domains: [a, b] });
    // Every disk listed. Their analysis may still run: it changes none of what the test compares
    // (names, sizes from the scan, status, totals: no filesystem, so nothing reclaimable).
    all = await waitFor(
      () => `${DISKS} listed disks (have ${all.length})`,
      async () => {
        await new Promise((r) => setTimeout(r, 1000));
        all = (await http<{ disks: ListedDisk[] }>(server, 'GET', '/api/disks')).body.disks ?? [];
        return all.length === DISKS ? all : undefined;
      },
      150_000,
    );
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('request', (r) => {
      const path = r.url().slice(server.url.length);
      if (path.startsWith('/api/disks?') || path === '/api/disks') diskRequests.push(decodeURIComponent(path));
      if (path.startsWith('/api/stream')) streams.push(path);
      if (path.startsWith('/api/summary')) summaryRequests.push(path);
    });
  });

  after(() =>
    releaseAll(
      () => browser?.close(),
      () => server?.stop(),
      stopAllServers,
      () => tmp?.cleanup(),
    ),
  );

  it('shows the first page, loads the next ones as it scrolls, and keeps only the rows in view', async (t) => {
    await page.goto(`${server.url}/#token=${TOKEN}`);
    await page.locator('[data-testid=disk-row]').first().waitFor();
    // The UI's own marks: its script running, and its first rows in the DOM (ms after navigation start).
    const marks = await page.evaluate(() => ['sparsify:script', 'sparsify:first-rows'].map((n) => Math.round(performance.getEntriesByName(n)[0]?.startTime ?? NaN)));
    t.diagnostic(`script running at ${marks[0]} ms, first rows in the DOM at ${marks[1]} ms after navigation start`);
    assert.ok(marks[1]! > 0, 'no first-rows mark');
    const byName = sorted(all, (d) => d.name, 1);
    await assertOrder(page, byName, 'first page');
    // The first screen came from one page, not the whole list.
    assert.ok(diskRequests.length >= 1 && diskRequests.every((r) => /[?&]limit=\d+/.test(r)), diskRequests.join(' '));
    const firstLimit = Number(/limit=(\d+)/.exec(diskRequests[0]!)![1]);
    assert.ok(firstLimit >= 50 && firstLimit <= 1000, `first page of ${firstLimit}`);

    await scrollToEnd(page, diskRequests);
    const table = page.getByTestId('disks-table');
    assert.equal(Number(await table.getAttribute('data-loaded')), DISKS);
    await page.locator(`[data-testid=disk-row][data-disk-name="${byName[DISKS - 1]}"]`).waitFor();
    await assertOrder(page, byName, 'the end of the list');
    const rows = await page.locator('[data-testid=disk-row]').count();
    assert.ok(rows <= MAX_ROWS_IN_DOM, `${rows} rows in the DOM for ${DISKS} loaded`);
    // Pages followed one another by cursor; the whole list was never asked for.
    const next = diskRequests.filter((r) => r.includes('after='));
    assert.ok(next.length >= Math.ceil(DISKS / 1000) && next.length >= DISKS / firstLimit - 1, `${next.length} requests with a cursor`);
    assert.ok(diskRequests.every((r) => /[?&]limit=\d+/.test(r)), 'a request without limit');
    assert.equal(new Set(diskRequests).size, diskRequests.length, 'a page asked for twice');

    // The live stream follows the rows on screen, not every disk.
    const ids = new Set(all.map((d) => d.id));
    const onScreen = new Set(await page.locator('[data-testid=disk-row]').evaluateAll((r) => r.map((e) => e.getAttribute('data-disk-id') ?? '')));
    await waitFor('a stream opened for the rows on screen', async () => {
      const last = streams[streams.length - 1] ?? '';
      const asked = new URL(last, server.url).searchParams.get('disks')?.split(',').filter(Boolean) ?? [];
      return asked.length > 0 && asked.length <= 500 && asked.every((id) => ids.has(id)) && [...onScreen].every((id) => asked.includes(id));
    }, 10_000);
    await page.screenshot({ path: join(testOutput, 'service-ui-scale-end.png') });
  });

  it('sorts on the server when a column header is clicked, in the order of a sort of the whole list', async () => {
    const byVirtual = sorted(all, (d) => d.virtualSize ?? -1, 1);
    const before = diskRequests.length;
    await page.getByTestId('sort-virtualSize').click();
    await page.locator(`[data-testid=disk-row][data-index="0"][data-disk-name="${byVirtual[0]}"]`).waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.slice(before).some((r) => r.includes('sort=virtualSize:asc') && !r.includes('after=')), diskRequests.slice(before).join(' '));
    await assertOrder(page, byVirtual, 'virtual size ascending');
    // Later pages keep the order (the cursor carries the sort).
    await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=disks-table]')?.getAttribute('data-loaded')) > 200, null, { timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('sort=virtualSize:asc') && r.includes('after=')));
    await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
    await page.waitForTimeout(300);
    await assertOrder(page, byVirtual, 'virtual size ascending, second page');

    const byVirtualDesc = sorted(all, (d) => d.virtualSize ?? -1, -1);
    await page.getByTestId('sort-virtualSize').click();
    await page.locator(`[data-testid=disk-row][data-index="0"][data-disk-name="${byVirtualDesc[0]}"]`).waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('sort=virtualSize:desc')));
    await assertOrder(page, byVirtualDesc, 'virtual size descending');

    const byNameDesc = sorted(all, (d) => d.name, -1);
    await page.getByTestId('sort-name').click();
    await page.getByTestId('sort-name').click();
    await page.locator(`[data-testid=disk-row][data-index="0"][data-disk-name="${byNameDesc[0]}"]`).waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('sort=name:desc')));
    await assertOrder(page, byNameDesc, 'name descending');
    await page.getByTestId('sort-name').click();
    await page.locator(`[data-testid=disk-row][data-index="0"][data-disk-name="vm-0000.raw"]`).waitFor({ timeout: 20_000 });
  });

  it('filters on the server: name, domain, status and needs sparsify', async () => {
    const table = page.getByTestId('disks-table');
    // Name: vm-1200 ... vm-1299.
    await page.getByTestId('filter-name').fill('VM-12');
    await page.locator('[data-testid=disks-table][data-loaded="100"][data-more=false]').waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('q=VM-12') && r.includes('limit=')), diskRequests.slice(-3).join(' '));
    const named = sorted(all.filter((d) => d.name.toLowerCase().includes('vm-12')), (d) => d.name, 1);
    assert.equal(named.length, 100);
    await assertOrder(page, named, 'name filter');
    await page.getByTestId('filter-name').fill('');
    await page.locator('[data-testid=disk-row][data-index="0"][data-disk-name="vm-0000.raw"]').waitFor({ timeout: 20_000 });

    // Domain b: every third disk.
    const domains = (await http<{ domains: Array<{ id: string; name: string }> }>(server, 'GET', '/api/domains')).body.domains;
    const b = domains.find((d) => d.name === 'images-b');
    assert.ok(b, JSON.stringify(domains));
    await page.getByTestId('filter-domain').selectOption(b.id);
    const inB = sorted(all.filter((d) => d.domainId === b.id), (d) => d.name, 1);
    assert.equal(inB.length, DISKS / 3);
    await page.locator(`[data-testid=disk-row][data-index="0"][data-disk-name="${inB[0]}"]`).waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes(`domain=${b.id}`)));
    await assertOrder(page, inB, 'domain filter');
    await scrollToEnd(page, diskRequests);
    assert.equal(Number(await table.getAttribute('data-loaded')), inB.length);
    await page.getByTestId('filter-domain').selectOption('');

    // Status: no disk is locked here; then every disk is OK.
    await page.getByTestId('filter-status').selectOption('locked');
    await page.getByTestId('disks-empty').filter({ hasText: 'No disks match' }).waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('status=locked')));
    await page.getByTestId('filter-status').selectOption('ok');
    await page.locator('[data-testid=disk-row][data-index="0"][data-disk-name="vm-0000.raw"]').waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.some((r) => r.includes('status=ok')));
    await page.getByTestId('filter-status').selectOption('');

    // Needs sparsify: as many as the whole list says.
    const needs = all.filter((d) => d.needsSparsify).length;
    await page.getByTestId('filter-needs').check();
    await waitFor('the needs-sparsify request', async () => diskRequests.some((r) => r.includes('needsSparsify=true')), 10_000);
    if (needs === 0) await page.getByTestId('disks-empty').filter({ hasText: 'No disks match' }).waitFor({ timeout: 20_000 });
    else await page.locator('[data-testid=disk-row]').first().waitFor({ timeout: 20_000 });
    await page.getByTestId('filter-needs').uncheck();
    await page.locator('[data-testid=disk-row][data-index="0"][data-disk-name="vm-0000.raw"]').waitFor({ timeout: 20_000 });
    assert.ok(diskRequests.every((r) => /[?&]limit=\d+/.test(r)), 'a request without limit');
  });

  it('shows the totals /api/summary gives, in the header and per domain', async () => {
    const summary = (await http<{ summary: { disks: number; actualBytes: number; reclaimableBytes: number; needsSparsify: number; byDomain: Array<{ domainId: string; disks: number; actualBytes: number; reclaimableBytes: number }> } }>(server, 'GET', '/api/summary')).body.summary;
    assert.equal(summary.disks, DISKS);
    assert.equal(summary.actualBytes, all.reduce((n, d) => n + d.actualSize, 0));
    const totals = page.getByTestId('totals');
    await page.locator(`[data-testid=totals][data-disks="${summary.disks}"]`).waitFor({ timeout: 10_000 });
    assert.equal(Number(await totals.getAttribute('data-actual')), summary.actualBytes);
    assert.equal(Number(await totals.getAttribute('data-reclaimable')), summary.reclaimableBytes);
    assert.equal(Number(await totals.getAttribute('data-needs')), summary.needsSparsify);
    assert.match((await page.getByTestId('total-disks').textContent()) ?? '', /^3,000$/);
    for (const d of summary.byDomain) {
      const bar = page.locator(`[data-testid=summary-domain][data-id="${d.domainId}"]`);
      assert.equal(Number(await bar.getAttribute('data-disks')), d.disks);
      assert.equal(Number(await bar.getAttribute('data-actual')), d.actualBytes);
      assert.equal(Number(await bar.getAttribute('data-reclaimable')), d.reclaimableBytes);
    }
    assert.deepEqual(summary.byDomain.map((d) => d.disks).sort(), [1000, 2000]);
    await page.screenshot({ path: join(testOutput, 'service-ui-scale.png') });
  });

  it('updates a row on screen and the totals from the live stream, without reading the list or the summary again', async () => {
    const row = page.locator('[data-testid=disk-row][data-disk-name="vm-0000.raw"]');
    await row.waitFor();
    const asked = () => diskRequests.length + summaryRequests.length;
    const before = asked();
    const actualBefore = Number(await page.getByTestId('totals').getAttribute('data-actual'));
    // 64 KiB of data in the first disk, then a rescan: it is on screen, so its change comes by the stream.
    const fd = openSync(join(tmp.dir, 'images-a', 'vm-0000.raw'), 'r+');
    try {
      writeSync(fd, Buffer.alloc(64 << 10, 0xab), 0, 64 << 10, 0);
    } finally {
      closeSync(fd);
    }
    assert.equal((await http(server, 'POST', '/api/rescan')).status, 202);
    await page.waitForFunction(() => Number(document.querySelector('[data-disk-name="vm-0000.raw"] [data-testid=actual-size]')?.getAttribute('data-bytes')) >= 64 << 10, null, { timeout: 30_000 });
    // The server's totals may lag a second behind the disk (it reads them at most once a second).
    let latest = actualBefore;
    const summary = await waitFor(() => `the summary to count the new data (${latest} after ${actualBefore})`, async () => {
      const s = (await http<{ summary: { actualBytes: number } }>(server, 'GET', '/api/summary')).body.summary;
      latest = s.actualBytes;
      return s.actualBytes >= actualBefore + (64 << 10) && s;
    }, 15_000);
    await page.locator(`[data-testid=totals][data-actual="${summary.actualBytes}"]`).waitFor({ timeout: 15_000 });
    assert.equal(asked(), before, `the page asked again: ${[...diskRequests, ...summaryRequests].slice(before).join(' ')}`);
  });

  it('says so when a page fails, asks no more by itself, and loads it on Retry', async () => {
    const table = page.getByTestId('disks-table');
    const loaded = Number(await table.getAttribute('data-loaded'));
    // The server fails every next page for a while (a database that went away, say).
    const failing = '**/api/disks?*after=*';
    let refused = 0;
    await page.route(failing, (r) => {
      refused++;
      return r.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ fault: { code: 'database-unavailable', detail: 'the database is not reachable' } }) });
    });
    try {
      await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
      await page.getByTestId('disks-error').filter({ hasText: 'the database is not reachable' }).waitFor({ timeout: 15_000 });
      await page.waitForTimeout(1000);
      assert.equal(refused, 1, 'the failed page was asked for again without Retry');
    } finally {
      await page.unroute(failing);
    }
    await page.getByTestId('disks-retry').click();
    await page.waitForFunction((n) => Number(document.querySelector('[data-testid=disks-table]')?.getAttribute('data-loaded')) > n, loaded, { timeout: 15_000 });
    assert.equal(await page.getByTestId('disks-error').count(), 0);
    assert.deepEqual(errors, []);
  });

  it('starts again from the first page when its cursor has expired, and scrolls on to the end', async () => {
    // A fresh load (a goto that changes only the hash would keep the page, and the earlier tests' sort and filters).
    await page.goto(`${server.url}/#token=${TOKEN}`);
    await page.reload();
    await page.locator('[data-testid=disk-row][data-index="0"][data-disk-name="vm-0000.raw"]').waitFor({ timeout: 20_000 });
    const table = page.getByTestId('disks-table');
    // The next page's cursor is past its hour (the server's answer, as it would give it).
    const next = '**/api/disks?*after=*';
    let refused = 0;
    await page.route(next, (r) => {
      refused++;
      return r.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify({ fault: { code: 'cursor-expired', detail: 'the cursor is older than 60 minutes: start again from the first page' } }) });
    });
    const before = diskRequests.length;
    try {
      await page.getByTestId('disks-scroll').evaluate((e) => e.scrollTo({ top: e.scrollHeight }));
      await waitFor('the table to ask for the first page again', async () => refused > 0 && diskRequests.slice(before).some((r) => r.startsWith('/api/disks?') && !r.includes('after=')), 15_000);
    } finally {
      await page.unroute(next);
    }
    assert.equal(await page.getByTestId('disks-error').count(), 0, 'an expired cursor is not an error to show');
    await scrollToEnd(page, diskRequests);
    assert.equal(Number(await table.getAttribute('data-loaded')), DISKS);
    await assertOrder(page, sorted(all, (d) => d.name, 1), 'name ascending, after starting again');
    assert.deepEqual(errors, []);
  });
});
