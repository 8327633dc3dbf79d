/**
 * In-place mode against the real tools: GPT disks with ext4 + ext2 built on garbage with deleted
 * files, sparsified in place as raw, qcow2 (v3, v2, with and without backing file, compressed,
 * 512-byte clusters) and vdi. Oracle: qemu-img check clean, e2fsck -fn clean on every partition,
 * every file's checksum unchanged (debugfs rdump), du dropped.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, openSync, writeSync, closeSync, statSync, readFileSync } from 'node:fs';
import { spawnSync, spawn } from 'node:child_process';
import { tempDir, run, haveTool, garbageFile, sha256, patchFile } from '../helpers/fixtures.js';
import { makeGptDisk, checkImage, qemuCheck, du, cliCommand, type GptDisk } from './crash-helpers.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { SparsifyError } from '../../src/io/errors.js';
import { BlockFile } from '../../src/io/file.js';
import { acquireImageLock, WRITE_LOCK } from '../../src/io/image-lock.js';

const tools = ['qemu-img', 'sgdisk', 'mke2fs', 'e2fsck', 'debugfs'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : false;

let work: { dir: string; cleanup: () => void };
let disk: GptDisk;

before(() => {
  if (skip) return;
  work = tempDir('sparsify-inplace-');
  disk = makeGptDisk(work.dir);
});
after(() => work?.cleanup());

function fresh(name: string, make: (raw: string, out: string) => void): string {
  const out = join(work.dir, name);
  make(disk.path, out);
  return out;
}

async function inPlace(path: string, extra: Partial<Parameters<typeof sparsifyInPlace>[0]> = {}) {
  const warnings: string[] = [];
  const report = await sparsifyInPlace({ path, onWarning: (w) => warnings.push(w), ...extra });
  return { report, warnings };
}

function assertClean(path: string, format: string): void {
  if (format !== 'raw') {
    const c = qemuCheck(path);
    assert.equal(c.status, 0, c.output);
  }
  assert.deepEqual(checkImage(path, format, disk.parts, work.dir), []);
}

test('raw file: holes punched over free space, size kept, filesystems and files intact', { timeout: 300_000, skip }, async () => {
  const img = fresh('raw.img', (r, o) => copyFileSync(r, o));
  const size = statSync(img).size;
  const before = du(img);
  const { report } = await inPlace(img);
  assert.equal(statSync(img).size, size);
  assert.equal(report.format, 'raw');
  assert.ok(report.allocatedBefore - report.allocatedAfter > 30 << 20, `du dropped only ${report.allocatedBefore - report.allocatedAfter}`);
  assert.ok(before - du(img) > 30 << 20);
  assertClean(img, 'raw');
  // A second run finds nothing more to give back and changes nothing that matters.
  const again = await inPlace(img);
  assert.ok(again.report.allocatedBefore - again.report.allocatedAfter < 1 << 20);
  assertClean(img, 'raw');
});

const QCOW2: Array<{ name: string; opts: string; compress?: boolean }> = [
  { name: 'v3, 64 KiB clusters', opts: 'compat=1.1' },
  { name: 'v2, 4 KiB clusters', opts: 'compat=0.10,cluster_size=4096' },
  { name: 'v3, 512-byte clusters, refcount_bits=1', opts: 'compat=1.1,cluster_size=512,refcount_bits=1' },
  { name: 'v3 compressed', opts: 'compat=1.1', compress: true },
  { name: 'v3, 8 KiB clusters, refcount_bits=64', opts: 'compat=1.1,cluster_size=8192,refcount_bits=64' },
];

for (const q of QCOW2) {
  test(`qcow2 ${q.name} without backing file: clusters dropped, refcounts and du follow`, { skip }, async () => {
    const img = fresh(`q-${q.name.replace(/\W+/g, '_')}.qcow2`, (r, o) =>
      run('qemu-img', ['convert', ...(q.compress ? ['-c'] : []), '-f', 'raw', '-O', 'qcow2', '-o', q.opts, r, o]),
    );
    const before = du(img);
    const { report } = await inPlace(img);
    assert.equal(report.format, 'qcow2');
    assert.ok(before - du(img) > 25 << 20, `du dropped only ${before - du(img)}`);
    assertClean(img, 'qcow2');
    const again = await inPlace(img);
    assert.ok(again.report.allocatedBefore - again.report.allocatedAfter < 1 << 20);
    assertClean(img, 'qcow2');
  });
}

test('qcow2 v3 with a backing file: discarded clusters become zero clusters, never backing data', { timeout: 300_000, skip }, async () => {
  const base = join(work.dir, 'base-garbage.raw');
  garbageFile(base, statSync(disk.path).size);
  const img = fresh('top-v3.qcow2', (r, o) => {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', '-b', base, '-F', 'raw', o]);
    run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', r, o]);
  });
  const before = du(img);
  await inPlace(img);
  assert.ok(before - du(img) > 25 << 20);
  assertClean(img, 'qcow2');
  // The freed ranges read as zero, not as the (garbage) backing file.
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', img])) as Array<{ depth: number; zero: boolean; data: boolean; length: number }>;
  const zeroTop = map.filter((m) => m.depth === 0 && m.zero && !m.data).reduce((s, m) => s + m.length, 0);
  assert.ok(zeroTop > 25 << 20, `only ${zeroTop} bytes became zero clusters`);
});

test('qcow2 v2 with a backing file: clusters kept, and the user is told why', { timeout: 300_000, skip }, async () => {
  const base = join(work.dir, 'base-garbage2.raw');
  garbageFile(base, statSync(disk.path).size);
  const img = fresh('top-v2.qcow2', (r, o) => {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', base, '-F', 'raw', o]);
    run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', r, o]);
  });
  const { warnings } = await inPlace(img);
  assert.ok(warnings.some((w) => /version 2 .*cannot mark clusters as zero/.test(w)), warnings.join('\n'));
  assertClean(img, 'qcow2');
});

test('vdi: free blocks discarded, slots compacted, qemu-img check clean', { timeout: 300_000, skip }, async () => {
  const img = fresh('d.vdi', (r, o) => run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', r, o]));
  const before = du(img);
  await inPlace(img);
  assert.ok(before - du(img) > 25 << 20);
  assertClean(img, 'vdi');
});

function setQcow2Bit(path: string, offset: number, value: bigint): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  writeSync(fd, b, 0, 8, offset);
  closeSync(fd);
}

async function refusal(path: string): Promise<SparsifyError> {
  try {
    await inPlace(path);
  } catch (e) {
    assert.ok(e instanceof SparsifyError, String(e));
    return e;
  }
  assert.fail('in-place should have refused');
}

test('qcow2 refusals: dirty, corrupt, external data file, an unknown bitmap flag; nothing changed', { timeout: 300_000, skip }, async () => {
  const mk = (name: string, opts: string): string => {
    const o = join(work.dir, name);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', opts, disk.path, o]);
    return o;
  };
  const dirty = mk('dirty.qcow2', 'compat=1.1,lazy_refcounts=on');
  setQcow2Bit(dirty, 72, 1n);
  const untouched = sha256(readFileSync(dirty));
  assert.match((await refusal(dirty)).message, /dirty.*qemu-img check -r all/);
  assert.equal(sha256(readFileSync(dirty)), untouched, 'nothing written');

  const corrupt = mk('corrupt.qcow2', 'compat=1.1');
  setQcow2Bit(corrupt, 72, 2n);
  assert.match((await refusal(corrupt)).message, /corrupt/);

  // A bitmap flag qemu does not know (bit 5): in place cannot keep such a bitmap up to date.
  const bm = mk('bitmap-flag.qcow2', 'compat=1.1');
  run('qemu-img', ['bitmap', '--add', bm, 'b0']);
  const dir = Number(readFileSync(bm).subarray(0, 4096).indexOf(Buffer.from([0x23, 0x85, 0x28, 0x75])));
  const dirOffset = Number(readFileSync(bm).readBigUInt64BE(dir + 8 + 16));
  const flags = readFileSync(bm).readUInt32BE(dirOffset + 12);
  patchFile(bm, dirOffset + 12, Buffer.from([0, 0, 0, (flags | 0x20) & 0xff]));
  const before = sha256(readFileSync(bm));
  assert.match((await refusal(bm)).message, /bitmap 'b0' has unknown flags/);
  assert.equal(sha256(readFileSync(bm)), before, 'nothing written');

  const data = join(work.dir, 'ext-data.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(work.dir, 'ext-data.raw')}`, data, '64M']);
  assert.match((await refusal(data)).message, /external data file.*not supported yet/);
});

test('layouts that cannot change in place are refused with a pointer to copy mode', { timeout: 300_000, skip }, async () => {
  const vmdk = join(work.dir, 'd-stream.vmdk');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', disk.path, vmdk]);
  const e = await refusal(vmdk);
  assert.equal(e.exitCode, 1);
  assert.match(e.message, /streamOptimized.*copy mode/);
});

test('an image another process holds for writing is refused', { timeout: 300_000, skip }, async () => {
  const img = fresh('locked.img', (r, o) => copyFileSync(r, o));
  const holder = await BlockFile.open(img, 'r+');
  try {
    acquireImageLock(holder.fd, img, WRITE_LOCK);
    // Content and mtime, not du: delayed allocation of the fresh copy can still change st_blocks.
    const untouched = { sum: sha256(readFileSync(img)), mtime: statSync(img).mtimeMs };
    assert.match((await refusal(img)).message, /in use|locked/);
    assert.deepEqual({ sum: sha256(readFileSync(img)), mtime: statSync(img).mtimeMs }, untouched);
  } finally {
    await holder.close();
  }
});

test('--ignore skips a filesystem entirely; --zero discards a whole partition', { timeout: 300_000, skip }, async () => {
  const img = fresh('ignore.img', (r, o) => copyFileSync(r, o));
  const { report } = await inPlace(img, { ignore: ['/dev/sda1'] });
  assert.ok(report.plan.steps.some((s) => s.device === '/dev/sda1' && s.action === 'ignore'));
  const p1 = disk.parts[0]!;
  assert.equal(report.plan.discard.clip(p1.offset, p1.offset + p1.size).total(), 0);
  assertClean(img, 'raw');

  const z = fresh('zero.img', (r, o) => copyFileSync(r, o));
  const { report: rz } = await inPlace(z, { zero: ['/dev/sda2'] });
  const p2 = disk.parts[1]!;
  assert.equal(rz.plan.discard.clip(p2.offset, p2.offset + p2.size).total(), p2.size);
  const buf = Buffer.alloc(p2.size);
  const fd = openSync(z, 'r');
  try {
    const { readSync } = await import('node:fs');
    readSync(fd, buf, 0, buf.length, p2.offset);
  } finally {
    closeSync(fd);
  }
  assert.ok(buf.every((x) => x === 0), 'the zeroed partition must read as zeros');
});

test('abort after the first batch: consistent image, quit message, rerun completes', { timeout: 300_000, skip }, async () => {
  const img = fresh('abort.qcow2', (r, o) => run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=512', r, o]));
  const ac = new AbortController();
  let events = 0;
  await assert.rejects(
    sparsifyInPlace({ path: img, signal: ac.signal, onProgress: () => (++events === 2 ? ac.abort() : undefined) }),
    /quit \(\^C\) at user request/,
  );
  assertClean(img, 'qcow2');
  const mid = du(img);
  await inPlace(img);
  assert.ok(mid - du(img) > 1 << 20, 'the rerun should reclaim the rest');
  assertClean(img, 'qcow2');
});

test('CLI: --machine-readable progress lines, -q silence, exit codes', { timeout: 300_000, skip }, () => {
  const { cmd, args } = cliCommand();
  const img = fresh('cli.qcow2', (r, o) => run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', r, o]));
  const mr = spawnSync(cmd, [...args, '--machine-readable', '--in-place', img], { encoding: 'utf8' });
  assert.equal(mr.status, 0, mr.stderr);
  const progress = mr.stdout.split('\n').filter((l) => /^\d+\/\d+$/.test(l));
  assert.ok(progress.length >= 2, mr.stdout);
  const [done, total] = progress.at(-1)!.split('/').map(Number);
  assert.equal(done, total);
  assert.match(mr.stdout, /Sparsify in-place operation completed with no errors/);

  const img2 = fresh('cli2.img', (r, o) => copyFileSync(r, o));
  const q = spawnSync(cmd, [...args, '-q', '--in-place', img2], { encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  assert.equal(q.stdout, '');

  const conflict = spawnSync(cmd, [...args, '--in-place', '--convert', 'qcow2', img2], { encoding: 'utf8' });
  assert.equal(conflict.status, 1);
  assert.match(conflict.stderr, /you cannot use --in-place and --convert options together/);
});

test('CLI: SIGINT during the run finishes the current batch, prints the quit message, exits 1', { timeout: 300_000, skip }, async () => {
  const { cmd, args } = cliCommand();
  const img = fresh('sigint.qcow2', (r, o) => run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=512', r, o]));
  const child = spawn(cmd, [...args, '--machine-readable', '--in-place', img], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let sent = false;
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    if (!sent && /^\d+\/\d+$/m.test(d.toString())) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.ok(sent, 'no progress seen');
  if (code !== 0) {
    assert.equal(code, 1);
    assert.match(stderr, /quit \(\^C\) at user request/);
  }
  assertClean(img, 'qcow2');
});
