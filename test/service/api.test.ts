/**
 * The service's REST API against the real server process, on SQLite and on PostgreSQL: disks and
 * their chains, every validation rule in oVirt's order, locking under concurrent requests, jobs
 * that really sparsify (both modes, checked with e2fsck), bad input (never a 500), and SSE.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { tempDir, run, haveTool, sha256, releaseAll } from '../helpers/fixtures.js';
import { extract, e2fsck } from '../helpers/ext-fixtures.js';
import { startServer, stopAllServers, readStream, http, analyzedDisks, diskByName, waitFor, makeGuestDisk, makePreallocated, TOKEN, type Server } from './service-helpers.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';

const MiB = 1 << 20;
const tools = ['mke2fs', 'debugfs', 'sgdisk', 'qemu-img', 'qemu-io', 'e2fsck'].filter((t) => !haveTool(t));
const missingTools = tools.length ? `missing tools: ${tools.join(', ')}` : false;

let pg: PgCluster | undefined;
after(() => releaseAll(stopAllServers, () => pg?.stop()));

for (const backend of ['sqlite', 'postgres'] as const) {
  const skip = missingTools || (backend === 'postgres' ? (postgresMissing() ?? false) : false);
  /** A database of its own for each suite, on PostgreSQL; undefined: SQLite in the data folder. */
  const dbFor = async (suite: string): Promise<string | undefined> => {
    if (backend === 'sqlite') return undefined;
    pg ??= await startPostgres();
    return pg.database(suite);
  };

  describe(`service API on ${backend}`, { skip, timeout: 300_000 }, () => {
    let tmp: { dir: string; cleanup: () => void };
    let domain: string;
    let server: Server;
    let holder: ChildProcess | undefined;
    let disks: Array<Record<string, any>>;
    const N = 9;

    before(async () => {
      tmp = tempDir('sparsify-service-');
      domain = join(tmp.dir, 'images');
      mkdirSync(join(domain, 'vm1'), { recursive: true });
      makeGuestDisk(join(domain, 'a.raw'), tmp.dir, 'a');
      copyFileSync(join(domain, 'a.raw'), join(domain, 'vm1', 'b.raw'));
      makePreallocated(join(domain, 'prealloc.raw'), 16 * MiB);
      makePreallocated(join(domain, 'inuse.raw'), 16 * MiB);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(domain, 'base.qcow2'), '64M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(domain, 'overlay.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(domain, 'snap.qcow2'), '64M']);
      run('qemu-img', ['snapshot', '-c', 'before-upgrade', join(domain, 'snap.qcow2')]);
      // streamOptimized: compressed grains written once in order, which in place cannot change.
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', join(domain, 'disk.vmdk'), '16M']);
      // A qcow2 header with an impossible version: unreadable, so ILLEGAL.
      const broken = Buffer.alloc(4096);
      broken.write('QFI\xfb', 0, 'latin1');
      broken.writeUInt32BE(99, 4);
      writeFileSync(join(domain, 'broken.qcow2'), broken);
      // A "running VM": qemu-io holds the image open read-write, with QEMU's locks.
      holder = spawn('qemu-io', ['-f', 'raw', join(domain, 'inuse.raw')], { stdio: ['pipe', 'ignore', 'ignore'] });
      await new Promise((r) => setTimeout(r, 300));
      server = await startServer({ database: await dbFor('api'), dataDir: join(tmp.dir, 'data'), domains: [domain], env: { SPARSIFY_THRESHOLD_BYTES: String(4 * MiB), SPARSIFY_THRESHOLD_PERCENT: '10' } });
      disks = await analyzedDisks(server, N);
    });

    after(() =>
      releaseAll(
        () => holder?.kill('SIGKILL'),
        () => server?.stop(),
        () => tmp?.cleanup(),
      ),
    );

    it('lists every disk with a stable id, format, chain, sizes, allocation and status', async () => {
      for (const d of disks) {
        assert.match(d.id, /^[0-9a-f-]{36}$/);
        assert.ok(!d.id.includes('/'), 'ids are not paths');
      }
      const a = diskByName(disks, 'a.raw');
      assert.equal(a.format, 'raw');
      assert.equal(a.virtualSize, 34 * MiB);
      assert.equal(a.actualSize, statSync(join(domain, 'a.raw')).blocks * 512);
      assert.equal(a.status, 'ok');
      assert.equal(a.allocation, 'sparse');
      assert.ok(a.reclaimableBytes > 20 * MiB, `a.raw should give back most of its 32 MiB partition, got ${a.reclaimableBytes}`);
      assert.equal(a.needsSparsify, true);
      assert.deepEqual(a.sparsify, { allowed: true, mode: 'in-place' });
      assert.equal(diskByName(disks, 'b.raw').path, 'vm1/b.raw');

      const base = diskByName(disks, 'base.qcow2');
      const overlay = diskByName(disks, 'overlay.qcow2');
      assert.equal(overlay.chain.depth, 2);
      assert.equal(overlay.chain.backingId, base.id);
      assert.deepEqual(base.chain.derivedIds, [overlay.id]);
      assert.equal(base.chain.leaf, false);
      assert.equal(overlay.chain.leaf, true);
      assert.equal(diskByName(disks, 'snap.qcow2').chain.snapshots, 1);
      assert.equal(diskByName(disks, 'prealloc.raw').allocation, 'preallocated');
      assert.equal(diskByName(disks, 'inuse.raw').status, 'in-use');
      const broken = diskByName(disks, 'broken.qcow2');
      assert.equal(broken.status, 'illegal');
      assert.match(broken.error, /qcow2|version/i);

      const one = await http(server, 'GET', `/api/disks/${a.id}`);
      assert.equal(one.status, 200);
      assert.equal(one.body.disk.map.content, 'gpt', 'the disk map comes with one disk');
    });

    it('refuses like oVirt, first failure wins, with the reason shown before trying', async () => {
      const expect = async (name: string | null, status: number, code: string, body: unknown = undefined) => {
        const id = name ? diskByName(disks, name).id : randomUUID();
        const r = await http(server, 'POST', `/api/disks/${id}/sparsify`, body);
        assert.equal(r.status, status, `${name}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.fault.code, code, `${name}: ${JSON.stringify(r.body)}`);
        assert.ok(r.body.fault.detail.length > 10);
        if (name) {
          // The disk list said so beforehand (the UI disables the button with this reason).
          const view = (await http(server, 'GET', `/api/disks/${id}`)).body.disk;
          if (!body) assert.equal(view.sparsify.code, code);
        }
      };
      await expect(null, 404, 'disk-not-found');
      // inuse.raw is both in use and preallocated: in use is checked first.
      await expect('inuse.raw', 409, 'disk-in-use');
      await expect('broken.qcow2', 409, 'disk-illegal');
      await expect('disk.vmdk', 400, 'format-cannot-discard', { mode: 'in-place' });
      await expect('prealloc.raw', 400, 'disk-preallocated');
      // The leaf of a qcow2 chain is allowed (its own clusters are sparsified); its base is not.
      assert.equal((await http(server, 'GET', `/api/disks/${diskByName(disks, 'overlay.qcow2').id}`)).body.disk.sparsify.allowed, true);
      await expect('snap.qcow2', 400, 'disk-has-snapshots');
      await expect('base.qcow2', 409, 'disk-has-derived-disks');

      // The VM stops: now the next rule speaks.
      holder!.kill('SIGKILL');
      await new Promise((r) => holder!.once('exit', r));
      holder = undefined;
      await expect('inuse.raw', 400, 'disk-preallocated');

      // Declaring a preallocated disk thin lifts that refusal (and nothing else runs).
      const pre = diskByName(disks, 'prealloc.raw');
      const p = await http(server, 'PATCH', `/api/disks/${pre.id}`, { allocation: 'sparse' });
      assert.equal(p.status, 200);
      assert.equal(p.body.disk.allocation, 'sparse');
      assert.equal(p.body.disk.sparsify.allowed, true);
      assert.equal((await http(server, 'PATCH', `/api/disks/${pre.id}`, { allocation: 'auto' })).body.disk.allocation, 'preallocated');
    });

    it('answers bad ids, bodies and tokens with 4xx, never 500', async () => {
      const a = diskByName(disks, 'a.raw').id;
      const cases: Array<[string, string, unknown, Record<string, unknown>, number]> = [
        ['POST', '/api/disks/not-a-uuid/sparsify', undefined, {}, 400],
        ['POST', '/api/disks/..%2F..%2Fetc%2Fpasswd/sparsify', undefined, {}, 400],
        ['GET', '/api/disks/..%2F..%2Fetc%2Fpasswd', undefined, {}, 400],
        ['GET', `/api/disks/${randomUUID()}`, undefined, {}, 404],
        ['POST', `/api/disks/${a}/sparsify`, { mode: 'fast' }, {}, 400],
        ['POST', `/api/disks/${a}/sparsify`, { mode: 'in-place', force: true }, {}, 400],
        ['POST', `/api/disks/${a}/sparsify`, { ignore: '/dev/sda1' }, {}, 400],
        ['POST', `/api/disks/${a}/sparsify`, { ignore: ['/dev/sda1; rm -rf /'] }, {}, 400],
        ['POST', `/api/disks/${a}/sparsify`, [1, 2], {}, 400],
        ['POST', `/api/disks/${a}/sparsify`, undefined, { raw: '{"mode": ' }, 400],
        ['POST', `/api/disks/${a}/sparsify`, undefined, { raw: 'x'.repeat(100_000) }, 413],
        ['POST', `/api/disks/${a}/sparsify`, undefined, { raw: 'mode=in-place', contentType: 'text/plain' }, 415],
        ['POST', `/api/disks/${a}/sparsify`, undefined, { token: null }, 401],
        ['POST', `/api/disks/${a}/sparsify`, undefined, { token: 'wrong-token-xxxxxxxx' }, 401],
        ['PATCH', `/api/disks/${a}`, { allocation: 'thick' }, {}, 400],
        ['GET', `/api/jobs/${randomUUID()}`, undefined, {}, 404],
        ['GET', '/api/jobs/42', undefined, {}, 400],
        ['GET', '/api/jobs?status=bogus', undefined, {}, 400],
        ['GET', '/api/events?after=-1', undefined, {}, 400],
        ['POST', `/api/jobs/${randomUUID()}/cancel`, undefined, {}, 404],
        ['PUT', '/api/policy', { thresholdPercent: 250 }, {}, 400],
        ['PUT', '/api/policy', { scheduleEnabled: 'yes' }, {}, 400],
        ['GET', '/api/nothing-here', undefined, {}, 404],
        ['DELETE', `/api/disks/${a}`, undefined, {}, 404],
      ];
      for (const [method, path, body, opts, status] of cases) {
        const r = await http(server, method, path, body, opts as { token?: string | null; raw?: string; contentType?: string });
        assert.equal(r.status, status, `${method} ${path} ${JSON.stringify(body ?? opts).slice(0, 80)} -> ${JSON.stringify(r.body).slice(0, 300)}`);
        assert.ok(r.body.fault?.detail, `${method} ${path}: a fault with a detail`);
      }
      // None of that touched the disk.
      const after = (await http(server, 'GET', `/api/disks/${a}`)).body.disk;
      assert.equal(after.status, 'ok');
      assert.equal((await http(server, 'GET', `/api/jobs?diskId=${a}`)).body.jobs.length, 0);
    });

    it('locks the disk: of two concurrent requests one is accepted, the other gets 409; the job sparsifies in place', async () => {
      const a = diskByName(disks, 'a.raw');
      const before = statSync(join(domain, 'a.raw')).blocks * 512;
      // Listen to the live stream during the job.
      const stream = await readStream(server);

      const [r1, r2] = await Promise.all([http(server, 'POST', `/api/disks/${a.id}/sparsify`), http(server, 'POST', `/api/disks/${a.id}/sparsify`, null, { raw: '' })]);
      const statuses = [r1.status, r2.status].sort();
      assert.deepEqual(statuses, [202, 409], JSON.stringify([r1.body, r2.body]));
      const accepted = r1.status === 202 ? r1 : r2;
      const refused = r1.status === 202 ? r2 : r1;
      assert.equal(refused.body.fault.code, 'disk-locked');
      const jobUrl = accepted.headers.get('location')!;
      assert.equal(jobUrl, `/api/jobs/${accepted.body.job.id}`);

      const job = await waitFor('job end', async () => {
        const j = (await http(server, 'GET', jobUrl)).body.job;
        return j.status !== 'pending' && j.status !== 'running' ? j : undefined;
      });
      assert.equal(job.status, 'finished', JSON.stringify(job));
      assert.deepEqual(job.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`), ['validating:finished', 'executing:finished', 'finalizing:finished']);
      assert.equal(job.progress.percent, 100);
      assert.ok(job.steps[1].total > 0 && job.steps[1].done === job.steps[1].total, 'progress comes from the engine');
      assert.equal(job.actualBefore, before);
      assert.equal(job.actualAfter, statSync(join(domain, 'a.raw')).blocks * 512, 'actual size re-measured');
      assert.ok(job.bytesReclaimed > 20 * MiB, `gave back ${job.bytesReclaimed}`);
      assert.ok(job.startedAt && job.endedAt && job.endedAt >= job.startedAt);

      // Unlocked, re-measured, re-analyzed.
      const view = await waitFor('re-analysis', async () => {
        const d = (await http(server, 'GET', `/api/disks/${a.id}`)).body.disk;
        return d.analysis.state === 'done' && d.actualSize === job.actualAfter ? d : undefined;
      });
      assert.equal(view.status, 'ok');
      assert.equal(view.lockedBy, null);
      assert.ok(view.reclaimableBytes < 1 * MiB, `little left to give back: ${view.reclaimableBytes}`);
      assert.equal(view.needsSparsify, false);
      // The guest's filesystem is intact.
      const part = join(tmp.dir, 'a-part.img');
      extract(join(domain, 'a.raw'), MiB, 32 * MiB, part);
      assert.equal(e2fsck(part).status, 0, e2fsck(part).output);

      const events = (await http(server, 'GET', '/api/events?limit=50')).body.events.map((e: { message: string }) => e.message);
      assert.ok(events.some((m: string) => m.startsWith('Started to sparsify a.raw on ')), events.join('\n'));
      assert.ok(events.some((m: string) => m.startsWith('a.raw sparsified successfully')), events.join('\n'));

      await stream.close();
      const sse = stream.text();
      assert.match(sse, /event: job\ndata: .*"status":"finished"/);
      assert.match(sse, /event: progress\n/);
      assert.match(sse, /event: event\ndata: .*sparsified successfully/);
    });

    it('copy-and-replace keeps the id, swaps in a sparse copy, and the filesystem is intact', async () => {
      const b = diskByName(disks, 'b.raw');
      const inoBefore = statSync(join(domain, 'vm1', 'b.raw')).ino;
      const r = await http(server, 'POST', `/api/disks/${b.id}/sparsify`, { mode: 'copy-and-replace' });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const job = await waitFor('job end', async () => {
        const j = (await http(server, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
        return j.status !== 'pending' && j.status !== 'running' ? j : undefined;
      });
      assert.equal(job.status, 'finished', JSON.stringify(job));
      assert.ok(job.bytesReclaimed > 20 * MiB, `gave back ${job.bytesReclaimed}`);
      assert.notEqual(statSync(join(domain, 'vm1', 'b.raw')).ino, inoBefore, 'the file was replaced');
      const list = (await http(server, 'GET', '/api/disks')).body.disks;
      assert.equal(list.length, N, 'no disk appeared or vanished');
      assert.equal(diskByName(list, 'b.raw').id, b.id, 'same id after the swap');
      const part = join(tmp.dir, 'b-part.img');
      extract(join(domain, 'vm1', 'b.raw'), MiB, 32 * MiB, part);
      assert.equal(e2fsck(part).status, 0);
    });

    it('serves the OpenAPI document, the policy, and needs-sparsify filtering', async () => {
      // Generated from the routes' own schemas: every route is there, with what it accepts.
      const doc = await http(server, 'GET', '/api/docs/json');
      assert.equal(doc.status, 200);
      assert.equal(doc.body.openapi, '3.0.3');
      const post = doc.body.paths['/api/disks/{id}/sparsify'].post;
      assert.match(post.summary, /Sparsify the disk/);
      assert.deepEqual(post.requestBody.content['application/json'].schema.properties.mode.enum, ['in-place', 'copy-and-replace']);
      for (const p of ['/api/disks', '/api/jobs/{id}/cancel', '/api/hosts', '/api/policy', '/api/health', '/metrics']) assert.ok(doc.body.paths[p], `${p} is documented`);
      const html = await fetch(server.url + '/api/docs');
      assert.equal(html.status, 200);
      assert.match(await html.text(), /swagger-ui/i);

      const pol = await http(server, 'GET', '/api/policy');
      assert.equal(pol.body.policy.scheduleEnabled, false, 'the schedule is off by default');
      const needs = (await http(server, 'GET', '/api/disks?needsSparsify=true')).body.disks;
      assert.deepEqual(needs.map((d: { name: string }) => d.name), []);
      const put = await http(server, 'PUT', '/api/policy', { thresholdBytes: 0, thresholdPercent: 0 });
      assert.equal(put.status, 200);
      assert.equal(put.body.policy.thresholdBytes, 0);
      assert.equal((await http(server, 'PUT', '/api/policy', { thresholdBytes: 1 }, { token: null })).status, 401);
    });
  });

  describe(`service jobs on ${backend}: cancel and restart`, { skip, timeout: 300_000 }, () => {
    let tmp: { dir: string; cleanup: () => void };
    let domain: string;
    let data: string;
    let server: Server | undefined;

    before(() => {
      tmp = tempDir('sparsify-service-jobs-');
      domain = join(tmp.dir, 'images');
      data = join(tmp.dir, 'data');
      mkdirSync(domain, { recursive: true });
      makeGuestDisk(join(domain, 'c.raw'), tmp.dir, 'c');
      copyFileSync(join(domain, 'c.raw'), join(domain, 'd.raw'));
      copyFileSync(join(domain, 'c.raw'), join(domain, 'e.raw'));
    });

    after(() =>
      releaseAll(
        () => server?.kill(),
        () => tmp?.cleanup(),
      ),
    );

    const slow = { SPARSIFY_TEST_JOB_DELAY_MS: '2500' };
    const jobOf = async (s: Server, id: string) => (await http(s, 'GET', `/api/jobs/${id}`)).body.job;

    it('cancels a running job: the disk is unchanged and unlocked', async () => {
      server = await startServer({ database: await dbFor('jobs'), dataDir: data, domains: [domain], env: slow });
      const c = diskByName(await analyzedDisks(server, 3), 'c.raw');
      const sum = sha256(readFileSync(join(domain, 'c.raw')));
      const r = await http(server, 'POST', `/api/disks/${c.id}/sparsify`);
      assert.equal(r.status, 202);
      await waitFor('running', async () => (await jobOf(server!, r.body.job.id)).status === 'running');
      assert.equal((await http(server, 'GET', `/api/disks/${c.id}`)).body.disk.status, 'locked');
      const cancel = await http(server, 'POST', `/api/jobs/${r.body.job.id}/cancel`);
      assert.equal(cancel.status, 202);
      const job = await waitFor('cancelled', async () => {
        const j = await jobOf(server!, r.body.job.id);
        return j.status === 'cancelled' ? j : undefined;
      });
      assert.match(job.error, /cancel/);
      const disk = (await http(server, 'GET', `/api/disks/${c.id}`)).body.disk;
      assert.equal(disk.status, 'ok');
      assert.equal(disk.sparsify.allowed, true, 'unlocked');
      assert.equal(sha256(readFileSync(join(domain, 'c.raw'))), sum, 'the disk is unchanged');
      assert.equal((await http(server, 'POST', `/api/jobs/${r.body.job.id}/cancel`)).body.fault.code, 'job-not-active');
      const events = (await http(server, 'GET', '/api/events')).body.events.map((e: { type: string }) => e.type);
      assert.ok(events.includes('job-cancelled'));
    });

    it('a job running when the server dies is rerun at restart, and the disk ends unlocked and smaller', async () => {
      const idsBefore = new Map((await analyzedDisks(server!, 3)).map((d) => [d.name, d.id]));
      const d = idsBefore.get('d.raw')!;
      const before = statSync(join(domain, 'd.raw')).blocks * 512;
      const r = await http(server!, 'POST', `/api/disks/${d}/sparsify`);
      assert.equal(r.status, 202);
      await waitFor('running', async () => (await jobOf(server!, r.body.job.id)).status === 'running');
      await server!.kill();
      server = await startServer({ database: await dbFor('jobs'), dataDir: data, domains: [domain] });
      const job = await waitFor('rerun to finish', async () => {
        const j = await jobOf(server!, r.body.job.id);
        return j.status === 'finished' || j.status === 'failed' ? j : undefined;
      });
      assert.equal(job.status, 'finished', JSON.stringify(job));
      assert.equal(job.attempts, 2);
      assert.ok(statSync(join(domain, 'd.raw')).blocks * 512 < before - 20 * MiB);
      const disks = await analyzedDisks(server, 3);
      for (const x of disks) assert.equal(x.id, idsBefore.get(x.name), `${x.name} keeps its id across restarts`);
      assert.equal(diskByName(disks, 'd.raw').status, 'ok');
      const events = (await http(server, 'GET', '/api/events')).body.events;
      assert.ok(events.some((e: { type: string; jobId: string }) => e.type === 'job-restarted' && e.jobId === r.body.job.id));
      await server.stop();
      server = undefined;
    });

    it('with onRestart=fail the interrupted job fails cleanly and unlocks the disk', async () => {
      server = await startServer({ database: await dbFor('jobs'), dataDir: data, domains: [domain], env: slow });
      const e = diskByName(await analyzedDisks(server, 3), 'e.raw');
      const r = await http(server, 'POST', `/api/disks/${e.id}/sparsify`, { mode: 'copy-and-replace' });
      assert.equal(r.status, 202);
      await waitFor('running', async () => (await jobOf(server!, r.body.job.id)).status === 'running');
      await server.kill();
      server = await startServer({ database: await dbFor('jobs'), dataDir: data, domains: [domain], env: { SPARSIFY_ON_RESTART: 'fail' } });
      const job = await jobOf(server, r.body.job.id);
      assert.equal(job.status, 'failed');
      assert.match(job.error, /interrupted/);
      const disk = (await http(server, 'GET', `/api/disks/${e.id}`)).body.disk;
      assert.equal(disk.status, 'ok');
      assert.equal(disk.lockedBy, null);
      assert.equal(disk.sparsify.allowed, true);
      assert.equal((await http(server, 'POST', `/api/disks/${e.id}/sparsify`, { mode: 'copy-and-replace' }, { token: TOKEN })).status, 202, 'it can be sparsified again');
    });
  });

  describe(`service policy on ${backend}: the schedule`, { skip, timeout: 120_000 }, () => {
    it('is off by default; when on, it sparsifies the disks that need it and leaves the others', async () => {
      const tmp = tempDir('sparsify-service-schedule-');
      const domain = join(tmp.dir, 'images');
      mkdirSync(domain, { recursive: true });
      makeGuestDisk(join(domain, 'needs.raw'), tmp.dir, 'n');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(domain, 'clean.qcow2'), '64M']);
      const server = await startServer({
        database: await dbFor('schedule'),
        dataDir: join(tmp.dir, 'data'),
        domains: [domain],
        env: { SPARSIFY_THRESHOLD_BYTES: String(4 * MiB), SPARSIFY_SCHEDULE: 'true', SPARSIFY_SCHEDULE_INTERVAL: '1' },
      });
      try {
        const before = statSync(join(domain, 'needs.raw')).blocks * 512;
        const jobs = await waitFor('a scheduled job to finish', async () => {
          const j = (await http(server, 'GET', '/api/jobs')).body.jobs;
          return j.length && j.every((x: { status: string }) => x.status === 'finished') ? j : undefined;
        });
        assert.deepEqual(jobs.map((j: { diskName: string; origin: string }) => `${j.diskName}:${j.origin}`), ['needs.raw:schedule']);
        assert.ok(statSync(join(domain, 'needs.raw')).blocks * 512 < before - 16 * MiB);
        // Once sparsified it no longer needs it: no second job.
        await new Promise((r) => setTimeout(r, 2500));
        assert.equal((await http(server, 'GET', '/api/jobs')).body.jobs.length, 1);
        assert.equal((await http(server, 'GET', '/api/policy')).body.policy.scheduleEnabled, true);
      } finally {
        await server.stop();
        tmp.cleanup();
      }
    });
  });
}
