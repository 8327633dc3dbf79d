/**
 * Soak: 300 sparsify jobs over 50 guest disks while the server is killed with SIGKILL at random
 * moments and restarted, 20 times or more, bounded in time. At the end no job may be lost or
 * left running, no disk locked; every image must pass `qemu-img check`, every guest filesystem
 * e2fsck, with its files' checksums equal; and no disk may have had two attempts at once.
 * `npm run soak` (options: --jobs N --disks N --kills N --minutes N).
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { run } from '../test/helpers/fixtures.js';
import { makeGuestDisk, guestProblem, startServer, stopAllServers, type Server } from '../test/service/service-helpers.js';

const TOKEN = 'soak-token-0123456789';
const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => (args.includes(`--${name}`) ? Number(args[args.indexOf(`--${name}`) + 1]) : dflt);
const JOBS = opt('jobs', 300);
const DISKS = opt('disks', 50);
const KILLS = opt('kills', 24);
const MINUTES = opt('minutes', 20);
const SIZE_MIB = 24;

type Job = { id: string; diskId: string; diskName: string; status: string; attempts: number; error: string | null };

async function start(data: string, domain: string): Promise<Server> {
  return startServer({ dataDir: data, domains: [domain], token: TOKEN, args: ['--concurrency', '2', '--log-level', 'warn'] });
}

async function api<T>(s: Server, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const r = await fetch(s.url + path, { method, headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, body: (await r.json()) as T };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-soak-'));
  const domain = join(work, 'images');
  const data = join(work, 'data');
  mkdirSync(domain, { recursive: true });
  let server: Server | undefined;
  const t0 = Date.now();
  const deadline = t0 + MINUTES * 60_000;
  try {
    const raw = join(work, 'guest.raw');
    makeGuestDisk(raw, work, 'soak', SIZE_MIB);
    const qcow = join(work, 'guest.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', raw, qcow]);
    const names: string[] = [];
    for (let i = 0; i < DISKS; i++) {
      const name = `soak-${String(i).padStart(2, '0')}.${i % 2 ? 'qcow2' : 'raw'}`;
      copyFileSync(i % 2 ? qcow : raw, join(domain, name));
      names.push(name);
    }
    server = await start(data, domain);
    let disks: Array<{ id: string; name: string; analysis: { state: string } }> = [];
    while (disks.length < DISKS || disks.some((d) => d.analysis.state === 'pending')) {
      disks = (await api<{ disks: typeof disks }>(server, 'GET', '/api/disks')).body.disks;
      await sleep(200);
    }
    console.log(`soak: ${DISKS} disks (${SIZE_MIB} MiB guests, raw and qcow2) analyzed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    // The killer: SIGKILL at random moments, restart at once.
    let kills = 0;
    let restarting = false;
    const killer = (async () => {
      while (kills < KILLS && Date.now() < deadline) {
        await sleep(500 + Math.random() * 2500);
        if (!server) continue;
        restarting = true;
        await server.kill();
        kills++;
        server = await start(data, domain);
        restarting = false;
      }
    })();

    // The load: keep jobs coming, in both modes, on random disks, until JOBS were accepted.
    const accepted = new Set<string>();
    let refused = 0;
    while (accepted.size < JOBS && Date.now() < deadline) {
      if (restarting || !server) {
        await sleep(50);
        continue;
      }
      const d = disks[Math.floor(Math.random() * disks.length)]!;
      try {
        const r = await api<{ job?: Job; fault?: { code: string } }>(server, 'POST', `/api/disks/${d.id}/sparsify`, { mode: Math.random() < 0.5 ? 'in-place' : 'copy-and-replace' });
        if (r.status === 202) accepted.add(r.body.job!.id);
        else refused++;
      } catch {
        // the server is being killed: try again
      }
      await sleep(20);
    }
    await killer;
    console.log(`soak: ${accepted.size} jobs accepted (${refused} refused: disk locked by a job), ${kills} kills, in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    // Settle: every accepted job must end.
    let jobs: Job[] = [];
    for (;;) {
      jobs = (await api<{ jobs: Job[] }>(server!, 'GET', '/api/jobs?limit=9999')).body.jobs.filter((j) => accepted.has(j.id));
      const open = jobs.filter((j) => j.status === 'pending' || j.status === 'running');
      if (!open.length && jobs.length === accepted.size) break;
      if (Date.now() > deadline + 300_000) throw new Error(`${open.length} jobs still open, ${accepted.size - jobs.length} missing`);
      await sleep(500);
    }
    const byStatus = new Map<string, number>();
    for (const j of jobs) byStatus.set(j.status, (byStatus.get(j.status) ?? 0) + 1);
    const attemptsHist = new Map<number, number>();
    for (const j of jobs) attemptsHist.set(j.attempts, (attemptsHist.get(j.attempts) ?? 0) + 1);

    // No disk had two attempts at once.
    const intervals = new Map<string, Array<[number, number]>>();
    for (const j of jobs) {
      const atts = (await api<{ attempts: Array<{ startedAt: number; endedAt: number | null }> }>(server!, 'GET', `/api/jobs/${j.id}/attempts`)).body.attempts;
      for (const a of atts) {
        const l = intervals.get(j.diskId) ?? [];
        l.push([a.startedAt, a.endedAt ?? Number.MAX_SAFE_INTEGER]);
        intervals.set(j.diskId, l);
      }
    }
    let overlaps = 0;
    for (const l of intervals.values()) {
      l.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < l.length; i++) if (l[i]![0] < l[i - 1]![1]) overlaps++;
    }
    const final = (await api<{ disks: Array<{ name: string; lockedBy: string | null }> }>(server!, 'GET', '/api/disks')).body.disks;
    const locked = final.filter((d) => d.lockedBy).length;
    let bad = 0;
    for (const name of names) {
      const problem = guestProblem(join(domain, name), name.endsWith('.qcow2') ? 'qcow2' : 'raw', work, 'soak', SIZE_MIB);
      if (problem) {
        bad++;
        console.log(`soak: ${problem}`);
      }
    }
    const failures = jobs.filter((j) => j.status === 'failed').map((j) => j.error);
    console.log(`soak: failed jobs' reasons: ${[...new Set(failures)].join(' | ') || 'none'}`);
    console.log(
      [
        '',
        '| soak | figure |',
        '|---|---|',
        `| jobs accepted | ${accepted.size} over ${DISKS} disks |`,
        `| SIGKILLs of the server, each followed by a restart | ${kills} |`,
        `| jobs by final state | ${[...byStatus].map(([s, n]) => `${s} ${n}`).join(', ')} |`,
        `| jobs still pending or running | 0 |`,
        `| attempts per job | ${[...attemptsHist].sort((a, b) => a[0] - b[0]).map(([a, n]) => `${a}: ${n}`).join(', ')} |`,
        `| overlapping attempts on one disk | ${overlaps} |`,
        `| disks left locked | ${locked} |`,
        `| images failing qemu-img check, e2fsck or file checksums | ${bad} of ${DISKS} |`,
        `| wall time | ${((Date.now() - t0) / 1000).toFixed(0)} s |`,
      ].join('\n'),
    );
    if (overlaps || locked || bad || jobs.length !== accepted.size) process.exitCode = 1;
  } finally {
    await stopAllServers();
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : String(e));
  process.exit(1);
});
