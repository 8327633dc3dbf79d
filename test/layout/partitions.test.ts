/**
 * MBR and GPT against sfdisk's own reading of the same images, plus damaged tables:
 * a wiped primary GPT header, an EBR chain that loops, partitions past the end or overlapping.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, closeSync, readSync, truncateSync } from 'node:fs';
import { tempDir, garbageFile, run, patchFile as patch } from '../helpers/fixtures.js';
import { BlockFile } from '../../src/io/file.js';
import { RawImage } from '../../src/formats/raw.js';
import { analyzeDisk } from '../../src/analyze/analyze.js';
import type { MapNode } from '../../src/analyze/diskmap.js';
import { allWarnings } from '../../src/analyze/diskmap.js';

async function analyze(path: string) {
  const image = await RawImage.open(await BlockFile.open(path));
  try {
    return await analyzeDisk(image);
  } finally {
    await image.close();
  }
}

/** sfdisk's view: device -> [start bytes, size bytes]. */
function sfdiskParts(img: string): Map<string, [number, number]> {
  const j = JSON.parse(run('sfdisk', ['--json', img])) as { partitiontable: { partitions: Array<{ node: string; start: number; size: number; type: string }>; sectorsize?: number } };
  const m = new Map<string, [number, number]>();
  for (const p of j.partitiontable.partitions) {
    if (['5', 'f', '85'].includes(p.type)) continue; // the extended container itself
    const n = /(\d+)$/.exec(p.node)![1];
    m.set(`/dev/sda${n}`, [p.start * 512, p.size * 512]);
  }
  return m;
}

function ourParts(root: MapNode): Map<string, [number, number]> {
  return new Map(root.children.map((c) => [c.device, [c.offset, c.size] as [number, number]]));
}

test('MBR with extended and logical partitions: same partitions as sfdisk, Linux numbering', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'mbr.img');
    garbageFile(img, 64 << 20);
    run('sfdisk', ['-q', img], {
      input: 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=8192, type=82\nstart=30720, size=2048, type=83\nstart=32768, type=5\nsize=8192, type=83\nsize=4096, type=7\nsize=8192, type=83\n',
    });
    const map = await analyze(img);
    assert.equal(map.root.content, 'mbr');
    assert.deepEqual(ourParts(map.root), sfdiskParts(img));
    assert.deepEqual([...ourParts(map.root).keys()], ['/dev/sda1', '/dev/sda2', '/dev/sda3', '/dev/sda5', '/dev/sda6', '/dev/sda7']);
  } finally {
    cleanup();
  }
});

test('GPT: same partitions as sfdisk, numbered by entry slot', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'gpt.img');
    garbageFile(img, 64 << 20);
    run('sgdisk', ['-o', '-n1:2048:+10M', '-n3:0:+5M', '-c3:data', '-n4:0:0', img]);
    const map = await analyze(img);
    assert.equal(map.root.content, 'gpt');
    assert.deepEqual(ourParts(map.root), sfdiskParts(img));
    assert.equal(map.root.children.find((c) => c.device === '/dev/sda3')!.details['name'], 'data');
    assert.deepEqual(allWarnings(map).filter((w) => /GPT/.test(w)), []);
  } finally {
    cleanup();
  }
});

test('GPT with a damaged primary header: the backup is used, with a warning naming the offset', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'gpt.img');
    garbageFile(img, 32 << 20);
    run('sgdisk', ['-o', '-n1:2048:+10M', '-n2:0:0', img]);
    const expected = sfdiskParts(img);
    patch(img, 512 + 24, Buffer.from([0xde, 0xad])); // inside the CRC-protected header
    const map = await analyze(img);
    assert.equal(map.root.content, 'gpt');
    assert.deepEqual(ourParts(map.root), expected);
    assert.match(allWarnings(map).join('\n'), /GPT header at 0x200 fails its CRC; using the backup GPT header at 0x1fffe00/);
  } finally {
    cleanup();
  }
});

test('GPT with both headers damaged: kept whole with a warning, no crash', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'gpt.img');
    garbageFile(img, 16 << 20);
    run('sgdisk', ['-o', '-n1:2048:0', img]);
    patch(img, 512 + 24, Buffer.from([1, 2]));
    patch(img, (16 << 20) - 512 + 24, Buffer.from([1, 2]));
    const map = await analyze(img);
    assert.equal(map.root.trusted, false);
    assert.equal(map.root.children.length, 0);
    assert.match(allWarnings(map).join('\n'), /fails its CRC, and no valid backup header was found; kept as it is/);
  } finally {
    cleanup();
  }
});

test('MBR: an extended-partition chain that loops is cut with a warning', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'loop.img');
    garbageFile(img, 32 << 20);
    run('sfdisk', ['-q', img], { input: 'label: dos\nstart=2048, size=2048, type=83\nstart=4096, size=2048, type=83\nstart=6144, size=2048, type=83\nstart=8192, type=5\nsize=2048, type=83\nsize=2048, type=83\n' });
    // The first EBR sits at the extended start (sector 8192); make its "next" entry point back to itself.
    const ebr = 8192 * 512;
    const next = Buffer.alloc(16);
    next[4] = 0x05;
    next.writeUInt32LE(0, 8);
    next.writeUInt32LE(4096, 12);
    patch(img, ebr + 0x1be + 16, next);
    const map = await analyze(img);
    assert.match(allWarnings(map).join('\n'), /chain of extended boot records loops back to 0x400000/);
    assert.deepEqual([...ourParts(map.root).keys()], ['/dev/sda1', '/dev/sda2', '/dev/sda3', '/dev/sda5']);
  } finally {
    cleanup();
  }
});

test('partitions past the end of a truncated disk, and overlapping partitions, are kept whole with warnings', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'bad.img');
    garbageFile(img, 32 << 20);
    run('sfdisk', ['-q', img], { input: 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=83\nstart=40000, size=20000, type=83\n' });
    // Make partition 2 overlap partition 1.
    const e2 = Buffer.alloc(4);
    const fd = openSync(img, 'r+');
    readSync(fd, e2, 0, 4, 0x1be + 16 + 8);
    closeSync(fd);
    e2.writeUInt32LE(6000);
    patch(img, 0x1be + 16 + 8, e2);
    truncateSync(img, 24 << 20);
    const map = await analyze(img);
    const w = allWarnings(map).join('\n');
    assert.match(w, /MBR partition 3 \(entry at 0x1de\) ends at 0x1d4c000, past the end of the disk/);
    assert.match(w, /MBR partitions 1 and 2 overlap/);
    assert.equal(map.root.children.length, 0);
  } finally {
    cleanup();
  }
});

test('a filesystem directly on the whole disk, with no partition table', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'whole.img');
    garbageFile(img, 16 << 20);
    run('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', img]);
    const map = await analyze(img);
    assert.equal(map.root.device, '/dev/sda');
    assert.equal(map.root.content, 'ext4');
    assert.ok(map.root.free.total() > 10 << 20);
  } finally {
    cleanup();
  }
});
