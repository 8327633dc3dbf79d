/**
 * NTFS tests against ntfs-3g's tools: mkntfs -Q on garbage (free clusters keep garbage), ntfscp
 * to add files, ntfscp of a smaller file over a bigger one to free clusters (there is no
 * ntfsrm), then ntfscluster's free figure, ntfsfix -n and ntfscat as the oracle.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { ntfsReader } from '../../src/fs/ntfs.js';
import { decodeRuns, parseNtfsBoot } from '../../src/fs/ntfs-records.js';
import { CorruptError } from '../../src/io/errors.js';
import { tempDir, run, runStatus, haveTool, garbageFile, openRawVolume, fileContent, sha256, clobber, patchFile as patch, readBytes } from '../helpers/fixtures.js';

const skip = ['mkntfs', 'ntfscp', 'ntfscat', 'ntfscluster', 'ntfsfix', 'ntfsinfo'].some((t) => !haveTool(t)) ? 'ntfs-3g tools not installed' : false;

/** File content as ntfscat reads it (binary-safe). */
function ntfscat(img: string, name: string): Buffer {
  return execFileSync('ntfscat', [img, name], { maxBuffer: 64 << 20 });
}

function ntfsPut(img: string, dir: string, name: string, data: Buffer): void {
  const host = join(dir, 'put.bin');
  writeFileSync(host, data);
  run('ntfscp', ['-q', img, host, name]);
}

function freeBytesByNtfscluster(img: string): number {
  const m = /bytes of free space\s*:\s*(\d+)/.exec(run('ntfscluster', ['-i', img]));
  assert.ok(m);
  return Number(m[1]);
}

async function analyzeFile(img: string): Promise<Awaited<ReturnType<typeof ntfsReader.analyze>>> {
  const { volume, close } = await openRawVolume(img);
  try {
    return await ntfsReader.analyze(volume);
  } finally {
    await close();
  }
}

/** mkntfs + 30 files in the root (enough for an $INDEX_ALLOCATION), some shrunk to free clusters. */
function buildNtfs(dir: string, size: number, cluster: number, extra: Record<string, Buffer> = {}): { img: string; files: Map<string, string> } {
  const img = join(dir, 'ntfs.img');
  garbageFile(img, size);
  run('mkntfs', ['-Q', '-F', '-q', '-c', String(cluster), '-L', 'WINDISK', img]);
  const files = new Map<string, string>();
  const put = (name: string, data: Buffer): void => {
    const host = join(dir, 'src.bin');
    writeFileSync(host, data);
    run('ntfscp', ['-q', img, host, name]);
    files.set(name, sha256(data));
  };
  for (let i = 0; i < 30; i++) put(`file-with-a-long-name-${i}.dat`, fileContent(`ntfs-${i}`, [0, 10, 900, 5000, 70000, 400000][i % 6]!));
  for (const [name, data] of Object.entries(extra)) put(name, data);
  for (const i of [4, 10, 17]) put(`file-with-a-long-name-${i}.dat`, fileContent(`shrunk-${i}`, 100));
  return { img, files };
}

for (const [size, cluster] of [
  [48 << 20, 4096],
  [24 << 20, 512],
] as const) {
  test(`ntfs ${cluster}-byte clusters: free matches ntfscluster; clobbering it loses nothing`, { skip }, async () => {
    const t = tempDir();
    try {
      const { img, files } = buildNtfs(t.dir, size, cluster, { 'hiberfil.sys': fileContent('not-hibernated', 8192) });
      const expected = freeBytesByNtfscluster(img);
      const backupBoot = readBytes(img, size - 512, 512);
      const boot = parseNtfsBoot(readBytes(img, 0, 512), size);
      const { volume, close } = await openRawVolume(img);
      let free;
      try {
        assert.equal(await ntfsReader.probe(volume), true);
        const a = await ntfsReader.analyze(volume);
        assert.equal(a.trusted, true, a.warnings.join('; '));
        assert.deepEqual(a.warnings, []);
        assert.equal(a.label, 'WINDISK');
        assert.equal(a.blockSize, cluster);
        assert.equal(a.freeBytes, expected);
        // Boot sector, MFT, mirror, backup boot sector: never free.
        for (const off of [0, boot.mftLcn * cluster, boot.mftMirrLcn * cluster, size - 512]) assert.equal(a.free.contains(off), false, `offset ${off} free`);
        free = a.free;
      } finally {
        await close();
      }
      clobber(img, free);
      const fix = runStatus('ntfsfix', ['-n', img]);
      assert.equal(fix.status, 0, fix.stdout + fix.stderr);
      for (const [name, hash] of files) assert.equal(sha256(ntfscat(img, name)), hash, name);
      assert.deepEqual(readBytes(img, size - 512, 512), backupBoot);
      assert.equal(freeBytesByNtfscluster(img), expected);
    } finally {
      t.cleanup();
    }
  });
}

test('ntfs: hibernated (hiberfil.sys starts with hibr/wake) and dirty volumes are kept whole', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const hib = Buffer.concat([Buffer.from('HIBR'), fileContent('hib', 20000)]);
    const { img } = buildNtfs(t.dir, 32 << 20, 4096, { 'HiberFil.sys': hib });
    const a = await analyzeFile(img);
    assert.equal(a.trusted, false);
    assert.equal(a.free.isEmpty, true);
    assert.match(a.warnings.join(' '), /hibernated/);

    ntfsPut(img, t.dir, 'HiberFil.sys', Buffer.concat([Buffer.from('wake'), Buffer.alloc(100)]));
    assert.match((await analyzeFile(img)).warnings.join(' '), /"wake"/);

    // Windows zeroes the signature after resuming: then the volume is usable again.
    ntfsPut(img, t.dir, 'HiberFil.sys', Buffer.alloc(8192));
    const resumed = await analyzeFile(img);
    assert.equal(resumed.trusted, true, resumed.warnings.join('; '));
    assert.equal(resumed.freeBytes, freeBytesByNtfscluster(img));

    // Set the dirty flag in $Volume's VOLUME_INFORMATION (MFT record 3, contiguous after mkntfs).
    const boot = parseNtfsBoot(readBytes(img, 0, 512), 32 << 20);
    const recOff = boot.mftLcn * boot.clusterSize + 3 * boot.mftRecordSize;
    const rec = readBytes(img, recOff, boot.mftRecordSize);
    let pos = rec.readUInt16LE(20);
    while (rec.readUInt32LE(pos) !== 0x70) pos += rec.readUInt32LE(pos + 4);
    const flagsOff = pos + rec.readUInt16LE(pos + 20) + 10;
    // $MFTMirr holds a copy of records 0..3: patch both, or ntfs-3g (and we) refuse the volume.
    patch(img, recOff + flagsOff, Buffer.from([1, 0]));
    const mirrOff = boot.mftMirrLcn * boot.clusterSize + 3 * boot.mftRecordSize;
    const before = await analyzeFile(img);
    assert.equal(before.trusted, false);
    assert.match(before.warnings.join(' '), /MFTMirr/);
    patch(img, mirrOff + flagsOff, Buffer.from([1, 0]));
    assert.match(run('ntfsinfo', ['-f', '-m', img]), /Volume Flags: 0x0001/);
    const dirty = await analyzeFile(img);
    assert.equal(dirty.trusted, false);
    assert.equal(dirty.free.isEmpty, true);
    assert.match(dirty.warnings.join(' '), /dirty/);
  } finally {
    t.cleanup();
  }
});

test('ntfs: torn MFT records, absurd geometry, truncation and runs past the end are refused', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const { img } = buildNtfs(t.dir, 24 << 20, 4096);
    const pristine = readFileSync(img);
    const boot = parseNtfsBoot(pristine.subarray(0, 512), pristine.length);

    // Torn write in $Bitmap's record (6): the update sequence check must catch it.
    const rec6 = boot.mftLcn * boot.clusterSize + 6 * boot.mftRecordSize;
    patch(img, rec6 + 510, Buffer.from([pristine[rec6 + 510]! ^ 0xff]));
    await assert.rejects(analyzeFile(img), /update sequence/);
    writeFileSync(img, pristine);

    // Sectors per cluster of 3.
    patch(img, 13, Buffer.from([3]));
    {
      const { volume, close } = await openRawVolume(img);
      assert.equal(await ntfsReader.probe(volume), false);
      await assert.rejects(ntfsReader.analyze(volume), CorruptError);
      await close();
    }
    writeFileSync(img, pristine);

    truncateSync(img, 12 << 20);
    await assert.rejects(analyzeFile(img), /holds only/);
    writeFileSync(img, pristine);

    // Data runs: one past the last cluster, one missing its terminator, one with a bad header.
    assert.throws(() => decodeRuns(Buffer.from([0x21, 0x10, 0x00, 0x20, 0x00]), 0, 5, 0, 0x1000, 'test'), /past the end/);
    assert.throws(() => decodeRuns(Buffer.from([0x11, 0x01, 0x05]), 0, 3, 0, 0x1000, 'test'), /terminator/);
    assert.throws(() => decodeRuns(Buffer.from([0x90, 0x01, 0x05, 0]), 0, 4, 0, 0x1000, 'test'), /malformed/);
    assert.deepEqual(decodeRuns(Buffer.from([0x11, 0x02, 0x05, 0x11, 0x01, 0xfe, 0x01, 0x03, 0]), 0, 9, 0, 0x1000, 'test'), [
      { vcn: 0, lcn: 5, length: 2 },
      { vcn: 2, lcn: 3, length: 1 },
      { vcn: 3, lcn: -1, length: 3 },
    ]);
  } finally {
    t.cleanup();
  }
});
