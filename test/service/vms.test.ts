/**
 * VMs from a real libvirt: a VM (TCG, 64 MiB, no OS: it sits in the BIOS holding its disks open)
 * with two disks of the test's storage domain. While it runs, the API and the UI show it running
 * with its disks, and sparsify of either disk is refused 409 naming the VM. After `virsh destroy`
 * the same request is accepted and succeeds (e2fsck and the files' checksums), and in the browser
 * the VM's Disks subtab sparsifies the other disk through the dialog; then the History view draws
 * its charts and the policy is edited. Screenshots go to test-output/. In a cluster, a host
 * without libvirt refuses a disk that another host's VM uses, naming the VM and that host.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Browser, Page } from 'playwright-core';
import { tempDir, haveTool, releaseAll } from '../helpers/fixtures.js';
import { libvirtMissing, ensureLibvirtd, defineVm, LIBVIRT_URI, type TestVm } from '../helpers/libvirt.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, waitFor, makeGuestDisk, guestProblem, TOKEN, type Server } from './service-helpers.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';

const MiB = 1 << 20;
const missing = libvirtMissing() ?? chromiumMissing() ?? ['mke2fs', 'sgdisk', 'e2fsck', 'debugfs'].find((t) => !haveTool(t));

describe('VMs from libvirt', { skip: missing || false, timeout: 300_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let domain: string;
  let server: Server;
  let vm: TestVm | undefined;
  let browser: Browser | undefined;
  let page: Page;
  const vmName = `sparsify-test-${randomBytes(4).toString('hex')}`;
  const ids: Record<string, string> = {};

  before(async () => {
    await ensureLibvirtd();
    tmp = tempDir('sparsify-vms-');
    domain = join(tmp.dir, 'images');
    mkdirSync(domain, { recursive: true });
    makeGuestDisk(join(domain, 'vm-a.raw'), tmp.dir, 'vm-a');
    makeGuestDisk(join(domain, 'vm-b.raw'), tmp.dir, 'vm-b');
    vm = defineVm(vmName, [join(domain, 'vm-a.raw'), join(domain, 'vm-b.raw')], tmp.dir);
    vm.start();
    server = await startServer({
      dataDir: join(tmp.dir, 'data'),
      domains: [domain],
      env: { SPARSIFY_LIBVIRT: LIBVIRT_URI, SPARSIFY_LIBVIRT_INTERVAL: '1', SPARSIFY_THRESHOLD_BYTES: String(4 * MiB) },
    });
    for (const d of await analyzedDisks(server, 2)) ids[d.name] = d.id;
    ensureWebBuilt();
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    mkdirSync(testOutput, { recursive: true });
  });

  after(() =>
    releaseAll(
      () => vm?.remove(),
      () => browser?.close(),
      () => server?.stop(),
      stopAllServers,
      () => tmp?.cleanup(),
    ),
  );

  const vmOf = async () => {
    const r = await http(server, 'GET', '/api/vms');
    return (r.body.vms as Array<Record<string, any>>).find((v) => v.name === vmName);
  };

  it('lists the running VM with its disks, matched to the domain’s disks, and the disks name it', async () => {
    const v = await waitFor('the VM running', async () => {
      const x = await vmOf();
      return x?.state === 'running' ? x : undefined;
    });
    assert.equal(v.up, true);
    assert.deepEqual(
      v.disks.map((d: Record<string, any>) => [d.target, d.diskId, d.path]),
      [
        ['vda', ids['vm-a.raw'], 'vm-a.raw'],
        ['vdb', ids['vm-b.raw'], 'vm-b.raw'],
      ],
    );
    const r = await http(server, 'GET', '/api/vms');
    assert.ok(r.body.sources.some((s: Record<string, any>) => s.uri === LIBVIRT_URI && s.error === null));
    const disk = (await http(server, 'GET', `/api/disks/${ids['vm-a.raw']}`)).body.disk;
    assert.deepEqual(
      disk.vms.map((x: Record<string, any>) => [x.name, x.state, x.target]),
      [[vmName, 'running', 'vda']],
    );
    assert.equal(disk.sparsify.code, 'vm-not-down');
    // The list's pages find the VM's disks by its name or UUID, and show them in use while it runs.
    for (const vm of [vmName, v.id]) {
      const page = (await http(server, 'GET', `/api/disks?limit=50&vm=${encodeURIComponent(vm)}`)).body;
      assert.deepEqual(page.disks.map((d: Record<string, any>) => d.name).sort(), ['vm-a.raw', 'vm-b.raw'], `disks of VM ${vm}`);
      assert.ok(page.disks.every((d: Record<string, any>) => d.status === 'in-use'));
    }
    const inUse = (await http(server, 'GET', '/api/disks?limit=50&status=in-use')).body.disks.map((d: Record<string, any>) => d.name);
    assert.ok(inUse.includes('vm-a.raw') && inUse.includes('vm-b.raw'), `in-use page: ${inUse.join(', ')}`);
    const summary = (await http(server, 'GET', '/api/summary')).body.summary;
    assert.ok(summary.byStatus['in-use'].disks >= 2);
  });

  it('refuses sparsify of a disk of the running VM with 409 naming the VM, in both modes', async () => {
    for (const mode of ['in-place', 'copy-and-replace']) {
      const r = await http(server, 'POST', `/api/disks/${ids['vm-a.raw']}/sparsify`, { mode });
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.equal(r.body.fault.code, 'vm-not-down');
      assert.match(r.body.fault.detail, new RegExp(`${vmName} \\(running on `));
    }
    assert.equal((await http(server, 'GET', '/api/jobs')).body.jobs.length, 0);
  });

  it('shows the VM running in the UI, its Disks subtab with Trim in place of Sparsify, disabled and why', async () => {
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${server.url}/#token=${TOKEN}`);
    await page.getByTestId('view-vms').click();
    const row = page.locator(`[data-testid=vm-row][data-vm-name="${vmName}"]`);
    await row.waitFor();
    assert.equal(await row.getAttribute('data-vm-state'), 'running');
    await row.getByTestId('vm-name').click();
    const detail = page.locator(`[data-testid=vm-detail][data-vm-name="${vmName}"]`);
    await detail.getByTestId('vm-tab-disks').click();
    const a = detail.locator('[data-testid=vm-disk-row][data-disk-name="vm-a.raw"]');
    await a.waitFor();
    // A running VM's disks are not sparsified from outside: the button is Trim (its guest agent),
    // and this VM has neither an agent nor discard='unmap', so it says why it cannot work.
    const why = a.getByTestId('trim-disk-reason');
    await why.waitFor({ timeout: 15_000 });
    assert.equal(await a.getByTestId('sparsify-button').count(), 0);
    assert.equal(await a.getByTestId('trim-disk-button').isDisabled(), true);
    assert.match((await why.getAttribute('data-code')) ?? '', /^(discard-not-enabled|agent-unavailable|format-cannot-discard|storage-cannot-punch)$/);
    assert.match((await why.textContent()) ?? '', new RegExp(vmName));
    await page.screenshot({ path: join(testOutput, 'service-ui-vm-running.png'), fullPage: true });
    assert.deepEqual(errors, []);
  });

  it('after virsh destroy, the same request is accepted and the job succeeds', async () => {
    vm!.destroy();
    const before = diskByName(await analyzedDisks(server, 2), 'vm-a.raw').actualSize as number;
    // The request reads this host's libvirt again before it validates: no waiting for the next refresh.
    const r = await http(server, 'POST', `/api/disks/${ids['vm-a.raw']}/sparsify`, { mode: 'in-place' });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await waitFor('the job to end', async () => {
      const j = (await http(server, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
      return j.status === 'pending' || j.status === 'running' ? undefined : j;
    }, 60_000);
    assert.equal(job.status, 'finished', job.error);
    assert.ok(job.actualAfter < before - 4 * MiB, `${before} -> ${job.actualAfter}`);
    assert.equal(guestProblem(join(domain, 'vm-a.raw'), 'raw', tmp.dir, 'vm-a'), undefined);
    assert.equal((await vmOf())?.state, 'shut-off');
  });

  it('sparsifies the other disk from the VM’s Disks subtab through the dialog, then draws the history and edits the policy', async () => {
    const detail = page.locator(`[data-testid=vm-detail][data-vm-name="${vmName}"]`);
    await page.locator(`[data-testid=vm-row][data-vm-name="${vmName}"][data-vm-state=shut-off]`).waitFor({ timeout: 15_000 });
    const b = detail.locator('[data-testid=vm-disk-row][data-disk-name="vm-b.raw"]');
    const sizeBefore = Number(await b.getByTestId('actual-size').getAttribute('data-bytes'));
    await b.getByTestId('sparsify-button').and(page.locator(':enabled')).waitFor({ timeout: 15_000 });
    await b.getByTestId('sparsify-button').click();
    const dialog = page.getByTestId('sparsify-dialog');
    await dialog.waitFor();
    assert.match((await dialog.getByTestId('expected-reclaim').textContent()) ?? '', /MiB/);
    await dialog.getByTestId('confirm-sparsify').click();
    await dialog.waitFor({ state: 'detached' });
    await b.getByTestId('live-percent').filter({ hasText: '100%' }).waitFor({ timeout: 60_000 });
    await page.waitForFunction(
      (before) => {
        const el = document.querySelector('[data-testid=vm-disk-row][data-disk-name="vm-b.raw"] [data-testid=actual-size]');
        return el && Number(el.getAttribute('data-bytes')) < before - 4 * 1024 * 1024;
      },
      sizeBefore,
      { timeout: 30_000 },
    );
    await page.screenshot({ path: join(testOutput, 'service-ui-vm-disks.png'), fullPage: true });
    assert.equal(guestProblem(join(domain, 'vm-b.raw'), 'raw', tmp.dir, 'vm-b'), undefined);

    // The disk's own job history.
    await b.getByRole('button', { name: /vm-b\.raw/ }).click();
    const details = page.getByTestId('disk-details');
    await details.locator('[data-testid=disk-job][data-job-status=finished]').waitFor();
    await details.getByRole('button', { name: 'Close' }).click();

    // History: both jobs' space given back, and the domain's size.
    await page.getByTestId('view-history').click();
    await page.getByTestId('history-summary').filter({ hasText: '2 finished job(s)' }).waitFor({ timeout: 15_000 });
    const reclaimed = page.getByTestId('chart-reclaimed').locator('polyline');
    assert.equal(await reclaimed.count(), 1);
    const points = ((await reclaimed.getAttribute('points')) ?? '').trim().split(/\s+/);
    assert.ok(points.length >= 4, `points: ${points.join(' ')}`);
    await page.getByTestId('chart-domains').locator('[data-testid=chart-series][data-series=images] polyline').waitFor();

    // The policy, edited through the form.
    await page.getByTestId('policy-threshold-mib').fill('3');
    await page.getByTestId('policy-threshold-percent').fill('7');
    await page.getByTestId('policy-schedule').check();
    await page.getByTestId('policy-interval').fill('90');
    await page.getByTestId('policy-save').click();
    await page.getByTestId('policy-note').filter({ hasText: 'Saved' }).waitFor();
    const p = (await http(server, 'GET', '/api/policy')).body.policy;
    assert.deepEqual(p, { thresholdBytes: 3 * MiB, thresholdPercent: 7, scheduleEnabled: true, scheduleIntervalSeconds: 5400 });
    await page.screenshot({ path: join(testOutput, 'service-ui-history.png'), fullPage: true });
    assert.ok(statSync(join(testOutput, 'service-ui-history.png')).size > 1000);
  });
});

describe('VMs of another host of a cluster', { skip: libvirtMissing() ?? postgresMissing() ?? (haveTool('mke2fs') ? false : 'no mke2fs'), timeout: 180_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let pg: PgCluster | undefined;
  let vm: TestVm | undefined;
  let withLibvirt: Server;
  let without: Server;
  const vmName = `sparsify-test-${randomBytes(4).toString('hex')}`;

  before(async () => {
    await ensureLibvirtd();
    tmp = tempDir('sparsify-vms-cluster-');
    const domain = join(tmp.dir, 'images');
    mkdirSync(domain, { recursive: true });
    makeGuestDisk(join(domain, 'shared.raw'), tmp.dir, 'shared');
    vm = defineVm(vmName, [join(domain, 'shared.raw')], tmp.dir);
    vm.start();
    pg = await startPostgres();
    const database = pg.database('vms');
    withLibvirt = await startServer({ database, hostName: 'hv-libvirt', dataDir: join(tmp.dir, 'a'), domains: [domain], env: { SPARSIFY_LIBVIRT: LIBVIRT_URI, SPARSIFY_LIBVIRT_INTERVAL: '1' } });
    without = await startServer({ database, hostName: 'hv-plain', dataDir: join(tmp.dir, 'b'), domains: [domain], env: { SPARSIFY_LIBVIRT: 'none' } });
    await analyzedDisks(without, 1);
  });

  after(() =>
    releaseAll(
      () => vm?.remove(),
      () => withLibvirt?.stop(),
      () => without?.stop(),
      stopAllServers,
      () => pg?.stop(),
      () => tmp?.cleanup(),
    ),
  );

  it('refuses on a host without libvirt the disk another host’s running VM uses, and accepts it once that VM is down', async () => {
    const id = diskByName(await analyzedDisks(without, 1), 'shared.raw').id as string;
    const seen = await waitFor('the VM in the plain host’s list', async () => {
      const v = ((await http(without, 'GET', '/api/vms')).body.vms as Array<Record<string, any>>).find((x) => x.name === vmName);
      return v?.state === 'running' ? v : undefined;
    });
    assert.equal(seen.host, 'hv-libvirt');
    assert.equal(seen.disks[0].diskId, id);
    const r = await http(without, 'POST', `/api/disks/${id}/sparsify`, { mode: 'in-place' });
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.fault.code, 'vm-not-down');
    assert.match(r.body.fault.detail, new RegExp(`${vmName} \\(running on hv-libvirt\\)`));
    // A trim asked of the plain host is passed on to the VM's host, which checks it against its
    // live XML (this VM's disk has no discard='unmap') and answers; the plain host relays it.
    const trim = await http(without, 'POST', `/api/vms/${seen.id}/trim`);
    assert.equal(trim.headers.get('x-sparsify-host'), 'hv-libvirt', JSON.stringify(trim.body));
    assert.equal(trim.status, 409, JSON.stringify(trim.body));
    assert.equal(trim.body.fault.code, 'discard-not-enabled');
    // A request already passed on is never passed on again.
    const again = await fetch(`${without.url}/api/vms/${seen.id}/trim`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'x-sparsify-forwarded-by': 'hv-other' } });
    assert.equal(again.status, 409);
    assert.equal(((await again.json()) as { fault: { code: string } }).fault.code, 'vm-on-other-host');
    // Its token is the caller's: without one, the VM's host is not even asked.
    const anon = await fetch(`${without.url}/api/vms/${seen.id}/trim`, { method: 'POST' });
    assert.equal(anon.status, 401);
    vm!.destroy();
    // The other host's next read (every second) reaches this one through the database's notifications.
    await waitFor('the disk allowed on the plain host', async () => (await http(without, 'GET', `/api/disks/${id}`)).body.disk.sparsify.allowed === true, 20_000);
    const ok = await http(without, 'POST', `/api/disks/${id}/sparsify`, { mode: 'in-place' });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    const job = await waitFor('the job to end', async () => {
      const j = (await http(without, 'GET', `/api/jobs/${ok.body.job.id}`)).body.job;
      return j.status === 'pending' || j.status === 'running' ? undefined : j;
    }, 60_000);
    assert.equal(job.status, 'finished', job.error);
  });
});
