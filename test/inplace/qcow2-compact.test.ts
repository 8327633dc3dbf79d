/**
 * qcow2 compaction in place (--compact), with qemu's tools as the oracle: after the run the file
 * is no longer than `qemu-img convert -O qcow2` of the same disk would make it (within 1% plus a
 * cluster per 512 MiB), `qemu-img check` finds no errors and no leaks, `qemu-img compare` finds
 * the guest disk identical to an in-place run without compaction, and the guest's fsck and file
 * checksums pass. Covered: cluster sizes, the L1 and refcount tables and refcount blocks moved
 * (512-byte clusters with 64-bit refcounts make qemu relocate them), an L1 table qemu moved to the
 * end by a resize, compressed clusters, extended L2 entries, a backing chain's leaf, an enabled
 * persistent dirty bitmap (read back through qemu-nbd: every changed guest range is dirty), and
 * the summary line without --compact.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, statSync, readFileSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tempDir, haveTool, run, runStatus, garbageFile, readBytes } from '../helpers/fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { makeGuestDisk, guestProblems, type GuestDisk } from '../crash/scenario.js';

const tools = ['qemu-img', 'qemu-nbd', 'mke2fs', 'e2fsck', 'debugfs'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let guest: GuestDisk;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-compact-');
  guest = makeGuestDisk(work.dir, 40);
});
after(() => work?.cleanup());

function check(path: string): { status: number; output: string; end: number } {
  const r = runStatus('qemu-img', ['check', '--output=json', path]);
  const j = JSON.parse(r.stdout || '{}') as { 'image-end-offset'?: number };
  return { status: r.status, output: r.stdout + r.stderr, end: j['image-end-offset'] ?? -1 };
}

function headerOffsets(path: string): { l1: number; reftable: number } {
  const h = readBytes(path, 0, 64);
  return { l1: Number(h.readBigUInt64BE(40)), reftable: Number(h.readBigUInt64BE(48)) };
}

/**
 * Sparsify a copy of `pristine` in place without and with --compact, and check the compacted one
 * against the other and against qemu-img convert. Returns the two lengths.
 */
function compactAndCheck(name: string, pristine: string, extra: string[] = []): { plain: number; compact: number; convert: number; stdout: string } {
  const plain = join(work.dir, `${name}.plain.qcow2`);
  const compact = join(work.dir, `${name}.compact.qcow2`);
  copyFileSync(pristine, plain);
  copyFileSync(pristine, compact);
  const a = sparsify(['--in-place', ...extra, plain]);
  assert.equal(a.status, 0, a.stderr);
  const b = sparsify(['--in-place', '--compact', ...extra, compact]);
  assert.equal(b.status, 0, b.stderr);
  const c = check(compact);
  assert.equal(c.status, 0, `${name}: qemu-img check: ${c.output}`);
  assert.equal(c.end, statSync(compact).size, `${name}: the file should end where the image ends`);
  const cmp = runStatus('qemu-img', ['compare', plain, compact]);
  assert.equal(cmp.status, 0, `${name}: compare: ${cmp.stdout}${cmp.stderr}`);
  assert.deepEqual(guestProblems(compact, 'qcow2', guest, work.dir), [], name);
  const conv = join(work.dir, `${name}.convert.qcow2`);
  const h = readBytes(compact, 20, 4).readUInt32BE(0);
  run('qemu-img', ['convert', '-O', 'qcow2', '-o', `cluster_size=${2 ** h}`, compact, conv]);
  const sizes = { plain: statSync(plain).size, compact: statSync(compact).size, convert: statSync(conv).size, stdout: b.stdout };
  // The bound: within 1% plus one cluster of metadata per 512 MiB of qemu-img convert's output.
  const slack = sizes.convert * 0.01 + Math.ceil(statSync(guest.raw).size / (512 << 20)) * 2 ** h;
  assert.ok(sizes.compact <= sizes.convert + slack, `${name}: compacted ${sizes.compact} bytes, qemu-img convert ${sizes.convert}`);
  assert.ok(sizes.compact < sizes.plain, `${name}: compaction should shorten the file (${sizes.plain} -> ${sizes.compact})`);
  return sizes;
}

test('qcow2 --compact: 64 KiB, 4 KiB and 512-byte clusters, 64-bit refcounts (tables and refcount blocks move)', { skip, timeout: 300_000 }, (t) => {
  for (const opts of ['cluster_size=65536', 'cluster_size=4096', 'cluster_size=512,refcount_bits=64', 'cluster_size=2048,refcount_bits=1']) {
    const p = join(work.dir, `p-${opts.replace(/\W/g, '')}.qcow2`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', opts, guest.raw, p]);
    const before = headerOffsets(p);
    const s = compactAndCheck(`c-${opts.replace(/\W/g, '')}`, p);
    const after = headerOffsets(join(work.dir, `c-${opts.replace(/\W/g, '')}.compact.qcow2`));
    t.diagnostic(`${opts}: plain ${s.plain}, compacted ${s.compact}, qemu-img convert ${s.convert}; L1 ${before.l1} -> ${after.l1}, refcount table ${before.reftable} -> ${after.reftable}`);
    assert.match(s.stdout, /compacted: .* moved, the image is .* shorter/);
  }
});

test('qcow2 --compact: an L1 table that qemu moved to the end (resize) comes back down', { skip, timeout: 300_000 }, () => {
  const p = join(work.dir, 'resized.qcow2');
  // Every cluster allocated (-S 0), so no hole can take the bigger L1 table a resize needs (an L1
  // cluster maps 1 GiB here): qemu puts it after the data.
  run('qemu-img', ['convert', '-S', '0', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', guest.raw, p]);
  run('qemu-img', ['resize', '-q', p, '+2G']);
  const before = headerOffsets(p);
  assert.ok(before.l1 > statSync(p).size / 2, 'qemu should have moved the L1 table to the end');
  compactAndCheck('resized', p);
  const after = headerOffsets(join(work.dir, 'resized.compact.qcow2'));
  assert.ok(after.l1 < before.l1, `the L1 table should have moved down (${before.l1} -> ${after.l1})`);
});

test('qcow2 --compact: compressed clusters are repacked', { skip, timeout: 300_000 }, () => {
  const p = join(work.dir, 'z.qcow2');
  run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', guest.raw, p]);
  const s = compactAndCheck('z', p);
  assert.ok(s.compact < s.plain * 0.8, `${s.plain} -> ${s.compact}`);
});

test('qcow2 --compact: extended L2 entries (subclusters)', { skip, timeout: 300_000 }, () => {
  const p = join(work.dir, 'ext.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', guest.raw, p]);
  compactAndCheck('extl2', p);
});

test('qcow2 --compact: the leaf of a backing chain keeps reading through to its backing file', { skip, timeout: 300_000 }, () => {
  const base = join(work.dir, 'chain-base.raw');
  garbageFile(base, statSync(guest.raw).size);
  const leaf = join(work.dir, 'chain-leaf.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', 'chain-base.raw', '-F', 'raw', leaf]);
  run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', guest.raw, leaf]);
  // qemu-img convert of a leaf flattens the chain: our length stays well under its bound.
  compactAndCheck('chain-leaf', leaf);
});

test('qcow2 without --compact: the summary says how much compaction would give back, and it does', { skip, timeout: 300_000 }, () => {
  const p = join(work.dir, 'summary.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', guest.raw, p]);
  const r = sparsify(['--in-place', p]);
  assert.equal(r.status, 0, r.stderr);
  const m = /--compact would make the image .* shorter \((\d+) -> about (\d+) bytes\)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.equal(Number(m[1]), statSync(p).size);
  const again = sparsify(['--in-place', '--compact', p]);
  assert.equal(again.status, 0, again.stderr);
  assert.equal(statSync(p).size, Number(m[2]), 'compaction ends the image where the summary said');
});

/** The ranges a qcow2 bitmap marks dirty, as qemu-nbd exports them and qemu-img map reads them back. */
async function dirtyRanges(image: string, bitmap: string): Promise<Array<[number, number]>> {
  const sock = join(work.dir, `nbd-${Math.random().toString(36).slice(2)}.sock`);
  const nbd = spawn('qemu-nbd', ['-r', '-t', '-f', 'qcow2', '-B', bitmap, '-k', sock, image], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    const out = run('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,export=,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${bitmap}`]);
    // With x-dirty-bitmap, qemu-img map reports dirty ranges as "data": false.
    return (JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>).filter((e) => !e.data).map((e) => [e.start, e.start + e.length]);
  } finally {
    nbd.kill('SIGTERM');
    await new Promise((r) => nbd.once('exit', r));
  }
}

test('qcow2 --compact with an enabled persistent dirty bitmap: every changed guest range is dirty', { skip, timeout: 300_000 }, async () => {
  const p = join(work.dir, 'bitmap.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', guest.raw, p]);
  run('qemu-img', ['bitmap', '--add', '-g', '65536', p, 'inc0']);
  run('qemu-img', ['bitmap', '--add', '--disable', '-g', '65536', p, 'frozen']);
  assert.deepEqual(await dirtyRanges(p, 'inc0'), [], 'a new bitmap is clean');
  const r = sparsify(['--in-place', '--compact', p]);
  assert.equal(r.status, 0, r.stderr);
  const c = check(p);
  assert.equal(c.status, 0, c.output);
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', p])) as { 'format-specific': { data: { bitmaps: Array<{ name: string; flags: string[] }> } } };
  const flags = Object.fromEntries(info['format-specific'].data.bitmaps.map((b) => [b.name, b.flags]));
  assert.deepEqual(flags, { inc0: ['auto'], frozen: [] });
  // Every 64 KiB granule whose guest bytes changed must be dirty in the enabled bitmap.
  const before = join(work.dir, 'bitmap-before.raw');
  const afterRaw = join(work.dir, 'bitmap-after.raw');
  copyFileSync(guest.raw, before);
  run('qemu-img', ['convert', '-O', 'raw', p, afterRaw]);
  const a = readFileSync(before);
  const b = readFileSync(afterRaw);
  const dirty = await dirtyRanges(p, 'inc0');
  const isDirty = (off: number): boolean => dirty.some(([s, e]) => off >= s && off < e);
  let changed = 0;
  for (let off = 0; off < a.length; off += 65536) {
    if (a.subarray(off, off + 65536).equals(b.subarray(off, off + 65536))) continue;
    changed++;
    assert.ok(isDirty(off), `guest bytes at ${off} changed but the bitmap does not say so`);
  }
  assert.ok(changed > 50, `only ${changed} granules changed`);
  assert.deepEqual(await dirtyRanges(p, 'frozen'), [], 'a disabled bitmap is left as it was');
  assert.deepEqual(guestProblems(p, 'qcow2', guest, work.dir), []);
});

test('--compact is for --in-place only, and --machine-readable lists it', { skip, timeout: 60_000 }, () => {
  const r = sparsify(['--compact', guest.raw, join(work.dir, 'out.img')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--compact is only for --in-place mode/);
  const caps = sparsify(['--machine-readable']);
  assert.equal(caps.status, 0);
  assert.match(caps.stdout, /^compact$/m);
  const raw = join(work.dir, 'raw-compact.img');
  copyFileSync(guest.raw, raw);
  const x = sparsify(['--in-place', '--compact', raw]);
  assert.equal(x.status, 0, x.stderr);
  assert.match(x.stdout, /nothing to compact \(--compact ignored\)/);
  assert.deepEqual(guestProblems(raw, 'raw', guest, work.dir), []);
});
