/**
 * In-place benchmarks (called by bench/run.ts): our CLI as a child process under /usr/bin/time on
 * a fresh copy of each image per run (the copy is not timed):
 *   - 4 GiB raw ext4, half used, garbage in free space (target < 1 s);
 *   - the same as qcow2 (target < 2 s);
 *   - 1 TiB virtual raw ext4 with 2 GiB used (cost must follow metadata, not virtual size).
 * virt-sparsify --in-place runs on the same images when it is installed.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { CLI, timed, makeExtDisk, makeHugeSparseDisk, sh } from './lib.js';

export interface InPlaceBenchResult {
  name: string;
  ourSeconds: number[];
  reclaimedBytes: number;
  peakRssBytes: number;
  note?: string;
}

function du(path: string): number {
  return statSync(path).blocks * 512;
}

function haveVirtSparsify(): boolean {
  return spawnSync('sh', ['-c', 'command -v virt-sparsify']).status === 0;
}

/** A sparse-preserving copy (the 1 TiB image must stay sparse). */
function copy(src: string, dst: string): void {
  rmSync(dst, { force: true });
  sh('cp', ['--sparse=always', src, dst]);
}

interface Case {
  name: string;
  pristine: string;
  target: string;
}

export async function benchInPlace(opts: { runs: number; log: (s: string) => void }): Promise<InPlaceBenchResult[]> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-bench-inplace-'));
  const results: InPlaceBenchResult[] = [];
  try {
    opts.log('in-place: building a 4 GiB ext4 disk, half used, garbage in free space...');
    const raw = join(work, 'disk4g.raw');
    makeExtDisk(raw, work, 4, 2);
    const qcow2 = join(work, 'disk4g.qcow2');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    opts.log('in-place: building a 1 TiB sparse ext4 disk with 2 GiB used...');
    const huge = join(work, 'huge1t.raw');
    makeHugeSparseDisk(huge, work, 1, 2);

    const cases: Case[] = [
      { name: 'in-place 4 GiB raw (half used)', pristine: raw, target: 'under 1 s' },
      { name: 'in-place 4 GiB qcow2 (half used)', pristine: qcow2, target: 'under 2 s' },
      { name: 'in-place 1 TiB virtual raw, 2 GiB used', pristine: huge, target: 'a few seconds' },
    ];
    const img = join(work, 'work.img');
    for (const c of cases) {
      const seconds: number[] = [];
      let peak = 0;
      let reclaimed = 0;
      let note = `target ${c.target}`;
      try {
        for (let i = 0; i < opts.runs; i++) {
          copy(c.pristine, img);
          const before = du(img);
          const t = timed(process.execPath, [CLI, '-q', '--in-place', img], work);
          seconds.push(t.seconds);
          peak = Math.max(peak, t.peakRssBytes);
          reclaimed = before - du(img);
          opts.log(`${c.name}: run ${i + 1}: ${t.seconds.toFixed(2)} s, ${(reclaimed / 2 ** 20).toFixed(0)} MiB reclaimed`);
        }
        if (haveVirtSparsify()) {
          copy(c.pristine, img);
          const before = du(img);
          const t = timed('virt-sparsify', ['-q', '--in-place', img], work);
          note += `; virt-sparsify --in-place: ${t.seconds.toFixed(2)} s, ${((before - du(img)) / 2 ** 20).toFixed(0)} MiB reclaimed`;
        } else note += '; virt-sparsify not installed';
      } catch (e) {
        note = `failed: ${(e as Error).message.split('\n')[0]}`;
        if (!seconds.length) seconds.push(Number.NaN);
      }
      rmSync(img, { force: true });
      results.push({ name: c.name, ourSeconds: seconds, reclaimedBytes: reclaimed, peakRssBytes: peak, note });
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return results;
}
