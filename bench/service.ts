/**
 * The service under load, single host on SQLite beside three hosts on one PostgreSQL, in the same
 * run: 2,000 disks in one shared domain (500 small ext4 guests with deleted data, 1,500 thin
 * images), 500 sparsify jobs queued at once (asked of the hosts in turn), and GET /api/disks
 * timed from a client, round-robin over the hosts, while the jobs run and once idle. Reports
 * the p95 latency (target < 50 ms) and the jobs finished per minute.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, openSync, writeSync, closeSync, copyFileSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { startPostgres, postgresMissing } from '../test/helpers/postgres.js';
import { stopAllServers } from '../test/service/service-helpers.js';
import { BENCH_TOKEN as TOKEN, getJson, pct, startHost as startBenchHost, timeRequests, type Host } from './service-lib.js';

const DISKS = Number(process.env['BENCH_SERVICE_DISKS'] ?? 2000);
const JOBS = Number(process.env['BENCH_SERVICE_JOBS'] ?? 500);
/** Jobs each host runs at once (BENCH_SERVICE_CONCURRENCY). */
const CONCURRENCY = Number(process.env['BENCH_SERVICE_CONCURRENCY'] ?? 2);

export interface ServiceRow {
  name: string;
  p95Ms: number;
  medianMs: number;
  jobsPerMinute?: number;
  note?: string;
}

function garbage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.allocUnsafe(1 << 20);
  randomFillSync(chunk);
  for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
  closeSync(fd);
}

/** 2,000 images: JOBS guests (2 MiB ext4 on garbage, a deleted 1 MiB file) and thin ones. */
function makeDomain(work: string): string {
  const domain = join(work, 'images');
  mkdirSync(domain, { recursive: true });
  const files = join(work, 'files');
  mkdirSync(files, { recursive: true });
  garbage(join(files, 'keep.bin'), 256 << 10);
  const tpl = join(work, 'template.raw');
  garbage(tpl, 4 << 20);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', '-d', files, tpl]);
  for (let i = 0; i < JOBS; i++) copyFileSync(tpl, join(domain, `guest-${String(i).padStart(4, '0')}.raw`));
  for (let i = JOBS; i < DISKS; i++) {
    const p = join(domain, `thin-${String(i).padStart(4, '0')}.${i % 2 ? 'qcow2' : 'raw'}`);
    if (i % 2) execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', p, '10G']);
    else {
      const fd = openSync(p, 'w');
      ftruncateSync(fd, 10 * 2 ** 30);
      closeSync(fd);
    }
  }
  return domain;
}

function startHost(work: string, name: string, domain: string, database?: string): Promise<Host> {
  return startBenchHost({ work, name, domains: [domain], database, concurrency: CONCURRENCY });
}

/**
 * The p95 of GET /api/disks as the hosts themselves timed it (from their /metrics histograms,
 * summed over hosts): the upper bound of the bucket holding the 95th percentile, in ms.
 */
async function serverSideP95(urls: string[]): Promise<number> {
  const buckets = new Map<number, number>();
  for (const u of urls) {
    const text = await (await fetch(`${u}/metrics`)).text();
    for (const m of text.matchAll(/^sparsify_http_request_duration_seconds_bucket\{le="([^"]+)",method="GET",route="\/api\/disks",status="200"\} (\d+)$/gm)) {
      const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
      buckets.set(le, (buckets.get(le) ?? 0) + Number(m[2]));
    }
  }
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  const hit = sorted.find(([, n]) => n >= 0.95 * total);
  return hit ? hit[0] * 1000 : NaN;
}

async function scenario(work: string, label: string, hostNames: string[], database: string | undefined, log: (s: string) => void): Promise<ServiceRow[]> {
  const domain = makeDomain(join(work, label));
  const hosts: Host[] = [];
  try {
    for (const h of hostNames) hosts.push(await startHost(join(work, label), h, domain, database));
    const urls = hosts.map((h) => h.url);
    const t0 = Date.now();
    let disks: Array<{ id: string; name: string; analysis: { state: string } }> = [];
    for (;;) {
      disks = (await getJson<{ disks: typeof disks }>(`${urls[0]}/api/disks`)).disks;
      if (disks.length === DISKS && disks.every((d) => d.analysis.state !== 'pending')) break;
      if (Date.now() - t0 > 600_000) throw new Error(`${label}: analysis of ${DISKS} disks did not finish in 10 minutes`);
      await new Promise((r) => setTimeout(r, 500));
    }
    log(`${label}: ${DISKS} disks analyzed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const guests = disks.filter((d) => d.name.startsWith('guest-')).slice(0, JOBS);
    const t1 = Date.now();
    await Promise.all(
      guests.map(async (d, i) => {
        const r = await fetch(`${urls[i % urls.length]}/api/disks/${d.id}/sparsify`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
        if (r.status !== 202) throw new Error(`sparsify ${d.name}: ${r.status} ${await r.text()}`);
      }),
    );
    log(`${label}: ${JOBS} jobs queued in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
    const busy = await timeRequests(urls, 200);
    const serverBusy = await serverSideP95(urls);
    let left = JOBS;
    while (left) {
      left = (await getJson<{ jobs: unknown[] }>(`${urls[0]}/api/jobs?status=pending,running&limit=1000`)).jobs.length;
      if (Date.now() - t1 > 1_800_000) throw new Error(`${label}: jobs did not finish in 30 minutes`);
      if (left) await new Promise((r) => setTimeout(r, 250));
    }
    const minutes = (Date.now() - t1) / 60_000;
    const jobs = (await getJson<{ jobs: Array<{ status: string; host: string }> }>(`${urls[0]}/api/jobs?limit=1000`)).jobs;
    const failed = jobs.filter((j) => j.status !== 'finished').length;
    const perHost = hostNames.map((h) => `${h} ${jobs.filter((j) => j.host === h).length}`).join(', ');
    log(`${label}: ${JOBS} jobs done in ${(minutes * 60).toFixed(1)} s (${failed} not finished; ${perHost})`);
    const idle = await timeRequests(urls, 200);
    return [
      { name: `${label}: GET /api/disks, ${DISKS} disks, ${JOBS} jobs running`, p95Ms: pct(busy, 95), medianMs: pct(busy, 50), jobsPerMinute: JOBS / minutes, note: `200 requests over ${urls.length} host(s); as the hosts timed them (their /metrics): p95 <= ${serverBusy} ms; jobs by host: ${perHost}; ${failed} jobs not finished` },
      { name: `${label}: GET /api/disks, ${DISKS} disks, idle`, p95Ms: pct(idle, 95), medianMs: pct(idle, 50) },
    ];
  } finally {
    // SIGTERM first, so a profile gets written; SIGKILL what is left.
    await Promise.all(hosts.map((h) => h.stop().catch(() => undefined)));
    await stopAllServers();
    rmSync(join(work, label), { recursive: true, force: true });
  }
}

export async function benchService(opts: { log: (s: string) => void }): Promise<ServiceRow[]> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-bench-service-'));
  try {
    const rows = await scenario(work, '1 host, SQLite', ['solo'], undefined, opts.log);
    const missing = postgresMissing();
    if (missing) {
      rows.push({ name: '3 hosts, PostgreSQL', p95Ms: NaN, medianMs: NaN, note: `not run: ${missing}` });
      return rows;
    }
    const pg = await startPostgres();
    try {
      rows.push(...(await scenario(work, '3 hosts, PostgreSQL', ['alpha', 'beta', 'gamma'], pg.url, opts.log)));
    } finally {
      pg.stop();
    }
    return rows;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// Run alone: node dist/bench/service.js
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  benchService({ log: (s) => console.log(s) }).then(
    (rows) => {
      for (const r of rows) console.log(`${r.name}: median ${r.medianMs.toFixed(1)} ms, p95 ${r.p95Ms.toFixed(1)} ms${r.jobsPerMinute ? `, ${r.jobsPerMinute.toFixed(0)} jobs/min` : ''} (${r.note ?? ''})`);
    },
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
