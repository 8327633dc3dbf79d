/**
 * --analyze must scale with the filesystem's metadata (issue 12): ext4 with over a million inodes,
 * XFS and btrfs, each filled with many small files of which every other one is then deleted, so
 * free space is in hundreds of thousands of pieces. Built through loop mounts (needs root).
 * Reported: wall time and peak RSS of `sparsify --analyze`, and how many free extents it found.
 */
import { mkdirSync, rmSync, writeFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { CLI, timed, sh } from './lib.js';
import { openImage } from '../src/formats/open.js';
import { analyzeDisk } from '../src/analyze/analyze.js';

export interface AnalysisRow {
  name: string;
  seconds: number[];
  peakRss: number;
  freeExtents: number;
  note: string;
}

interface FragSpec {
  name: string;
  sizeGiB: number;
  mkfs: [string, string[]];
  mountOptions?: string;
  files: number;
  fileBytes: number;
}

const SPECS: FragSpec[] = [
  { name: 'ext4, 1.2M inodes, 1 KiB blocks', sizeGiB: 2, mkfs: ['mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-N', '1200000', '-E', 'nodiscard']], files: 1_000_000, fileBytes: 1000 },
  { name: 'XFS, 1 KiB blocks', sizeGiB: 3, mkfs: ['mkfs.xfs', ['-q', '-f', '-b', 'size=1024', '-K']], files: 1_000_000, fileBytes: 1000 },
  { name: 'btrfs, no inline data', sizeGiB: 3, mkfs: ['mkfs.btrfs', ['-q', '-f']], mountOptions: 'max_inline=0', files: 500_000, fileBytes: 1000 },
];

const PER_DIR = 1000;

/** Many small files, then every other one deleted: free space in `files / 2` pieces. */
function fragment(mnt: string, spec: FragSpec): void {
  const data = Buffer.alloc(spec.fileBytes, 0x5a);
  for (let i = 0; i < spec.files; i++) {
    if (i % PER_DIR === 0) mkdirSync(join(mnt, `d${i / PER_DIR}`));
    writeFileSync(join(mnt, `d${Math.floor(i / PER_DIR)}`, `f${i}`), data);
  }
  sh('sync', ['-f', mnt]);
  for (let i = 0; i < spec.files; i += 2) unlinkSync(join(mnt, `d${Math.floor(i / PER_DIR)}`, `f${i}`));
}

async function freeExtents(img: string): Promise<number> {
  const image = await openImage(img, { lock: 'read' });
  try {
    const map = await analyzeDisk(image);
    return map.root.free.count;
  } finally {
    await image.close();
  }
}

export async function benchAnalysis(work: string, opts: { runs: number; log: (s: string) => void }): Promise<AnalysisRow[]> {
  const rows: AnalysisRow[] = [];
  if (process.getuid?.() !== 0) return rows;
  for (const spec of SPECS) {
    if (spawnSync('sh', ['-c', `command -v ${spec.mkfs[0]}`]).status !== 0) continue;
    const img = join(work, 'frag.img');
    const mnt = join(work, 'frag');
    rmSync(img, { force: true });
    sh('truncate', ['-s', `${spec.sizeGiB}G`, img]);
    sh(spec.mkfs[0], [...spec.mkfs[1], img]);
    mkdirSync(mnt, { recursive: true });
    opts.log(`building ${spec.name}: ${spec.files} files of ${spec.fileBytes} bytes, every other one deleted...`);
    sh('mount', ['-o', ['loop', spec.mountOptions].filter(Boolean).join(','), img, mnt]);
    try {
      fragment(mnt, spec);
    } finally {
      sh('umount', [mnt]);
    }
    const row: AnalysisRow = { name: spec.name, seconds: [], peakRss: 0, freeExtents: await freeExtents(img), note: `${spec.files} files created, ${spec.files / 2} deleted` };
    for (let i = 0; i < opts.runs; i++) {
      const t = timed(process.execPath, [CLI, '--analyze', img], work);
      row.seconds.push(t.seconds);
      row.peakRss = Math.max(row.peakRss, t.peakRssBytes);
      opts.log(`  ${spec.name} run ${i + 1}: ${t.seconds.toFixed(2)} s, ${(t.peakRssBytes / 1048576).toFixed(0)} MiB`);
    }
    rows.push(row);
    rmSync(img, { force: true });
  }
  return rows;
}
