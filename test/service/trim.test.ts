/**
 * Live trim with a real guest: a small Debian (systemd, qemu-guest-agent) built once per run
 * (helpers/guest.ts), booted once under TCG from a qcow2 in the test's storage domain with
 * discard='unmap'. Through the agent's guest-exec the guest writes 200 MB of random data, syncs,
 * checksums the files it keeps and deletes the 200 MB; POST /api/vms/{id}/trim then gives the
 * space back: the qcow2's allocated bytes (st_blocks, measured here, not by the service) drop by
 * at least 150 MB, the guest's checksums are unchanged. Then the faults, on the same boot: the VM
 * suspended during a trim fails the job within the agent timeout and stays paused and untouched,
 * its disk unlocked; its agent stopped is refused after the ping bound. After a clean shutdown,
 * qemu-img check and e2fsck of the image are clean; the same VM restarted with discard left out
 * of its XML is refused saying how to fix it (no need to wait for its boot: the XML is checked
 * before the agent).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, haveTool, releaseAll, run, runStatus } from '../helpers/fixtures.js';
import { libvirtMissing, ensureLibvirtd, LIBVIRT_URI } from '../helpers/libvirt.js';
import { buildGuest, guestMissing, startGuest, type GuestImage, type GuestVm } from '../helpers/guest.js';
import { startServer, stopAllServers, http, waitFor, TOKEN, type Server } from './service-helpers.js';
import { sparsify } from '../helpers/cli.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';
import type { Browser } from 'playwright-core';

const MB = 1_000_000;
const PING_TIMEOUT_S = 3;
const TRIM_TIMEOUT_S = 30;
const missing = libvirtMissing() ?? guestMissing() ?? ['e2fsck'].find((t) => !haveTool(t));

describe('trim of a running VM through its guest agent', { skip: missing || false, timeout: 900_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let domain: string;
  let server: Server | undefined;
  let browser: Browser | undefined;
  let img: GuestImage;
  let vm: GuestVm | undefined;
  let vmId = '';
  let diskId = '';
  const vmName = `sparsify-trim-${randomBytes(4).toString('hex')}`;
  /** Checksums of the files the guest keeps, taken before any trim. */
  let kept = '';

  const allocated = () => statSync(vm!.disk).blocks * 512;
  const sh0 = async (script: string, timeoutMs?: number) => {
    const r = await vm!.exec(script, timeoutMs);
    assert.equal(r.exitcode, 0, `guest: ${script}: ${r.stderr}`);
    return r.stdout;
  };
  const checksums = () => sh0('cd /kept && sha256sum * && sha256sum /usr/bin/* | sha256sum');
  const job = async (id: string) => (await http(server!, 'GET', `/api/jobs/${id}`)).body.job as Record<string, any>;
  const ended = (id: string, timeoutMs: number) =>
    waitFor(`trim job ${id} to end`, async () => {
      const j = await job(id);
      return j.status === 'pending' || j.status === 'running' ? undefined : j;
    }, timeoutMs);
  const disk = async () => (await http(server!, 'GET', `/api/disks/${diskId}`)).body.disk as Record<string, any>;

  before(async () => {
    await ensureLibvirtd();
    const t0 = Date.now();
    img = await buildGuest();
    console.log(`# guest image: ${img.buildSeconds ? `built in ${img.buildSeconds.toFixed(0)} s` : 'from the cache'} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    tmp = tempDir('sparsify-trim-');
    domain = join(tmp.dir, 'images');
    mkdirSync(domain, { recursive: true });
    vm = await startGuest(img, vmName, tmp.dir, { disk: join(domain, 'guest.qcow2') });
    console.log(`# guest booted to a responding agent in ${vm.bootSeconds.toFixed(0)} s`);
    server = await startServer({
      dataDir: join(tmp.dir, 'data'),
      domains: [domain],
      env: { SPARSIFY_LIBVIRT: LIBVIRT_URI, SPARSIFY_LIBVIRT_INTERVAL: '1', SPARSIFY_AGENT_PING_TIMEOUT: String(PING_TIMEOUT_S), SPARSIFY_AGENT_TRIM_TIMEOUT: String(TRIM_TIMEOUT_S), SPARSIFY_TEST_JOB_DELAY_MS: '1500' },
    });
    const v = await waitFor('the VM running in the API', async () => {
      const r = await http(server!, 'GET', '/api/vms');
      const x = (r.body.vms as Array<Record<string, any>>).find((y) => y.name === vmName);
      return x?.state === 'running' && x.disks[0]?.diskId ? x : undefined;
    }, 60_000);
    vmId = v.id;
    diskId = v.disks[0].diskId;
  }, { timeout: 840_000 });

  after(() =>
    releaseAll(
      () => vm?.remove(),
      () => browser?.close(),
      () => server?.stop(),
      stopAllServers,
      () => tmp?.cleanup(),
    ),
  );

  it('gives back the 200 MB the guest wrote and deleted; the guest’s kept files are unchanged', { timeout: 300_000 }, async () => {
    await sh0('mkdir -p /kept && for i in 1 2 3; do head -c 4M /dev/urandom > /kept/f$i; done && sync');
    kept = await checksums();
    const t0 = Date.now();
    await sh0('head -c 200M /dev/urandom > /big && sync', 240_000);
    const withBig = allocated();
    await sh0('rm /big && sync');
    // Deleting gives nothing back by itself (no discard mount option, fstrim.timer masked).
    const before = allocated();
    assert.ok(before > withBig - 20 * MB, `the delete alone released ${withBig - before} bytes`);
    console.log(`# 200 MB written and deleted in the guest in ${((Date.now() - t0) / 1000).toFixed(0)} s; qcow2 allocation ${before}`);

    const r = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.equal(r.body.job.options.mode, 'trim');
    // The disk is the job's while it runs: a sparsify of it is refused.
    const s = await http(server!, 'POST', `/api/disks/${diskId}/sparsify`, { mode: 'in-place' });
    assert.equal(s.status, 409);
    const j = await ended(r.body.job.id, 120_000);
    assert.equal(j.status, 'finished', j.error);
    const after = allocated();
    console.log(`# trim: qcow2 allocation ${before} -> ${after} (${before - after} bytes given back), job says ${j.bytesReclaimed}, guest says ${JSON.stringify(j.trimResult.guest)}`);
    assert.ok(before - after >= 150 * MB, `only ${before - after} bytes given back`);
    assert.equal(j.trimResult.images.length, 1);
    assert.equal(j.trimResult.images[0].target, 'vda');
    assert.ok(j.trimResult.givenBack >= 150 * MB && Math.abs(j.trimResult.images[0].allocatedAfter - after) < 8 * MB, JSON.stringify(j.trimResult));
    assert.ok(j.trimResult.guest.some((g: Record<string, any>) => g.path === '/' && g.trimmed >= 150 * MB), JSON.stringify(j.trimResult.guest));
    assert.deepEqual(j.steps.map((x: Record<string, any>) => x.status), ['finished', 'finished', 'finished']);
    assert.equal((await disk()).lockedBy, null);
    assert.equal(await checksums(), kept);
  });

  it('refuses sparsify of the running VM’s disk, and a trim asked while another holds its disk', { timeout: 60_000 }, async () => {
    const s = await http(server!, 'POST', `/api/disks/${diskId}/sparsify`, { mode: 'in-place' });
    assert.equal(s.status, 409);
    assert.equal(s.body.fault.code, 'vm-not-down');
    const a = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(a.status, 202, JSON.stringify(a.body));
    const b = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(b.status, 409, JSON.stringify(b.body));
    assert.equal(b.body.fault.code, 'disk-locked');
    assert.equal((await ended(a.body.job.id, 60_000)).status, 'finished');
  });

  it('sparsify --trim-vm trims the same VM from the command line, with the same report', { timeout: 180_000 }, async () => {
    await sh0('head -c 60M /dev/urandom > /big2 && sync && rm /big2 && sync', 120_000);
    const before = allocated();
    const r = sparsify(['--trim-vm', vmName, '--connect', LIBVIRT_URI]);
    assert.equal(r.status, 0, r.stderr);
    const after = allocated();
    assert.ok(before - after >= 40 * MB, `only ${before - after} bytes given back`);
    assert.match(r.stdout, /vda .*guest\.qcow2: allocated .* given back/);
    assert.match(r.stdout, /guest \/: trimmed/);
    assert.match(r.stdout, /completed in .* given back to the host/);
    for (const bad of [['--trim-vm', vmName, 'disk.img'], ['--connect', LIBVIRT_URI, 'a.img', 'b.img'], ['--trim-vm', 'no-such-vm-here']]) {
      const x = sparsify(bad);
      assert.equal(x.status, 1, `${bad.join(' ')}: ${x.stdout}${x.stderr}`);
      assert.doesNotMatch(x.stderr, /internal error|\n\s+at /);
    }
    assert.equal(await checksums(), kept);
  });

  it('the VM list shows its agent and discard; its Disks subtab shows Trim, and the dialog runs it', { skip: chromiumMissing() ?? false, timeout: 180_000 }, async () => {
    ensureWebBuilt();
    browser = await launchBrowser();
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${server!.url}/#token=${TOKEN}`);
    await page.getByTestId('view-vms').click();
    const row = page.locator(`[data-testid=vm-row][data-vm-name="${vmName}"]`);
    await row.waitFor();
    await waitFor('the agent shown connected', async () => (await row.getByTestId('vm-agent').textContent()) === 'yes', 20_000);
    assert.equal(await row.getByTestId('vm-discard').textContent(), 'unmap');
    await row.getByTestId('vm-name').click();
    const detail = page.locator(`[data-testid=vm-detail][data-vm-name="${vmName}"]`);
    await detail.getByTestId('vm-tab-disks').click();
    const button = detail.getByTestId('trim-button');
    await button.waitFor();
    assert.equal(await button.isDisabled(), false);
    // Each disk's row offers Trim where a VM that is down offers Sparsify.
    const rowButton = detail.getByTestId('vm-disk-row').first().getByTestId('trim-disk-button');
    await rowButton.waitFor();
    assert.equal(await rowButton.isDisabled(), false);
    assert.equal(await detail.getByTestId('sparsify-button').count(), 0);
    await rowButton.click();
    const dialog = page.getByTestId('trim-dialog');
    await dialog.waitFor();
    assert.match((await dialog.textContent()) ?? '', /keeps running/);
    await dialog.getByTestId('confirm-trim').click();
    await dialog.getByTestId('trim-result').waitFor({ timeout: 90_000 });
    assert.match((await dialog.getByTestId('trim-given-back').textContent()) ?? '', /B$/);
    mkdirSync(testOutput, { recursive: true });
    await page.screenshot({ path: join(testOutput, 'service-ui-trim.png'), fullPage: true });
    await dialog.getByRole('button', { name: 'Close' }).click();
    // The schedule's opt-in, per VM.
    const optIn = detail.getByTestId('trim-schedule');
    // Controlled: it changes once the policy is saved.
    await optIn.click();
    await waitFor('the VM opted in', async () => ((await http(server!, 'GET', '/api/policy')).body.policy.trimVms ?? []).includes(vmId), 10_000);
    await waitFor('the box checked', () => optIn.isChecked(), 10_000);
    await optIn.click();
    await waitFor('the VM opted out', async () => !((await http(server!, 'GET', '/api/policy')).body.policy.trimVms ?? []).includes(vmId), 10_000);
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('a VM suspended during the trim fails the job within the agent timeout; the VM stays paused, its disk free', { timeout: 120_000 }, async () => {
    const r = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const t0 = Date.now();
    await vm!.virsh(['suspend', vmName]);
    try {
      const j = await ended(r.body.job.id, (TRIM_TIMEOUT_S + 20) * 1000);
      assert.equal(j.status, 'failed');
      assert.match(j.error, /paused|did not finish the trim/);
      assert.ok(Date.now() - t0 < (TRIM_TIMEOUT_S + 15) * 1000);
      assert.equal((await vm!.virsh(['domstate', vmName])).trim(), 'paused');
      assert.equal((await disk()).lockedBy, null);
      const refused = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
      assert.equal(refused.status, 409);
      assert.equal(refused.body.fault.code, 'vm-not-running');
    } finally {
      await vm!.virsh(['resume', vmName]).catch(() => undefined);
    }
    await waitFor('the agent after the resume', () => vm!.agent({ execute: 'guest-ping' }, 3).then(() => true, () => false), 60_000);
    assert.equal(await checksums(), kept);
  });

  it('refuses a VM whose agent is stopped, after the ping bound, saying so', { timeout: 120_000 }, async () => {
    // Outside the agent's cgroup (stopping the unit kills its children): stop it, and start it again later.
    // Not waited for: the agent that would report its end is the one being stopped.
    await vm!.agent({ execute: 'guest-exec', arguments: { path: '/usr/bin/systemd-run', arg: ['--no-block', '--unit=agent-pause', '/bin/sh', '-c', 'sleep 1; systemctl stop qemu-guest-agent; sleep 25; systemctl start qemu-guest-agent'] } });
    await waitFor('the agent to stop', () => vm!.agent({ execute: 'guest-ping' }, 2).then(() => false, () => true), 30_000);
    const t0 = Date.now();
    const r = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    const took = Date.now() - t0;
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.fault.code, 'agent-unavailable');
    assert.match(r.body.fault.detail, /qemu-guest-agent/);
    assert.ok(took >= PING_TIMEOUT_S * 1000 - 500 || /not connected/.test(r.body.fault.detail), `refused after ${took} ms: ${r.body.fault.detail}`);
    assert.equal((await disk()).lockedBy, null);
    await waitFor('the agent back', () => vm!.agent({ execute: 'guest-ping' }, 2).then(() => true, () => false), 60_000);
  });

  it('after a clean shutdown the image checks clean (qemu-img check, e2fsck)', { timeout: 180_000 }, async () => {
    await vm!.shutdown(120_000);
    run('qemu-img', ['check', '-q', vm!.disk]);
    const raw = join(tmp.dir, 'check.raw');
    run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', vm!.disk, raw]);
    const fsck = runStatus('e2fsck', ['-fn', raw]);
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  });

  it('refuses the same VM without discard in its XML, saying how to fix it', { timeout: 120_000 }, async () => {
    const xml = await vm!.virsh(['dumpxml', vmName, '--inactive']);
    const file = join(tmp.dir, 'no-discard.xml');
    writeFileSync(file, xml.replace(/ discard='unmap'/, ''));
    assert.doesNotMatch(readFileSync(file, 'utf8'), /discard=/);
    await vm!.virsh(['define', file]);
    await vm!.virsh(['start', vmName]);
    const r = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.fault.code, 'discard-not-enabled');
    assert.match(r.body.fault.detail, /discard='unmap'/);
    const cli = sparsify(['--trim-vm', vmName]);
    assert.equal(cli.status, 1);
    assert.match(cli.stderr, /does not pass discards through.*discard='unmap'/);
    await vm!.virsh(['destroy', vmName]);
  });

  it('refuses a VM that is not running and one nobody knows', { timeout: 60_000 }, async () => {
    await waitFor('the VM shut off in the API', async () => ((await http(server!, 'GET', `/api/vms/${vmId}`)).body.vms?.[0]?.state === 'shut-off' ? true : undefined), 30_000);
    const r = await http(server!, 'POST', `/api/vms/${vmId}/trim`);
    assert.equal(r.status, 409);
    assert.equal(r.body.fault.code, 'vm-not-running');
    const n = await http(server!, 'POST', `/api/vms/00000000-0000-4000-8000-000000000000/trim`);
    assert.equal(n.status, 404);
    assert.equal(n.body.fault.code, 'vm-not-found');
  });
});
