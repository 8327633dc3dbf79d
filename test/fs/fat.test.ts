import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync, readFileSync, truncateSync } from 'node:fs';
import { fatReader, parseFatBootSector } from '../../src/fs/fat.js';
import { CorruptError } from '../../src/io/errors.js';
import { tempDir, run, runStatus, haveTool, garbageFile, openRawVolume, fileContent, sha256, clobber, patchFile as patch, readBytes } from '../helpers/fixtures.js';

process.env.MTOOLS_SKIP_CHECK = '1';
const skip = !haveTool('mkfs.fat') || !haveTool('mcopy') || !haveTool('fsck.fat') ? 'dosfstools or mtools not installed' : false;

/** fsck.fat -n -v: "N files, USED/TOTAL clusters", and the cluster size. */
function fsckFigures(img: string): { used: number; total: number; clusterSize: number } {
  const r = runStatus('fsck.fat', ['-n', '-v', img]);
  assert.equal(r.status, 0, `fsck.fat failed: ${r.stdout}${r.stderr}`);
  const m = /(\d+) files, (\d+)\/(\d+) clusters/.exec(r.stdout);
  const cs = /(\d+) bytes per cluster/.exec(r.stdout);
  assert.ok(m && cs, r.stdout);
  return { used: Number(m[2]), total: Number(m[3]), clusterSize: Number(cs[1]) };
}

/** Build a populated FAT image; returns the names and hashes of the files left in it. */
function buildFat(dir: string, bits: 12 | 16 | 32, size: number, mkfsArgs: string[] = []): { img: string; files: Map<string, string> } {
  const img = join(dir, `fat${bits}.img`);
  garbageFile(img, size);
  run('mkfs.fat', ['-F', String(bits), ...mkfsArgs, img]);
  const files = new Map<string, string>();
  run('mmd', ['-i', img, '::sub', '::sub/deeper']);
  const sizes = [1, 700, 4096, 33333, 150000, 400000, size >> 4];
  sizes.forEach((n, i) => {
    const host = join(dir, `f${i}.bin`);
    const data = fileContent(`fat${bits}-${i}`, n);
    writeFileSync(host, data);
    const name = i % 3 === 0 ? `::F${i}.BIN` : i % 3 === 1 ? `::sub/F${i}.BIN` : `::sub/deeper/F${i}.BIN`;
    run('mcopy', ['-i', img, host, name]);
    files.set(name, sha256(data));
  });
  // Delete some so freed clusters (holding file data) sit between used ones.
  for (const gone of ['::sub/F1.BIN', '::F3.BIN', '::sub/deeper/F5.BIN']) {
    run('mdel', ['-i', img, gone]);
    files.delete(gone);
  }
  return { img, files };
}

async function checkRoundTrip(bits: 12 | 16 | 32, size: number, mkfsArgs: string[] = []): Promise<void> {
  const t = tempDir();
  try {
    const { img, files } = buildFat(t.dir, bits, size, mkfsArgs);
    const fig = fsckFigures(img);
    const { volume, close } = await openRawVolume(img);
    let free;
    try {
      assert.equal(await fatReader.probe(volume), true);
      const a = await fatReader.analyze(volume);
      assert.equal(a.trusted, true, a.warnings.join('; '));
      assert.deepEqual(a.warnings, []);
      assert.equal(a.type, 'vfat');
      assert.equal(a.details?.fatType, `FAT${bits}`);
      assert.equal(a.blockSize, fig.clusterSize);
      // Exactly the free clusters fsck.fat counts.
      assert.equal(a.freeBytes, (fig.total - fig.used) * fig.clusterSize);
      assert.equal(a.free.total(), a.freeBytes);
      // Nothing before the data region (boot sector, FATs, fixed root) is free.
      const g = parseFatBootSector(readBytes(img, 0, 512), size);
      assert.ok(a.free.toArray()[0]!.start >= g.dataStart);
      free = a.free;
    } finally {
      await close();
    }
    clobber(img, free);
    const after = runStatus('fsck.fat', ['-n', img]);
    assert.equal(after.status, 0, `fsck.fat after clobbering: ${after.stdout}${after.stderr}`);
    for (const [name, hash] of files) {
      const out = join(t.dir, 'out.bin');
      run('mcopy', ['-o', '-i', img, name, out]);
      assert.equal(sha256(readFileSync(out)), hash, `${name} changed`);
    }
    assert.equal(fsckFigures(img).used, fig.used);
  } finally {
    t.cleanup();
  }
}

test('fat12: free clusters match fsck.fat; clobbering them loses nothing', { timeout: 300_000, skip }, () => checkRoundTrip(12, 3 << 20));
test('fat16: free clusters match fsck.fat; clobbering them loses nothing', { timeout: 300_000, skip }, () => checkRoundTrip(16, 24 << 20));
test('fat32: free clusters match fsck.fat; clobbering them loses nothing', { timeout: 300_000, skip }, () => checkRoundTrip(32, 40 << 20, ['-s', '1']));

test('fat: corrupt and doubtful volumes', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const { img } = buildFat(t.dir, 16, 16 << 20);
    const pristine = readFileSync(img);
    const analyze = async (): Promise<Awaited<ReturnType<typeof fatReader.analyze>>> => {
      const { volume, close } = await openRawVolume(img);
      try {
        return await fatReader.analyze(volume);
      } finally {
        await close();
      }
    };
    const probe = async (): Promise<boolean> => {
      const { volume, close } = await openRawVolume(img);
      try {
        return await fatReader.probe(volume);
      } finally {
        await close();
      }
    };
    const good = await analyze();
    assert.equal(good.trusted, true);
    const g = parseFatBootSector(pristine.subarray(0, 512), pristine.length);
    const fat2 = (g.reservedSectors + g.fatSectors) * g.bytesPerSector;

    // Absurd cluster size.
    patch(img, 13, Buffer.from([3]));
    assert.equal(await probe(), false);
    await assert.rejects(analyze(), CorruptError);
    writeFileSync(img, pristine);

    // Truncated volume.
    truncateSync(img, pristine.length >> 1);
    assert.equal(await probe(), false);
    await assert.rejects(analyze(), /holds only/);
    writeFileSync(img, pristine);

    // The second FAT marks the last cluster used while the first says free: it stays.
    const last = g.clusterCount + 1;
    const lastStart = g.dataStart + (last - 2) * g.clusterSize;
    assert.ok(good.free.contains(lastStart));
    patch(img, fat2 + last * 2, Buffer.from([0xff, 0xff]));
    const split = await analyze();
    assert.equal(split.trusted, true);
    assert.match(split.warnings.join(' '), /disagree/);
    assert.equal(split.free.contains(lastStart), false);
    assert.equal(split.freeBytes, good.freeBytes - g.clusterSize);
    writeFileSync(img, pristine);

    // Clean-shutdown bit cleared in FAT entry 1 (both copies): keep everything.
    for (const f of [g.reservedSectors * g.bytesPerSector, fat2]) patch(img, f + 2, Buffer.from([0xff, 0x7f]));
    const dirty = await analyze();
    assert.equal(dirty.trusted, false);
    assert.equal(dirty.free.isEmpty, true);
    assert.match(dirty.warnings.join(' '), /not unmounted cleanly/);
    writeFileSync(img, pristine);

    // A FAT that does not start with the media byte is not a FAT.
    patch(img, g.reservedSectors * g.bytesPerSector, Buffer.from([0x00]));
    await assert.rejects(analyze(), /media byte/);
  } finally {
    t.cleanup();
  }
});
