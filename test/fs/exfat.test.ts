/**
 * exFAT tests. Nothing in Debian can add files to an exFAT image without mounting it (exfatprogs
 * only formats, checks, labels and dumps), so the real-tool round trip runs on freshly made
 * filesystems of several geometries; the corruption tests patch them by hand.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, readSync, closeSync, readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { exfatReader, exfatBootChecksum, parseExfatBootSector } from '../../src/fs/exfat.js';
import { CorruptError } from '../../src/io/errors.js';
import { tempDir, run, runStatus, haveTool, garbageFile, openRawVolume, clobber, patchFile as patch } from '../helpers/fixtures.js';

const skip = !haveTool('mkfs.exfat') || !haveTool('fsck.exfat') || !haveTool('dump.exfat') ? 'exfatprogs not installed' : false;

function dumpFigures(img: string): { free: number; clusterSize: number } {
  const out = run('dump.exfat', [img]);
  const free = /Free Clusters:\s+(\d+)/.exec(out);
  const cs = /Cluster size:\s+(\d+)/.exec(out);
  assert.ok(free && cs, out);
  return { free: Number(free[1]), clusterSize: Number(cs[1]) };
}

async function analyzeFile(img: string): Promise<Awaited<ReturnType<typeof exfatReader.analyze>>> {
  const { volume, close } = await openRawVolume(img);
  try {
    return await exfatReader.analyze(volume);
  } finally {
    await close();
  }
}

for (const [size, cluster] of [
  [24 << 20, '4K'],
  [40 << 20, '512'],
  [64 << 20, '128K'],
] as const) {
  test(`exfat ${size >> 20} MiB, ${cluster} clusters: free matches dump.exfat; clobbering it keeps fsck clean`, { skip }, async () => {
    const t = tempDir();
    try {
      const img = join(t.dir, 'ex.img');
      garbageFile(img, size);
      run('mkfs.exfat', ['-c', cluster, '-L', 'KEEPME', img]);
      const fig = dumpFigures(img);
      const { volume, close } = await openRawVolume(img);
      let free;
      try {
        assert.equal(await exfatReader.probe(volume), true);
        const a = await exfatReader.analyze(volume);
        assert.equal(a.trusted, true, a.warnings.join('; '));
        assert.equal(a.label, 'KEEPME');
        assert.equal(a.blockSize, fig.clusterSize);
        assert.equal(a.freeBytes, fig.free * fig.clusterSize);
        const g = parseExfatBootSector(readFileSync(img).subarray(0, 512), size);
        assert.ok(a.free.toArray()[0]!.start >= g.heapOffset * g.sectorSize, 'nothing before the cluster heap is free');
        free = a.free;
      } finally {
        await close();
      }
      clobber(img, free);
      const r = runStatus('fsck.exfat', ['-n', img]);
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.equal(run('exfatlabel', [img]).trim().split(/\s+/).pop(), 'KEEPME');
      assert.equal(dumpFigures(img).free, fig.free);
    } finally {
      t.cleanup();
    }
  });
}

test('exfat: bad checksum, dirty flag, truncation, looping root chain, absurd geometry', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'bad.img');
    garbageFile(img, 16 << 20);
    run('mkfs.exfat', [img]);
    const pristine = readFileSync(img);
    const g = parseExfatBootSector(pristine.subarray(0, 512), pristine.length);
    assert.equal(exfatBootChecksum(pristine, 512), pristine.readUInt32LE(11 * 512));

    // A changed byte in an extended boot sector breaks the checksum.
    patch(img, 600, Buffer.from([pristine[600]! ^ 1]));
    await assert.rejects(analyzeFile(img), /checksum/);
    writeFileSync(img, pristine);

    // VolumeDirty is outside the checksum: the volume is kept whole.
    patch(img, 106, Buffer.from([pristine[106]! | 2]));
    const dirty = await analyzeFile(img);
    assert.equal(dirty.trusted, false);
    assert.equal(dirty.free.isEmpty, true);
    assert.match(dirty.warnings.join(' '), /dirty/);
    writeFileSync(img, pristine);

    // Truncated volume.
    truncateSync(img, 8 << 20);
    await assert.rejects(analyzeFile(img), CorruptError);
    writeFileSync(img, pristine);

    // Root directory whose FAT entry points back at itself (and no end-of-directory marker).
    const fatEntry = g.fatOffset * g.sectorSize + g.rootCluster * 4;
    const le = Buffer.alloc(4);
    le.writeUInt32LE(g.rootCluster);
    patch(img, fatEntry, le);
    const rootOff = g.heapOffset * g.sectorSize + (g.rootCluster - 2) * g.clusterSize;
    const fd = openSync(img, 'r+');
    const root = Buffer.alloc(g.clusterSize);
    readSync(fd, root, 0, root.length, rootOff);
    for (let o = 0; o < root.length; o += 32) if (root[o] === 0) root[o] = 0x05; // deleted-file entries, not the end
    writeSync(fd, root, 0, root.length, rootOff);
    closeSync(fd);
    await assert.rejects(analyzeFile(img), /loops/);
    writeFileSync(img, pristine);

    // Bitmap that marks its own cluster free.
    const bitmapOff = g.heapOffset * g.sectorSize; // mkfs.exfat puts the bitmap in cluster 2
    patch(img, bitmapOff, Buffer.from([pristine[bitmapOff]! & 0xfe]));
    await assert.rejects(analyzeFile(img), /metadata cluster/);
    writeFileSync(img, pristine);

    // Absurd cluster size shift: not exFAT at all.
    patch(img, 109, Buffer.from([30]));
    const { volume, close } = await openRawVolume(img);
    try {
      assert.equal(await exfatReader.probe(volume), false);
      await assert.rejects(exfatReader.analyze(volume), /cluster size shift/);
    } finally {
      await close();
    }
  } finally {
    t.cleanup();
  }
});
