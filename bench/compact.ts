/**
 * Compaction benchmark (called by bench/run.ts, `--only compact`): shrinking a qcow2 in place with
 * `sparsify --in-place --compact` against the usual way, `qemu-img convert -O qcow2` to a new file
 * then a rename (plus `sync -f`, since we make our result durable), in alternating runs on fresh
 * copies of the same image. Reported per tool: median wall time, peak RSS, the most extra disk
 * space it needed while running (sampled every 10 ms: for qemu-img the new file, for us any
 * growth of the image), and the file length it left. Two disks: the 4 GiB ext4 disk half used
 * (files written in one go, garbage in the free half), and the same with every other file
 * deleted, so kept data lies all over the disk and compaction has to move it.
 */
import { mkdtempSync, rmSync, statSync, renameSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
import { CLI, makeExtDisk, median, sh } from './lib.js';

export interface CompactBenchRow {
  name: string;
  ourSeconds: number[];
  refSeconds: number[];
  ourPeakRss: number;
  refPeakRss: number;
  /** Most extra host bytes while running. */
  ourExtra: number;
  refExtra: number;
  ourLength: number;
  refLength: number;
  /** Length of `qemu-img convert -O qcow2` of our result: the same guest disk, written anew. */
  convertOfOurs: number;
}

const du = (p: string): number => {
  try {
    return statSync(p).blocks * 512;
  } catch {
    return 0;
  }
};

/** Run a command under /usr/bin/time while sampling `watch()`; resolves wall time, peak RSS, the samples' maximum. */
function timedWatch(cmd: string, args: string[], work: string, watch: () => number): Promise<{ seconds: number; peakRss: number; maxWatched: number }> {
  const out = join(work, '.time');
  return new Promise((resolve, reject) => {
    let max = watch();
    const timer = setInterval(() => (max = Math.max(max, watch())), 10);
    const child = spawn('/usr/bin/time', ['-f', '%e %M', '-o', out, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      clearInterval(timer);
      max = Math.max(max, watch());
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${err}`));
      const [secs, kib] = readFileSync(out, 'utf8').trim().split(/\s+/).slice(-2).map(Number);
      resolve({ seconds: secs!, peakRss: kib! * 1024, maxWatched: max });
    });
  });
}

/** The half-used disk with every other file deleted (their data stays in free blocks). */
function fragment(raw: string): void {
  const list = sh('debugfs', ['-R', 'ls -p /', raw]);
  const names = [...list.matchAll(/\/\d+\/\d+\/\d+\/\d+\/(f\d+\.bin)\//g)].map((m) => m[1]!);
  const cmds = names.filter((n) => Number(/\d+/.exec(n)![0]) % 2 === 1).map((n) => `rm /${n}`).join('\n');
  sh('debugfs', ['-w', '-f', '-', raw], cmds + '\n');
}

export async function benchCompact(opts: { runs: number; log: (s: string) => void }): Promise<CompactBenchRow[]> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-bench-compact-'));
  const rows: CompactBenchRow[] = [];
  try {
    opts.log('compact: building a 4 GiB ext4 disk, half used, garbage in free space...');
    const raw = join(work, 'disk.raw');
    makeExtDisk(raw, work, 4, 2);
    const disks: Array<{ name: string; qcow2: string }> = [];
    const half = join(work, 'half.qcow2');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, half]);
    disks.push({ name: 'qcow2 4 GiB, half used', qcow2: half });
    fragment(raw);
    const frag = join(work, 'frag.qcow2');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, frag]);
    disks.push({ name: 'qcow2 4 GiB, every other file deleted', qcow2: frag });
    rmSync(raw, { force: true });

    const ours = join(work, 'ours.qcow2');
    const ref = join(work, 'ref.qcow2');
    const refNew = join(work, 'ref.new.qcow2');
    for (const d of disks) {
      const row: CompactBenchRow = { name: d.name, ourSeconds: [], refSeconds: [], ourPeakRss: 0, refPeakRss: 0, ourExtra: 0, refExtra: 0, ourLength: 0, refLength: 0, convertOfOurs: 0 };
      for (let i = 0; i < opts.runs; i++) {
        // Ours: the image itself; extra space is any growth of its allocation above the start.
        // The copy is made durable before the clock starts: neither tool should pay for its write-back.
        sh('cp', ['--sparse=always', d.qcow2, ours]);
        sh('sync', ['-f', ours]);
        const start = du(ours);
        const a = await timedWatch(process.execPath, [CLI, '-q', '--in-place', '--compact', ours], work, () => du(ours));
        row.ourSeconds.push(a.seconds);
        row.ourPeakRss = Math.max(row.ourPeakRss, a.peakRss);
        row.ourExtra = Math.max(row.ourExtra, a.maxWatched - start);
        row.ourLength = statSync(ours).size;
        if (i === 0) {
          // The bound: our length against qemu-img convert of the same (sparsified) disk.
          sh('qemu-img', ['convert', '-O', 'qcow2', ours, refNew]);
          row.convertOfOurs = statSync(refNew).size;
          rmSync(refNew, { force: true });
        }
        rmSync(ours, { force: true });
        // qemu-img convert to a new file, made durable, renamed over the old one.
        sh('cp', ['--sparse=always', d.qcow2, ref]);
        sh('sync', ['-f', ref]);
        rmSync(refNew, { force: true });
        const b = await timedWatch('sh', ['-c', `qemu-img convert -O qcow2 "${ref}" "${refNew}" && sync -f "${refNew}"`], work, () => du(refNew));
        renameSync(refNew, ref);
        row.refSeconds.push(b.seconds);
        row.refPeakRss = Math.max(row.refPeakRss, b.peakRss);
        row.refExtra = Math.max(row.refExtra, b.maxWatched);
        row.refLength = statSync(ref).size;
        rmSync(ref, { force: true });
        opts.log(`compact: ${d.name}: run ${i + 1}: sparsify ${a.seconds.toFixed(2)} s, qemu-img convert ${b.seconds.toFixed(2)} s`);
      }
      rows.push(row);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

export function compactTable(rows: CompactBenchRow[]): string[] {
  const mib = (n: number): string => `${(n / 2 ** 20).toFixed(0)} MiB`;
  const out = [
    '| in place, compact vs `qemu-img convert -O qcow2` + `sync -f` + rename | sparsify median | qemu-img median | ratio (target <= 0.5) | peak RSS (target <= 200 MiB) | most extra space while running | length left (qemu-img keeps the garbage in free space) | `qemu-img convert` of our result |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const o = median(r.ourSeconds);
    const q = median(r.refSeconds);
    out.push(
      `| ${r.name} | ${o.toFixed(2)} s | ${q.toFixed(2)} s | ${(o / q).toFixed(2)} | ${mib(r.ourPeakRss)} (qemu-img ${mib(r.refPeakRss)}) | ${mib(r.ourExtra)} (qemu-img ${mib(r.refExtra)}) | ${r.ourLength} (qemu-img ${r.refLength}) | ${r.convertOfOurs} (ours ${((r.ourLength / r.convertOfOurs - 1) * 100).toFixed(2)}% longer) |`,
    );
  }
  return out;
}
