/**
 * What the service benchmarks share: starting a host of the real service (test/service's
 * startServer, so the same entry point the tests run), JSON reads, timed request series and
 * their percentiles, and a host's memory from /proc/PID/status (VmRSS now, VmHWM its peak; the
 * server is the spawned node process itself, so its PID is the child's).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type Server } from '../test/service/service-helpers.js';

export const BENCH_TOKEN = 'bench-token-0123456789';

export type Host = Server;

/** The value at percentile `p` of an ascending list (nearest rank, as bench/service.ts always did). */
export const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

export interface HostOptions {
  /** The folder the host's data folder goes in (as `data-NAME`). */
  work: string;
  name: string;
  domains: string[];
  /** postgres://...: a host of a cluster; none: SQLite in the data folder. */
  database?: string | undefined;
  /** Jobs the host runs at once. */
  concurrency: number;
  /** More `serve` flags. */
  args?: string[];
}

export async function startHost(o: HostOptions): Promise<Host> {
  // BENCH_CPU_PROF=DIR: each host writes V8 CPU profiles in DIR/NAME when it stops, one per thread
  // (node names them by pid and thread: one name for all would keep only the last thread's).
  const prof = process.env['BENCH_CPU_PROF'];
  return startServer({
    dataDir: join(o.work, `data-${o.name}`),
    domains: o.domains,
    token: BENCH_TOKEN,
    hostName: o.name,
    database: o.database,
    args: ['--concurrency', String(o.concurrency), '--log-level', 'warn', ...(o.args ?? [])],
    nodeArgs: prof ? ['--cpu-prof', '--cpu-prof-dir', join(prof, o.name)] : [],
  });
}

export async function getJson<T>(url: string): Promise<T> {
  const r = await fetch(url);
  return (await r.json()) as T;
}

/** A GET that must answer 200 with JSON: anything else is an error naming the URL and the answer. */
export async function getOk<T>(url: string): Promise<T> {
  const r = await fetch(url);
  const text = await r.text();
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

/** `n` GETs of `path`, one after another, round-robin over the hosts; the times in ms, ascending. */
export async function timeRequests(urls: string[], n: number, path = '/api/disks'): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${urls[i % urls.length]}${path}`);
    await r.arrayBuffer();
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b);
}

/** A field of /proc/PID/status in bytes (VmRSS, VmHWM), or NaN when the process is gone. */
export function procMemory(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  if (pid === undefined) return NaN;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}
