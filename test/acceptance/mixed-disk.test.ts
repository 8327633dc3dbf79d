/**
 * The filesystems acceptance test: one GPT disk with ext4, XFS, btrfs, NTFS, vfat, swap and an
 * LVM PV (ext4 LV in two segments, XFS LV, free extents), every one built by its own tools on
 * garbage (test/fixtures/make-mixed-disk.sh). After `sparsify --machine-readable IN OUT`, each
 * filesystem is cut out of the output and judged by its own tools only: its fsck, its own way of
 * reading every file back, its own free-space figure, which we must reclaim to >= 90 %.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { openSync, readSync, writeSync, closeSync, ftruncateSync, mkdirSync, writeFileSync } from 'node:fs';
import { tempDir, run, runStatus, haveTool, allocatedBytes, sha256, repoPath } from '../helpers/fixtures.js';
import { dumpe2fsFree, extFileSums, treeSums } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { seekData, seekHole } from '../../src/io/syscalls.js';
import { xfsDb, readThroughXfsDb } from '../helpers/xfs-fixtures.js';

interface MixedVolume {
  device: string;
  fs: 'ext4' | 'xfs' | 'btrfs' | 'ntfs' | 'vfat' | 'swap' | 'LVM2_member';
  /** [disk offset, length] of each piece, in volume order. */
  ranges: Array<[number, number]>;
  label: string;
  uuid: string;
  files: Record<string, string>;
  swapBytes?: number;
  vg?: string;
  vgFreeBytes?: number;
  vgFreeRanges?: Array<[number, number]>;
}

interface MixedManifest {
  disk: string;
  size: number;
  volumes: MixedVolume[];
}

const skip = !haveTool('losetup')
  ? 'losetup is not available: the LVM tools need a loop device to build the PV'
  : process.getuid?.() !== 0
    ? 'needs root for the loop device the LVM tools build the PV on'
    : false;

const MiB = 1 << 20;
const CONTENT: Record<string, string> = { ext4: 'ext4', xfs: 'xfs', btrfs: 'btrfs', ntfs: 'ntfs', vfat: 'vfat', swap: 'swap', LVM2_member: 'lvm2' };

/** Copy a volume's pieces out of `disk` into a file, leaving zero MiBs as holes. */
function extractVolume(disk: string, ranges: Array<[number, number]>, out: string): void {
  const buf = Buffer.allocUnsafe(MiB);
  const zero = Buffer.alloc(MiB);
  const sfd = openSync(disk, 'r');
  const dfd = openSync(out, 'w');
  try {
    let pos = 0;
    for (const [off, len] of ranges) {
      for (let o = 0; o < len; o += MiB) {
        const n = readSync(sfd, buf, 0, Math.min(MiB, len - o), off + o);
        assert.equal(n, Math.min(MiB, len - o), `short read at ${off + o}`);
        if (!buf.subarray(0, n).equals(zero.subarray(0, n))) writeSync(dfd, buf, 0, n, pos + o);
      }
      pos += len;
    }
    ftruncateSync(dfd, pos);
  } finally {
    closeSync(sfd);
    closeSync(dfd);
  }
}

/**
 * Bytes we gave back over `ranges`: 4 KiB blocks that hold something (non-zero) in the input and
 * are holes in the output. Blocks that were zero already do not count, so mkfs's zeroed metadata
 * cannot pass for reclaimed free space.
 */
function reclaimedBytes(input: string, output: string, ranges: Array<[number, number]>): number {
  const ifd = openSync(input, 'r');
  const ofd = openSync(output, 'r');
  const buf = Buffer.allocUnsafe(MiB);
  const zero = Buffer.alloc(4096);
  let total = 0;
  const count = (a: number, b: number): void => {
    for (let o = a; o < b; o += MiB) {
      const n = readSync(ifd, buf, 0, Math.min(MiB, b - o), o);
      for (let i = 0; i < n; i += 4096) if (!buf.subarray(i, Math.min(n, i + 4096)).equals(zero.subarray(0, Math.min(4096, n - i)))) total += Math.min(4096, n - i);
    }
  };
  try {
    for (const [off, len] of ranges) {
      const end = off + len;
      let pos = off;
      while (pos < end) {
        const d = seekData(ofd, pos);
        const holeEnd = d < 0 ? end : Math.min(d, end);
        if (holeEnd > pos) count(pos, holeEnd);
        if (d < 0 || d >= end) break;
        pos = seekHole(ofd, d);
      }
    }
  } finally {
    closeSync(ifd);
    closeSync(ofd);
  }
  return total;
}

// --- each filesystem's own view ----------------------------------------------------------------

interface FsVerdict {
  /** Free bytes as the filesystem's own tools count them. */
  toolsFree: number;
}

function checkExt(img: string, v: MixedVolume, dir: string): FsVerdict {
  const fsck = runStatus('e2fsck', ['-fn', img]);
  assert.equal(fsck.status, 0, `${v.device}: e2fsck -fn:\n${fsck.stdout}${fsck.stderr}`);
  assert.deepEqual(Object.fromEntries(extFileSums(img, dir)), v.files, `${v.device}: files read back by debugfs rdump`);
  return { toolsFree: dumpe2fsFree(img).ranges.reduce((s, [a, b]) => s + b - a, 0) };
}

function checkXfs(img: string, v: MixedVolume): FsVerdict {
  const repair = runStatus('xfs_repair', ['-n', img]);
  assert.equal(repair.status, 0, `${v.device}: xfs_repair -n:\n${repair.stdout}${repair.stderr}`);
  const sb = xfsDb(img, 'sb 0', 'p blocksize agblocks');
  const bs = Number(/blocksize = (\d+)/.exec(sb)![1]);
  const agBlocks = Number(/agblocks = (\d+)/.exec(sb)![1]);
  for (const [f, sum] of Object.entries(v.files)) assert.equal(sha256(readThroughXfsDb(img, f, bs, agBlocks)), sum, `${v.device}: ${f} read through xfs_db bmap`);
  return { toolsFree: Number(/total free blocks (\d+)/.exec(xfsDb(img, 'freesp -s'))![1]) * bs };
}

function checkBtrfs(img: string, v: MixedVolume, dir: string): FsVerdict {
  const check = runStatus('btrfs', ['check', '--readonly', '--check-data-csum', img]);
  assert.equal(check.status, 0, `${v.device}: btrfs check --readonly:\n${check.stdout}${check.stderr}`);
  const out = join(dir, 'restore');
  mkdirSync(out);
  run('btrfs', ['restore', img, out]);
  assert.deepEqual(Object.fromEntries(treeSums(out)), v.files, `${v.device}: files read back by btrfs restore`);
  // btrfs's own accounting: device space in no chunk, plus each block group's length minus used (per copy).
  const devTotal = Number(/dev_item.total_bytes\s+(\d+)/.exec(run('btrfs', ['inspect-internal', 'dump-super', img]))![1]);
  let inChunks = 0;
  for (const m of run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'dev', img]).matchAll(/chunk_offset \d+ length (\d+)/g)) inChunks += Number(m[1]);
  let inGroups = 0;
  const extent = run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'extent', img]);
  for (const m of extent.matchAll(/key \(\d+ BLOCK_GROUP_ITEM (\d+)\)[^\n]*\n\s*block group used (\d+) chunk_objectid \d+ flags (\S+)/g)) {
    inGroups += (Number(m[1]) - Number(m[2])) * (m[3]!.includes('DUP') ? 2 : 1);
  }
  return { toolsFree: devTotal - inChunks + inGroups };
}

function checkNtfs(img: string, v: MixedVolume): FsVerdict {
  const fix = runStatus('ntfsfix', ['-n', img]);
  assert.equal(fix.status, 0, `${v.device}: ntfsfix -n:\n${fix.stdout}${fix.stderr}`);
  for (const [f, sum] of Object.entries(v.files)) assert.equal(sha256(execFileSync('ntfscat', [img, f], { maxBuffer: 256 << 20 })), sum, `${v.device}: ${f} read by ntfscat`);
  return { toolsFree: Number(/bytes of free space\s*:\s*(\d+)/.exec(run('ntfscluster', ['-i', img]))![1]) };
}

function checkFat(img: string, v: MixedVolume, dir: string): FsVerdict {
  const fsck = runStatus('fsck.fat', ['-n', '-v', img]);
  assert.equal(fsck.status, 0, `${v.device}: fsck.fat -n:\n${fsck.stdout}${fsck.stderr}`);
  const out = join(dir, 'mcopy');
  mkdirSync(out);
  run('mcopy', ['-s', '-n', '-i', img, '::*', out]);
  assert.deepEqual(Object.fromEntries(treeSums(out)), v.files, `${v.device}: files read back by mcopy`);
  const m = /(\d+) files, (\d+)\/(\d+) clusters/.exec(fsck.stdout)!;
  const cluster = Number(/(\d+) bytes per cluster/.exec(fsck.stdout)![1]);
  return { toolsFree: (Number(m[3]) - Number(m[2])) * cluster };
}

function checkSwap(img: string, v: MixedVolume): FsVerdict {
  const id = run('blkid', ['-p', '-o', 'export', img]);
  assert.match(id, /^TYPE=swap$/m, `${v.device}: blkid`);
  assert.match(id, new RegExp(`^LABEL=${v.label}$`, 'm'), `${v.device}: label kept`);
  assert.match(id, new RegExp(`^UUID=${v.uuid}$`, 'm'), `${v.device}: UUID kept`);
  const sl = run('swaplabel', [img]);
  assert.match(sl, new RegExp(`LABEL: ${v.label}`));
  assert.match(sl, new RegExp(`UUID:\\s+${v.uuid}`));
  // mkswap's "size = N bytes": the swap area after its header page.
  return { toolsFree: v.swapBytes! };
}

/** The PV cut out of the output still holds the same VG: the LVM tools see the same LV extents. */
function checkPv(img: string, v: MixedVolume, lvs: MixedVolume[]): FsVerdict {
  const loop = run('losetup', ['-f', '--show', '-r', img]).trim();
  try {
    const c = `devices{use_devicesfile=0 filter=["a|^${loop}$|","r|.*|"] obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0} global{activation=0} backup{backup=0 archive=0}`;
    const lvm = (...args: string[]) => execFileSync(args[0]!, [...args.slice(1), '--config', c], { encoding: 'utf8', env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' }, stdio: ['ignore', 'pipe', 'ignore'] });
    const free = Number(lvm('vgs', '--noheadings', '--units', 'b', '--nosuffix', '-o', 'vg_free', v.vg!).trim());
    assert.equal(free, v.vgFreeBytes, `${v.device}: vgs vg_free on the output`);
    const names = lvm('lvs', '--noheadings', '-o', 'lv_name', v.vg!).split('\n').map((s) => s.trim()).filter(Boolean).sort();
    assert.deepEqual(names, lvs.map((l) => l.device.split('/').pop()!).sort(), `${v.device}: LVs on the output`);
  } finally {
    run('losetup', ['-d', loop]);
  }
  return { toolsFree: v.vgFreeBytes! };
}

// --- the test ------------------------------------------------------------------------------------

function buildMixedDisk(path: string, workDir: string): MixedManifest {
  const json = execFileSync('bash', [repoPath('test', 'fixtures', 'make-mixed-disk.sh'), path], {
    encoding: 'utf8',
    env: { ...process.env, TMPDIR: workDir },
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 16 << 20,
  });
  return JSON.parse(json) as MixedManifest;
}

interface AnalyzedNode {
  device: string;
  content: string;
  label?: string;
  uuid?: string;
  trusted: boolean;
  freeBytes?: number;
  warnings: string[];
  children: AnalyzedNode[];
}

function analyzeJson(path: string): Map<string, AnalyzedNode> {
  const r = sparsify(['--analyze', '--json', path]);
  assert.equal(r.status, 0, r.stderr);
  const nodes = new Map<string, AnalyzedNode>();
  const walk = (n: AnalyzedNode): void => {
    nodes.set(n.device, n);
    n.children.forEach(walk);
  };
  walk((JSON.parse(r.stdout) as { root: AnalyzedNode }).root);
  return nodes;
}

test('mixed disk: GPT + ext4 + XFS + btrfs + NTFS + vfat + swap + LVM, each judged by its own tools', { skip, timeout: 90_000 }, () => {
  const { dir, cleanup } = tempDir('sparsify-mixed-');
  const t0 = Date.now();
  try {
    const disk = join(dir, 'disk.img');
    const out = join(dir, 'out.img');
    const m = buildMixedDisk(disk, dir);
    const tBuilt = Date.now();
    assert.equal(m.volumes.length, 9);

    // --analyze --json names every device as libguestfs would, with the right content.
    const an = analyzeJson(disk);
    const expected: Record<string, string> = { '/dev/sda': 'gpt' };
    for (const v of m.volumes) expected[v.device] = CONTENT[v.fs]!;
    assert.deepEqual(Object.fromEntries([...an].map(([d, n]) => [d, n.content])), expected);
    for (const v of m.volumes) {
      const n = an.get(v.device)!;
      assert.equal(n.trusted, true, `${v.device}: ${n.warnings.join('; ')}`);
      assert.deepEqual(n.warnings, [], v.device);
      if (v.label) assert.equal(n.label, v.label, `${v.device} label`);
      if (v.uuid) assert.equal(n.uuid?.toLowerCase(), v.uuid.toLowerCase(), `${v.device} uuid`);
    }

    const r = sparsify(['--machine-readable', disk, out]);
    assert.equal(r.status, 0, r.stderr);
    for (const line of r.stdout.split('\n').filter(Boolean)) assert.match(line, /^(\d+\/\d+|\[ *\d+\.\d\] .*|sparsify: .*)$/);
    assert.match(r.stdout, /^\d+\/\d+$/m);
    const tCopied = Date.now();

    // The partition table is intact.
    assert.equal(run('sgdisk', ['-p', out]), run('sgdisk', ['-p', disk]).replace(disk, out));

    const rows: string[] = [];
    let totalFree = 0;
    let totalReclaimed = 0;
    const lvs = m.volumes.filter((v) => v.device.startsWith('/dev/vgmix/'));
    for (const v of m.volumes) {
      const sub = join(dir, v.device.replaceAll('/', '_'));
      mkdirSync(sub);
      const img = join(sub, 'fs.img');
      extractVolume(out, v.ranges, img);
      const verdict =
        v.fs === 'ext4' ? checkExt(img, v, sub)
        : v.fs === 'xfs' ? checkXfs(img, v)
        : v.fs === 'btrfs' ? checkBtrfs(img, v, sub)
        : v.fs === 'ntfs' ? checkNtfs(img, v)
        : v.fs === 'vfat' ? checkFat(img, v, sub)
        : v.fs === 'swap' ? checkSwap(img, v)
        : checkPv(img, v, lvs);
      // Over the VG, only its free extents are ours to count; LVs are counted on their own.
      const reclaimed = reclaimedBytes(disk, out, v.fs === 'LVM2_member' ? v.vgFreeRanges! : v.ranges);
      const ours = v.fs === 'LVM2_member' ? undefined : an.get(v.device)!.freeBytes;
      totalFree += verdict.toolsFree;
      totalReclaimed += reclaimed;
      const pct = (100 * reclaimed) / verdict.toolsFree;
      rows.push(`${v.device.padEnd(16)} ${v.fs.padEnd(11)} free per its tools ${String(verdict.toolsFree).padStart(10)}  reclaimed ${String(reclaimed).padStart(10)} (${pct.toFixed(2)} %)  our reader's free ${ours ?? '-'}`);
      assert.ok(reclaimed >= 0.9 * verdict.toolsFree, `${v.device}: reclaimed ${reclaimed} of ${verdict.toolsFree} free bytes (${pct.toFixed(2)} %)`);
    }

    // The output is small: what remains allocated is about what the filesystems use.
    const inAlloc = allocatedBytes(disk);
    const outAlloc = allocatedBytes(out);
    rows.push(`total: free per tools ${totalFree}, reclaimed ${totalReclaimed}; input allocates ${inAlloc}, output ${outAlloc}`);
    assert.ok(outAlloc <= inAlloc - 0.9 * totalFree, `output allocates ${outAlloc} bytes`);
    assert.ok(outAlloc < 160 * MiB, `output allocates ${outAlloc} bytes`);
    // The output analyzes as the input does.
    const anOut = analyzeJson(out);
    for (const v of m.volumes) {
      const n = anOut.get(v.device);
      assert.equal(n?.content, CONTENT[v.fs], `output ${v.device}`);
      assert.equal(n.freeBytes, an.get(v.device)!.freeBytes, `output ${v.device}: same free bytes`);
      assert.equal(n.trusted, true, `output ${v.device}: ${n.warnings.join('; ')}`);
    }

    // Our qcow2 output of the same input holds exactly the raw output's bytes.
    const q = join(dir, 'out.qcow2');
    const rq = sparsify(['--convert', 'qcow2', disk, q]);
    assert.equal(rq.status, 0, rq.stderr);
    assert.equal(runStatus('qemu-img', ['check', q]).status, 0);
    const cmp = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, q]);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    assert.match(cmp.stdout, /Images are identical/);

    const t1 = Date.now();
    rows.push(`time: build ${((tBuilt - t0) / 1000).toFixed(1)} s, analyze+copy ${((tCopied - tBuilt) / 1000).toFixed(1)} s, checks ${((t1 - tCopied) / 1000).toFixed(1)} s`);
    writeFileSync(join(dir, 'report.txt'), rows.join('\n'));
    console.log(rows.join('\n'));
  } finally {
    cleanup();
  }
});
