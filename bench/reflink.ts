/**
 * Copy mode on a host filesystem with reflinks (issue 12): a 4 GiB raw ext4 image, half used,
 * garbage in free space, on a loop-mounted XFS made with reflink=1. sparsify shares the kept data
 * with the input; qemu-img convert writes every byte, and `qemu-img convert -C` (copy offloading)
 * asks the kernel, which on XFS also shares blocks. Runs alternate; the input's sha256 is compared
 * before and after. Needs root (mount) and mkfs.xfs; skipped otherwise.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { CLI, timed, dropFile, makeExtDisk, sh } from './lib.js';

export interface ReflinkRow {
  name: string;
  seconds: number[];
  peakRss: number;
  note?: string;
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export async function benchReflink(work: string, opts: { runs: number; log: (s: string) => void }): Promise<{ rows: ReflinkRow[]; note?: string }> {
  if (process.getuid?.() !== 0 || spawnSync('sh', ['-c', 'command -v mkfs.xfs']).status !== 0) {
    return { rows: [], note: 'reflink benchmark skipped: needs root and mkfs.xfs' };
  }
  const host = join(work, 'xfs-host.img');
  const mnt = join(work, 'xfs');
  sh('truncate', ['-s', '16G', host]);
  sh('mkfs.xfs', ['-q', '-m', 'reflink=1', host]);
  mkdirSync(mnt, { recursive: true });
  sh('mount', ['-o', 'loop', host, mnt]);
  try {
    const input = join(mnt, 'disk4g.img');
    opts.log('generating a 4 GiB ext4 disk on a loop-mounted XFS with reflink...');
    makeExtDisk(input, work, 4, 2);
    sh('sync', ['-f', input]);
    const before = await sha256(input);
    const out = join(mnt, 'out.img');
    const rows: ReflinkRow[] = [
      { name: 'sparsify (copy mode)', seconds: [], peakRss: 0, note: 'kept data shared by FICLONERANGE, fsync before rename' },
      { name: 'qemu-img convert -O raw', seconds: [], peakRss: 0, note: 'writes 4 GiB into the page cache' },
      { name: 'qemu-img convert -O raw + sync -f', seconds: [], peakRss: 0, note: 'as durable as ours' },
      { name: 'qemu-img convert -C -O raw + sync -f', seconds: [], peakRss: 0, note: 'copy offloading (copy_file_range)' },
    ];
    const commands: Array<[string, string[]]> = [
      [process.execPath, [CLI, '-q', input, out]],
      ['qemu-img', ['convert', '-O', 'raw', input, out]],
      ['sh', ['-c', `qemu-img convert -O raw ${input} ${out} && sync -f ${out}`]],
      ['sh', ['-c', `qemu-img convert -C -O raw ${input} ${out} && sync -f ${out}`]],
    ];
    for (let i = 0; i < opts.runs; i++) {
      const line: string[] = [];
      commands.forEach(([cmd, args], k) => {
        dropFile(out);
        sh('sync', ['-f', mnt]);
        const t = timed(cmd, args, work);
        rows[k]!.seconds.push(t.seconds);
        rows[k]!.peakRss = Math.max(rows[k]!.peakRss, t.peakRssBytes);
        line.push(`${rows[k]!.name} ${t.seconds.toFixed(2)} s`);
      });
      dropFile(out);
      opts.log(`  reflink run ${i + 1}: ${line.join(', ')}`);
    }
    const after = await sha256(input);
    return { rows, note: before === after ? 'The input is untouched: its sha256 is the same before and after every run.' : `THE INPUT CHANGED: sha256 ${before} -> ${after}` };
  } finally {
    spawnSync('umount', [mnt]);
    rmSync(host, { force: true });
  }
}

