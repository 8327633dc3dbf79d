/**
 * Copy mode end to end through the CLI, with e2fsprogs and qemu-img as the oracle:
 * used blocks identical, free blocks zero, zero runs as holes, fsck clean, files intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, readSync, closeSync, symlinkSync, truncateSync, existsSync, readdirSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tempDir, fileContent, allocatedBytes, runStatus, run, readBytes } from '../helpers/fixtures.js';
import { buildDisk, type BuiltPartition } from '../helpers/disk-builder.js';
import { e2fsck, extFileSums, extract, dumpe2fsFree, dumpe2fsUnusedItables } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { Extents } from '../../src/io/extents.js';
import { seekData } from '../../src/io/syscalls.js';

const STATUS = /^\[ *\d+\.\d\] /;

/** Compare the two files over `ranges`, in 1 MiB pieces. */
function sameOver(a: string, b: string, ranges: Extents): boolean {
  for (const r of ranges) {
    for (let o = r.start; o < r.end; o += 1 << 20) {
      const n = Math.min(1 << 20, r.end - o);
      if (!readBytes(a, o, n).equals(readBytes(b, o, n))) return false;
    }
  }
  return true;
}

function zeroOver(a: string, ranges: Extents): boolean {
  for (const r of ranges) {
    for (let o = r.start; o < r.end; o += 1 << 20) {
      const n = Math.min(1 << 20, r.end - o);
      if (readBytes(a, o, n).some((x) => x !== 0)) return false;
    }
  }
  return true;
}

/** Every 4 KiB-aligned block that reads as zero must be a hole on the host. */
function zeroBlocksAreHoles(path: string, size: number): void {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(4096);
    for (let o = 0; o < size; o += 4096) {
      const d = seekData(fd, o);
      if (d < 0) break;
      if (d > o) {
        o = Math.floor(d / 4096) * 4096 - 4096;
        continue;
      }
      readSync(fd, b, 0, 4096, o);
      assert.ok(b.some((x) => x !== 0), `zero block at ${o} is allocated in the output`);
    }
  } finally {
    closeSync(fd);
  }
}

const P1 = { type: 'ext2' as const, mkfsArgs: ['-b', '1024'], files: { 'boot/vmlinuz': fileContent('k', 2 << 20), 'old.bin': fileContent('o', 4 << 20) }, remove: ['old.bin'] };
const P2 = {
  type: 'ext4' as const,
  files: { 'etc/hosts': Buffer.from('127.0.0.1 localhost\n'), 'var/data.bin': fileContent('d', 6 << 20), 'tmp/junk.bin': fileContent('j', 10 << 20) },
  remove: ['tmp/junk.bin'],
};

/** Checks the output of a copy of `input` against e2fsprogs' own view of each partition. */
function checkCopy(input: string, output: string, parts: BuiltPartition[], dir: string, zeroed: string[] = [], ignored: string[] = []): void {
  const size = statSync(input).size;
  assert.equal(statSync(output).size, size, 'output has the virtual size of the input');
  let fsRanges = new Extents();
  for (const p of parts) {
    const partRange = Extents.of(p.offset, p.offset + p.size);
    fsRanges = fsRanges.union(partRange);
    if (zeroed.includes(p.device)) {
      assert.ok(zeroOver(output, partRange), `${p.device} should be zeroed`);
      continue;
    }
    if (!p.spec.ext) {
      assert.ok(sameOver(input, output, partRange), `${p.device} (unknown content) must be copied as is`);
      continue;
    }
    const inPart = join(dir, `in-${p.device.slice(5)}.img`);
    const outPart = join(dir, `out-${p.device.slice(5)}.img`);
    extract(input, p.offset, p.size, inPart);
    extract(output, p.offset, p.size, outPart);
    const fsck = e2fsck(outPart);
    assert.equal(fsck.status, 0, `${p.device}: ${fsck.output}`);
    assert.deepEqual(extFileSums(outPart, dir), extFileSums(inPart, dir), `${p.device}: files differ`);
    // Free blocks, and the inode-table blocks their group descriptors count as never used.
    const free = new Extents([...dumpe2fsFree(inPart).ranges, ...dumpe2fsUnusedItables(inPart)].map(([s, e]) => ({ start: s + p.offset, end: e + p.offset })));
    const used = partRange.subtract(free);
    assert.ok(sameOver(input, output, used), `${p.device}: a used block differs`);
    if (ignored.includes(p.device)) assert.ok(sameOver(input, output, free), `${p.device}: ignored, its free space must be kept`);
    else assert.ok(zeroOver(output, free), `${p.device}: free blocks must read as zero`);
  }
  // Partition tables, gaps and everything outside the partitions are kept byte for byte.
  assert.ok(sameOver(input, output, Extents.of(0, size).subtract(fsRanges)), 'tables and gaps must be identical');
  zeroBlocksAreHoles(output, size);
}

test('copy: GPT disk with ext2, ext4 and an unknown partition, garbage in free space', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    const output = join(dir, 'out.img');
    const parts = buildDisk(input, { sizeMiB: 100, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 24, ext: P1 }, { sizeMiB: 48, ext: P2 }, { sizeMiB: 8 }] });
    const r = sparsify([input, output]);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.ok(lines.some((l) => STATUS.test(l) && l.endsWith('Examine source disk')));
    assert.ok(lines.some((l) => STATUS.test(l) && l.endsWith('Fill free space in /dev/sda1 with zero')));
    assert.ok(lines.some((l) => STATUS.test(l) && l.endsWith('Fill free space in /dev/sda2 with zero')));
    assert.ok(lines.some((l) => l === 'sparsify: warning: /dev/sda3: no filesystem or volume recognised; kept as it is'), r.stdout);
    checkCopy(input, output, parts, dir);
    assert.equal(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', output, output]).status, 0);
    assert.ok(allocatedBytes(output) < allocatedBytes(input) * 0.6, 'output should be much smaller');
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('sparsify-')), [], 'no temporary file is left');
  } finally {
    cleanup();
  }
});

test('copy: MBR disk with --zero and --ignore (device names as /dev/vdX too)', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    const output = join(dir, 'out.img');
    const parts = buildDisk(input, { sizeMiB: 80, label: 'dos', garbage: true, workDir: dir, parts: [{ sizeMiB: 24, ext: P1 }, { sizeMiB: 24, ext: P2 }, { sizeMiB: 24, ext: P2 }] });
    const r = sparsify([input, output, '--zero', '/dev/sda3', '-ignore', '/dev/vda1', '-q']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '', '-q prints nothing');
    checkCopy(input, output, parts, dir, ['/dev/sda3'], ['/dev/sda1']);
  } finally {
    cleanup();
  }
});

test('copy: upstream acceptance in spirit: GPT ext2 + ext4, 300 MiB of 0x01 written and deleted', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    const output = join(dir, 'out.img');
    buildDisk(input, {
      sizeMiB: 400,
      label: 'gpt',
      garbage: false,
      workDir: dir,
      parts: [
        { sizeMiB: 32, ext: { type: 'ext2', files: { 'ones': Buffer.alloc(10 << 20, 1) }, remove: ['ones'] } },
        { sizeMiB: 366, ext: { type: 'ext4', files: { 'ones': Buffer.alloc(300 << 20, 1) }, remove: ['ones'] } },
      ],
    });
    const inKiB = allocatedBytes(input) / 1024;
    assert.ok(inKiB >= 310000, `input du ${inKiB} KiB`);
    const r = sparsify(['--machine-readable', input, output]);
    assert.equal(r.status, 0, r.stderr);
    const outKiB = allocatedBytes(output) / 1024;
    assert.ok(outKiB <= 15000, `output du ${outKiB} KiB`);
    const progress = r.stdout.split('\n').filter((l) => /^\d+\/\d+$/.test(l));
    assert.ok(progress.length >= 2, 'machine-readable progress lines');
    const [done, total] = progress.at(-1)!.split('/').map(Number);
    assert.equal(done, total);
  } finally {
    cleanup();
  }
});

test('copy refuses: same file by another name, an image in use by a running VM, unsupported options', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    buildDisk(input, { sizeMiB: 16, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 8, ext: { type: 'ext4', files: {} } }] });
    symlinkSync(input, join(dir, 'alias.img'));
    let r = sparsify([input, join(dir, 'alias.img')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^sparsify: error: you cannot use the same disk image for input and output$/m);

    r = sparsify([input, join(dir, 'o.img'), '--compress']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--compress cannot be used for raw output\.  Remove this option or use --convert qcow2\./);

    r = sparsify([input, join(dir, 'o.img'), '--key', 'all:clevis']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /Clevis\/Tang network unlocking is not supported/);

    r = sparsify(['--in-place', '--convert', 'qcow2', input]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /you cannot use --in-place and --convert options together/);

    // qemu-io holds the image open read-write with QEMU's locks, like a running VM.
    const vm = spawn('qemu-io', ['-f', 'raw', input], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      await new Promise((res) => setTimeout(res, 700));
      r = sparsify([input, join(dir, 'o2.img')]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /in use: another process \(a running VM\?\) has it open for writing/);
      assert.equal(existsSync(join(dir, 'o2.img')), false);
    } finally {
      vm.kill('SIGKILL');
    }
  } finally {
    cleanup();
  }
});

test('copy of a truncated disk: the partition past the end is kept and named, nothing crashes', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    const output = join(dir, 'out.img');
    buildDisk(input, { sizeMiB: 64, label: 'dos', garbage: true, workDir: dir, parts: [{ sizeMiB: 16, ext: P1 }, { sizeMiB: 40, ext: P2 }] });
    truncateSync(input, 40 << 20);
    const r = sparsify([input, output]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /warning: \/dev\/sda: MBR partition 2 \(entry at 0x1ce\) ends at 0x3900000, past the end of the disk/);
    assert.ok(sameOver(input, output, Extents.of(17 << 20, 40 << 20)), 'the truncated partition is copied as is');
  } finally {
    cleanup();
  }
});

test('CLI basics: capabilities, version, help, bad options, usage', { timeout: 300_000 }, () => {
  let r = sparsify(['--machine-readable']);
  assert.equal(r.status, 0);
  assert.deepEqual(r.stdout.trim().split('\n'), ['virt-sparsify', 'linux-swap', 'zero', 'check-tmpdir', 'in-place', 'tmp-option', 'ntfs', 'btrfs', 'compact']);
  r = sparsify(['-V']);
  assert.match(r.stdout, /^sparsify \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)\n$/);
  r = sparsify(['--help']);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /--in-place/);
  r = sparsify(['--bogus']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /unrecognized option '--bogus'/);
  r = sparsify(['only-one.img']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /usage is: sparsify \[--options\] indisk outdisk/);
  r = sparsify(['/nonexistent/in.img', '/tmp/out.img']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^sparsify: error: cannot open \/nonexistent\/in.img: ENOENT$/m);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('--analyze --json describes the disk and writes nothing', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const input = join(dir, 'in.img');
    buildDisk(input, { sizeMiB: 64, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 24, ext: P1 }, { sizeMiB: 32, ext: P2 }] });
    const before = run('sha256sum', [input]);
    const r = sparsify(['--analyze', '--json', input]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.format, 'raw');
    assert.equal(j.root.content, 'gpt');
    assert.deepEqual(j.root.children.map((c: { device: string; content: string }) => [c.device, c.content]), [['/dev/sda1', 'ext2'], ['/dev/sda2', 'ext4']]);
    assert.ok(j.reclaimableBytes > 20 << 20);
    const text = sparsify(['--analyze', input]);
    assert.match(text.stdout, /\/dev\/sda2 +32\.0 MiB +ext4/);
    assert.equal(run('sha256sum', [input]), before);
  } finally {
    cleanup();
  }
});
