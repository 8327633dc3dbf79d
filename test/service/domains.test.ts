/**
 * The storage domain setting that chooses when in-place sparsify compacts (always, where-no-holes,
 * never), through the API on SQLite and on PostgreSQL: listed with its default, changed only with
 * the token and a known value, documented in the OpenAPI document, kept across a restart, and
 * cluster-wide: on PostgreSQL a second host sees the change at once, and a job run by whichever
 * host takes it compacts as the setting says (qemu-img check, e2fsck and checksums of the guest).
 * Then the same through the web UI's domain settings control, in headless chromium.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { tempDir, run, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, analyzedDisks, diskByName, makeGuestDisk, guestProblem, sparsifyAndWait, waitFor, TOKEN, type Server } from './service-helpers.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { chromiumMissing, ensureWebBuilt, launchBrowser, testOutput } from './browser.js';

const MiB = 1 << 20;
const tools = ['mke2fs', 'debugfs', 'sgdisk', 'qemu-img', 'e2fsck'].filter((t) => !haveTool(t));
const missingTools = tools.length ? `missing tools: ${tools.join(', ')}` : false;

let pg: PgCluster | undefined;
after(() => releaseAll(stopAllServers, () => pg?.stop()));

for (const backend of ['sqlite', 'postgres'] as const) {
  const skip = missingTools || (backend === 'postgres' ? (postgresMissing() ?? false) : false);

  describe(`storage domain settings on ${backend}`, { skip, timeout: 180_000 }, () => {
    let tmp: { dir: string; cleanup: () => void };
    let domain: string;
    let database: string | undefined;
    let a: Server | undefined;
    /** On PostgreSQL: a second host of the cluster, mounting the same domain. */
    let b: Server | undefined;
    let domainId: string;
    let disk: Record<string, any>;

    const startA = async () => (a = await startServer({ database, hostName: 'alpha', dataDir: join(tmp.dir, 'data-a'), domains: [domain] }));

    before(async () => {
      tmp = tempDir('sparsify-domains-');
      domain = join(tmp.dir, 'images');
      mkdirSync(domain);
      makeGuestDisk(join(tmp.dir, 'guest.raw'), tmp.dir, 'dom');
      run('qemu-img', ['convert', '-O', 'qcow2', join(tmp.dir, 'guest.raw'), join(domain, 'vm.qcow2')]);
      database = backend === 'postgres' ? (pg ??= await startPostgres()).database('domains') : undefined;
      await startA();
      if (database) b = await startServer({ database, hostName: 'beta', dataDir: join(tmp.dir, 'data-b'), domains: [domain] });
      disk = diskByName(await analyzedDisks(a!, 1, 60_000), 'vm.qcow2');
      domainId = disk.domainId;
    });

    after(() =>
      releaseAll(
        () => a?.stop(),
        () => b?.stop(),
        () => tmp?.cleanup(),
      ),
    );

    it('lists the domain with its default setting, how each host mounts it, and what its files can do', async () => {
      const list = await http(a!, 'GET', '/api/domains');
      assert.equal(list.status, 200);
      assert.equal(list.body.domains.length, 1);
      const d = list.body.domains[0];
      assert.equal(d.id, domainId);
      assert.equal(d.compaction, 'where-no-holes');
      assert.equal(d.reachable, true);
      assert.equal(d.canDiscard, true, 'a temporary folder can punch holes');
      assert.deepEqual(d.hosts.map((h: { host: string }) => h.host).sort(), b ? ['alpha', 'beta'] : ['alpha']);
      const one = await http(a!, 'GET', `/api/domains/${domainId}`);
      assert.deepEqual(one.body.domain, d);
      assert.equal((await http(a!, 'GET', `/api/domains/${randomUUID()}`)).body.fault.code, 'domain-not-found');
      assert.equal((await http(a!, 'GET', '/api/domains/not-a-uuid')).status, 400);
      // Holes can be punched here, so by default nothing is compacted.
      assert.deepEqual(disk.storage, { canRelease: true, compaction: 'where-no-holes', compacts: false });
    });

    it('is changed only with the token and a known value', async () => {
      const noToken = await http(a!, 'PATCH', `/api/domains/${domainId}`, { compaction: 'always' }, { token: null });
      assert.equal(noToken.status, 401);
      for (const body of [{ compaction: 'sometimes' }, { compaction: 'always', extra: 1 }, {}, { compaction: true }]) {
        const r = await http(a!, 'PATCH', `/api/domains/${domainId}`, body);
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.fault.code, 'invalid-request');
      }
      assert.equal((await http(a!, 'PATCH', `/api/domains/${randomUUID()}`, { compaction: 'never' })).status, 404);
      assert.equal((await http(a!, 'GET', `/api/domains/${domainId}`)).body.domain.compaction, 'where-no-holes', 'nothing refused changed anything');
    });

    it('is documented in the OpenAPI document', async () => {
      const doc = (await http(a!, 'GET', '/api/docs/json')).body;
      assert.ok(doc.paths['/api/domains'].get);
      assert.ok(doc.paths['/api/domains/{id}'].get);
      const patch = doc.paths['/api/domains/{id}'].patch;
      assert.deepEqual(patch.requestBody.content['application/json'].schema.properties.compaction.enum, ['always', 'where-no-holes', 'never']);
      assert.deepEqual(patch.security, [{ token: [] }]);
    });

    it('holds for every host: changed on one, seen by all, used by the job whichever host runs it', async (t) => {
      const r = await http(a!, 'PATCH', `/api/domains/${domainId}`, { compaction: 'always' });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.domain.compaction, 'always');
      for (const s of b ? [a!, b] : [a!]) {
        await waitFor('the setting on every host', async () => (await http(s, 'GET', `/api/domains/${domainId}`)).body.domain.compaction === 'always', 10_000);
        await waitFor("the disk's view on every host", async () => (await http(s, 'GET', `/api/disks/${disk.id}`)).body.disk.storage.compacts === true, 10_000);
      }
      const events = (await http(a!, 'GET', '/api/events?limit=20')).body.events as Array<{ type: string; message: string }>;
      assert.ok(events.some((e) => e.type === 'domain-changed' && /compacts every image it can/.test(e.message)));

      // The job: holes punched, then compacted and truncated; both measured.
      const path = join(domain, 'vm.qcow2');
      const job = await sparsifyAndWait((b ?? a)!, disk.id, { mode: 'in-place' });
      assert.equal(job.status, 'finished', job.error);
      const res = job.result;
      t.diagnostic(`vm.qcow2 on ${job.host}, compaction always: given back ${res.givenBack} (holes ${res.byHoles}, truncation ${res.byTruncation}), length ${res.endBefore} -> ${res.endAfter}`);
      assert.equal(res.compaction, 'always');
      assert.equal(res.compacted, true);
      assert.equal(res.released, true);
      assert.equal(res.byHoles + res.byTruncation, res.givenBack);
      assert.ok(res.givenBack > 16 * MiB, `given back ${res.givenBack}`);
      assert.equal(res.endAfter, statSync(path).size);
      assert.equal(res.allocatedAfter, statSync(path).blocks * 512);
      assert.equal(guestProblem(path, 'qcow2', tmp.dir, 'dom'), undefined);
    });

    it('is kept across a restart', async () => {
      await a!.stop();
      a = undefined;
      await startA();
      assert.equal((await http(a!, 'GET', `/api/domains/${domainId}`)).body.domain.compaction, 'always');
    });

    it('is changed through the UI’s domain settings control', { skip: backend === 'postgres' ? 'the UI is the same on both stores' : (chromiumMissing() ?? false) }, async () => {
      ensureWebBuilt();
      const browser = await launchBrowser();
      try {
        const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));
        await page.goto(`${a!.url}/#token=${TOKEN}`);
        const row = page.locator('[data-testid=domain-row][data-compaction=always]');
        await row.waitFor();
        // With `always` the disk row says it is compacted in place; with `never` (holes can be punched here) it is not.
        const compacts = page.locator('[data-testid=disk-row][data-disk-name="vm.qcow2"] [data-testid=compacts]');
        await compacts.waitFor();
        await row.getByTestId('compaction-select').selectOption('never');
        await page.locator('[data-testid=domain-row][data-compaction=never] [data-testid=domain-note]', { hasText: 'Saved' }).waitFor();
        assert.equal((await http(a!, 'GET', `/api/domains/${domainId}`)).body.domain.compaction, 'never');
        await compacts.waitFor({ state: 'detached', timeout: 10_000 });
        // Changed elsewhere (the API, another host): the panel follows the live stream.
        await http(a!, 'PATCH', `/api/domains/${domainId}`, { compaction: 'where-no-holes' });
        await page.locator('[data-testid=domain-row][data-compaction=where-no-holes]').waitFor({ timeout: 10_000 });
        mkdirSync(testOutput, { recursive: true });
        await page.screenshot({ path: join(testOutput, 'service-ui-domain-settings.png'), fullPage: true });
        assert.deepEqual(errors, []);
      } finally {
        await browser.close();
      }
    });
  });
}
