/**
 * VHDX in place against the real tools. Images are made by qemu-img from a whole-disk ext4 on
 * garbage with deleted files; the oracles are qemu's own vhdx driver (check, convert, compare,
 * and its log replay in `check -r all`), dumpe2fs's free-block list, e2fsck and every file's
 * checksum. Pending logs are written by our log writer and replayed by qemu and by us, which must
 * agree byte for byte; a log entry whose CRC holds but whose contents are wrong is refused before
 * anything is written.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, readFileSync, statSync, truncateSync } from 'node:fs';
import { tempDir, haveTool, run, runStatus, sha256, patchFile, readBytes } from '../helpers/fixtures.js';
import { dumpe2fsFree, dumpe2fsUnusedItables } from '../helpers/ext-fixtures.js';
import { makeGuestDisk, convertGuest, guestProblems, qemuCheck, type GuestDisk } from '../crash/scenario.js';
import { makeGptDisk, checkRawDisk } from './crash-helpers.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { openImage } from '../../src/formats/open.js';
import { BlockFile } from '../../src/io/file.js';
import { CorruptError, SparsifyError } from '../../src/io/errors.js';
import { Extents } from '../../src/io/extents.js';
import { readHeaderPair } from '../../src/formats/vhdx/structures.js';
import { VhdxLogWriter } from '../../src/formats/vhdx/log-writer.js';
import { VhdxUpdater } from '../../src/formats/vhdx/updater.js';
import { encodeEntry, type LogDescriptor } from '../../src/formats/vhdx/log-format.js';

const MiB = 1 << 20;
const tools = ['qemu-img', 'mke2fs', 'e2fsck', 'debugfs', 'dumpe2fs', 'sgdisk'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;
/** The guest's host-visible ranges it may lose: free blocks and unused inode tables (dumpe2fs). */
let mayChange: Extents;
let free: Extents;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-inplace-vhdx-');
  guest = makeGuestDisk(work.dir, 40);
  free = new Extents(dumpe2fsFree(guest.raw).ranges.map(([start, end]) => ({ start, end })));
  mayChange = free.union(new Extents(dumpe2fsUnusedItables(guest.raw).map(([start, end]) => ({ start, end }))));
});
after(() => work?.cleanup());

const quiet = { onStatus: () => undefined, onInfo: () => undefined };

function vhdx(name: string, options: string[] = ['block_size=1M']): string {
  return convertGuest(guest, 'vhdx', join(work.dir, name), options);
}

function assertClean(path: string): void {
  const c = qemuCheck(path, 'vhdx')!;
  assert.equal(c.status, 0, c.output);
  assert.deepEqual(guestProblems(path, 'vhdx', guest, work.dir), []);
}

/** The guest as qemu reads it, block by block against the original: zero where discarded, else unchanged. */
function compareBlocks(path: string, bs: number): { zeroed: number } {
  const raw = join(work.dir, 'qemu-view.raw');
  run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', path, raw]);
  const now = readFileSync(raw);
  const was = readFileSync(guest.raw);
  assert.equal(now.length, was.length);
  let zeroed = 0;
  for (let at = 0; at < was.length; at += bs) {
    const end = Math.min(at + bs, was.length);
    const a = now.subarray(at, end);
    const b = was.subarray(at, end);
    const inside = mayChange.clip(at, end).total() === end - at;
    if (free.clip(at, end).total() === end - at) assert.ok(a.every((x) => x === 0), `block at ${at} lies in free space and was not zeroed`);
    if (!inside) assert.ok(a.equals(b), `block at ${at} holds data the guest uses and changed`);
    else if (!a.equals(b)) {
      assert.ok(a.every((x) => x === 0), `block at ${at} changed but not to zeros`);
      zeroed++;
    }
  }
  return { zeroed };
}

test('vhdx in place: blocks over free space become zero blocks, their space punched; qemu agrees block by block', { timeout: 300_000, skip }, async () => {
  const p = vhdx('discard.vhdx');
  const size = statSync(p).size;
  const r = await sparsifyInPlace({ path: p, ...quiet });
  assert.equal(r.format, 'vhdx');
  assert.equal(statSync(p).size, size, 'the file keeps its length without --compact');
  assertClean(p);
  const { zeroed } = compareBlocks(p, MiB);
  assert.ok(zeroed >= 5, `only ${zeroed} blocks were zeroed`);
  // Freed blocks are punched (qemu left small holes in some, hence not quite whole MiBs).
  assert.ok(r.allocatedBefore - r.allocatedAfter >= zeroed * MiB * 0.9, `du dropped by ${r.allocatedBefore - r.allocatedAfter} for ${zeroed} blocks`);
  assert.ok(r.compactableEnd !== undefined && r.compactableEnd < size && r.compactableEnd % MiB === 0, `compactable end ${r.compactableEnd}`);
  // Read-only tools need no replay: the log was retired.
  assert.equal(runStatus('qemu-img', ['info', p]).status, 0);
  // A second run finds nothing more to give back and changes nothing the guest sees.
  run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', p, join(work.dir, 'again-before.raw')]);
  await sparsifyInPlace({ path: p, ...quiet });
  assertClean(p);
  assert.equal(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', join(work.dir, 'again-before.raw'), p]).status, 0);
});

test('vhdx --compact: blocks move down, the file is cut at the planned end, the guest reads the same as without', { timeout: 300_000, skip }, async () => {
  // 4 MiB blocks: no block is wholly free, yet qemu's file has a gap below its last block to fill.
  for (const [name, opts] of [['1m', ['block_size=1M']], ['4m', ['block_size=4M']]] as const) {
    const a = vhdx(`plain-${name}.vhdx`, [...opts]);
    const b = vhdx(`compact-${name}.vhdx`, [...opts]);
    const plain = await sparsifyInPlace({ path: a, ...quiet });
    const c = await sparsifyInPlace({ path: b, compact: true, ...quiet });
    assertClean(b);
    assert.equal(runStatus('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', a, b]).status, 0, `${name}: compacted and plain images differ`);
    const len = statSync(b).size;
    assert.ok(c.compacted);
    assert.equal(len, c.endAfter);
    assert.equal(len % MiB, 0);
    assert.equal(len, plain.compactableEnd, `${name}: the summary's planned end`);
    assert.ok(len < statSync(a).size, `${name}: ${len} is not shorter than ${statSync(a).size}`);
    if (name === '1m') {
      assert.ok(c.bytesMoved > 0, 'nothing was moved');
      compareBlocks(b, MiB);
    }
    // Compacting again moves nothing and keeps the length.
    const again = await sparsifyInPlace({ path: b, compact: true, ...quiet });
    assert.equal(again.bytesMoved, 0);
    assert.equal(statSync(b).size, len);
    assertClean(b);
  }
});

test('fixed vhdx (blocks stay allocated): free space punched inside the blocks, BAT unchanged, nothing to compact', { timeout: 300_000, skip }, async () => {
  const p = vhdx('fixed.vhdx', ['subformat=fixed', 'block_size=1M']);
  const size = statSync(p).size;
  const bat = readBytes(p, 2 * MiB, 4096);
  const infos: string[] = [];
  const r = await sparsifyInPlace({ path: p, compact: true, onStatus: () => undefined, onInfo: (m) => infos.push(m) });
  assert.equal(statSync(p).size, size);
  assert.ok(!r.compacted);
  assert.ok(infos.some((m) => /cannot be compacted/.test(m)), infos.join('\n'));
  assert.ok(readBytes(p, 2 * MiB, 4096).equals(bat), 'the BAT changed');
  assertClean(p);
  const { zeroed } = compareBlocks(p, 4096);
  assert.ok(zeroed > 1000, `only ${zeroed} 4 KiB blocks zeroed`);
  assert.ok(r.allocatedBefore - r.allocatedAfter >= zeroed * 4096 * 0.9, `du dropped by ${r.allocatedBefore - r.allocatedAfter}`);
});

test('--zero of a partition (GPT disk): it reads as zeros edges included, the other partition keeps its files; dynamic and fixed', { timeout: 300_000, skip }, async () => {
  const disk = makeGptDisk(work.dir, 'gpt.raw', 48);
  const p1 = disk.parts[0]!;
  assert.ok(p1.offset % (2 * MiB) !== 0 || (p1.offset + p1.size) % (2 * MiB) !== 0, 'partition 1 should not be block-aligned');
  for (const opts of [['block_size=2M'], ['subformat=fixed', 'block_size=2M']]) {
    const p = join(work.dir, `zero-${opts.length}.vhdx`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', opts.join(','), disk.path, p]);
    await sparsifyInPlace({ path: p, zero: ['/dev/sda1'], ...quiet });
    assert.equal(qemuCheck(p, 'vhdx')!.status, 0);
    const raw = join(work.dir, 'zero.raw');
    run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', p, raw]);
    const r = readFileSync(raw);
    assert.ok(r.subarray(p1.offset, p1.offset + p1.size).every((x) => x === 0), `${opts.join(',')}: /dev/sda1 does not read as zeros`);
    assert.deepEqual(checkRawDisk(raw, [disk.parts[1]!], work.dir), []);
    assert.ok(r.subarray(0, p1.offset).equals(readFileSync(disk.path).subarray(0, p1.offset)), 'the partition table changed');
  }
});

function loopSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for a loop device';
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

test('a vhdx on a block device: --compact reports the new end, and the image cut there is whole', { timeout: 300_000, skip: skip || loopSkip() }, async () => {
  const p = vhdx('device.vhdx');
  const size = statSync(p).size;
  let loop = run('losetup', ['-f', '--show', p]).trim();
  try {
    const r = await sparsifyInPlace({ path: loop, format: 'vhdx', compact: true, ...quiet });
    assert.ok(r.isBlockDevice && r.compacted);
    assert.ok(r.endAfter < r.endBefore && r.endAfter % MiB === 0, `end ${r.endBefore} -> ${r.endAfter}`);
    run('losetup', ['-d', loop]);
    loop = '';
    assert.equal(statSync(p).size, size, 'the device keeps its size');
    assertClean(p);
    // Reduced to the reported end, as a volume would be, the image is still whole.
    const cut = join(work.dir, 'device-cut.vhdx');
    copyFileSync(p, cut);
    truncateSync(cut, r.endAfter);
    assertClean(cut);
    assert.equal(runStatus('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', p, cut]).status, 0);
  } finally {
    if (loop) runStatus('losetup', ['-d', loop]);
  }
});

/** Open a session on `path` with our log writer and leave `descriptors` as a durable, unapplied entry. */
async function leavePendingEntry(path: string, descriptors: (f: BlockFile, batAt: number) => Promise<LogDescriptor[]>): Promise<void> {
  const f = await BlockFile.open(path, 'r+');
  try {
    const { current } = await readHeaderPair(f);
    const batAt = await batOffset(f);
    const w = new VhdxLogWriter(f, current);
    await w.begin({ dataChanges: true });
    await w.logEntry(await descriptors(f, batAt));
  } finally {
    await f.close();
  }
}

/** The BAT region's offset, from region table 1 (qemu writes its BAT entry first or second). */
async function batOffset(f: BlockFile): Promise<number> {
  const t = Buffer.alloc(16 + 2 * 32);
  await f.readExact(t, 0x30000);
  for (let i = 0; i < 2; i++) {
    if (t.subarray(16 + i * 32, 32 + i * 32).toString('hex') === '6677c22d23f600429d64115e9bfd4a08') return Number(t.readBigUInt64LE(32 + i * 32));
  }
  throw new Error('no BAT region');
}

async function read4k(f: BlockFile, at: number): Promise<Buffer> {
  const b = Buffer.alloc(4096);
  await f.readExact(b, at);
  return b;
}

/**
 * Bytes of two files outside the headers (0x10000-0x30000), which each replayer stamps its own
 * way, and outside the log, whose dead entries we give back once it is retired and qemu keeps.
 */
function sameOutsideHeaders(a: string, b: string): void {
  const x = readFileSync(a);
  const y = readFileSync(b);
  assert.equal(x.length, y.length, 'lengths differ');
  assert.ok(x.subarray(0, 0x10000).equals(y.subarray(0, 0x10000)), 'file identifiers differ');
  const logAt = Number(x.readBigUInt64LE(0x10000 + 72));
  const logEnd = logAt + x.readUInt32LE(0x10000 + 68);
  assert.ok(logAt >= 0x30000 && logEnd <= x.length, `log at ${logAt}..${logEnd}`);
  assert.ok(x.subarray(0x30000, logAt).equals(y.subarray(0x30000, logAt)), 'the files differ between the headers and the log');
  assert.ok(x.subarray(logEnd).equals(y.subarray(logEnd)), 'the files differ past the log');
}

test('a pending log written by our log writer: qemu replays it (check -r all) to exactly what our replay writes', { timeout: 300_000, skip }, async () => {
  const p = vhdx('pending.vhdx');
  await leavePendingEntry(p, async (f, batAt) => {
    // BAT sector 0 with blocks 0-3 made zero blocks, a data sector and 64 KiB of zeros inside block 5's payload.
    const bat = await read4k(f, batAt);
    for (let i = 0; i < 4; i++) bat.writeBigUInt64LE(2n, i * 8);
    const e5 = bat.readBigUInt64LE(5 * 8);
    assert.equal(Number(e5 & 7n), 6, 'block 5 is allocated in the qemu image');
    const block5 = Number(e5 >> 20n) * MiB;
    return [
      { kind: 'data', fileOffset: batAt, data: bat },
      { kind: 'data', fileOffset: block5 + 8192, data: Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) & 0xff)) },
      { kind: 'zero', fileOffset: block5 + 65536, length: 65536 },
    ];
  });
  // qemu sees a log to replay: read-only opens refuse it, and so does our copy mode.
  const ro = runStatus('qemu-img', ['check', '-f', 'vhdx', p]);
  assert.notEqual(ro.status, 0);
  assert.match(ro.stderr, /log that needs to be replayed/);
  await assert.rejects(openImage(p, { format: 'vhdx' }), (e: Error) => e instanceof SparsifyError && /replayed/.test(e.message));

  const byQemu = join(work.dir, 'pending-qemu.vhdx');
  const byUs = join(work.dir, 'pending-us.vhdx');
  copyFileSync(p, byQemu);
  copyFileSync(p, byUs);
  const q = runStatus('qemu-img', ['check', '-r', 'all', '-f', 'vhdx', byQemu]);
  assert.equal(q.status, 0, q.stdout + q.stderr);
  assert.match(q.stdout, /1 corruptions|corruptions were found and repaired|repaired/i);
  // Our replay alone: open for writing in place and end the (empty) phase.
  const f = await BlockFile.open(byUs, 'r+');
  try {
    const u = await VhdxUpdater.open(f);
    await u.finish();
  } finally {
    await f.close();
  }
  assert.equal(qemuCheck(byUs, 'vhdx')!.status, 0);
  sameOutsideHeaders(byQemu, byUs);
  assert.equal(runStatus('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', byQemu, byUs]).status, 0);
  // The replay changed what the guest reads (so the comparison above means something).
  assert.notEqual(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', guest.raw, byUs]).status, 0);

  // The whole in-place run replays it too, then discards; what it leaves needs no replay.
  const full = join(work.dir, 'pending-full.vhdx');
  copyFileSync(p, full);
  await sparsifyInPlace({ path: full, ...quiet });
  assert.equal(qemuCheck(full, 'vhdx')!.status, 0);
});

test('a corrupt log is refused with a clear message and nothing is written; a torn entry is not replayed', { timeout: 300_000, skip }, async () => {
  const base = vhdx('corrupt-base.vhdx');
  const size = statSync(base).size;
  const cases: Array<{ name: string; entry: (guid: Buffer, batAt: number) => Buffer; message: RegExp }> = [
    {
      name: 'beyond end of file',
      entry: (guid) => encodeEntry(guid, { sequence: 1n, tail: 0, flushedFileOffset: size, lastFileOffset: size, descriptors: [{ kind: 'data', fileOffset: size + 16 * MiB, data: Buffer.alloc(4096, 1) }] }),
      message: /log entry at 0x100000: descriptor 0 targets 0x[0-9a-f]+\+0x1000, beyond end of file/,
    },
    {
      name: 'onto the headers',
      entry: (guid) => encodeEntry(guid, { sequence: 1n, tail: 0, flushedFileOffset: size, lastFileOffset: size, descriptors: [{ kind: 'data', fileOffset: 0x10000, data: Buffer.alloc(4096, 1) }] }),
      message: /descriptor 0 targets 0x10000\+0x1000, the headers or the log itself/,
    },
    {
      name: 'truncated file',
      entry: (guid, batAt) => encodeEntry(guid, { sequence: 1n, tail: 0, flushedFileOffset: size + 64 * MiB, lastFileOffset: size + 64 * MiB, descriptors: [{ kind: 'zero', fileOffset: batAt, length: 4096 }] }),
      message: /shorter than the log's flushed file offset .*truncated/,
    },
    {
      name: 'broken sequence',
      entry: (guid) => encodeEntry(guid, { sequence: 5n, tail: 0x80000, flushedFileOffset: size, lastFileOffset: size, descriptors: [] }),
      message: /the active sequence from its tail at 0x180000 is broken/,
    },
  ];
  for (const c of cases) {
    const p = join(work.dir, `corrupt-${c.name.replace(/\W+/g, '-')}.vhdx`);
    copyFileSync(base, p);
    await leavePendingEntry(p, async () => []);
    // Overwrite the (empty) entry our writer left with the crafted one, CRC and all.
    const f = await BlockFile.open(p, 'r+');
    let guid: Buffer;
    let batAt: number;
    try {
      guid = (await readHeaderPair(f)).current.logGuid;
      batAt = await batOffset(f);
    } finally {
      await f.close();
    }
    patchFile(p, MiB, Buffer.alloc(4096));
    patchFile(p, MiB, c.entry(guid, batAt));
    const sum = sha256(readFileSync(p));
    await assert.rejects(sparsifyInPlace({ path: p, ...quiet }), (e: Error) => {
      assert.ok(e instanceof CorruptError, `${c.name}: ${e.constructor.name}: ${e.message}`);
      assert.match(e.message, c.message, c.name);
      assert.ok(e.message.includes(p), `${c.name}: the message names the file`);
      return true;
    });
    assert.equal(sha256(readFileSync(p)), sum, `${c.name}: the image was written`);
  }

  // A torn entry (one byte of its data sector changed: the CRC fails) is not there at all: both
  // qemu and we replay nothing, and the image reads as before.
  const p = join(work.dir, 'torn.vhdx');
  copyFileSync(base, p);
  await leavePendingEntry(p, async (f, batAt) => {
    const bat = await read4k(f, batAt);
    bat.writeBigUInt64LE(2n, 0);
    return [{ kind: 'data', fileOffset: batAt, data: bat }];
  });
  patchFile(p, MiB + 4096 + 100, Buffer.from([readBytes(p, MiB + 4096 + 100, 1)[0]! ^ 0xff]));
  const byQemu = join(work.dir, 'torn-qemu.vhdx');
  copyFileSync(p, byQemu);
  assert.equal(runStatus('qemu-img', ['check', '-r', 'all', '-f', 'vhdx', byQemu]).status, 0);
  await sparsifyInPlace({ path: p, ...quiet });
  assertClean(p);
  assert.equal(runStatus('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', base, byQemu]).status, 0, 'qemu replayed a torn entry');
});
