/**
 * Several hosts as one service, on a private PostgreSQL: three `sparsify serve` processes with
 * their own names, ports and data folders share one domain folder of 30 guest disks.
 *   - Every disk is sparsified exactly once, work spreads over the hosts, every guest checks clean.
 *   - kill -9 of the host running a job: another host finishes it, the disk is unlocked and
 *     intact; the killed host, restarted meanwhile, leaves the job alone.
 *   - A cancel sent to one host stops a job running on another.
 *   - PostgreSQL restarts while jobs run: no job is lost or run twice, no request gets a 500.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, run, haveTool, sha256, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { startServer, stopAllServers, readStream, http, waitFor, makeGuestDisk, guestProblem, TOKEN, type Server } from './service-helpers.js';

const SIZE_MIB = 12;
const N = 30;
const HOSTS = ['alpha', 'beta', 'gamma'];
const EXTRA = ['death.raw', 'cancel.raw', 'sched-1.raw', 'sched-2.raw', 'db-1.raw', 'db-2.raw', 'db-3.raw', 'db-4.raw'];
/** Shorter than the default 30 s so the takeover test stays short; the takeover time follows it. */
const HOST_TIMEOUT = '10';

type Job = { id: string; diskId: string; diskName: string; status: string; host: string | null; attempts: number; createdAt: number; unlockedAt: number | null; bytesReclaimed: number | null; error: string | null };
type Disk = { id: string; name: string; status: string; lockedBy: string | null; actualSize: number; analysis: { state: string } };

const missing = postgresMissing() ?? ['mke2fs', 'debugfs', 'sgdisk', 'qemu-img', 'e2fsck'].find((t) => !haveTool(t));

describe('a cluster of three hosts on PostgreSQL', { skip: missing ?? false, timeout: 600_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let pg: PgCluster;
  let domain: string;
  const hosts = new Map<string, Server>();
  const formatOf = (name: string): 'raw' | 'qcow2' => (name.endsWith('.qcow2') ? 'qcow2' : 'raw');

  const startHost = async (name: string, env: Record<string, string> = {}) => {
    const s = await startServer({ database: pg.url, hostName: name, dataDir: join(tmp.dir, `data-${name}`), domains: [domain], args: ['--concurrency', '2', '--host-timeout', HOST_TIMEOUT], env });
    hosts.set(name, s);
    return s;
  };
  const any = () => [...hosts.values()].find((s) => s.proc.exitCode === null && s.proc.signalCode === null)!;
  const jobOf = async (id: string): Promise<Job> => (await http(any(), 'GET', `/api/jobs/${id}`)).body.job as Job;
  const disks = async (): Promise<Disk[]> => (await http(any(), 'GET', '/api/disks')).body.disks as Disk[];
  const restartAll = async (env: Record<string, string>) => {
    for (const s of hosts.values()) await s.stop();
    for (const h of HOSTS) await startHost(h, env);
  };

  before(async () => {
    tmp = tempDir('sparsify-cluster-');
    pg = await startPostgres();
    domain = join(tmp.dir, 'shared-domain');
    mkdirSync(domain, { recursive: true });
    const raw = join(tmp.dir, 'guest.raw');
    makeGuestDisk(raw, tmp.dir, 'guest', SIZE_MIB);
    const qcow = join(tmp.dir, 'guest.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', raw, qcow]);
    for (let i = 0; i < N; i++) {
      const name = `disk-${String(i).padStart(2, '0')}.${i % 2 ? 'qcow2' : 'raw'}`;
      copyFileSync(i % 2 ? qcow : raw, join(domain, name));
    }
    for (const extra of EXTRA) copyFileSync(raw, join(domain, extra));
    for (const h of HOSTS) await startHost(h);
  });

  after(async () => {
    // A host that died on its own is a failure worth reading about.
    for (const [name, s] of hosts) if (s.proc.exitCode !== null && s.proc.exitCode !== 0) console.error(`host ${name} exited with ${s.proc.exitCode}:\n${s.output().slice(-3000)}`);
    await releaseAll(stopAllServers, () => pg?.stop(), () => tmp?.cleanup());
  });

  it('lists every host with its domain, and the same disks from each', async () => {
    const listed = await waitFor('3 hosts up', async () => {
      const h = (await http(any(), 'GET', '/api/hosts')).body.hosts as Array<{ name: string; status: string; domains: Array<{ path: string; reachable: boolean }>; url: string }>;
      return h.length === 3 && h.every((x) => x.status === 'up' && x.url) ? h : undefined;
    });
    assert.deepEqual(listed.map((h) => h.name), HOSTS);
    for (const h of listed) assert.deepEqual(h.domains.map((d) => d.reachable), [true]);
    const all = await waitFor('every disk analyzed', async () => {
      const d = await disks();
      return d.length === N + EXTRA.length && d.every((x) => x.analysis.state === 'done') ? d : undefined;
    }, 120_000);
    for (const s of hosts.values()) {
      const mine = (await http(s, 'GET', '/api/disks')).body.disks as Disk[];
      assert.deepEqual(mine.map((d) => d.id).sort(), all.map((d) => d.id).sort(), 'every host shows the same disks with the same ids');
    }
  });

  it('sparsifies 30 disks asked of different hosts, each exactly once, spread over the hosts', async () => {
    const targets = (await disks()).filter((d) => d.name.startsWith('disk-'));
    assert.equal(targets.length, N);
    // One host's live stream shows every host's progress.
    const stream = await readStream(hosts.get('alpha')!);
    const before = new Map(targets.map((d) => [d.id, statSync(join(domain, d.name)).blocks * 512]));
    const servers = [...hosts.values()];
    const accepted = await Promise.all(targets.map((d, i) => http(servers[i % 3]!, 'POST', `/api/disks/${d.id}/sparsify`)));
    for (const r of accepted) assert.equal(r.status, 202, JSON.stringify(r.body));
    const ids = accepted.map((r) => (r.body.job as Job).id);
    const jobs = await waitFor('30 jobs to end', async () => {
      const j = await Promise.all(ids.map(jobOf));
      return j.every((x) => x.status !== 'pending' && x.status !== 'running') ? j : undefined;
    }, 240_000);
    for (const j of jobs) assert.equal(j.status, 'finished', `${j.diskName}: ${j.error}`);
    assert.equal(new Set(jobs.map((j) => j.diskId)).size, N, 'one job per disk');
    for (const j of jobs) assert.equal(j.attempts, 1, `${j.diskName} ran once`);
    const ranOn = new Set(jobs.map((j) => j.host));
    assert.ok(ranOn.size > 1, `work spread over more than one host: ${[...ranOn].join(', ')}`);
    await stream.close();
    const progressOf = new Set([...stream.text().matchAll(/event: progress\ndata: (.*)\n/g)].map((m) => (JSON.parse(m[1]!) as { jobId: string }).jobId));
    const elsewhere = jobs.filter((j) => j.host !== 'alpha');
    assert.ok(elsewhere.length > 0);
    for (const j of elsewhere) assert.ok(progressOf.has(j.id), `alpha's stream showed the progress of ${j.diskName} on ${j.host}`);

    // The attempts (claim to end, on the host that ran it) and the lock history (locked at
    // creation, unlocked at the end) of each disk never overlap.
    const byDisk = new Map<string, Array<[number, number]>>();
    for (const j of jobs) {
      const attempts = (await http(any(), 'GET', `/api/jobs/${j.id}/attempts`)).body.attempts as Array<{ host: string; startedAt: number; endedAt: number; outcome: string }>;
      assert.deepEqual(attempts.map((a) => `${a.host}:${a.outcome}`), [`${j.host}:finished`]);
      const list = byDisk.get(j.diskId) ?? [];
      list.push([j.createdAt, j.unlockedAt!]);
      byDisk.set(j.diskId, list);
    }
    for (const list of byDisk.values()) {
      list.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < list.length; i++) assert.ok(list[i - 1]![1] <= list[i]![0], 'lock intervals do not overlap');
    }

    for (const d of targets) {
      const path = join(domain, d.name);
      assert.ok(statSync(path).blocks * 512 < before.get(d.id)! - (2 << 20), `${d.name} gave space back`);
      assert.equal(guestProblem(path, formatOf(d.name), tmp.dir, 'guest', SIZE_MIB), undefined);
    }
    const after = await disks();
    assert.ok(after.every((d) => d.lockedBy === null), 'no disk is left locked');
  });

  it('finishes the job of a host killed with SIGKILL on another host; the killed host, back, leaves it alone', async () => {
    await restartAll({ SPARSIFY_TEST_JOB_DELAY_MS: '4000' });
    const d = (await disks()).find((x) => x.name === 'death.raw')!;
    const r = await http(hosts.get('alpha')!, 'POST', `/api/disks/${d.id}/sparsify`);
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const jobId = (r.body.job as Job).id;
    const running = await waitFor('the job to run', async () => {
      const j = await jobOf(jobId);
      return j.status === 'running' && j.host ? j : undefined;
    });
    const victim = running.host!;
    const t0 = Date.now();
    await hosts.get(victim)!.kill();
    const taken = await waitFor('another host to take the job over', async () => {
      const j = await jobOf(jobId);
      return j.host !== victim && (j.status === 'running' || j.status === 'finished') ? j : undefined;
    }, 45_000);
    // Back while its old job runs elsewhere.
    await startHost(victim, { SPARSIFY_TEST_JOB_DELAY_MS: '4000' });
    const done = await waitFor('the job to end', async () => {
      const j = await jobOf(jobId);
      return j.status !== 'running' && j.status !== 'pending' ? j : undefined;
    }, 45_000);
    const elapsed = Date.now() - t0;
    assert.equal(done.status, 'finished', done.error ?? '');
    assert.ok(elapsed < 45_000, `finished ${elapsed} ms after the kill`);
    assert.equal(done.host, taken.host);
    const attempts = (await http(any(), 'GET', `/api/jobs/${jobId}/attempts`)).body.attempts as Array<{ host: string; outcome: string }>;
    assert.deepEqual(attempts.map((a) => `${a.host}:${a.outcome}`), [`${victim}:taken-over`, `${done.host}:finished`], 'the restarted host made no attempt of its own');
    const disk = (await http(any(), 'GET', `/api/disks/${d.id}`)).body.disk as Disk;
    assert.equal(disk.lockedBy, null);
    assert.equal(guestProblem(join(domain, 'death.raw'), 'raw', tmp.dir, 'guest', SIZE_MIB), undefined);
    const events = (await http(any(), 'GET', '/api/events?limit=100')).body.events as Array<{ type: string; message: string }>;
    assert.ok(events.some((e) => e.type === 'host-non-responsive' && e.message.includes(victim)));
    assert.ok(events.some((e) => e.type === 'job-taken-over'));
    const hostList = (await http(any(), 'GET', '/api/hosts')).body.hosts as Array<{ name: string; status: string }>;
    assert.equal(hostList.find((h) => h.name === victim)!.status, 'up', 'the restarted host is up again');
  });

  it('stops a job running on one host when another host is asked to cancel it', async () => {
    const d = (await disks()).find((x) => x.name === 'cancel.raw')!;
    const sum = sha256(readFileSync(join(domain, 'cancel.raw')));
    const r = await http(hosts.get('beta')!, 'POST', `/api/disks/${d.id}/sparsify`);
    assert.equal(r.status, 202);
    const jobId = (r.body.job as Job).id;
    const running = await waitFor('the job to run', async () => {
      const j = await jobOf(jobId);
      return j.status === 'running' && j.host ? j : undefined;
    });
    const other = HOSTS.find((h) => h !== running.host)!;
    const t0 = Date.now();
    const c = await http(hosts.get(other)!, 'POST', `/api/jobs/${jobId}/cancel`);
    assert.equal(c.status, 202, JSON.stringify(c.body));
    const ended = await waitFor('the cancel to land', async () => {
      const j = (await http(hosts.get(running.host!)!, 'GET', `/api/jobs/${jobId}`)).body.job as Job;
      return j.status === 'cancelled' ? j : undefined;
    }, 10_000);
    const ms = Date.now() - t0;
    assert.ok(ms < 2000, `the running host heard the cancel in ${ms} ms`);
    assert.match(ended.error ?? '', /cancel/);
    assert.equal(sha256(readFileSync(join(domain, 'cancel.raw'))), sum, 'the disk is unchanged');
    assert.equal(((await http(any(), 'GET', `/api/disks/${d.id}`)).body.disk as Disk).lockedBy, null);
  });

  it('rides out a PostgreSQL restart while jobs run: nothing lost, nothing run twice, never a 500', async () => {
    const targets = (await disks()).filter((x) => x.name.startsWith('db-'));
    const servers = [...hosts.values()];
    const ids: string[] = [];
    for (const [i, d] of targets.entries()) {
      const r = await http(servers[i % 3]!, 'POST', `/api/disks/${d.id}/sparsify`);
      assert.equal(r.status, 202);
      ids.push((r.body.job as Job).id);
    }
    await waitFor('jobs to run', async () => (await Promise.all(ids.map(jobOf))).some((j) => j.status === 'running'));
    // Clients keep asking every host while the database goes away and comes back.
    const statuses: Array<{ status: number; code?: string }> = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        for (const s of servers) {
          for (const path of ['/api/disks', '/api/jobs', '/api/hosts', `/api/jobs/${ids[0]}`]) {
            try {
              const r = await http(s, 'GET', path);
              statuses.push({ status: r.status, code: (r.body as { fault?: { code: string } }).fault?.code });
            } catch (e) {
              statuses.push({ status: -1, code: (e as Error).message });
            }
          }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      await pg.restart();
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      polling = false;
      await poller;
    }
    const jobs = await waitFor('the jobs to end', async () => {
      const j = await Promise.all(ids.map(jobOf));
      return j.every((x) => x.status !== 'pending' && x.status !== 'running') ? j : undefined;
    }, 90_000);
    for (const j of jobs) {
      assert.equal(j.status, 'finished', `${j.diskName}: ${j.error}`);
      assert.equal(j.attempts, 1, `${j.diskName} ran once`);
    }
    assert.ok(statuses.length > 10);
    const bad = statuses.filter((s) => s.status !== 200 && !(s.status === 503 && s.code === 'database-unavailable'));
    assert.deepEqual(bad, [], 'every answer was 200, or 503 database-unavailable');
    for (const s of hosts.values()) assert.equal(s.proc.exitCode, null, 'no host crashed');
    for (const d of targets) assert.equal(guestProblem(join(domain, d.name), 'raw', tmp.dir, 'guest', SIZE_MIB), undefined);
    // And the password never reached a log.
    for (const s of hosts.values()) assert.ok(!s.output().includes(pg.password));
    assert.ok(TOKEN);
  });
  it('runs the schedule once per interval for the whole cluster, not once per host', async () => {
    assert.equal((await http(hosts.get('gamma')!, 'PUT', '/api/policy', { thresholdBytes: 1 << 20, thresholdPercent: 1, scheduleIntervalSeconds: 1 })).status, 200);
    // Another host hears of the new policy within moments.
    const needing = await waitFor('beta to apply the new threshold', async () => {
      const n = ((await http(hosts.get('beta')!, 'GET', '/api/disks?needsSparsify=true')).body.disks as Disk[]).map((d) => d.name).sort();
      return n.includes('sched-1.raw') && n.includes('sched-2.raw') ? n : undefined;
    }, 5000);
    const t0 = Date.now();
    assert.equal((await http(hosts.get('gamma')!, 'PUT', '/api/policy', { scheduleEnabled: true })).status, 200);
    try {
      const jobs = await waitFor('the scheduled jobs to end', async () => {
        const j = ((await http(any(), 'GET', '/api/jobs?limit=500')).body.jobs as Array<Job & { origin: string }>).filter((x) => x.origin === 'schedule');
        return j.length >= needing.length && j.every((x) => x.status === 'finished') ? j : undefined;
      }, 60_000);
      // A few more intervals: nothing needs sparsify any more, so nothing more is queued.
      await new Promise((r) => setTimeout(r, 3000));
      const again = ((await http(any(), 'GET', '/api/jobs?limit=500')).body.jobs as Array<Job & { origin: string }>).filter((x) => x.origin === 'schedule');
      assert.deepEqual(again.map((j) => j.diskName).sort(), needing, 'one scheduled job per disk that needed it');
      assert.equal(jobs.length, needing.length);
      const runs = ((await http(any(), 'GET', '/api/events?limit=500')).body.events as Array<{ type: string; time: number; message: string }>).filter((e) => e.type === 'policy-run' && e.time >= t0);
      assert.equal(runs.length, 1, `one run found the disks, by one host: ${runs.map((r) => r.message).join('; ')}`);
    } finally {
      await http(any(), 'PUT', '/api/policy', { scheduleEnabled: false });
    }
  });

});
