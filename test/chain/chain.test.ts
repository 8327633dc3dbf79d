/**
 * The leaf of a qcow2 backing chain, sparsified in place and by a copy that keeps the backing file.
 * The chain (see helpers/chain-fixtures.ts): a GPT base with ext4 + ext2 and deleted files, and a
 * leaf whose changes were made through the overlay, including a file written and then deleted (the
 * leaf's own free space) and a used file of zeros held as zero clusters over the base's garbage.
 *
 * Oracle: qemu-img map (the leaf's own clusters), qemu-img check on leaf and base, the base's bytes
 * unchanged, and the guest's view (qemu-img convert of the leaf) checked by e2fsck, every file's
 * checksum, and dumpe2fs's free list: no used byte reads differently.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, renameSync, existsSync } from 'node:fs';
import { tempDir, run, haveTool, allocatedBytes, readBytes } from '../helpers/fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { checkRawDisk, qemuCheck } from '../inplace/crash-helpers.js';
import { e2fsck, extFileSums, extract } from '../helpers/ext-fixtures.js';
import {
  buildChainBase,
  buildLeaf,
  changedOutside,
  fileSha,
  freeRanges,
  guestView,
  ownDataBytes,
  type ChainBase,
} from '../helpers/chain-fixtures.js';
import { Extents } from '../../src/io/extents.js';
import { sparsifyCopy } from '../../src/operations/copy.js';

const tools = ['qemu-img', 'qemu-io', 'sgdisk', 'mke2fs', 'e2fsck', 'debugfs', 'dumpe2fs'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : false;
const CLUSTER = 64 << 10;

interface Analysis {
  reclaimableBytes: number;
  freeInGuestBytes: number;
  snapshotOnlyBytes: number;
  ownDataBytes: number;
  dataBytes: number;
  snapshotAdvice?: string;
}

describe('the leaf of a qcow2 chain', { skip, timeout: 240_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let b: ChainBase;
  /** Pristine leaves (v3 and v2), their guest view before anything, and that view's free ranges. */
  const leaves: Record<'v3' | 'v2', string> = { v3: '', v2: '' };
  let view0: string;
  let free0: Array<{ start: number; end: number }>;
  let baseSha: string;

  before(() => {
    work = tempDir('sparsify-chain-');
    b = buildChainBase(work.dir);
    leaves.v3 = buildLeaf(b, 'leaf-v3.qcow2', 'compat=1.1');
    leaves.v2 = buildLeaf(b, 'leaf-v2.qcow2', 'compat=0.10');
    view0 = guestView(leaves.v3, join(work.dir, 'view0.raw'));
    assert.deepEqual(checkRawDisk(view0, b.parts, work.dir), [], 'the fixture itself');
    free0 = freeRanges(view0, b.parts, work.dir);
    baseSha = fileSha(b.base);
  });
  after(() => work?.cleanup());

  /** A fresh copy of a pristine leaf, beside it (its relative backing name still resolves). */
  function fresh(which: 'v3' | 'v2', name: string): string {
    const p = join(work.dir, name);
    copyFileSync(leaves[which], p);
    return p;
  }

  /** The guest's view of `image` reads as before in every used byte; the base is untouched. */
  function assertGuestIntact(image: string): void {
    const c = qemuCheck(image);
    assert.equal(c.status, 0, c.output);
    const view = guestView(image, join(work.dir, `view-${Math.random().toString(36).slice(2)}.raw`));
    try {
      assert.deepEqual(checkRawDisk(view, b.parts, work.dir), []);
      assert.deepEqual(changedOutside(view0, view, free0), [], 'used bytes changed');
    } finally {
      run('rm', ['-f', view]);
    }
    assert.equal(fileSha(b.base), baseSha, 'the base changed');
    assert.equal(qemuCheck(b.base).status, 0);
  }

  function analyze(image: string): Analysis {
    const r = sparsify(['--analyze', '--json', image]);
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as Analysis;
  }

  test('--analyze: reclaimable counts only the leaf’s own wholly free clusters; snapshot-only space is reported apart', (t) => {
    const a = analyze(leaves.v3);
    // The leaf's own clusters, as qemu-img map sees them.
    assert.equal(a.ownDataBytes, ownDataBytes(leaves.v3));
    // dumpe2fs's free blocks, aligned inward to clusters, within the leaf's own data clusters.
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', leaves.v3])) as Array<{ start: number; length: number; depth: number; data: boolean }>;
    const own = new Extents(map.filter((m) => m.depth === 0 && m.data).map((m) => ({ start: m.start, end: m.start + m.length })));
    const oracle = new Extents(free0).alignInward(CLUSTER).intersect(own).total();
    t.diagnostic(`leaf own ${a.ownDataBytes}, reclaimable ${a.reclaimableBytes} (dumpe2fs: ${oracle}), free in guest ${a.freeInGuestBytes}, snapshot-only ${a.snapshotOnlyBytes}`);
    assert.ok(a.reclaimableBytes >= oracle && a.reclaimableBytes <= a.ownDataBytes, `reclaimable ${a.reclaimableBytes}, oracle ${oracle}`);
    assert.ok(a.reclaimableBytes >= b.leafGoneBytes * 0.9, 'the file deleted through the overlay is reclaimable');
    // The base's deleted files and its garbage free space are held by the base only.
    assert.ok(a.snapshotOnlyBytes > 15 << 20, `snapshot-only ${a.snapshotOnlyBytes}`);
    assert.ok(a.freeInGuestBytes >= a.reclaimableBytes + a.snapshotOnlyBytes);
    assert.match(a.snapshotAdvice ?? '', /held only by earlier snapshots .* merge the snapshots first/);
    const text = sparsify(['--analyze', leaves.v3]).stdout;
    assert.match(text, /Reclaimable: .* allocated in the top image file/);
    assert.match(text, /only in backing files \(earlier snapshots\): not reclaimable/);
  });

  test('in place on a v3 leaf: its own free clusters go, the base and every used byte stay', (t) => {
    const leaf = fresh('v3', 'inplace-v3.qcow2');
    const expected = analyze(leaf).reclaimableBytes;
    const du0 = allocatedBytes(leaf);
    const r = sparsify(['--in-place', leaf]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /merge the snapshots first/);
    const du1 = allocatedBytes(leaf);
    t.diagnostic(`leaf actual size ${du0} -> ${du1} bytes (reclaimable was ${expected})`);
    assert.ok(du0 - du1 >= b.leafGoneBytes * 0.9, `du dropped by ${du0 - du1}`);
    assert.ok(Math.abs(du0 - du1 - expected) <= 4 * CLUSTER, `dropped ${du0 - du1}, announced ${expected}`);
    assertGuestIntact(leaf);
    assert.ok(analyze(leaf).reclaimableBytes === 0, 'nothing left to give back');
  });

  test('in place on a v2 leaf: clusters are kept (v2 cannot say zero), the user is told why, nothing changes', () => {
    const leaf = fresh('v2', 'inplace-v2.qcow2');
    const sha = fileSha(leaf);
    const r = sparsify(['--in-place', leaf]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /version 2 .*cannot mark clusters as zero/);
    assert.equal(fileSha(leaf), sha);
    assertGuestIntact(leaf);
  });

  test('in place with --zero on a partition the leaf never wrote: it reads as zero, not as the base', () => {
    const leaf = fresh('v3', 'zero-v3.qcow2');
    const r = sparsify(['--in-place', '--zero', '/dev/sda2', leaf]);
    assert.equal(r.status, 0, r.stderr);
    const c = qemuCheck(leaf);
    assert.equal(c.status, 0, c.output);
    const view = guestView(leaf, join(work.dir, 'zero-view.raw'));
    // Whole clusters read as zero; the partition's unaligned tail is left, and the user told so.
    const p2 = b.parts[1]!;
    const whole = Extents.of(p2.offset, p2.offset + p2.size).alignInward(CLUSTER).toArray()[0]!;
    assert.ok(whole.end - whole.start > p2.size - CLUSTER);
    assert.ok(readBytes(view, whole.start, whole.end - whole.start).equals(Buffer.alloc(whole.end - whole.start)), '/dev/sda2 reads as zero');
    assert.match(r.stdout, /bytes at the unaligned edges of --zero devices were left as they were/);
    assert.deepEqual(checkRawDisk(view, [b.parts[0]!], work.dir), []);
    assert.equal(fileSha(b.base), baseSha);
  });

  for (const which of ['v3', 'v2'] as const) {
    test(`copy keeping the backing file (${which}): a smaller overlay on the same base that can replace the leaf`, async (t) => {
      const leaf = fresh(which, `copy-${which}.qcow2`);
      const out = join(work.dir, `copy-${which}.new.qcow2`);
      const report = await sparsifyCopy({ input: leaf, output: out, keepBacking: true });
      assert.equal(report.backingFile, 'base.qcow2');
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', out])) as {
        'backing-filename'?: string;
        'backing-filename-format'?: string;
        'format-specific'?: { data?: { compat?: string } };
      };
      assert.equal(info['backing-filename'], 'base.qcow2');
      assert.equal(info['backing-filename-format'], 'qcow2');
      assert.equal(info['format-specific']?.data?.compat, which === 'v3' ? '1.1' : '0.10');
      const before = allocatedBytes(leaf);
      const sized = allocatedBytes(out);
      t.diagnostic(`${which}: leaf actual size ${before} bytes, keep-backing copy ${sized} bytes`);
      assert.ok(before - sized >= b.leafGoneBytes * 0.9, `copy is ${sized}, leaf ${before}`);
      assertGuestIntact(out);
      // Renamed over the leaf, as the service's copy-and-replace does.
      renameSync(out, leaf);
      assertGuestIntact(leaf);
    });
  }

  test('a copy that would land on a backing file is refused, and the base stays', async () => {
    const leaf = fresh('v3', 'refuse.qcow2');
    await assert.rejects(sparsifyCopy({ input: leaf, output: b.base, keepBacking: true }), /it is a backing file of/);
    await assert.rejects(sparsifyCopy({ input: leaf, output: b.base }), /it is a backing file of/);
    assert.equal(fileSha(b.base), baseSha);
  });

  test('internal snapshots: in place and keep-backing copy refuse (they cannot keep them); plain copy says it drops them', async () => {
    const leaf = fresh('v3', 'snap.qcow2');
    run('qemu-img', ['snapshot', '-c', 'before-upgrade', leaf]);
    const sha = fileSha(leaf);
    const r = sparsify(['--in-place', leaf]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /1 internal snapshot\(s\), which in-place mode cannot keep/);
    await assert.rejects(sparsifyCopy({ input: leaf, output: join(work.dir, 'snap.new.qcow2'), keepBacking: true }), /1 internal snapshot\(s\), which a copy cannot keep/);
    assert.equal(existsSync(join(work.dir, 'snap.new.qcow2')), false);
    assert.equal(fileSha(leaf), sha);
    const flat = join(work.dir, 'snap-flat.qcow2');
    const c = sparsify([leaf, flat]);
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stdout, /internal snapshot\(s\) of .* are not copied/);
    // Flattened (virt-sparsify's copy mode): no backing file, every file intact.
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', flat])) as { 'backing-filename'?: string };
    assert.equal(info['backing-filename'], undefined);
    const view = guestView(flat, join(work.dir, 'flat.raw'));
    const p1 = b.parts[0]!;
    extract(view, p1.offset, p1.size, join(work.dir, 'flat-p1.img'));
    assert.equal(e2fsck(join(work.dir, 'flat-p1.img')).status, 0);
    assert.deepEqual(extFileSums(join(work.dir, 'flat-p1.img'), work.dir), p1.sums);
  });
});
