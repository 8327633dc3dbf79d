/**
 * Service responsiveness: 200 disks in one domain, 20 sparsify jobs queued, and GET /api/disks
 * timed from a client while the jobs run (and once more when idle). Target: p95 under 100 ms.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, openSync, writeSync, closeSync, copyFileSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const TOKEN = 'bench-token-0123456789';
const DISKS = 200;
const GUESTS = 40;
const JOBS = 20;

function garbage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.allocUnsafe(1 << 20);
  randomFillSync(chunk);
  for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
  closeSync(fd);
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function timeRequests(url: string, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${url}/api/disks`);
    await r.arrayBuffer();
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b);
}

export async function benchService(opts: { log: (s: string) => void }): Promise<Array<{ name: string; p95Ms: number; medianMs: number; note?: string }>> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-bench-service-'));
  const domain = join(work, 'images');
  mkdirSync(domain, { recursive: true });
  let proc: ReturnType<typeof spawn> | undefined;
  try {
    // 40 guest disks (ext4 on garbage, 8 MiB, free space to give back) and 160 thin images.
    const files = join(work, 'files');
    mkdirSync(files);
    garbage(join(files, 'keep.bin'), 1 << 20);
    const tpl = join(work, 'template.raw');
    garbage(tpl, 8 << 20);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', '-d', files, tpl]);
    for (let i = 0; i < GUESTS; i++) copyFileSync(tpl, join(domain, `guest-${String(i).padStart(3, '0')}.raw`));
    for (let i = GUESTS; i < DISKS; i++) {
      const p = join(domain, `thin-${String(i).padStart(3, '0')}.${i % 2 ? 'qcow2' : 'raw'}`);
      if (i % 2) execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', p, '10G']);
      else {
        const fd = openSync(p, 'w');
        ftruncateSync(fd, 10 * 2 ** 30);
        closeSync(fd);
      }
    }
    opts.log(`service bench: ${DISKS} disks in ${domain}`);

    const fromTs = import.meta.url.endsWith('.ts');
    const bin = fileURLToPath(new URL(`../src/service/bin.${fromTs ? 'ts' : 'js'}`, import.meta.url));
    proc = spawn(process.execPath, [...(fromTs ? ['--import', 'tsx'] : []), bin, '--data-dir', join(work, 'data'), '--domain', domain, '--port', '0', '--token', TOKEN], {
      env: { ...process.env, SPARSIFY_SCAN_INTERVAL: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`service did not start: ${out}`)), 60_000);
      proc!.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) {
          clearTimeout(t);
          resolve(m[1]!);
        }
      });
    });

    // Wait for the first analysis of every disk.
    const t0 = Date.now();
    let disks: Array<{ id: string; name: string; analysis: { state: string } }> = [];
    for (;;) {
      disks = ((await (await fetch(`${url}/api/disks`)).json()) as { disks: typeof disks }).disks;
      if (disks.length === DISKS && disks.every((d) => d.analysis.state !== 'pending')) break;
      if (Date.now() - t0 > 120_000) throw new Error('analysis of 200 disks did not finish in 2 minutes');
      await new Promise((r) => setTimeout(r, 100));
    }
    opts.log(`service bench: 200 disks analyzed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const guests = disks.filter((d) => d.name.startsWith('guest-')).slice(0, JOBS);
    for (const [i, d] of guests.entries()) {
      const r = await fetch(`${url}/api/disks/${d.id}/sparsify`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ mode: i % 2 ? 'copy-and-replace' : 'in-place' }),
      });
      if (r.status !== 202) throw new Error(`sparsify ${d.name}: ${r.status} ${await r.text()}`);
    }
    const busy = await timeRequests(url, 200);
    const jobs = ((await (await fetch(`${url}/api/jobs?status=pending,running`)).json()) as { jobs: unknown[] }).jobs.length;
    opts.log(`service bench: ${jobs} jobs still pending or running after the busy measurement`);
    // Let the queue drain, then measure idle.
    const t1 = Date.now();
    while (((await (await fetch(`${url}/api/jobs?status=pending,running`)).json()) as { jobs: unknown[] }).jobs.length && Date.now() - t1 < 120_000) await new Promise((r) => setTimeout(r, 200));
    const idle = await timeRequests(url, 200);
    return [
      { name: `GET /api/disks, ${DISKS} disks, ${JOBS} jobs queued (in-place and copy-and-replace)`, p95Ms: pct(busy, 95), medianMs: pct(busy, 50), note: `200 requests; ${jobs} jobs left when done; target p95 < 100 ms` },
      { name: `GET /api/disks, ${DISKS} disks, idle`, p95Ms: pct(idle, 95), medianMs: pct(idle, 50), note: '200 requests' },
    ];
  } finally {
    proc?.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    rmSync(work, { recursive: true, force: true });
  }
}

// Run alone: node --import tsx bench/service.ts
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchService({ log: (s) => console.log(s) }).then(
    (rows) => {
      for (const r of rows) console.log(`${r.name}: median ${r.medianMs.toFixed(1)} ms, p95 ${r.p95Ms.toFixed(1)} ms (${r.note ?? ''})`);
    },
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
