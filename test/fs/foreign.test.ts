/**
 * Filesystems sparsify cannot read (issue 12): each one Debian can make is named as blkid names
 * it, and kept whole. In place, the warning is virt-sparsify's own line, and --ignore silences it.
 * Oracle: blkid -p for the name; the bytes of the volume for "kept whole".
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { tempDir, run, runStatus, haveTool, garbageFile, sha256 } from '../helpers/fixtures.js';
import { buildDisk, placeAt } from '../helpers/disk-builder.js';
import { sparsify } from '../helpers/cli.js';

interface Maker {
  name: string;
  tool: string;
  /** Make the filesystem in `img` (a garbage-filled file of `sizeMiB`), from the files in `src`. */
  make(img: string, src: string, work: string): void;
  sizeMiB?: number;
}

/** Tools that write a standalone image: placed at the start of the garbage file. */
const placed = (build: (out: string, src: string) => void) => (img: string, src: string, work: string) => {
  const out = join(work, `${Math.random().toString(36).slice(2)}.raw`);
  build(out, src);
  placeAt(img, out, 0);
};

const MAKERS: Maker[] = [
  { name: 'minix (v1)', tool: 'mkfs.minix', make: (img) => run('mkfs.minix', ['-1', img]) },
  { name: 'minix (v2)', tool: 'mkfs.minix', make: (img) => run('mkfs.minix', ['-2', img]) },
  { name: 'minix (v3)', tool: 'mkfs.minix', make: (img) => run('mkfs.minix', ['-3', img]) },
  { name: 'jfs', tool: 'mkfs.jfs', make: (img) => run('mkfs.jfs', ['-q', img]) },
  { name: 'reiserfs', tool: 'mkreiserfs', sizeMiB: 48, make: (img) => run('mkreiserfs', ['-q', '-f', '-f', img]) },
  { name: 'f2fs', tool: 'mkfs.f2fs', sizeMiB: 64, make: (img) => run('mkfs.f2fs', ['-q', img]) },
  { name: 'nilfs2', tool: 'mkfs.nilfs2', sizeMiB: 160, make: (img) => run('mkfs.nilfs2', ['-q', '-f', img]) },
  { name: 'udf', tool: 'mkudffs', make: (img) => run('mkudffs', [img]) },
  { name: 'squashfs', tool: 'mksquashfs', make: placed((out, src) => run('mksquashfs', [src, out, '-noappend', '-quiet'])) },
  { name: 'iso9660', tool: 'genisoimage', make: placed((out, src) => run('genisoimage', ['-quiet', '-o', out, src])) },
  { name: 'iso9660 with UDF', tool: 'genisoimage', make: placed((out, src) => run('genisoimage', ['-quiet', '-udf', '-o', out, src])) },
  { name: 'erofs', tool: 'mkfs.erofs', make: placed((out, src) => run('mkfs.erofs', [out, src])) },
  { name: 'ufs', tool: 'makefs', make: placed((out, src) => run('makefs', ['-t', 'ffs', '-s', '4m', out, src])) },
];

interface NodeJson {
  device: string;
  content: string;
  trusted: boolean;
  reclaimableBytes: number;
  warnings: string[];
  children: NodeJson[];
}

describe('filesystems sparsify cannot read', { timeout: 180_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let src: string;
  before(() => {
    work = tempDir('sparsify-foreign-');
    src = join(work.dir, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'hello.txt'), 'hello\n');
  });
  after(() => work?.cleanup());

  for (const m of MAKERS) {
    test(`${m.name}: named as blkid names it, kept whole`, { skip: haveTool(m.tool) ? false : `${m.tool} not installed` }, () => {
      const img = join(work.dir, `${m.name.replace(/\W+/g, '-')}.img`);
      garbageFile(img, (m.sizeMiB ?? 32) << 20);
      m.make(img, src, work.dir);
      const blkid = runStatus('blkid', ['-p', '-o', 'value', '-s', 'TYPE', img]).stdout.trim();
      assert.notEqual(blkid, '', 'blkid names it');
      const r = sparsify(['--analyze', '--json', img]);
      assert.equal(r.status, 0, r.stderr);
      const root = (JSON.parse(r.stdout) as { root: NodeJson }).root;
      assert.equal(root.content, blkid);
      assert.equal(root.trusted, false);
      assert.equal(root.reclaimableBytes, 0);
      assert.deepEqual(root.warnings, [`${blkid} filesystem is not supported; kept as it is`]);
    });
  }

  describe('on a partition, through the CLI', { skip: haveTool('mkfs.minix') && haveTool('sgdisk') ? false : 'mkfs.minix or sgdisk not installed' }, () => {
    let disk: string;
    let partOffset: number;
    let partSize: number;
    before(() => {
      disk = join(work.dir, 'disk.img');
      const parts = buildDisk(disk, { sizeMiB: 40, label: 'gpt', parts: [{ sizeMiB: 16 }, { sizeMiB: 16, ext: { type: 'ext4', files: { 'a.txt': Buffer.from('a\n') } } }], garbage: true, workDir: work.dir });
      partOffset = parts[0]!.offset;
      partSize = parts[0]!.size;
      const fs = join(work.dir, 'minix-part.img');
      garbageFile(fs, partSize);
      run('mkfs.minix', ['-3', fs]);
      placeAt(disk, fs, partOffset);
    });

    const partSum = (img: string) => sha256(readFileSync(img).subarray(partOffset, partOffset + partSize));

    test('copy: a warning names the type, and the partition is copied as it is', () => {
      const out = join(work.dir, 'copy.img');
      const r = sparsify(['-q', disk, out]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /warning: \/dev\/sda1: minix filesystem is not supported; kept as it is/);
      assert.equal(partSum(out), partSum(disk));
    });

    test('in place: virt-sparsify\'s fstrim warning, word for word; the partition is untouched', () => {
      const img = join(work.dir, 'inplace.img');
      copyFileSync(disk, img);
      const r = sparsify(['--in-place', img]);
      assert.equal(r.status, 0, r.stderr);
      const expected = "sparsify: warning: fstrim operation is not supported on /dev/sda1 (minix).  Suppress this warning using '--ignore /dev/sda1', or use copying mode instead.";
      assert.ok(r.stdout.split('\n').includes(expected), r.stdout);
      assert.equal(partSum(img), partSum(disk));
    });

    test('in place with --ignore: no warning', () => {
      const img = join(work.dir, 'ignored.img');
      copyFileSync(disk, img);
      const r = sparsify(['--in-place', '--ignore', '/dev/sda1', img]);
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /warning/);
      assert.equal(partSum(img), partSum(disk));
    });
  });
});
