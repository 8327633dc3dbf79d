/**
 * `npm run bench`: sparsify against the reference tools in the same run. The machine is shared
 * and noisy, so every figure is a median of several alternating runs, and comparisons are ratios.
 * Options: --runs N (default 5), --quick (3 runs, no --compress bench),
 * --only copy|reflink|analysis|inplace|compact|nbd|service|list|acceptance|scale.
 * `scale` (issue 21: BENCH_SCALE_DISKS disks, default 100,000) runs only when asked by --only: it
 * takes long and up to 15 GB of disk.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { benchCopy, median } from './copy.js';

// libguestfs's appliance hangs under KVM on these machines: let virt-sparsify use TCG.
process.env['LIBGUESTFS_BACKEND'] ??= 'direct';
process.env['LIBGUESTFS_BACKEND_SETTINGS'] ??= 'force_tcg';

const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1]) || (args.includes('--quick') ? 3 : 5);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const log = (s: string) => console.log(s);
const mib = (n: number) => `${(n / 1048576).toFixed(0)} MiB`;

async function main(): Promise<void> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-bench-'));
  const lines: string[] = [];
  // A bench that exits on ^C (scale does, once its servers are stopped) still leaves no folder behind.
  process.once('exit', () => rmSync(work, { recursive: true, force: true }));
  try {
    if (!only || only === 'copy') {
      const { compares, solos } = benchCopy(work, { runs, log, compress: !args.includes('--quick') });
      lines.push('| benchmark | sparsify median | reference median | ratio | sparsify peak RSS | reference peak RSS | output size ratio | target |', '|---|---|---|---|---|---|---|---|');
      for (const c of compares) {
        const ours = median(c.ourSeconds);
        const ref = median(c.refSeconds);
        const sizeRatio = c.ourOutputBytes && c.refOutputBytes ? (c.ourOutputBytes / c.refOutputBytes).toFixed(3) : '';
        lines.push(`| ${c.name} | ${ours.toFixed(2)} s | ${ref.toFixed(2)} s (${c.reference.split(' ').slice(0, 4).join(' ')}) | ${(ours / ref).toFixed(2)} | ${mib(c.ourPeakRss)} | ${mib(c.refPeakRss)} | ${sizeRatio} | ${c.target ?? ''} |`);
      }
      for (const s of solos) lines.push(`| ${s.name} | ${median(s.seconds).toFixed(2)} s | | | ${mib(s.peakRss)} | | | ${s.target ?? ''} |`);
    }
    if (!only || only === 'reflink') {
      const { benchReflink } = await import(new URL('./reflink.js', import.meta.url).href) as typeof import('./reflink.js');
      const r = await benchReflink(work, { runs, log });
      lines.push('', '| reflink copy on a loop-mounted XFS (raw -> raw, 4 GiB half used) | median | peak RSS | ratio to sparsify | note |', '|---|---|---|---|---|');
      for (const row of r.rows) lines.push(`| ${row.name} | ${median(row.seconds).toFixed(2)} s | ${mib(row.peakRss)} | ${(median(row.seconds) / median(r.rows[0]!.seconds)).toFixed(1)} | ${row.note ?? ''} |`);
      if (r.note) lines.push('', r.note);
    }
    if (!only || only === 'analysis') {
      const { benchAnalysis } = await import(new URL('./analysis.js', import.meta.url).href) as typeof import('./analysis.js');
      const rows = await benchAnalysis(work, { runs, log });
      lines.push('', '| --analyze on fragmented filesystems | median | peak RSS | free extents | note |', '|---|---|---|---|---|');
      for (const row of rows) lines.push(`| ${row.name} | ${median(row.seconds).toFixed(2)} s | ${mib(row.peakRss)} | ${row.freeExtents} | ${row.note} |`);
    }
    if (!only || only === 'inplace') {
      try {
        const mod = (await import(new URL('./inplace.js', import.meta.url).href)) as { benchInPlace?: (o: { runs: number; log: (s: string) => void }) => Promise<Array<{ name: string; ourSeconds: number[]; reclaimedBytes: number; peakRssBytes: number; note?: string }>> };
        if (mod.benchInPlace) {
          lines.push('', '| in-place benchmark | sparsify median | reclaimed | peak RSS | note |', '|---|---|---|---|---|');
          for (const r of await mod.benchInPlace({ runs, log })) lines.push(`| ${r.name} | ${median(r.ourSeconds).toFixed(2)} s | ${mib(r.reclaimedBytes)} | ${mib(r.peakRssBytes)} | ${r.note ?? ''} |`);
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
      }
    }
    if (!only || only === 'compact') {
      const { benchCompact, compactTable } = (await import(new URL('./compact.js', import.meta.url).href)) as typeof import('./compact.js');
      lines.push('', ...compactTable(await benchCompact({ runs, log })));
    }
    if (!only || only === 'nbd') {
      const { benchNbd } = (await import(new URL('./nbd.js', import.meta.url).href)) as typeof import('./nbd.js');
      const rows = await benchNbd(work, { runs, log });
      const base = median(rows.find((r) => r.name.startsWith('nbdcopy --flush'))!.seconds);
      lines.push('', '| copy from NBD (qemu-nbd, Unix socket, 4 GiB half used) | median | ratio to nbdcopy --flush | peak RSS | output allocated | target |', '|---|---|---|---|---|---|');
      for (const r of rows) lines.push(`| ${r.name} | ${median(r.seconds).toFixed(2)} s | ${(median(r.seconds) / base).toFixed(2)} | ${mib(r.peakRss)} | ${mib(r.outputBytes)} | ${r.name.startsWith('sparsify') ? '<= 0.6x nbdcopy, <= 200 MiB' : ''} |`);
    }
    if (!only || only === 'service') {
      try {
        const mod = (await import(new URL('./service.js', import.meta.url).href)) as { benchService?: (o: { log: (s: string) => void }) => Promise<Array<{ name: string; p95Ms: number; medianMs: number; jobsPerMinute?: number; note?: string }>> };
        if (mod.benchService) {
          lines.push('', '| service benchmark | median | p95 (target < 50 ms) | jobs finished per minute | note |', '|---|---|---|---|---|');
          for (const r of await mod.benchService({ log })) lines.push(`| ${r.name} | ${r.medianMs.toFixed(1)} ms | ${r.p95Ms.toFixed(1)} ms | ${r.jobsPerMinute?.toFixed(0) ?? ''} | ${r.note ?? ''} |`);
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
      }
    }
    if (!only || only === 'list') {
      const { benchListPages, listTable } = (await import(new URL('./list-pages.js', import.meta.url).href)) as typeof import('./list-pages.js');
      lines.push('', ...listTable(await benchListPages(log)));
    }
    if (only === 'scale') {
      const { benchScale, scaleTable } = (await import(new URL('./scale.js', import.meta.url).href)) as typeof import('./scale.js');
      const r = await benchScale({ log });
      lines.push('', ...scaleTable(r));
      const { dirty: _dirty, dir: _dir, ...images } = r.images;
      console.log(JSON.stringify({ bench: 'scale', ...r, images }));
    }
    if (!only || only === 'acceptance') {
      const mod = (await import(new URL('./acceptance.js', import.meta.url).href)) as {
        benchAcceptance: (o: { log: (s: string) => void }) => Promise<{ ourAllocatedBytes: number; virtAllocatedBytes?: number; ratio?: number; ourSeconds: number; virtSeconds?: number; note?: string }>;
      };
      const a = await mod.benchAcceptance({ log });
      lines.push(
        '',
        '| mixed-filesystem disk (issue 4 acceptance) | sparsify | virt-sparsify | ratio | note |',
        '|---|---|---|---|---|',
        `| allocated after copy | ${mib(a.ourAllocatedBytes)} | ${a.virtAllocatedBytes !== undefined ? mib(a.virtAllocatedBytes) : 'not installed'} | ${a.ratio?.toFixed(3) ?? ''} | target <= 1.02 |`,
        `| wall time | ${a.ourSeconds.toFixed(2)} s | ${a.virtSeconds !== undefined ? a.virtSeconds.toFixed(1) + ' s' : ''} | ${a.virtSeconds ? (a.ourSeconds / a.virtSeconds).toFixed(3) : ''} | ${a.note ?? ''} |`,
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  console.log('\n' + lines.join('\n'));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : String(e));
  process.exit(1);
});
