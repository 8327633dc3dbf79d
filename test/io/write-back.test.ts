/**
 * Write-back pacing (src/io/write-back.ts): a background fdatasync every SYNC_STEP bytes, one at a
 * time, none while I/O observers record, and a failed one reported by settle (Linux tells only one
 * fsync of a write-back error, so the final one could pass after it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { open } from 'node:fs/promises';
import { SYNC_STEP, WriteBack } from '../../src/io/write-back.js';
import { observeIo } from '../../src/io/observer.js';
import { tempDir } from '../helpers/fixtures.js';

const T = { timeout: 30_000 };

async function withFile(fn: (fd: number) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir();
  const h = await open(join(dir, 'f'), 'w');
  try {
    await h.write(Buffer.alloc(4096, 1), 0);
    await fn(h.fd);
  } finally {
    await h.close();
    cleanup();
  }
}

test('a background fdatasync runs once SYNC_STEP bytes are written, and only one at a time', T, async () => {
  await withFile(async (fd) => {
    let calls = 0;
    let release!: () => void;
    const wb = new WriteBack(fd, () => {
      calls++;
      return new Promise<void>((r) => (release = r));
    });
    wb.written(0, SYNC_STEP - 4096);
    assert.equal(calls, 0, 'no sync before a whole step is written');
    wb.written(0, 4096);
    assert.equal(calls, 1);
    wb.written(0, SYNC_STEP * 2);
    assert.equal(calls, 1, 'a second sync waits for the first to end');
    release();
    await wb.settle();
    wb.written(0, SYNC_STEP);
    assert.equal(calls, 2);
    release();
    await wb.settle();
  });
});

test('a background fdatasync that fails is thrown by settle', T, async () => {
  await withFile(async (fd) => {
    const wb = new WriteBack(fd, () => Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })));
    wb.written(0, SYNC_STEP);
    await assert.rejects(wb.settle(), /EIO/);
    await assert.rejects(wb.settle(), /EIO/, 'and again: the final sync must not pass after it');
  });
});

test('no background fdatasync while I/O observers record (a power-cut replay sees the writer\'s own syncs only)', T, async () => {
  await withFile(async (fd) => {
    let calls = 0;
    const wb = new WriteBack(fd, async () => void calls++);
    const stop = observeIo(() => undefined);
    try {
      wb.written(0, SYNC_STEP * 3);
    } finally {
      stop();
    }
    await wb.settle();
    assert.equal(calls, 0);
  });
});
