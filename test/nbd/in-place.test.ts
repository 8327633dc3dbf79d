/**
 * In place over NBD: the guest's free space goes with WRITE_ZEROES (no NO_HOLE) and a FLUSH.
 * Oracles: the result equals the same in-place run on a local copy of the file (byte for byte
 * for raw, qemu-img compare for qcow2), the file behind the export really shrinks (du), block
 * status figures agree with it, qemu-img check and e2fsck are clean, every file is intact.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, readFileSync } from 'node:fs';
import { tempDir, run, sha256, releaseAll, allocatedBytes } from '../helpers/fixtures.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { sparsify } from '../helpers/cli.js';
import { qemuNbd, nbdkit, ServerPool } from './servers.js';
import { buildGuest, guestSums, checkGuestFiles } from './guest.js';

const T = { timeout: 120_000 };
const MiB = 1 << 20;
let dir = '';
let cleanup = (): void => undefined;
const servers = new ServerPool();
let disk = '';
/** The same in-place run on a local copy: what the NBD runs must give. */
let fileResult = '';
let wantSums = new Map<string, string>();

before(async () => {
  ({ dir, cleanup } = tempDir('sparsify-nbd-inplace-'));
  disk = join(dir, 'disk.raw');
  buildGuest(disk, dir);
  wantSums = guestSums(disk, dir);
  fileResult = join(dir, 'file-result.raw');
  copyFileSync(disk, fileResult);
  await sparsifyInPlace({ path: fileResult });
});

after(() => releaseAll(...servers.stops, () => cleanup()));

/** The image's filesystem checks clean and holds every file as it was. */
const checkGuest = (raw: string): void => checkGuestFiles(raw, dir, wantSums);

test('raw file behind qemu-nbd --discard=unmap: the same bytes as in place on the file, and the file shrinks as much', T, async () => {
  const img = join(dir, 'unmap.raw');
  copyFileSync(disk, img);
  const before = allocatedBytes(img);
  const s = await servers.serve(qemuNbd(dir, img, { format: 'raw', writable: true, extra: ['--discard=unmap'] }));
  const r = await sparsifyInPlace({ path: s.uri });
  await s.stop();
  assert.equal(r.nbd, true);
  assert.equal(sha256(readFileSync(img)), sha256(readFileSync(fileResult)));
  checkGuest(img);
  const freedOnHost = before - allocatedBytes(img);
  const expected = before - allocatedBytes(fileResult);
  assert.ok(expected > 40 * MiB, `the file run freed ${expected}`);
  assert.ok(Math.abs(freedOnHost - expected) <= MiB, `freed ${freedOnHost} on the host, the file run ${expected}`);
  // What block status said agrees with what the host shows.
  assert.ok(Math.abs(r.allocatedBefore - r.allocatedAfter - freedOnHost) <= MiB, `block status: ${r.allocatedBefore} -> ${r.allocatedAfter}`);
});

test('a qcow2 guest view (qemu-nbd -f qcow2 --discard=unmap): the qcow2 file shrinks, qemu-img check clean, same guest as the file run', T, async () => {
  const q = join(dir, 'guest.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', disk, q]);
  const before = allocatedBytes(q);
  const s = await servers.serve(qemuNbd(dir, q, { format: 'qcow2', writable: true, extra: ['--discard=unmap'] }));
  const r = await sparsifyInPlace({ path: s.uri });
  await s.stop();
  run('qemu-img', ['check', q]);
  assert.match(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, fileResult]), /identical/);
  const freed = before - allocatedBytes(q);
  assert.ok(freed > 40 * MiB, `the qcow2 file gave back ${freed}`);
  assert.ok(r.allocatedBefore - r.allocatedAfter > 40 * MiB);
});

for (const fmt of ['qcow2', 'vmdk', 'vhdx']) {
  test(`a ${fmt} file served as bytes (qemu-nbd -f raw): probed as ${fmt}, sparsified in place through the export as the file would be`, T, async () => {
    const img = join(dir, `bytes.${fmt}`);
    run('qemu-img', ['convert', '-O', fmt, disk, img]);
    const local = join(dir, `local.${fmt}`);
    copyFileSync(img, local);
    await sparsifyInPlace({ path: local });
    const s = await servers.serve(qemuNbd(dir, img, { format: 'raw', writable: true, extra: ['--discard=unmap'] }));
    const r = await sparsifyInPlace({ path: s.uri });
    await s.stop();
    assert.equal(r.format, fmt);
    run('qemu-img', ['check', '-f', fmt, img]);
    assert.match(run('qemu-img', ['compare', '-f', fmt, '-F', fmt, img, local]), /identical/);
    const guest = join(dir, `bytes-guest-${fmt}.raw`);
    run('qemu-img', ['convert', '-f', fmt, '-O', 'raw', img, guest]);
    checkGuest(guest);
    // Whole blocks only (vhdx's are large): the local run is the measure.
    assert.ok(r.bytesDiscarded > 8 * MiB, `discarded ${r.bytesDiscarded}`);
    // At least as much given back as on the file (vhdx: its log, written through the export, may take less).
    assert.ok(allocatedBytes(img) <= allocatedBytes(local) + 2 * MiB, `${allocatedBytes(img)} vs ${allocatedBytes(local)}`);
  });
}

test('formats that must compact (vdi) or that qemu would append to over stale data (dynamic VHD on a device) are refused over NBD, unchanged', T, async () => {
  for (const [fmt, why] of [['vdi', /compacting vdi in place over NBD is not supported yet/], ['vpc', /not supported for a dynamic VHD on a block device/]] as const) {
    const img = join(dir, `refused.${fmt}`);
    run('qemu-img', ['convert', '-O', fmt, disk, img]);
    const before = sha256(readFileSync(img));
    const s = await servers.serve(qemuNbd(dir, img, { format: 'raw', writable: true }));
    await assert.rejects(sparsifyInPlace({ path: s.uri }), why);
    await s.stop();
    assert.equal(sha256(readFileSync(img)), before);
  }
});

/** In place through nbdkit serving a copy of the disk (`args(img)`: filters, the file plugin, its parameters), where TRIM must do the work: the guest intact, the file freed, block status agreeing. */
async function trimsInstead(name: string, args: (img: string) => string[]): Promise<void> {
  const img = join(dir, name);
  copyFileSync(disk, img);
  const before = allocatedBytes(img);
  const s = await servers.serve(nbdkit(dir, args(img)));
  const r = await sparsifyInPlace({ path: s.uri });
  await s.stop();
  checkGuest(img);
  const freed = before - allocatedBytes(img);
  assert.ok(freed > 40 * MiB, `trim freed ${freed}`);
  assert.ok(Math.abs(r.allocatedBefore - r.allocatedAfter - freed) <= MiB);
}

test('a server without WRITE_ZEROES (nbdkit nozero): TRIM instead, and the figures come from block status', T, () =>
  trimsInstead('trim.raw', (img) => ['--filter=nozero', 'file', img]),
);

test('WRITE_ZEROES offered but refused with EINVAL (nbdkit error filter): TRIM from then on, same result', T, () =>
  trimsInstead('zero-enotsup.raw', (img) => ['--filter=error', 'file', img, 'error-zero=EINVAL', 'error-zero-rate=100%']),
);

test('the CLI says what block status reports: space given back, then nothing on a second run', T, async () => {
  const img = join(dir, 'cli.raw');
  copyFileSync(disk, img);
  const s = await servers.serve(qemuNbd(dir, img, { format: 'raw', writable: true, extra: ['--discard=unmap'] }));
  let r = sparsify(['--in-place', s.uri]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout + r.stderr, /the server reports [\d.]+M fewer bytes allocated \(block status: 96\.0M allocated before, [\d.]+M after\)/);
  r = sparsify(['--in-place', s.uri]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout + r.stderr, /the server reports nothing given back/);
  await s.stop();
});
