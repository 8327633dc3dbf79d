/**
 * VHD (qemu: vpc) in place, against qemu's own driver: qemu-made dynamic and fixed images of a
 * whole-disk ext4 (garbage in its free space, deleted files), sparsified in place with and
 * without --compact. Oracle: qemu-img info/map (qemu refuses a block past the end of the file),
 * the guest read back by qemu-img convert (e2fsck -fn, every file's checksum), the footer at the
 * end checked by hand, and qemu-io appending a block afterwards: what it did not write must read
 * as zero (qemu counts on that past its append point). A differencing disk keeps its blocks and
 * says so; a BAT entry past the end of the file or overlapping another is refused, nothing written.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tempDir, run, runStatus, haveTool, sha256, readBytes, patchFile, allocatedBytes } from '../helpers/fixtures.js';
import { makeGuestDisk, guestProblems, convertGuest, type GuestDisk } from '../crash/scenario.js';
import { cliCommand, makeGptDisk, checkRawDisk } from './crash-helpers.js';
import { sparsifyInPlace, type InPlaceRequest } from '../../src/operations/in-place.js';
import { CorruptError } from '../../src/io/errors.js';
import { openImage } from '../../src/formats/open.js';
import { analyzeDisk } from '../../src/analyze/analyze.js';
import { makePlan } from '../../src/plan/plan.js';
import { discardBackendFor, discardInPlace } from '../../src/execute/in-place.js';
import type { DiscardBackend } from '../../src/formats/discard-types.js';

const missing = ['qemu-img', 'qemu-io', 'mke2fs', 'e2fsck', 'debugfs'].filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

const MiB = 1 << 20;
const BLOCK = 2 * MiB;
const SLOT = BLOCK + 512;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;
let pristine: string;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-inplace-vhd-');
  // 64 MiB: the deleted files free whole 2 MiB blocks, with kept data above them to move down.
  guest = makeGuestDisk(work.dir, 64);
  pristine = convertGuest(guest, 'vpc', join(work.dir, 'pristine.vhd'));
});
after(() => work?.cleanup());

function copyOf(name: string, from = pristine): string {
  const p = join(work.dir, name);
  copyFileSync(from, p);
  return p;
}

async function inPlace(path: string, extra: Partial<InPlaceRequest> = {}) {
  const warnings: string[] = [];
  const infos: string[] = [];
  const report = await sparsifyInPlace({ path, onWarning: (w) => warnings.push(w), onInfo: (i) => infos.push(i), ...extra });
  return { report, warnings, infos };
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset?: number;
}

function qemuMap(path: string): MapEntry[] {
  return JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'vpc', path])) as MapEntry[];
}

function dataBytes(map: MapEntry[]): number {
  return map.filter((e) => e.data).reduce((a, e) => a + e.length, 0);
}

/** Host slot (bitmap sector, then data) of every block qemu maps, by block index. */
function qemuSlots(map: MapEntry[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of map) {
    if (!e.data || e.offset === undefined) continue;
    for (let g = e.start; g < e.start + e.length; g += BLOCK - (g % BLOCK)) {
      out.set(Math.floor(g / BLOCK), e.offset + (g - e.start) - (g % BLOCK) - 512);
    }
  }
  return out;
}

/** qemu's append point: where its highest block ends. */
function qemuEnd(map: MapEntry[]): number {
  return Math.max(0, ...[...qemuSlots(map).values()].map((s) => s + SLOT));
}

/** The VHD checksum, computed here rather than with the code under test. */
function footerSum(f: Buffer): number {
  let sum = 0;
  for (let i = 0; i < f.length; i++) if (i < 64 || i >= 68) sum += f[i]!;
  return ~sum >>> 0;
}

function assertFooterAtEnd(path: string): void {
  const size = statSync(path).size;
  const tail = readBytes(path, size - 512, 512);
  assert.equal(tail.toString('latin1', 0, 8), 'conectix', 'a footer at the end');
  assert.equal(tail.readUInt32BE(64), footerSum(tail), 'the footer checksum');
  assert.ok(tail.equals(readBytes(path, 0, 512)), 'the footer at the end is the copy at 0');
}

function assertGuestIntact(path: string): void {
  const info = runStatus('qemu-img', ['info', '-f', 'vpc', path]);
  assert.equal(info.status, 0, info.stderr);
  assert.deepEqual(guestProblems(path, 'vpc', guest, work.dir), []);
}

/**
 * qemu-io writes 4 KiB into a block the guest does not use and has no slot: qemu appends the slot
 * at its append point, and the rest of the block must read as zero.
 */
function assertQemuAppends(path: string): void {
  const map = qemuMap(path);
  const slots = qemuSlots(map);
  const end = qemuEnd(map);
  let free = -1;
  for (let i = Math.floor(map.at(-1)!.start / BLOCK); i >= 0; i--) if (!slots.has(i)) free = i;
  assert.ok(free >= 0, 'a block without a slot');
  const at = free * BLOCK;
  run('qemu-io', ['-f', 'vpc', '-c', `write -P 0x5a ${at + 4096} 4096`, path]);
  const out = run('qemu-io', ['-f', 'vpc', '-c', `read -P 0 ${at} 4096`, '-c', `read -P 0x5a ${at + 4096} 4096`, '-c', `read -P 0 ${at + 8192} ${BLOCK - 8192}`, path]);
  assert.doesNotMatch(out, /fail/i, out);
  assert.equal(qemuSlots(qemuMap(path)).get(free), end, 'qemu appended the block at the end of the last one');
}

test('dynamic vhd in place: free blocks leave the BAT and are punched, length kept, qemu reads the guest intact', { timeout: 300_000, skip }, async () => {
  const img = copyOf('discard.vhd');
  const size = statSync(img).size;
  const mapBefore = qemuMap(img);
  const duBefore = allocatedBytes(img);
  const { report, warnings } = await inPlace(img);
  assert.deepEqual(warnings, []);
  assert.equal(report.format, 'vpc');
  assert.equal(report.compacted, false);
  // The plan in whole blocks leaves the BAT; the rest of the free space becomes holes in blocks that stay.
  const whole = report.bytesPlanned!;
  assert.ok(whole >= 8 * BLOCK && whole % BLOCK === 0, `whole blocks ${whole}`);
  assert.ok(report.bytesDiscarded > whole + 4 * MiB, `discarded ${report.bytesDiscarded}, whole blocks ${whole}`);
  assert.equal(statSync(img).size, size, 'discard alone keeps the length');
  const mapAfter = qemuMap(img);
  // Garbage everywhere: every block was allocated, so qemu sees exactly the whole blocks go.
  assert.equal(dataBytes(mapBefore) - dataBytes(mapAfter), whole);
  const dropped = duBefore - allocatedBytes(img);
  assert.ok(dropped >= (whole / BLOCK) * SLOT + 0.9 * (report.bytesDiscarded - whole), `du dropped ${dropped}, discarded ${report.bytesDiscarded}`);
  // And no more than it says (plus the dropped blocks' bitmaps); the guest oracle below says none of it was in use.
  assert.ok(dropped <= report.bytesDiscarded + (whole / BLOCK) * 512, `du dropped ${dropped}, discarded ${report.bytesDiscarded}`);
  assert.ok(report.compactableEnd !== undefined && report.compactableEnd < size, `compactableEnd ${report.compactableEnd}`);
  assertFooterAtEnd(img);
  assertGuestIntact(img);

  // A second run finds nothing more to drop and changes nothing qemu sees.
  const again = await inPlace(img);
  assert.deepEqual(again.warnings, []);
  assert.deepEqual(qemuMap(img), mapAfter);
  assertGuestIntact(img);
  assertQemuAppends(img);
  assertGuestIntact(img);
});

test('dynamic vhd --compact: blocks move down, the footer follows the last one, the file is cut after it', { timeout: 300_000, skip }, async () => {
  const probe = copyOf('probe.vhd');
  const planned = (await inPlace(probe)).report.compactableEnd!;
  const img = copyOf('compact.vhd');
  const size = statSync(img).size;
  const { report, warnings } = await inPlace(img, { compact: true });
  assert.deepEqual(warnings, []);
  assert.equal(report.compacted, true);
  assert.ok(report.bytesMoved > 0 && report.bytesMoved % SLOT === 0, `moved ${report.bytesMoved}`);
  assert.equal(report.endBefore, size);
  assert.equal(report.endAfter, statSync(img).size);
  assert.equal(report.endAfter, planned, 'the discard-only run said where compaction ends');
  assert.equal(size - report.endAfter, (report.bytesPlanned! / BLOCK) * SLOT, 'shorter by every discarded slot');
  assert.ok(allocatedBytes(img) < allocatedBytes(pristine) - (report.bytesPlanned! / BLOCK) * SLOT - 4 * MiB, 'holes inside the blocks that stay too');
  // qemu's own view: its highest block ends where the footer now starts.
  assert.equal(qemuEnd(qemuMap(img)) + 512, report.endAfter);
  assertFooterAtEnd(img);
  assertGuestIntact(img);

  const again = await inPlace(img, { compact: true });
  assert.equal(again.report.bytesMoved, 0);
  assert.equal(statSync(img).size, report.endAfter);
  assertQemuAppends(img);
  assertGuestIntact(img);
});

test('storage that cannot punch holes: compaction alone gives the space back (the truncation zeroes what qemu appends over)', { timeout: 300_000, skip }, async () => {
  const img = copyOf('no-holes.vhd');
  const size = statSync(img).size;
  const image = await openImage(img, { lock: 'write', writable: true });
  let r;
  try {
    const backend = await discardBackendFor(image);
    // As on NFS before 4.2 or FUSE: every call goes to the real backend but for the probe.
    const noHoles: DiscardBackend = {
      description: backend.description,
      align: (x) => backend.align(x),
      canRelease: async () => false,
      discard: (x, ctx) => {
        assert.equal(ctx.release, false);
        return backend.discard(x, ctx);
      },
      writeZeros: backend.writeZeros,
      compactor: backend.compactor,
    };
    const plan = makePlan(await analyzeDisk(image));
    r = await discardInPlace(noHoles, plan.discard, { compact: 'auto' });
  } finally {
    await image.close();
  }
  assert.ok(r.compaction && r.compaction.truncated && r.compaction.moved > 0, JSON.stringify(r.compaction));
  assert.equal(r.compaction.endAfter, statSync(img).size);
  assert.equal(size - r.compaction.endAfter, (r.planned / BLOCK) * SLOT);
  assert.equal(qemuEnd(qemuMap(img)) + 512, statSync(img).size);
  assertFooterAtEnd(img);
  assertGuestIntact(img);
  assertQemuAppends(img);
  assertGuestIntact(img);
});

test('dynamic vhd: space no BAT entry references (an interrupted run) is given back by the next run', { timeout: 300_000, skip }, async () => {
  const img = copyOf('leak.vhd');
  const before = qemuSlots(qemuMap(img));
  await inPlace(img);
  const after = qemuSlots(qemuMap(img));
  const gone = [...before].filter(([i]) => !after.has(i)).map(([, slot]) => slot);
  assert.ok(gone.length > 0);
  // As a copy made by an interrupted compaction: a whole slot of data nobody references.
  patchFile(img, gone[0]!, readBytes(pristine, before.values().next().value!, SLOT));
  const du = allocatedBytes(img);
  const { warnings } = await inPlace(img);
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0]!, /gave back \d+ bytes of the VHD that no BAT entry references/);
  // The filesystem blocks the slot only partly covers stay allocated (zeroed).
  assert.ok(du - allocatedBytes(img) >= SLOT - 16384, `du dropped ${du - allocatedBytes(img)}`);
  assertGuestIntact(img);
});

test('fixed vhd in place: holes punched before the footer, which stays as it was', { timeout: 300_000, skip }, async () => {
  const img = convertGuest(guest, 'vpc', join(work.dir, 'fixed.vhd'), ['subformat=fixed']);
  const size = statSync(img).size;
  const footer = readBytes(img, size - 512, 512);
  const du = allocatedBytes(img);
  // qemu and sparsify probe a fixed VHD as raw (no footer copy at 0): the format is given.
  const { report, infos } = await inPlace(img, { format: 'vpc', compact: true });
  assert.ok(infos.some((i) => /cannot be compacted/.test(i)), infos.join('\n'));
  assert.equal(statSync(img).size, size);
  assert.ok(readBytes(img, size - 512, 512).equals(footer), 'the footer is untouched');
  assert.ok(report.bytesDiscarded > 16 * MiB, `discarded ${report.bytesDiscarded}`);
  assert.ok(du - allocatedBytes(img) > 16 * MiB, `du dropped ${du - allocatedBytes(img)}`);
  assertGuestIntact(img);
});

test('--zero on a partition that starts and ends inside blocks: whole blocks dropped, the edges zeroed in place', { timeout: 300_000, skip }, async () => {
  const disk = makeGptDisk(work.dir, 'gpt.img');
  const img = join(work.dir, 'gpt.vhd');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', disk.path, img]);
  const p2 = disk.parts[1]!;
  assert.ok(p2.offset % BLOCK !== 0, 'the partition starts inside a block');
  const { warnings } = await inPlace(img, { zero: ['/dev/sda2'] });
  assert.deepEqual(warnings.filter((w) => /edges|not zeroed/.test(w)), []);
  const raw = join(work.dir, 'gpt-after.raw');
  run('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', img, raw]);
  const zeroed = readBytes(raw, p2.offset, p2.size);
  assert.equal(zeroed.findIndex((b) => b !== 0), -1, 'the --zero partition reads as zeros, edges included');
  assert.deepEqual(checkRawDisk(raw, disk.parts.slice(0, 1), work.dir), []);
  assertFooterAtEnd(img);
});

/**
 * qemu cannot create differencing VHDs: one is built by hand over the qemu-made parent, every
 * block allocated in the child with the parent's data (the guest reads the same disk).
 */
function makeDifferencing(parent: string, out: string): void {
  const pf = readFileSync(parent);
  const raw = join(work.dir, 'parent-view.raw');
  run('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', parent, raw]);
  const view = readFileSync(raw);
  const footer = Buffer.from(pf.subarray(0, 512));
  footer.writeUInt32BE(4, 60);
  footer.writeUInt32BE(footerSum(footer), 64);
  const dh = Buffer.from(pf.subarray(512, 1536));
  const entries = dh.readUInt32BE(28);
  const batLen = Math.ceil((entries * 4) / 512) * 512;
  const locAt = 1536 + batLen;
  const name = Buffer.from('.\\pristine.vhd', 'utf16le');
  dh.write('W2ru', 576, 'latin1');
  dh.writeUInt32BE(1, 580);
  dh.writeUInt32BE(name.length, 584);
  dh.writeBigUInt64BE(BigInt(locAt), 592);
  Buffer.from('pristine.vhd', 'utf16le').swap16().copy(dh, 64);
  dh.writeUInt32BE(0, 36);
  let sum = 0;
  for (const b of dh) sum += b;
  dh.writeUInt32BE(~sum >>> 0, 36);
  const blocks = Math.ceil(view.length / BLOCK);
  const bat = Buffer.alloc(batLen, 0xff);
  const parts: Buffer[] = [footer, dh, bat, name, Buffer.alloc(512 - name.length)];
  for (let i = 0; i < blocks; i++) {
    bat.writeUInt32BE((locAt + 512 + i * SLOT) / 512, i * 4);
    const data = Buffer.alloc(BLOCK);
    view.copy(data, 0, i * BLOCK, Math.min(view.length, (i + 1) * BLOCK));
    parts.push(Buffer.alloc(512, 0xff), data);
  }
  parts.push(footer);
  writeFileSync(out, Buffer.concat(parts));
}

test('differencing vhd: blocks kept (an absent block would show the parent), one warning with the byte count, nothing written', { timeout: 300_000, skip }, async () => {
  const dir = join(work.dir, 'diff');
  mkdirSync(dir, { recursive: true });
  const parent = copyOf('diff/pristine.vhd');
  const child = join(dir, 'child.vhd');
  makeDifferencing(parent, child);
  const sums = [sha256(readFileSync(child)), sha256(readFileSync(parent))];
  const dynamic = (await inPlace(copyOf('for-diff.vhd'))).report.bytesPlanned;
  const { report, warnings } = await inPlace(child, { format: 'vpc', compact: true });
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.equal(warnings[0], `${dynamic} bytes of free space kept: a differencing VHD cannot mark a block as zero (an absent block shows the parent disk); copy mode drops them`);
  assert.equal(report.bytesDiscarded, 0);
  assert.equal(report.compacted, false);
  assert.deepEqual([sha256(readFileSync(child)), sha256(readFileSync(parent))], sums, 'neither file changed');
});

/** The BAT of a qemu-made image: at 1536, one big-endian u32 sector per block. */
function batEntries(path: string): number[] {
  const dh = readBytes(path, 512, 1024);
  const at = Number(dh.readBigUInt64BE(16));
  const bat = readBytes(path, at, dh.readUInt32BE(28) * 4);
  return Array.from({ length: bat.length / 4 }, (_, i) => bat.readUInt32BE(i * 4));
}

function setEntry(path: string, i: number, v: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  patchFile(path, 1536 + i * 4, b);
}

test('a BAT entry past the end of the file, or two overlapping blocks: refused before anything is written', { timeout: 300_000, skip }, async () => {
  const bat = batEntries(pristine);
  const used = bat.map((v, i) => [i, v] as const).filter(([, v]) => v !== 0xffffffff);
  assert.ok(used.length >= 2);

  const past = copyOf('past-eof.vhd');
  const [i] = used[1]!;
  setEntry(past, i, statSync(past).size / 512 + 1000);
  const sum = sha256(readFileSync(past));
  // qemu agrees the image is broken.
  assert.match(runStatus('qemu-img', ['info', '-f', 'vpc', past]).stderr, /free_data_block_offset points after the end of file/);
  await assert.rejects(inPlace(past, { compact: true }), (e: Error) => {
    assert.ok(e instanceof CorruptError, String(e));
    assert.match(e.message, new RegExp(`^vpc: .*past-eof\\.vhd: BAT entry ${i} \\(at 0x${(1536 + i * 4).toString(16)}\\) points to a block at 0x[0-9a-f]+-0x[0-9a-f]+, past the end of the file \\(size 0x[0-9a-f]+\\)`));
    return true;
  });
  assert.equal(sha256(readFileSync(past)), sum, 'nothing written');
  // From the command line: one error line, exit 1, no stack trace.
  const cli = cliCommand();
  const r = spawnSync(cli.cmd, [...cli.args, '--in-place', past], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /error: vpc: .*BAT entry \d+ .*past the end of the file/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(sha256(readFileSync(past)), sum);

  const overlap = copyOf('overlap.vhd');
  const [a, va] = used[0]!;
  const [b] = used[1]!;
  setEntry(overlap, b, va + 8);
  const sum2 = sha256(readFileSync(overlap));
  await assert.rejects(inPlace(overlap), new RegExp(`BAT entries ${Math.min(a, b)} and ${Math.max(a, b)} point to overlapping blocks`));
  assert.equal(sha256(readFileSync(overlap)), sum2, 'nothing written');
});

function loopSkip(): string | false {
  if (skip) return skip;
  if (process.getuid?.() !== 0) return 'needs root for a loop device';
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

test('on a block device: a fixed vhd is discarded before its footer; a dynamic one is refused, nothing written', { timeout: 300_000, skip: loopSkip() }, async () => {
  const loops: string[] = [];
  try {
    const fixed = convertGuest(guest, 'vpc', join(work.dir, 'dev-fixed.vhd'), ['subformat=fixed']);
    const size = statSync(fixed).size;
    const footer = readBytes(fixed, size - 512, 512);
    const du = allocatedBytes(fixed);
    loops.push(run('losetup', ['-f', '--show', fixed]).trim());
    const { report } = await inPlace(loops[0]!, { format: 'vpc' });
    assert.ok(report.bytesDiscarded > 16 * MiB, `discarded ${report.bytesDiscarded}`);
    run('losetup', ['-d', loops.pop()!]);
    // The loop device passes the discard on as holes in its file.
    assert.ok(du - allocatedBytes(fixed) > 16 * MiB, `du dropped ${du - allocatedBytes(fixed)}`);
    assert.ok(readBytes(fixed, size - 512, 512).equals(footer), 'the footer is untouched');
    assertGuestIntact(fixed);

    const dynamic = copyOf('dev-dynamic.vhd');
    const sum = sha256(readFileSync(dynamic));
    loops.push(run('losetup', ['-f', '--show', dynamic]).trim());
    await assert.rejects(inPlace(loops[0]!, { format: 'vpc', compact: true }), /not supported for a dynamic VHD on a block device/);
    run('losetup', ['-d', loops.pop()!]);
    assert.equal(sha256(readFileSync(dynamic)), sum, 'nothing written');
  } finally {
    for (const l of loops) runStatus('losetup', ['-d', l]);
  }
});
