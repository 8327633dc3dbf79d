/**
 * The web UI in Debian's headless chromium, driven by playwright-core: load the page with the
 * token from the URL, see a refused disk's disabled button and reason, sparsify a disk through the
 * confirmation dialog, watch the live progress reach 100% and the actual size drop. Screenshots go
 * to test-output/.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { tempDir, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, analyzedDisks, diskByName, makeGuestDisk, makePreallocated, TOKEN, type Server } from './service-helpers.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const missing = chromiumMissing() ?? ['mke2fs', 'sgdisk'].find((t) => !haveTool(t));

describe('web UI in headless chromium', { skip: missing || false, timeout: 180_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let server: Server;
  let browser: Browser;
  const out = testOutput;

  before(async () => {
    // The UI is served from dist/web: build it when a test run from sources finds none.
    ensureWebBuilt();
    tmp = tempDir('sparsify-ui-');
    const domain = join(tmp.dir, 'images');
    mkdirSync(domain, { recursive: true });
    makeGuestDisk(join(domain, 'web-01.raw'), tmp.dir, 'web');
    makePreallocated(join(domain, 'thick.raw'), 8 << 20);
    server = await startServer({ dataDir: join(tmp.dir, 'data'), domains: [domain], env: { SPARSIFY_THRESHOLD_BYTES: String(4 << 20) } });
    await analyzedDisks(server, 2);
    browser = await launchBrowser();
    mkdirSync(out, { recursive: true });
  });

  after(() =>
    releaseAll(
      () => browser?.close(),
      () => server?.stop(),
      stopAllServers,
      () => tmp?.cleanup(),
    ),
  );

  it('sparsifies a disk through the dialog and shows 100% and the smaller actual size', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${server.url}/#token=${TOKEN}`);
    const row = page.locator('[data-testid=disk-row][data-disk-name="web-01.raw"]');
    await row.waitFor();
    const thick = page.locator('[data-testid=disk-row][data-disk-name="thick.raw"]');
    // Refused disks: the button is disabled and the reason is on screen.
    assert.equal(await thick.getByTestId('sparsify-button').isDisabled(), true);
    assert.match(await thick.textContent() ?? '', /preallocated/);
    await row.getByTestId('needs-badge').waitFor();

    const sizeBefore = Number(await row.getByTestId('actual-size').getAttribute('data-bytes'));
    await page.screenshot({ path: join(out, 'service-ui-before.png'), fullPage: true });
    // Select via the checkbox and use the multi-disk action.
    await row.getByRole('checkbox').check();
    await page.getByTestId('sparsify-selected').click();
    const dialog = page.getByTestId('sparsify-dialog');
    await dialog.waitFor();
    assert.match(await dialog.textContent() ?? '', /web-01\.raw/);
    assert.match(await dialog.getByTestId('expected-reclaim').textContent() ?? '', /MiB/);
    await page.screenshot({ path: join(out, 'service-ui-dialog.png') });
    await dialog.getByTestId('confirm-sparsify').click();
    await dialog.waitFor({ state: 'detached' });

    // Generous timeouts: CI runs this beside other heavy tests on two cores.
    await page.locator('[data-testid=job][data-job-status=finished]').waitFor({ timeout: 60_000 });
    // Every job names the host that ran it, and the hosts panel lists this host as up.
    const jobHost = (await page.locator('[data-testid=job][data-job-status=finished] [data-testid=job-host]').first().textContent()) ?? '';
    assert.ok(jobHost.length > 0);
    await page.locator(`[data-testid=hosts-panel] [data-testid=host-row][data-host-name="${jobHost}"][data-host-status=up]`).waitFor({ timeout: 10_000 });
    await row.getByTestId('live-percent').filter({ hasText: '100%' }).waitFor({ timeout: 20_000 });
    // The actual size re-measured after the job, pushed live.
    await page.waitForFunction((before) => {
      const el = document.querySelector('[data-disk-name="web-01.raw"] [data-testid=actual-size]');
      return el && Number(el.getAttribute('data-bytes')) < before - 16 * 1024 * 1024;
    }, sizeBefore, { timeout: 20_000 });
    const sizeAfter = Number(await row.getByTestId('actual-size').getAttribute('data-bytes'));
    assert.ok(sizeAfter < sizeBefore, `${sizeAfter} < ${sizeBefore}`);
    await page.getByTestId('events-panel').getByText('web-01.raw sparsified successfully', { exact: false }).waitFor();
    await page.screenshot({ path: join(out, 'service-ui-after.png'), fullPage: true });
    assert.ok(statSync(join(out, 'service-ui-after.png')).size > 1000);
    assert.deepEqual(errors, []);
    const disks = await analyzedDisks(server, 2);
    assert.equal(diskByName(disks, 'web-01.raw').actualSize, sizeAfter);
  });
});
