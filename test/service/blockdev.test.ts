/**
 * Block devices in a storage domain, as VDSM's images tree holds logical volumes: loop devices
 * symlinked into the domain folder. The service lists them with what sysfs says of their discard
 * support, sparsifies them in place through the API (a request naming no mode gets in-place even
 * where the configured default is copy-and-replace, which a device refuses), and the oracle is
 * the loop's backing file: its allocation drops (BLKDISCARD on a loop punches holes in it), e2fsck
 * and the files' checksums hold. A device that cannot discard is a loop over a file on ramfs (no
 * fallocate there, so the kernel gives the loop discard_max_bytes 0; lowering the limit through
 * sysfs instead would stick to the loop device after it is detached). A raw device that cannot
 * discard is refused with the reason; a qcow2 on such a device is compacted, and its new end is
 * real: the first endAfter bytes of the device alone pass qemu-img check and hold the whole guest,
 * so the volume can be reduced to it. A device mounted on the host is refused (409): the kernel
 * holds it. On SQLite and on PostgreSQL.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, realpathSync, symlinkSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { tempDir, run, runStatus, haveTool, allocatedBytes, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, makeGuestDisk, guestProblem, sparsifyAndWait, TOKEN, type Server } from './service-helpers.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const MiB = 1 << 20;

function loopSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for loop devices';
  const tools = ['losetup', 'mke2fs', 'sgdisk', 'e2fsck', 'debugfs', 'qemu-img'].filter((t) => !haveTool(t));
  if (tools.length) return `missing tools: ${tools.join(', ')}`;
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

interface Loop {
  dev: string;
  file: string;
}

const sysQueue = (dev: string, name: string): number => Number(readFileSync(`/sys/block/${dev.replace('/dev/', '')}/queue/${name}`, 'utf8'));

/** The first `length` bytes of a device, as a file (what a volume reduced to that size would hold). */
function head(device: string, length: number, out: string): void {
  const buf = Buffer.alloc(MiB);
  const src = openSync(device, 'r');
  const dst = openSync(out, 'w');
  try {
    for (let off = 0; off < length; ) {
      const n = readSync(src, buf, 0, Math.min(buf.length, length - off), off);
      if (n <= 0) throw new Error(`${device}: short read at ${off}`);
      writeSync(dst, buf, 0, n, off);
      off += n;
    }
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}

let pg: PgCluster | undefined;
after(() => releaseAll(stopAllServers, () => pg?.stop()));

for (const backend of ['sqlite', 'postgres'] as const) {
  const skip = loopSkip() || (backend === 'postgres' ? (postgresMissing() ?? false) : false);

  describe(`block devices in a storage domain (${backend})`, { skip, timeout: 180_000 }, () => {
    let tmp: { dir: string; cleanup: () => void };
    let server: Server | undefined;
    const loops: Loop[] = [];
    let ramfs: string | undefined;
    let mounted: string | undefined;
    let byName: Record<string, Loop>;
    let disks: Array<Record<string, any>>;

    before(async () => {
      tmp = tempDir('sparsify-blockdev-');
      const domain = join(tmp.dir, 'images');
      ramfs = join(tmp.dir, 'ramfs');
      mkdirSync(ramfs);
      run('mount', ['-t', 'ramfs', 'ramfs', ramfs]);
      // Backing files of the "logical volumes": raw guests, and a qcow2 on a volume larger than the image.
      makeGuestDisk(join(tmp.dir, 'raw.lv'), tmp.dir, 'dev');
      makeGuestDisk(join(tmp.dir, 'nodiscard.lv'), tmp.dir, 'dev');
      makeGuestDisk(join(tmp.dir, 'guest.raw'), tmp.dir, 'dev');
      run('qemu-img', ['convert', '-O', 'qcow2', join(tmp.dir, 'guest.raw'), join(tmp.dir, 'qcow2.lv')]);
      run('truncate', ['-s', '48M', join(tmp.dir, 'qcow2.lv')]);
      // Loops over files on ramfs cannot discard.
      for (const f of ['nodiscard.lv', 'qcow2.lv']) run('cp', [join(tmp.dir, f), join(ramfs, f)]);
      byName = {};
      for (const [name, file] of [
        ['root.raw', join(tmp.dir, 'raw.lv')],
        ['data.raw', join(ramfs, 'nodiscard.lv')],
        ['root.qcow2', join(ramfs, 'qcow2.lv')],
      ] as const) {
        const l = { dev: run('losetup', ['-f', '--show', file]).trim(), file };
        loops.push(l);
        byName[name] = l;
        // VDSM's shape: images/IMAGE/VOLUME -> the device.
        const dir = join(domain, 'vm1', name.replace('.', '-'));
        mkdirSync(dir, { recursive: true });
        symlinkSync(l.dev, join(dir, name));
      }
      // A device the host has mounted (its filesystem changes under any analysis).
      const held = join(tmp.dir, 'held.lv');
      run('truncate', ['-s', '16M', held]);
      run('mke2fs', ['-q', '-F', '-t', 'ext4', held]);
      const hl = { dev: run('losetup', ['-f', '--show', held]).trim(), file: held };
      loops.push(hl);
      mkdirSync(join(domain, 'vm1', 'held-raw'));
      symlinkSync(hl.dev, join(domain, 'vm1', 'held-raw', 'held.raw'));
      mkdirSync(join(tmp.dir, 'mnt'));
      run('mount', [hl.dev, join(tmp.dir, 'mnt')]);
      mounted = join(tmp.dir, 'mnt');
      const database = backend === 'postgres' ? (pg ??= await startPostgres()).database('blockdev') : undefined;
      server = await startServer({ database, dataDir: join(tmp.dir, 'data'), domains: [domain], env: { SPARSIFY_DEFAULT_MODE: 'copy-and-replace' } });
      disks = await analyzedDisks(server, 4, 60_000);
    });

    after(() =>
      releaseAll(
        () => server?.stop(),
        () => mounted && spawnSync('umount', [mounted]).status !== 0 && spawnSync('umount', ['-l', mounted]),
        ...loops.map((l) => () => run('losetup', ['-d', l.dev])),
        () => ramfs && spawnSync('umount', [ramfs]).status !== 0 && spawnSync('umount', ['-l', ramfs]),
        () => tmp?.cleanup(),
      ),
    );

    it('lists each device with what sysfs says of its discard support', () => {
      for (const [name, l] of Object.entries(byName)) {
        const d = diskByName(disks, name);
        assert.equal(d.status, 'ok', `${name}: ${d.error}`);
        assert.equal(d.format, name.endsWith('.qcow2') ? 'qcow2' : 'raw');
        assert.equal(d.path, `vm1/${name.replace('.', '-')}/${name}`);
        assert.deepEqual(
          { target: d.device.target, size: d.device.size, max: d.device.discardMaxBytes, granularity: d.device.discardGranularity },
          { target: realpathSync(l.dev), size: name.endsWith('.qcow2') ? 48 * MiB : 34 * MiB, max: sysQueue(l.dev, 'discard_max_bytes'), granularity: sysQueue(l.dev, 'discard_granularity') },
          name,
        );
        // A device is all allocated to its disk as far as the host's filesystem knows.
        assert.equal(d.actualSize, d.device.size);
        assert.equal(d.allocation, 'sparse');
        assert.ok(d.reclaimableBytes > 16 * MiB, `${name}: reclaimable ${d.reclaimableBytes}`);
      }
      assert.ok(diskByName(disks, 'root.raw').device.discardMaxBytes > 0);
      assert.equal(diskByName(disks, 'data.raw').device.discardMaxBytes, 0);
    });

    it('offers in place (never copy-and-replace), refuses a raw device that cannot discard with the reason, compacts a qcow2 there', async () => {
      const raw = diskByName(disks, 'root.raw');
      assert.deepEqual(raw.sparsify, { allowed: true, mode: 'in-place' }, 'a device is sparsified in place whatever the default mode');
      assert.deepEqual(raw.storage, { canRelease: true, compaction: 'where-no-holes', compacts: false });
      const copy = await http(server!, 'POST', `/api/disks/${raw.id}/sparsify`, { mode: 'copy-and-replace' });
      assert.equal(copy.status, 400, JSON.stringify(copy.body));
      assert.equal(copy.body.fault.code, 'device-cannot-be-replaced');

      const nodiscard = diskByName(disks, 'data.raw');
      assert.equal(nodiscard.sparsify.code, 'storage-cannot-discard');
      const r = await http(server!, 'POST', `/api/disks/${nodiscard.id}/sparsify`);
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.fault.code, 'storage-cannot-discard');
      assert.match(r.body.fault.detail, /cannot discard \(queue\/discard_max_bytes is 0\)/);
      assert.match(r.body.fault.detail, /raw device .* cannot be compacted/);

      const qcow2 = diskByName(disks, 'root.qcow2');
      assert.deepEqual(qcow2.sparsify, { allowed: true, mode: 'in-place' });
      assert.deepEqual(qcow2.storage, { canRelease: false, compaction: 'where-no-holes', compacts: true });
      for (const d of [raw, nodiscard, qcow2]) assert.equal(d.device.held, false, d.name);
    });

    it('refuses a device the host has mounted: the kernel holds it', async () => {
      const held = diskByName(disks, 'held.raw');
      assert.equal(held.device.held, true);
      assert.equal(held.status, 'in-use');
      assert.equal(held.sparsify.code, 'disk-in-use');
      const r = await http(server!, 'POST', `/api/disks/${held.id}/sparsify`);
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.equal(r.body.fault.code, 'disk-in-use');
      assert.match(r.body.fault.detail, /the kernel holds .*mounted/);
    });

    it('sparsifies a raw device in place through the API: the backing file’s allocation drops, the guest is intact', async (t) => {
      const l = byName['root.raw']!;
      const before = allocatedBytes(l.file);
      const job = await sparsifyAndWait(server!, diskByName(disks, 'root.raw').id, null);
      const after = allocatedBytes(l.file);
      assert.equal(job.status, 'finished', job.error);
      assert.equal(job.options.mode, 'in-place');
      const r = job.result;
      t.diagnostic(`root.raw on ${l.dev}: discarded ${r.discarded}; backing file ${before} -> ${after} bytes allocated`);
      assert.equal(r.isBlockDevice, true);
      assert.equal(r.released, true);
      assert.equal(r.compacted, false);
      assert.equal(r.givenBack, null, 'a device’s allocation is not the host’s to measure');
      assert.equal(job.bytesReclaimed, null);
      assert.ok(r.discarded > 16 * MiB, `discarded ${r.discarded}`);
      assert.ok(before - after > 16 * MiB, `backing file ${before} -> ${after}`);
      assert.equal(guestProblem(l.dev, 'raw', tmp.dir, 'dev'), undefined);
    });

    it('compacts a qcow2 on a device that cannot discard: the volume can be reduced to its new end', async (t) => {
      const l = byName['root.qcow2']!;
      const d = diskByName(disks, 'root.qcow2');
      const job = await sparsifyAndWait(server!, d.id, null);
      assert.equal(job.status, 'finished', job.error);
      const r = job.result;
      t.diagnostic(`root.qcow2 on ${l.dev} (no discard): image end ${r.endBefore} -> ${r.endAfter}, moved ${r.bytesMoved}`);
      assert.equal(r.isBlockDevice, true);
      assert.equal(r.released, false);
      assert.equal(r.compacted, true);
      assert.ok(r.endAfter < r.endBefore - 16 * MiB, `${r.endBefore} -> ${r.endAfter}`);
      assert.ok(r.endBefore <= 48 * MiB);
      // The image and the guest on the device, then on its first endAfter bytes alone.
      assert.equal(guestProblem(l.dev, 'qcow2', tmp.dir, 'dev'), undefined);
      const reduced = join(tmp.dir, 'reduced.qcow2');
      head(l.dev, r.endAfter, reduced);
      assert.equal(guestProblem(reduced, 'qcow2', tmp.dir, 'dev'), undefined);
      const events = (await http(server!, 'GET', '/api/events?limit=20')).body.events as Array<{ message: string }>;
      assert.ok(events.some((e) => /root\.qcow2 sparsified successfully: .*the volume can be reduced to/.test(e.message)), events.map((e) => e.message).join('\n'));
    });

    it('shows the device’s discard facts and the size the volume can be reduced to in the disk details', { skip: backend === 'postgres' ? 'the UI is the same on both stores' : (chromiumMissing() ?? false) }, async () => {
      ensureWebBuilt();
      const browser = await launchBrowser();
      try {
        const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));
        await page.goto(`${server!.url}/#token=${TOKEN}`);
        const row = page.locator('[data-testid=disk-row][data-disk-name="root.qcow2"]');
        await row.getByTestId('device-badge').waitFor();
        await row.getByTestId('disk-name').click();
        const details = page.getByTestId('disk-details');
        const device = details.getByTestId('disk-device');
        await device.waitFor();
        assert.equal(await device.getAttribute('data-discard-max'), '0');
        assert.match((await device.textContent()) ?? '', /discard_max_bytes 0 \(cannot discard\)/);
        const reducible = details.getByTestId('disk-reducible');
        await reducible.waitFor();
        assert.match((await reducible.textContent()) ?? '', /the volume can be reduced to \d/);
        mkdirSync(testOutput, { recursive: true });
        await page.screenshot({ path: join(testOutput, 'service-ui-block-device.png'), fullPage: true });
        assert.deepEqual(errors, []);
      } finally {
        await browser.close();
      }
    });
  });
}
