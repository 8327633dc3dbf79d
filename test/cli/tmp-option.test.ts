/**
 * --tmp in copy mode: prebuilt:FILE is checked as virt-sparsify and its manual require (qcow2, its
 * backing file the input disk, freshly made) and never written or deleted; a block device is
 * accepted and left untouched (virt-sparsify would erase it). Oracle: qemu-img to make the files,
 * their bytes and mtimes before and after, and e2fsck + checksums of the copy.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { tempDir, run, runStatus, haveTool, fileContent, garbageFile } from '../helpers/fixtures.js';
import { makeExtImage, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';
import { fileSha } from '../helpers/chain-fixtures.js';
import { sparsify } from '../helpers/cli.js';

const tools = ['qemu-img', 'qemu-io', 'mke2fs', 'e2fsck', 'debugfs'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : false;

function loopSkip(): string | false {
  if (skip) return skip;
  if (process.getuid?.() !== 0) return 'needs root for a loop device';
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

describe('--tmp in copy mode', { skip, timeout: 120_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let input: string;
  let sums: Map<string, string>;

  before(() => {
    work = tempDir('sparsify-tmp-');
    input = join(work.dir, 'in.img');
    makeExtImage(input, { type: 'ext4', sizeMiB: 24, files: { 'a.bin': fileContent('a', 3 << 20), 'gone.bin': fileContent('g', 8 << 20) }, remove: ['gone.bin'] }, work.dir);
    sums = extFileSums(input, work.dir);
  });
  after(() => work?.cleanup());

  function overlay(name: string, backing: string, fmt = 'raw'): string {
    const p = join(work.dir, name);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', fmt, p]);
    return p;
  }

  function assertGoodCopy(out: string): void {
    assert.equal(e2fsck(out).status, 0);
    assert.deepEqual(extFileSums(out, work.dir), sums);
  }

  test('prebuilt: a fresh qcow2 overlay of the input is accepted, left as it is and not deleted; -v says so', () => {
    const pre = overlay('pre.qcow2', input);
    const sha = fileSha(pre);
    const mtime = statSync(pre).mtimeMs;
    const out = join(work.dir, 'out-pre.img');
    const r = sparsify(['-v', '--tmp', `prebuilt:${pre}`, input, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /needs no temporary space, so nothing is written to it \(and it is not deleted\)/);
    assert.ok(existsSync(pre));
    assert.equal(fileSha(pre), sha);
    assert.equal(statSync(pre).mtimeMs, mtime);
    assert.equal(runStatus('qemu-img', ['check', pre]).status, 0);
    assertGoodCopy(out);
  });

  test('prebuilt: files that do not qualify get a clear error, exit 1, and no output', () => {
    const other = join(work.dir, 'other.img');
    garbageFile(other, 24 << 20);
    const notQcow2 = join(work.dir, 'plain.raw');
    writeFileSync(notQcow2, Buffer.alloc(1 << 20, 1));
    const noBacking = join(work.dir, 'nobacking.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', noBacking, '24M']);
    const used = overlay('used.qcow2', input);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 64k', used]);
    // Claims its backing file is qcow2 (-u: qemu-img does not look), but the input is raw.
    const asQcow2 = join(work.dir, 'fmt.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', input, '-F', 'qcow2', asQcow2, '24M']);
    const cases: Array<[string, RegExp]> = [
      [overlay('wrong.qcow2', other), /wrong\.qcow2: its backing file .*other\.img is not the input disk/],
      [notQcow2, /plain\.raw: file format is not qcow2/],
      [noBacking, /nobacking\.qcow2: file does not have backing file/],
      [join(work.dir, 'missing.qcow2'), /missing\.qcow2: file does not exist/],
      [used, /used\.qcow2: it already holds 65536 bytes of the guest's disk: it was not freshly made/],
      [asQcow2, /fmt\.qcow2: /],
    ];
    for (const [file, message] of cases) {
      const sha = existsSync(file) ? fileSha(file) : '';
      const out = join(work.dir, 'out-bad.img');
      const r = sparsify(['--tmp', `prebuilt:${file}`, input, out]);
      assert.equal(r.status, 1, `${file}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /^sparsify: error: --tmp prebuilt:file: /);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      assert.equal(existsSync(out), false);
      if (sha) assert.equal(fileSha(file), sha, `${file} was changed`);
    }
  });

  test('--tmp is refused with --in-place, and a path that is none of the three is refused', () => {
    const pre = overlay('pre2.qcow2', input);
    let r = sparsify(['--in-place', '--tmp', `prebuilt:${pre}`, input]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /you cannot use --in-place and --tmp options together/);
    r = sparsify(['--tmp', join(work.dir, 'nowhere'), input, join(work.dir, 'o.img')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--tmp parameter must point to a directory, block device or prebuilt file/);
  });

  test('a block device given as --tmp is accepted and never written', { skip: loopSkip() }, () => {
    const backing = join(work.dir, 'tmpdev.img');
    garbageFile(backing, 8 << 20);
    const sha = fileSha(backing);
    let loop = '';
    try {
      loop = run('losetup', ['-f', '--show', backing]).trim();
      const out = join(work.dir, 'out-dev.img');
      const r = sparsify(['-v', '--tmp', loop, input, out]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /the block device is not written \(nor erased\)/);
      assertGoodCopy(out);
    } finally {
      if (loop) runStatus('losetup', ['-d', loop]);
    }
    assert.equal(fileSha(backing), sha);
  });
});
