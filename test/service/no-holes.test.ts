/**
 * Storage that cannot punch holes (oVirt's NFS < 4.2 case), for real: a storage domain on an NTFS
 * filesystem mounted through ntfs-3g (FUSE), where fallocate(PUNCH_HOLE) fails. In-place sparsify
 * is refused with 400 and the reason, the disk list and the UI say so beforehand (the button is
 * disabled with the reason), and copy-and-replace, which needs no hole punching, still works
 * (e2fsck and the files' checksums).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, run, runStatus, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, waitFor, makeGuestDisk, guestProblem, TOKEN, type Server } from './service-helpers.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const MiB = 1 << 20;
const tools = ['mkntfs', 'ntfs-3g', 'fallocate', 'mke2fs', 'sgdisk', 'e2fsck', 'debugfs'].filter((t) => !haveTool(t));
const missing = tools.length ? `missing tools: ${tools.join(', ')}` : process.getuid?.() !== 0 ? 'mounting needs root' : !existsSync('/dev/fuse') ? 'no /dev/fuse' : false;

describe('a storage domain that cannot punch holes (NTFS through ntfs-3g)', { skip: missing, timeout: 180_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let mnt: string;
  let mounted = false;
  let server: Server | undefined;
  let disk: Record<string, any>;

  before(async () => {
    tmp = tempDir('sparsify-noholes-');
    const img = join(tmp.dir, 'ntfs.img');
    run('truncate', ['-s', '160M', img]);
    run('mkntfs', ['-q', '-F', '-f', '-L', 'domain', img]);
    mnt = join(tmp.dir, 'mnt');
    mkdirSync(mnt);
    run('ntfs-3g', [img, mnt]);
    mounted = true;
    const domain = join(mnt, 'images');
    mkdirSync(domain);
    makeGuestDisk(join(tmp.dir, 'win.raw'), tmp.dir, 'win');
    copyFileSync(join(tmp.dir, 'win.raw'), join(domain, 'win.raw'));
    server = await startServer({ dataDir: join(tmp.dir, 'data'), domains: [domain], env: { SPARSIFY_LIBVIRT: 'none' } });
    disk = diskByName(await analyzedDisks(server, 1), 'win.raw');
  });

  after(() =>
    releaseAll(
      () => server?.stop(),
      stopAllServers,
      () => mounted && spawnSync('umount', [mnt]).status !== 0 && spawnSync('umount', ['-l', mnt]),
      () => tmp?.cleanup(),
    ),
  );

  it('is a filesystem where fallocate --punch-hole really fails', () => {
    const probe = join(mnt, 'probe.bin');
    run('dd', ['if=/dev/urandom', `of=${probe}`, 'bs=64k', 'count=2', 'status=none']);
    const r = runStatus('fallocate', ['--punch-hole', '--offset', '0', '--length', '65536', probe]);
    assert.notEqual(r.status, 0, 'ntfs-3g punched a hole: this test needs storage that cannot');
    run('rm', ['-f', probe]);
  });

  it('refuses in-place sparsify with 400 and the reason, said beforehand in the disk list', async () => {
    const info = (await http(server!, 'GET', '/api/info')).body;
    assert.equal(info.domains[0].canDiscard, false);
    assert.equal(disk.sparsify.allowed, false);
    assert.equal(disk.sparsify.code, 'storage-cannot-discard');
    assert.ok(disk.reclaimableBytes > 4 * MiB, 'the guest has free space the host still stores');
    const r = await http(server!, 'POST', `/api/disks/${disk.id}/sparsify`, { mode: 'in-place' });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.fault.code, 'storage-cannot-discard');
    assert.match(r.body.fault.detail, /cannot punch holes/);
  });

  it('disables the Sparsify button in the UI with that reason', { skip: chromiumMissing() ?? false }, async () => {
    ensureWebBuilt();
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
      await page.goto(`${server!.url}/#token=${TOKEN}`);
      const row = page.locator('[data-testid=disk-row][data-disk-name="win.raw"]');
      await row.waitFor();
      assert.equal(await row.getByTestId('sparsify-button').isDisabled(), true);
      assert.match((await row.textContent()) ?? '', /cannot punch holes/);
      mkdirSync(testOutput, { recursive: true });
      await page.screenshot({ path: join(testOutput, 'service-ui-no-holes.png'), fullPage: true });
    } finally {
      await browser.close();
    }
  });

  it('still sparsifies by copy-and-replace there (a sparse copy needs no hole punching)', async (t) => {
    const r = await http(server!, 'POST', `/api/disks/${disk.id}/sparsify`, { mode: 'copy-and-replace' });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await waitFor('the job to end', async () => {
      const j = (await http(server!, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
      return j.status === 'pending' || j.status === 'running' ? undefined : j;
    }, 90_000);
    assert.equal(job.status, 'finished', job.error);
    t.diagnostic(`win.raw on ntfs-3g, copy-and-replace: actual size ${job.actualBefore} -> ${job.actualAfter} bytes`);
    assert.ok(job.actualAfter < job.actualBefore - 4 * MiB, `${job.actualBefore} -> ${job.actualAfter}`);
    assert.equal(guestProblem(join(mnt, 'images', 'win.raw'), 'raw', tmp.dir, 'win'), undefined);
  });
});
