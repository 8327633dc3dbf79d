/**
 * In-place mode on VMDK images made by qemu-img from a guest disk (whole-disk ext4 on garbage,
 * files deleted so their data lies in free blocks): monolithicSparse with and without
 * zeroed_grain, with and without --compact, delta disks over a parent, a block device, and the
 * refusals. Oracles, none of them our reader: qemu-img check and compare, qemu's own driver
 * (qemu-img convert, qemu-io), e2fsck and every file's checksum, every changed guest block zero
 * and free for e2fsprogs, and the grain tables parsed here on their own (GT and RGT in step, no
 * grain shared or over metadata, no host space held that no grain table entry points at).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, readFileSync, statSync, openSync, readSync, closeSync, appendFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tempDir, haveTool, run, runStatus, sha256, garbageFile, patchFile } from '../helpers/fixtures.js';
import * as sys from '../../src/io/syscalls.js';
import { dumpe2fsFree, dumpe2fsUnusedItables } from '../helpers/ext-fixtures.js';
import { makeGuestDisk, guestProblems, type GuestDisk } from '../crash/scenario.js';
import { cliCommand, makeGptDisk, checkRawDisk } from './crash-helpers.js';
import { sparsifyInPlace, type InPlaceRequest } from '../../src/operations/in-place.js';
import { CorruptError, SparsifyError } from '../../src/io/errors.js';
import { Extents } from '../../src/io/extents.js';

const missing = ['qemu-img', 'qemu-io', 'mke2fs', 'e2fsck', 'debugfs', 'dumpe2fs'].filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;
/** Guest bytes e2fsprogs calls free: the only ones whose content may change. */
let free: Extents;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-vmdk-');
  // 40 MiB: two grain tables of 512 64-KiB grains.
  guest = makeGuestDisk(work.dir, 40);
  const ranges = [...dumpe2fsFree(guest.raw).ranges, ...dumpe2fsUnusedItables(guest.raw)];
  free = new Extents(ranges.map(([start, end]) => ({ start, end })));
});
after(() => work?.cleanup());

function vmdk(name: string, options: string[] = [], extra: string[] = []): string {
  const out = join(work.dir, name);
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', ...(options.length ? ['-o', options.join(',')] : []), ...extra, guest.raw, out]);
  return out;
}

async function inPlace(path: string, extra: Partial<InPlaceRequest> = {}) {
  const warnings: string[] = [];
  const report = await sparsifyInPlace({ path, onWarning: (w) => warnings.push(w), ...extra });
  return { report, warnings };
}

/** The grain tables of a monolithicSparse file, parsed here from the specification alone. */
function grainTables(path: string) {
  const f = readFileSync(path);
  const flags = f.readUInt32LE(8);
  const capacity = Number(f.readBigUInt64LE(12));
  const grainSectors = Number(f.readBigUInt64LE(20));
  const perTable = f.readUInt32LE(44);
  const rgd = Number(f.readBigUInt64LE(48));
  const gd = Number(f.readBigUInt64LE(56));
  const overhead = Number(f.readBigUInt64LE(64)) * 512;
  const tables = Math.ceil(Math.ceil(capacity / grainSectors) / perTable);
  const read = (dir: number) => {
    const out = new Uint32Array(tables * perTable);
    for (let t = 0; t < tables; t++) {
      const at = f.readUInt32LE(dir * 512 + t * 4) * 512;
      for (let k = 0; at && k < perTable; k++) out[t * perTable + k] = f.readUInt32LE(at + k * 4);
    }
    return out;
  };
  return { flags, grainBytes: grainSectors * 512, overhead, size: f.length, gt: read(gd), rgt: flags & 2 ? read(rgd) : undefined };
}

/** Bytes of data the file holds above `from` that no grain (sorted starts) covers: space nothing references. */
function unreferencedData(path: string, from: number, grains: readonly number[], grainBytes: number): number {
  const fd = openSync(path, 'r');
  try {
    const size = statSync(path).size;
    let unreferenced = 0;
    let g = 0;
    for (let pos = from; pos < size; ) {
      const data = sys.seekData(fd, pos);
      if (data < 0) break;
      const hole = Math.min(size, sys.seekHole(fd, data));
      for (let at = data; at < hole; ) {
        while (g < grains.length && grains[g]! + grainBytes <= at) g++;
        const next = g < grains.length ? Math.min(grains[g]!, hole) : hole;
        if (next > at) unreferenced += next - at;
        at = next > at ? next : Math.min(hole, grains[g]! + grainBytes);
      }
      pos = hole;
    }
    return unreferenced;
  } finally {
    closeSync(fd);
  }
}

/** Problems of the grain tables: grains inside the file, above the metadata, unshared; RGT = GT; no unreferenced space held. */
function structureProblems(path: string): string[] {
  const m = grainTables(path);
  const problems: string[] = [];
  const zeroFlag = (m.flags & 4) !== 0;
  const grains = [...m.gt].filter((e) => e > 1 || (e === 1 && !zeroFlag)).map((e) => e * 512).sort((a, b) => a - b);
  grains.forEach((at, i) => {
    if (at < m.overhead) problems.push(`grain at ${at} inside the metadata area`);
    if (at >= m.size) problems.push(`grain at ${at} past the end of the file (${m.size})`);
    if (i > 0 && at - grains[i - 1]! < m.grainBytes) problems.push(`grains at ${grains[i - 1]} and ${at} overlap`);
  });
  if (m.rgt && !m.rgt.every((v, i) => v === m.gt[i])) problems.push('the redundant grain tables differ from the grain tables');
  const unreferenced = unreferencedData(path, m.overhead, grains, m.grainBytes);
  if (unreferenced) problems.push(`${unreferenced} bytes of data that no grain table entry points at`);
  return problems;
}

/** Every 4-KiB guest block that differs from the guest disk must be zero now and free for e2fsprogs. */
function changedBlockProblems(image: string, reference = guest.raw): { problems: string[]; changed: number } {
  const raw = join(work.dir, `changed-${Math.random().toString(36).slice(2)}.raw`);
  run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', image, raw]);
  const problems: string[] = [];
  let changed = 0;
  const a = openSync(raw, 'r');
  const b = openSync(reference, 'r');
  try {
    const x = Buffer.alloc(1 << 20);
    const y = Buffer.alloc(1 << 20);
    const size = statSync(reference).size;
    for (let off = 0; off < size; off += x.length) {
      readSync(a, x, 0, x.length, off);
      readSync(b, y, 0, y.length, off);
      for (let blk = 0; blk < x.length; blk += 4096) {
        const p = x.subarray(blk, blk + 4096);
        if (p.equals(y.subarray(blk, blk + 4096))) continue;
        changed++;
        const at = off + blk;
        if (!p.every((v) => v === 0)) problems.push(`guest block at ${at} changed and is not zero`);
        else if (free.clip(at, at + 4096).total() !== 4096) problems.push(`guest block at ${at} is in use but now reads zero`);
        if (problems.length > 10) return { problems, changed };
      }
    }
  } finally {
    closeSync(a);
    closeSync(b);
    run('rm', ['-f', raw]);
  }
  return { problems, changed };
}

function qemuCheck(path: string): void {
  const c = runStatus('qemu-img', ['check', '-f', 'vmdk', path]);
  assert.equal(c.status, 0, c.stdout + c.stderr);
}

/** All the oracles on an image sparsified in place from the guest disk. */
function assertWhole(path: string): void {
  qemuCheck(path);
  assert.deepEqual(guestProblems(path, 'vmdk', guest, work.dir), []);
  const c = changedBlockProblems(path);
  assert.deepEqual(c.problems, []);
  assert.ok(c.changed > 1000, `only ${c.changed} guest blocks changed`);
  assert.deepEqual(structureProblems(path), []);
}

const VARIANTS = [
  { name: 'monolithicSparse', options: [] as string[] },
  { name: 'monolithicSparse, zeroed_grain=on', options: ['zeroed_grain=on'] },
];

for (const v of VARIANTS) {
  test(`${v.name}: free grains unallocated and released, file length kept, a second run changes nothing`, { skip, timeout: 120_000 }, async () => {
    const img = vmdk(`keep-${v.options.length}.vmdk`, v.options);
    const size = statSync(img).size;
    const { report } = await inPlace(img);
    assert.equal(report.format, 'vmdk');
    assert.equal(statSync(img).size, size);
    assert.ok(report.bytesDiscarded > 15 << 20, `discarded ${report.bytesDiscarded}`);
    assert.ok(report.allocatedBefore - report.allocatedAfter > 15 << 20, `du dropped by ${report.allocatedBefore - report.allocatedAfter}`);
    assert.ok(report.compactableEnd !== undefined && report.compactableEnd < size - (15 << 20), `compactable end ${report.compactableEnd} of ${size}`);
    assertWhole(img);
    const sum = sha256(readFileSync(img));
    const again = await inPlace(img);
    assert.equal(sha256(readFileSync(img)), sum);
    assert.deepEqual(again.warnings, []);
  });

  test(`${v.name} --compact: grains moved down, file cut after the last one, qemu still writes it`, { skip, timeout: 120_000 }, async () => {
    const plain = vmdk(`plain-${v.options.length}.vmdk`, v.options);
    const img = vmdk(`compact-${v.options.length}.vmdk`, v.options);
    const size = statSync(img).size;
    const planned = (await inPlace(plain)).report.compactableEnd!;
    const { report } = await inPlace(img, { compact: true });
    assert.equal(report.compacted, true);
    assert.ok(report.bytesMoved > 0);
    assert.equal(statSync(img).size, report.endAfter);
    assert.equal(report.endAfter, planned, 'the end --compact reached is the one announced without it');
    assert.ok(report.endAfter < size - (15 << 20), `${size} -> ${report.endAfter}`);
    assertWhole(img);
    const cmp = runStatus('qemu-img', ['compare', '-f', 'vmdk', '-F', 'vmdk', plain, img]);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    // qemu appends a new grain at the (new) end and reads it back.
    const at = Math.floor(free.toArray().at(-1)!.start / 65536 + 1) * 65536;
    run('qemu-io', ['-f', 'vmdk', '-c', `write -P 0x5a ${at} 65536`, img]);
    assert.ok(statSync(img).size > report.endAfter);
    qemuCheck(img);
    assert.match(run('qemu-io', ['-f', 'vmdk', '-c', `read -P 0x5a ${at} 65536`, img]), /read 65536\/65536/);
    assert.deepEqual(structureProblems(img), []);
  });
}

test('the CLI: --in-place --compact on a vmdk', { skip, timeout: 120_000 }, () => {
  const img = vmdk('cli.vmdk');
  const size = statSync(img).size;
  const { cmd, args } = cliCommand();
  const r = spawnSync(cmd, [...args, '--in-place', '--compact', img], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /compacted: .* moved, the image is .* shorter/);
  assert.ok(statSync(img).size < size - (15 << 20));
  assertWhole(img);
});

/** A delta disk over a parent full of garbage: every guest block is this disk's own grain. */
function delta(name: string, options: string[]): { parent: string; img: string } {
  const parentRaw = join(work.dir, `${name}-parent.raw`);
  garbageFile(parentRaw, statSync(guest.raw).size);
  const parent = join(work.dir, `${name}-parent.vmdk`);
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', parentRaw, parent]);
  const img = vmdk(`${name}.vmdk`, options, ['-B', parent, '-F', 'vmdk']);
  assert.match(run('qemu-img', ['info', img]), /backing file: /);
  return { parent, img };
}

test('delta disk with the zeroed-grain flag: free grains become zeroed grains, the parent never shows through', { skip, timeout: 120_000 }, async () => {
  const { parent, img } = delta('delta-z', ['zeroed_grain=on']);
  const parentSum = sha256(readFileSync(parent));
  const size = statSync(img).size;
  const { report, warnings } = await inPlace(img, { compact: true });
  assert.deepEqual(warnings, []);
  assert.ok(report.bytesDiscarded > 15 << 20);
  assert.ok(statSync(img).size < size - (15 << 20));
  assertWhole(img);
  assert.equal(sha256(readFileSync(parent)), parentSum, 'the parent is never written');
  // Zeroed grains, not unallocated ones: qemu's map says zero at depth 0.
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'vmdk', img])) as Array<{ depth: number; zero: boolean; length: number }>;
  const ownZero = map.filter((e) => e.depth === 0 && e.zero).reduce((a, e) => a + e.length, 0);
  assert.ok(ownZero > 15 << 20, `${ownZero} bytes of zeroed grains`);
});

test('delta disk without the zeroed-grain flag: grains kept, one warning with the byte count, nothing written', { skip, timeout: 120_000 }, async () => {
  const { img } = delta('delta-plain', []);
  const sum = sha256(readFileSync(img));
  const { report, warnings } = await inPlace(img, { compact: true });
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0]!, /^\d+ bytes of free space kept: this delta VMDK has no zeroed-grain flag/);
  assert.equal(Number(/^(\d+)/.exec(warnings[0]!)![1]), report.bytesKept);
  assert.ok(report.bytesKept! > 15 << 20);
  assert.equal(sha256(readFileSync(img)), sum);
  qemuCheck(img);
  assert.deepEqual(guestProblems(img, 'vmdk', guest, work.dir), []);
});

test('--zero over a parent: grains marked zeroed with the flag; without it, one warning and the parent kept', { skip: skip || (haveTool('sgdisk') ? false : 'missing sgdisk'), timeout: 120_000 }, async () => {
  const dir = join(work.dir, 'zero');
  run('mkdir', ['-p', dir]);
  const disk = makeGptDisk(dir, 'gpt.raw', 48);
  const p2 = disk.parts[1]!;
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', disk.path, join(dir, 'parent.vmdk')]);
  for (const flag of [true, false]) {
    const img = join(dir, `child-${flag}.vmdk`);
    // An empty delta: every guest byte is the parent's.
    run('qemu-img', ['create', '-q', '-f', 'vmdk', ...(flag ? ['-o', 'zeroed_grain=on'] : []), '-b', 'parent.vmdk', '-F', 'vmdk', img]);
    const { warnings } = await inPlace(img, { zero: ['/dev/sda2'] });
    qemuCheck(img);
    const raw = join(dir, `child-${flag}.raw`);
    run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', img, raw]);
    assert.deepEqual(checkRawDisk(raw, disk.parts.slice(0, 1), dir), [], 'partition 1 is the parent\'s, untouched');
    const g = 65536;
    const whole = { start: Math.ceil(p2.offset / g) * g, end: Math.floor((p2.offset + p2.size) / g) * g };
    const zeros = (r: { start: number; end: number }) => {
      const fd = openSync(raw, 'r');
      try {
        const b = Buffer.alloc(r.end - r.start);
        readSync(fd, b, 0, b.length, r.start);
        return b.every((v) => v === 0);
      } finally {
        closeSync(fd);
      }
    };
    if (flag) {
      assert.ok(zeros(whole), 'the whole grains of /dev/sda2 read as zero');
      // The partition's last, partial grain has no grain of its own to zero: said, not hidden.
      assert.ok(warnings.some((w) => /bytes at the unaligned edges of --zero devices still read as the parent disk's data/.test(w)), warnings.join('\n'));
    } else {
      assert.ok(!zeros(whole));
      assert.ok(warnings.some((w) => /bytes of --zero devices still read as the parent disk's data/.test(w)), warnings.join('\n'));
    }
    assert.deepEqual(structureProblems(img), []);
  }
});

test('a block device: compaction reports the new end; what lies below it is a whole image', { skip: skip || loopSkip(), timeout: 120_000 }, async () => {
  const img = vmdk('dev.vmdk');
  const backing = join(work.dir, 'dev.backing');
  copyFileSync(img, backing);
  appendFileSync(backing, Buffer.alloc(4 << 20, 0xee));
  const loop = run('losetup', ['-f', '--show', backing]).trim();
  try {
    const { report } = await inPlace(loop, { format: 'vmdk', compact: true });
    assert.equal(report.isBlockDevice, true);
    assert.ok(report.endAfter < statSync(img).size - (15 << 20), `end ${report.endAfter}`);
    const head = join(work.dir, 'dev-head.vmdk');
    run('dd', [`if=${loop}`, `of=${head}`, 'bs=64K', `count=${report.endAfter / 65536}`, 'status=none']);
    qemuCheck(head);
    assert.deepEqual(guestProblems(head, 'vmdk', guest, work.dir), []);
    assert.deepEqual(changedBlockProblems(head).problems, []);
  } finally {
    runStatus('losetup', ['-d', loop]);
  }
});

function loopSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for a loop device';
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

test('an interrupted run is finished: RGT entries rewritten from the GT, unreferenced grains given back', { skip, timeout: 120_000 }, async () => {
  const img = vmdk('repair.vmdk');
  const m = grainTables(img);
  // An RGT entry behind its GT (a cut between the two writes), and a copy nobody points at yet.
  const k = m.gt.findIndex((e) => e > 1);
  const rgd = Number(readFileSync(img).readBigUInt64LE(48));
  const rgtAt = readFileSync(img).readUInt32LE(rgd * 512) * 512;
  patchFile(img, rgtAt + k * 4, Buffer.alloc(4));
  appendFileSync(img, randomBytes(3 * 65536));
  assert.notDeepEqual(structureProblems(img), []);
  const { warnings } = await inPlace(img);
  assert.ok(warnings.some((w) => /gave back \d+ bytes of VMDK grain space nothing referenced/.test(w)), warnings.join('\n'));
  assertWhole(img);
});

test('refused with copy mode named, nothing written: streamOptimized, split and flat VMDKs', { skip, timeout: 120_000 }, async () => {
  const cases: Array<{ sub: string; re: RegExp }> = [
    { sub: 'streamOptimized', re: /streamOptimized VMDK images .* cannot be changed in place; use copy mode/ },
    { sub: 'twoGbMaxExtentSparse', re: /a twoGbMaxExtentSparse VMDK .*: --in-place supports only monolithicSparse .*; use copy mode/ },
    { sub: 'monolithicFlat', re: /a monolithicFlat VMDK .*: --in-place supports only monolithicSparse .*; use copy mode/ },
  ];
  for (const c of cases) {
    const dir = join(work.dir, c.sub);
    run('mkdir', ['-p', dir]);
    const img = join(dir, 'disk.vmdk');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${c.sub}`, guest.raw, img]);
    const sums = () => run('sh', ['-c', `cd ${dir} && sha256sum *`]);
    const before = sums();
    await assert.rejects(inPlace(img), (e: Error) => e instanceof SparsifyError && c.re.test(e.message));
    assert.equal(sums(), before, c.sub);
  }
});

test('a grain table entry past the end of the file: refused with the table and offset named, nothing written', { skip, timeout: 120_000 }, async () => {
  const img = vmdk('past-eof.vmdk');
  const f = readFileSync(img);
  const gtAt = f.readUInt32LE(Number(f.readBigUInt64LE(56)) * 512) * 512;
  const m = grainTables(img);
  const k = m.gt.findIndex((e) => e > 1);
  // Only the GT: qemu reads it, and so does copy mode.
  patchFile(img, gtAt + k * 4, Buffer.from([0x00, 0x00, 0x10, 0x00]));
  const sum = sha256(readFileSync(img));
  await assert.rejects(inPlace(img), (e: Error) => e instanceof CorruptError && /grain table 0 at 0x[0-9a-f]+, entry \d+ .* beyond end of file/.test(e.message));
  const { cmd, args } = cliCommand();
  const r = spawnSync(cmd, [...args, '--in-place', img], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /error: vmdk: .*grain table 0 .* beyond end of file/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(sha256(readFileSync(img)), sum);
});

test('two grain table entries sharing a grain: refused, nothing written', { skip, timeout: 120_000 }, async () => {
  const img = vmdk('shared.vmdk');
  const f = readFileSync(img);
  const m = grainTables(img);
  const ks = [...m.gt.keys()].filter((k) => m.gt[k]! > 1).slice(0, 2);
  for (const dir of [Number(f.readBigUInt64LE(56)), Number(f.readBigUInt64LE(48))]) {
    patchFile(img, f.readUInt32LE(dir * 512) * 512 + ks[1]! * 4, Buffer.from(new Uint32Array([m.gt[ks[0]!]!]).buffer));
  }
  const sum = sha256(readFileSync(img));
  await assert.rejects(inPlace(img), (e: Error) => e instanceof CorruptError && /overlap at host offset/.test(e.message));
  assert.equal(sha256(readFileSync(img)), sum);
});
