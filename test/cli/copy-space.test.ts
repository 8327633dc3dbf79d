/**
 * Copy mode says up front when the output's folder cannot hold the copy: it knows the bytes it
 * will write (the kept data), so the error names the figures instead of a bare ENOSPC, exit 1,
 * and nothing is left behind. The output folder is a small tmpfs.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { tempDir, haveTool, fileContent } from '../helpers/fixtures.js';
import { makeExtImage } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';

const skip = process.getuid?.() !== 0 ? 'needs root to mount a tmpfs' : !haveTool('mke2fs') ? 'no mke2fs' : false;

describe('copy mode with too little space for the output', { skip, timeout: 60_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let out: string;

  before(() => {
    tmp = tempDir('sparsify-copy-space-');
    out = join(tmp.dir, 'small');
    mkdirSync(out);
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', out]).status, 0);
  });
  after(() => {
    spawnSync('umount', ['-l', out]);
    tmp?.cleanup();
  });

  it('names how much it needs and how much is free, exit 1, nothing written', () => {
    const input = join(tmp.dir, 'in.img');
    // 16 MiB of files to keep: more than the 8 MiB tmpfs holds.
    makeExtImage(input, { type: 'ext4', sizeMiB: 48, files: { 'big.bin': fileContent('big', 16 << 20) } }, tmp.dir, true);
    const r = sparsify([input, join(out, 'out.img')]);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /not enough space in .*small for the output: the copy writes up to \d+ bytes \([\d.]+ MiB\) of data and \d+ bytes \([\d.]+ (MiB|KiB)\) are free/);
    assert.doesNotMatch(r.stderr, /ENOSPC|at .*\.js:\d+/);
    assert.deepEqual(readdirSync(out), [], 'no output, no temporary file');
  });
});
