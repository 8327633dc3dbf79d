/**
 * Storage that cannot punch holes (oVirt's NFS < 4.2 case), for real: a storage domain on an NTFS
 * filesystem mounted through ntfs-3g (FUSE), where fallocate(PUNCH_HOLE) fails. There a qcow2, a
 * vdi, a vmdk, a dynamic VHD (vpc) and a vhdx are sparsified in place by compaction (the domain's
 * default setting, where-no-holes): the
 * mount's free space (statfs) grows by what the job reports, qemu-img check is clean and the
 * guest's files are intact (e2fsck, checksums). A raw disk, which cannot be compacted, is refused
 * with 400 and the reason, said beforehand in the disk list and the UI; with the setting `never`
 * the qcow2 and the vdi are refused too. Copy-and-replace, which needs no hole punching, still
 * works.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, statSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { tempDir, run, runStatus, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, makeGuestDisk, guestProblem, sparsifyAndWait, TOKEN, type Server } from './service-helpers.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const MiB = 1 << 20;
/**
 * How far the mount's free space may differ from what the job measured on the file: NTFS keeps a
 * file's runlist in its MFT record (the MFT never shrinks) and its cluster bitmap in $Bitmap, so
 * a truncation can move the filesystem's own metadata by a few clusters either way.
 */
const NTFS_SLACK = 1 * MiB;
/** The images compacted there, each made by qemu-img convert from the same guest. */
const COMPACTED = [
  ['win.vdi', 'vdi', []],
  ['win.qcow2', 'qcow2', []],
  ['win.vmdk', 'vmdk', []],
  ['win.vhd', 'vpc', []],
  // 1 MiB blocks (qemu's default for so small a disk is 8 MiB: the guest's free space would fill few whole blocks).
  ['win.vhdx', 'vhdx', ['-o', 'block_size=1M']],
] as const;
const tools = ['mkntfs', 'ntfs-3g', 'fallocate', 'mke2fs', 'sgdisk', 'e2fsck', 'debugfs', 'qemu-img'].filter((t) => !haveTool(t));
const missing = tools.length ? `missing tools: ${tools.join(', ')}` : process.getuid?.() !== 0 ? 'mounting needs root' : !existsSync('/dev/fuse') ? 'no /dev/fuse' : false;

describe('a storage domain that cannot punch holes (NTFS through ntfs-3g)', { skip: missing, timeout: 180_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let mnt: string;
  let domain: string;
  let mounted = false;
  let server: Server | undefined;
  let disks: Array<Record<string, any>>;
  const given: Record<string, number> = {};

  /** Free bytes of the mount, as statfs says (what an administrator sees with df). */
  const free = () => {
    const s = statfsSync(mnt);
    return s.bavail * s.bsize;
  };

  before(async () => {
    tmp = tempDir('sparsify-noholes-');
    const img = join(tmp.dir, 'ntfs.img');
    run('truncate', ['-s', '320M', img]);
    run('mkntfs', ['-q', '-F', '-f', '-L', 'domain', img]);
    mnt = join(tmp.dir, 'mnt');
    mkdirSync(mnt);
    run('ntfs-3g', [img, mnt]);
    mounted = true;
    domain = join(mnt, 'images');
    mkdirSync(domain);
    makeGuestDisk(join(tmp.dir, 'win.raw'), tmp.dir, 'win');
    copyFileSync(join(tmp.dir, 'win.raw'), join(domain, 'win.raw'));
    // Every cluster and block allocated (the guest's free space holds garbage): all of it on the host.
    for (const [name, format, opts] of COMPACTED) run('qemu-img', ['convert', '-O', format, ...opts, join(tmp.dir, 'win.raw'), join(domain, name)]);
    server = await startServer({ dataDir: join(tmp.dir, 'data'), domains: [domain], env: { SPARSIFY_LIBVIRT: 'none' } });
    disks = await analyzedDisks(server, 1 + COMPACTED.length, 60_000);
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

  it('refuses a raw disk in place with 400 and the reason, said beforehand; allows the images that compact', async () => {
    const info = (await http(server!, 'GET', '/api/info')).body;
    assert.equal(info.domains[0].canDiscard, false);
    const raw = diskByName(disks, 'win.raw');
    assert.equal(raw.sparsify.allowed, false);
    assert.equal(raw.sparsify.code, 'storage-cannot-discard');
    assert.ok(raw.reclaimableBytes > 4 * MiB, 'the guest has free space the host still stores');
    const r = await http(server!, 'POST', `/api/disks/${raw.id}/sparsify`, { mode: 'in-place' });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.fault.code, 'storage-cannot-discard');
    assert.match(r.body.fault.detail, /cannot punch holes/);
    assert.match(r.body.fault.detail, /raw image .* cannot be compacted/);
    for (const [name] of COMPACTED) {
      const d = diskByName(disks, name);
      assert.deepEqual(d.sparsify, { allowed: true, mode: 'in-place' }, name);
      assert.deepEqual(d.storage, { canRelease: false, compaction: 'where-no-holes', compacts: true }, name);
      assert.equal(d.device, null);
    }
  });

  it('disables the raw disk’s Sparsify button in the UI with that reason, and says the others compact', { skip: chromiumMissing() ?? false }, async () => {
    ensureWebBuilt();
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
      await page.goto(`${server!.url}/#token=${TOKEN}`);
      const row = page.locator('[data-testid=disk-row][data-disk-name="win.raw"]');
      await row.waitFor();
      assert.equal(await row.getByTestId('sparsify-button').isDisabled(), true);
      assert.match((await row.textContent()) ?? '', /cannot punch holes/);
      const qcow2 = page.locator('[data-testid=disk-row][data-disk-name="win.qcow2"]');
      assert.equal(await qcow2.getByTestId('sparsify-button').isDisabled(), false);
      await qcow2.getByTestId('compacts').waitFor();
      await page.locator('[data-testid=domain-row] [data-testid=domain-holes]', { hasText: 'cannot punch holes' }).waitFor();
      mkdirSync(testOutput, { recursive: true });
      await page.screenshot({ path: join(testOutput, 'service-ui-no-holes.png'), fullPage: true });
    } finally {
      await browser.close();
    }
  });

  for (const [name, format] of COMPACTED) {
    it(`compacts ${name} in place: the mount’s free space grows by what the job reports, the image and the guest are intact`, async (t) => {
      const d = diskByName(disks, name);
      const path = join(domain, name);
      const freeBefore = free();
      const lengthBefore = statSync(path).size;
      const job = await sparsifyAndWait(server!, d.id, { mode: 'in-place' });
      const freeAfter = free();
      assert.equal(job.status, 'finished', job.error);
      const r = job.result;
      t.diagnostic(`${name} on ntfs-3g: given back ${r.givenBack} (holes ${r.byHoles}, truncation ${r.byTruncation}), length ${r.endBefore} -> ${r.endAfter}, moved ${r.bytesMoved}; statfs free grew by ${freeAfter - freeBefore}`);
      assert.equal(r.compacted, true);
      assert.equal(r.released, false, 'no hole can be punched here');
      assert.equal(r.compaction, 'where-no-holes');
      assert.equal(r.isBlockDevice, false);
      // Measured, and consistent: in all = holes + truncation; du and the file's length agree.
      assert.equal(r.givenBack, r.allocatedBefore - r.allocatedAfter);
      assert.equal(r.byHoles + r.byTruncation, r.givenBack);
      assert.equal(job.bytesReclaimed, r.givenBack);
      assert.equal(job.actualAfter, statSync(path).blocks * 512);
      assert.equal(r.endBefore, lengthBefore);
      assert.equal(r.endAfter, statSync(path).size);
      assert.ok(r.byTruncation > 8 * MiB, `the truncation gave back ${r.byTruncation}`);
      assert.ok(Math.abs(freeAfter - freeBefore - r.givenBack) <= NTFS_SLACK, `statfs free grew by ${freeAfter - freeBefore}, the job reports ${r.givenBack}`);
      assert.equal(guestProblem(path, format, tmp.dir, 'win'), undefined);
      given[format] = r.byTruncation;
      // The disk's view after the job: re-measured and re-analyzed.
      const view = (await http(server!, 'GET', `/api/disks/${d.id}`)).body.disk;
      assert.equal(view.actualSize, statSync(path).blocks * 512);
    });
  }

  it('counts what truncation gave back in /metrics', async () => {
    const text = (await http(server!, 'GET', '/metrics')).body as unknown as string;
    const m = /^sparsify_given_back_bytes_total\{way="truncation"\} (\d+)/m.exec(text);
    assert.ok(m, text.split('\n').filter((l) => l.includes('given_back')).join('\n'));
    assert.equal(Number(m[1]), Object.values(given).reduce((a, b) => a + b, 0));
  });

  it('refuses the qcow2 and the vdi with 400 when the domain’s setting is never', async () => {
    const domainId = diskByName(disks, 'win.qcow2').domainId;
    const set = async (compaction: string) => {
      const r = await http(server!, 'PATCH', `/api/domains/${domainId}`, { compaction });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.domain.compaction, compaction);
    };
    await set('never');
    try {
      for (const name of ['win.qcow2', 'win.vdi']) {
        const d = diskByName(disks, name);
        const view = (await http(server!, 'GET', `/api/disks/${d.id}`)).body.disk;
        assert.equal(view.sparsify.code, 'storage-cannot-discard', name);
        // vdi compacts whenever it is sparsified (its format needs it), so with `never` it is not sparsified here at all.
        assert.equal(view.storage.compacts, name === 'win.vdi', name);
        const r = await http(server!, 'POST', `/api/disks/${d.id}/sparsify`, { mode: 'in-place' });
        assert.equal(r.status, 400, JSON.stringify(r.body));
        assert.equal(r.body.fault.code, 'storage-cannot-discard');
        assert.match(r.body.fault.detail, /compaction setting is never/);
      }
    } finally {
      await set('where-no-holes');
    }
    const again = (await http(server!, 'GET', `/api/disks/${diskByName(disks, 'win.qcow2').id}`)).body.disk;
    assert.equal(again.sparsify.allowed, true);
  });

  it('still sparsifies a raw disk by copy-and-replace there (a sparse copy needs no hole punching)', async (t) => {
    const job = await sparsifyAndWait(server!, diskByName(disks, 'win.raw').id, { mode: 'copy-and-replace' });
    assert.equal(job.status, 'finished', job.error);
    t.diagnostic(`win.raw on ntfs-3g, copy-and-replace: actual size ${job.actualBefore} -> ${job.actualAfter} bytes`);
    assert.ok(job.actualAfter < job.actualBefore - 4 * MiB, `${job.actualBefore} -> ${job.actualAfter}`);
    assert.equal(job.result ?? null, null, 'copy-and-replace has no in-place figures');
    assert.equal(guestProblem(join(domain, 'win.raw'), 'raw', tmp.dir, 'win'), undefined);
  });
});
