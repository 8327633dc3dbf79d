/** Reading an XFS image with xfsprogs as the oracle, without mounting it. */
import { openSync, readSync, closeSync } from 'node:fs';
import { run } from './fixtures.js';

/** Run xfs_db commands read-only on an image; returns what they print. */
export function xfsDb(img: string, ...cmds: string[]): string {
  return run('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), img]);
}

/** A file's bytes, located through xfs_db's block map and read straight from the image. */
export function readThroughXfsDb(img: string, path: string, blockSize: number, agBlocks: number): Buffer {
  const out = xfsDb(img, `path /${path}`, 'p core.size', 'bmap');
  const size = Number(/core.size = (\d+)/.exec(out)![1]);
  const data = Buffer.alloc(size);
  const fd = openSync(img, 'r');
  try {
    for (const m of out.matchAll(/data offset (\d+) startblock \d+ \((\d+)\/(\d+)\) count (\d+) flag (\d)/g)) {
      const [fileOff, agno, agbno, count, flag] = m.slice(1).map(Number) as [number, number, number, number, number];
      if (flag !== 0) continue; // unwritten extent reads as zeros
      const want = Math.min(count * blockSize, size - fileOff * blockSize);
      if (want > 0) readSync(fd, data, fileOff * blockSize, want, (agno * agBlocks + agbno) * blockSize);
    }
  } finally {
    closeSync(fd);
  }
  return data;
}
