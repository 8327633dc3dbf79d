/**
 * One scenario of the scale benchmark (bench/scale.ts): start the hosts on the domains, wait for
 * every disk to be listed and analysed, time pages and the summary idle, rescan with nothing
 * changed, queue the sparsify jobs and time pages while they run, and read each host's peak RSS.
 * What it reads of the API (issue 21): /api/summary's `summary.disks` and `summary.analysis`,
 * /api/disks?limit=&sort=&status=&needsSparsify=&domain=&q=&after= answering {disks, next},
 * /api/info's `scan.running` and `scan.last.{startedAt, finishedAt, files, changed}`. A server
 * without one of them gets the figure marked n/a and why, never a wrong one.
 */
import { statSync } from 'node:fs';
import { BENCH_TOKEN, getOk as getJson, pct, procMemory, startHost, type Host } from './service-lib.js';
import type { ScaleImages } from './scale.js';

/** Jobs each host runs at once, as bench/service.ts. */
const CONCURRENCY = Number(process.env['BENCH_SERVICE_CONCURRENCY'] ?? 2);
/** Timed requests per series. */
const REQUESTS = Number(process.env['BENCH_SCALE_REQUESTS'] ?? 200);
/** How long listing + analysis, and the jobs, may take (seconds). */
const TIMEOUT_S = Number(process.env['BENCH_SCALE_TIMEOUT'] ?? 7200);
/** Above this many disks, a page request that a server answers with the whole list is not timed. */
const WHOLE_LIST_MAX = 5000;

export interface Latency {
  name: string;
  p50: number;
  p95: number;
  targetMs?: number;
  /** Why it was not measured. */
  skipped?: string;
  note?: string;
}

export interface ScenarioResult {
  label: string;
  listedSeconds?: number;
  analysedSeconds?: number;
  latencies: Latency[];
  rescan: { seconds?: number; note: string };
  jobsNote: string;
  hosts: Array<{ name: string; peakRss: number }>;
  notes: string[];
}

export interface ScenarioOptions {
  work: string;
  label: string;
  hostNames: string[];
  database?: string;
  disks: number;
  jobs: number;
  images: ScaleImages;
  log: (s: string) => void;
}

interface DiskLite {
  id: string;
  name: string;
  status?: string;
  needsSparsify?: boolean;
  reclaimableBytes?: number | null;
  analysis: { state: string };
}
interface Summary {
  disks: number;
  analysis: { done: number; pending: number; failed: number };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const auth = { authorization: `Bearer ${BENCH_TOKEN}` };
const FIRST = '/api/disks?limit=100';
const SORTED = '/api/disks?limit=100&sort=reclaimable:desc&status=ok&needsSparsify=true';

async function summaryOf(url: string): Promise<Summary | undefined> {
  const r = await fetch(`${url}/api/summary`);
  if (r.status !== 200) {
    await r.arrayBuffer();
    return undefined;
  }
  return ((await r.json()) as { summary?: Summary }).summary;
}

/** Listed and pending counts: from /api/summary, or from the whole list on an older server. */
async function progress(url: string, useSummary: boolean): Promise<{ listed: number; pending: number }> {
  if (useSummary) {
    const s = (await summaryOf(url))!;
    return { listed: s.disks, pending: s.analysis.pending };
  }
  const d = (await getJson<{ disks: DiskLite[] }>(`${url}/api/disks`)).disks;
  return { listed: d.length, pending: d.filter((x) => x.analysis.state === 'pending').length };
}

/** `n` GETs of `path` round-robin over the hosts; each answer checked by `check`. */
async function series(urls: string[], path: string, n: number, check: (body: { disks?: DiskLite[]; next?: unknown }) => string | undefined): Promise<{ sorted: number[]; problem?: string }> {
  const times: number[] = [];
  let problem: string | undefined;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${urls[i % urls.length]}${path}`);
    const text = await r.text();
    times.push(performance.now() - t0);
    if (r.status !== 200) problem ??= `HTTP ${r.status}: ${text.slice(0, 200)}`;
    else if (i === 0) problem ??= check(JSON.parse(text) as { disks?: DiskLite[] });
  }
  return { sorted: times.sort((a, b) => a - b), problem };
}

function latency(name: string, s: { sorted: number[]; problem?: string }, targetMs?: number, note?: string): Latency {
  const notes = [note, s.problem && `wrong answer: ${s.problem}`].filter(Boolean).join('; ');
  return { name, p50: pct(s.sorted, 50), p95: pct(s.sorted, 95), targetMs, note: notes || undefined };
}

const pageCheck = (want: number) => (b: { disks?: DiskLite[]; next?: unknown }) => (!b.disks ? 'no disks array' : b.disks.length !== want ? `${b.disks.length} disks, ${want} expected` : undefined);
function sortedCheck(b: { disks?: DiskLite[] }): string | undefined {
  const d = b.disks ?? [];
  if (!d.length) return 'no disk needs sparsify';
  if (d.some((x) => x.status !== 'ok' || x.needsSparsify !== true)) return 'a disk that is not ok or does not need sparsify';
  for (let i = 1; i < d.length; i++) if ((d[i - 1]!.reclaimableBytes ?? 0) < (d[i]!.reclaimableBytes ?? 0)) return 'not sorted by reclaimable, descending';
  return undefined;
}

/** The dirty disks' ids: paged through q=dirty- where the server pages, else the whole list. */
async function dirtyDisks(url: string, paging: boolean): Promise<DiskLite[]> {
  if (!paging) return (await getJson<{ disks: DiskLite[] }>(`${url}/api/disks`)).disks.filter((d) => d.name.includes('dirty-'));
  const out: DiskLite[] = [];
  let after: string | null = null;
  do {
    const page: { disks: DiskLite[]; next: string | null } = await getJson(`${url}/api/disks?limit=500&q=dirty-${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    out.push(...page.disks.filter((d) => d.name.includes('dirty-')));
    after = page.next;
  } while (after);
  return out;
}

interface ScanInfo {
  running: boolean;
  last: { startedAt: string | number; finishedAt: string | number; files: number; changed: number } | null;
}
const toMs = (v: string | number) => (typeof v === 'number' ? v : Date.parse(v));

/** Until no host is scanning (a server without /api/info's scan: at once). */
async function scansEnded(urls: string[]): Promise<void> {
  const t0 = Date.now();
  while ((await Promise.all(urls.map(async (u) => (await getJson<{ scan?: ScanInfo }>(`${u}/api/info`)).scan?.running))).some(Boolean)) {
    if (Date.now() - t0 > 600_000) throw new Error('a scan did not end within 10 minutes');
    await sleep(200);
  }
}

/** POST /api/rescan, then each host's /api/info until the scans started after it have ended. */
async function rescan(urls: string[]): Promise<{ seconds?: number; note: string }> {
  const scans = await Promise.all(urls.map(async (u) => (await getJson<{ scan?: ScanInfo }>(`${u}/api/info`)).scan));
  if (scans.some((s) => s === undefined)) return { note: 'n/a: /api/info has no scan' };
  await scansEnded(urls);
  const asked = Date.now();
  const r = await fetch(`${urls[0]}/api/rescan`, { method: 'POST', headers: auth });
  if (r.status !== 202) return { note: `n/a: POST /api/rescan answered ${r.status} ${await r.text()}` };
  let firstFresh = 0;
  for (;;) {
    const now = await Promise.all(urls.map(async (u) => (await getJson<{ scan: ScanInfo }>(`${u}/api/info`)).scan));
    // Clocks are this machine's: a scan started at or after the request (1 s of rounding allowed).
    const fresh = now.filter((s) => s.last && toMs(s.last.startedAt) >= asked - 1000 && !s.running);
    if (fresh.length && !firstFresh) firstFresh = Date.now();
    // Every host scans (a host that scans no domain ends at once); wait 3 s more for one that did not say so.
    if (fresh.length === urls.length || (firstFresh && Date.now() - firstFresh > 3000 && !now.some((s) => s.running))) {
      const secs = Math.max(...fresh.map((s) => (toMs(s.last!.finishedAt) - toMs(s.last!.startedAt)) / 1000));
      const files = fresh.reduce((a, s) => a + s.last!.files, 0);
      const changed = fresh.reduce((a, s) => a + s.last!.changed, 0);
      return { seconds: secs, note: `${fresh.length} host(s) scanned, ${files} files, ${changed} changed` };
    }
    if (Date.now() - asked > 600_000) return { note: 'n/a: no scan ended within 10 minutes of POST /api/rescan' };
    await sleep(100);
  }
}

/** Bytes the files hold on disk (st_blocks). */
function allocated(paths: string[]): number {
  return paths.reduce((a, p) => a + statSync(p).blocks * 512, 0);
}

async function jobsLeft(url: string): Promise<number> {
  return (await getJson<{ jobs: unknown[] }>(`${url}/api/jobs?status=pending,running&limit=1000`)).jobs.length;
}

export async function scenario(o: ScenarioOptions): Promise<ScenarioResult> {
  const { log, label, disks } = o;
  const hosts: Host[] = [];
  const notes: string[] = [];
  const peakSeen = new Map<string, number>();
  const sampler = setInterval(() => {
    for (const h of hosts) peakSeen.set(h.url, Math.max(peakSeen.get(h.url) ?? 0, procMemory(h.proc.pid, 'VmRSS') || 0));
  }, 1000);
  try {
    const t0 = Date.now();
    for (const name of o.hostNames) hosts.push(await startHost({ work: o.work, name, domains: o.images.domains, database: o.database, concurrency: CONCURRENCY }));
    const urls = hosts.map((h) => h.url);
    // Tiny disks give back little: the threshold is lowered so the dirty ones need sparsify.
    const pol = await fetch(`${urls[0]}/api/policy`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ thresholdBytes: 1 << 20, thresholdPercent: 10 }) });
    if (pol.status !== 200) throw new Error(`${label}: PUT /api/policy answered ${pol.status} ${await pol.text()}`);
    const useSummary = (await summaryOf(urls[0]!)) !== undefined;
    if (!useSummary) notes.push('no /api/summary on this server: progress read from the whole list');
    let listedSeconds: number | undefined;
    let lastLog = Date.now();
    for (;;) {
      const p = await progress(urls[0]!, useSummary);
      const secs = (Date.now() - t0) / 1000;
      if (listedSeconds === undefined && p.listed >= disks) listedSeconds = secs;
      if (p.listed >= disks && p.pending === 0) break;
      if (secs > TIMEOUT_S) throw new Error(`${label}: ${p.listed} of ${disks} disks listed, ${p.pending} not analysed after ${TIMEOUT_S} s`);
      if (Date.now() - lastLog > 30_000) {
        lastLog = Date.now();
        log(`${label}: ${secs.toFixed(0)} s: ${p.listed} listed, ${p.pending} pending; RSS ${hosts.map((h) => `${((procMemory(h.proc.pid, 'VmRSS') || 0) / 1048576).toFixed(0)} MiB`).join(', ')}`);
      }
      // The whole list is big: an older server is asked less often.
      await sleep(useSummary ? 250 : disks > WHOLE_LIST_MAX ? 5000 : 1000);
    }
    const analysedSeconds = (Date.now() - t0) / 1000;
    log(`${label}: ${disks} disks listed in ${listedSeconds!.toFixed(1)} s, analysed in ${analysedSeconds.toFixed(1)} s`);

    const probe = await fetch(`${urls[0]}${FIRST}`);
    const probeBody = (await probe.json()) as { disks?: unknown[]; next?: unknown };
    const paging = probe.status === 200 && probeBody.next !== undefined && (probeBody.disks?.length ?? 0) <= 100;
    const timeable = paging || disks <= WHOLE_LIST_MAX;
    const noPaging = paging ? undefined : 'no paging: the whole (filtered) list';
    if (!paging) notes.push(`/api/disks does not page (${probe.status}, no "next"): ${timeable ? 'page figures are of the whole list, filtered but not sorted' : 'page figures not measured'}`);
    const info = await getJson<{ domains: Array<{ id: string }> }>(`${urls[0]}/api/info`);
    // A server without paging gets the same filters it knows (status, needsSparsify), unsorted.
    const first = paging ? FIRST : '/api/disks';
    const sortedPage = paging ? SORTED : '/api/disks?status=ok&needsSparsify=true';
    const domainPage = `${SORTED}&domain=${encodeURIComponent(info.domains[0]!.id)}`;
    const latencies: Latency[] = [];
    // Idle means idle: no scan under way on any host, a moment to settle, and a few untimed requests
    // to open the connections and warm the paths.
    await scansEnded(urls);
    await sleep(2000);
    for (const path of [first, sortedPage, '/api/summary']) await series(urls, path, 10, () => undefined);
    const skip = (name: string, targetMs?: number) => latencies.push({ name, p50: NaN, p95: NaN, targetMs, skipped: 'n/a: no paging' });
    if (timeable) {
      latencies.push(latency('first page (limit=100), idle', await series(urls, first, REQUESTS, pageCheck(paging ? Math.min(100, disks) : disks)), 20, noPaging));
      latencies.push(latency('sorted, filtered page, idle', await series(urls, sortedPage, REQUESTS, paging ? sortedCheck : () => undefined), undefined, noPaging));
      if (paging) latencies.push(latency('sorted, filtered page of one domain, idle', await series(urls, domainPage, REQUESTS, sortedCheck)));
      else skip('sorted, filtered page of one domain, idle');
    } else ['first page (limit=100), idle', 'sorted, filtered page, idle', 'sorted, filtered page of one domain, idle'].forEach((n, i) => skip(n, i ? undefined : 20));
    if (useSummary) {
      latencies.push(latency('GET /api/summary, idle', await series(urls, '/api/summary', REQUESTS, (b) => ((b as { summary?: Summary }).summary?.disks === disks ? undefined : `summary.disks is not ${disks}`))));
    } else latencies.push({ name: 'GET /api/summary, idle', p50: NaN, p95: NaN, skipped: 'n/a: no /api/summary' });

    const rs = await rescan(urls);
    log(`${label}: no-change rescan: ${rs.seconds?.toFixed(1) ?? 'n/a'} s (${rs.note})`);

    // The jobs: asked of the hosts in turn, all at once; pages timed while they run.
    const dirty = await dirtyDisks(urls[0]!, paging);
    if (dirty.length !== o.jobs) notes.push(`${dirty.length} dirty disks found, ${o.jobs} made`);
    const before = allocated(o.images.dirty);
    const tJobs = Date.now();
    const refused: string[] = [];
    await Promise.all(
      dirty.map(async (d, i) => {
        const r = await fetch(`${urls[i % urls.length]}/api/disks/${d.id}/sparsify`, { method: 'POST', headers: auth });
        if (r.status !== 202) refused.push(`${d.name}: ${r.status} ${(await r.text()).slice(0, 200)}`);
        else await r.arrayBuffer();
      }),
    );
    if (refused.length) notes.push(`${refused.length} jobs refused, first: ${refused[0]}`);
    log(`${label}: ${dirty.length - refused.length} jobs queued in ${((Date.now() - tJobs) / 1000).toFixed(1)} s`);
    let during = 'while the jobs ran';
    if (timeable) {
      const firstLoad = { sorted: [] as number[], problem: undefined as string | undefined };
      const sortedLoad = { sorted: [] as number[], problem: undefined as string | undefined };
      let endedAt: number | undefined;
      for (let i = 0; i < REQUESTS; i++) {
        for (const [s, path] of [[firstLoad, first], [sortedLoad, sortedPage]] as const) {
          const one = await series([urls[i % urls.length]!], path, 1, () => undefined);
          s.sorted.push(one.sorted[0]!);
          s.problem ??= one.problem;
        }
        if (i % 20 === 19 && endedAt === undefined && (await jobsLeft(urls[0]!)) === 0) endedAt = i + 1;
      }
      if (endedAt !== undefined) during = `the jobs had all ended after ${endedAt} of ${REQUESTS} pairs of requests`;
      firstLoad.sorted.sort((a, b) => a - b);
      sortedLoad.sorted.sort((a, b) => a - b);
      latencies.push(latency(`first page (limit=100), ${o.jobs} jobs running`, firstLoad, 50, [noPaging, during].filter(Boolean).join('; ')));
      latencies.push(latency(`sorted, filtered page, ${o.jobs} jobs running`, sortedLoad, undefined, [noPaging, during].filter(Boolean).join('; ')));
    } else {
      skip(`first page (limit=100), ${o.jobs} jobs running`, 50);
      skip(`sorted, filtered page, ${o.jobs} jobs running`);
    }
    while ((await jobsLeft(urls[0]!)) > 0) {
      if (Date.now() - tJobs > TIMEOUT_S * 1000) throw new Error(`${label}: jobs did not finish in ${TIMEOUT_S} s`);
      await sleep(500);
    }
    const minutes = (Date.now() - tJobs) / 60_000;
    const jobs = (await getJson<{ jobs: Array<{ status: string; host: string }> }>(`${urls[0]}/api/jobs?limit=1000`)).jobs;
    const failed = jobs.filter((j) => j.status !== 'finished').length;
    const perHost = o.hostNames.map((h) => `${h} ${jobs.filter((j) => j.host === h).length}`).join(', ');
    // What the files themselves say (st_blocks), not the service.
    const givenBack = before - allocated(o.images.dirty);
    const jobsNote = `${jobs.length} jobs in ${(minutes * 60).toFixed(0)} s (${(jobs.length / minutes).toFixed(0)}/min), ${failed} not finished; ${perHost}; the dirty files' st_blocks: ${(givenBack / 1048576).toFixed(0)} MiB given back of ${(before / 1048576).toFixed(0)} MiB`;
    log(`${label}: ${jobsNote}`);
    const result: ScenarioResult = {
      label,
      listedSeconds,
      analysedSeconds,
      latencies,
      rescan: rs,
      jobsNote,
      // VmHWM is the kernel's own peak; the 1 s samples of VmRSS are the floor if it cannot be read.
      hosts: hosts.map((h, i) => ({ name: o.hostNames[i]!, peakRss: procMemory(h.proc.pid, 'VmHWM') || (peakSeen.get(h.url) ?? NaN) })),
      notes,
    };
    return result;
  } finally {
    clearInterval(sampler);
    await Promise.all(hosts.map((h) => h.stop().catch(() => undefined)));
  }
}
