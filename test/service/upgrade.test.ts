/**
 * Upgrading a database written by sparsify 0.1.0 (test/fixtures/service/release-0.1.0.db.gz, the
 * real file that release wrote; see the README beside it): disks keep their ids, jobs and events
 * are all there, the policy stays, and the job that release left running (it was killed) is run
 * again and unlocks its disk. On PostgreSQL the same rows are loaded into a version-1 schema.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { startServer, stopAllServers } from './service-helpers.js';
import { FIXTURE, releaseRows, makeDomain, checkUpgraded, loadIntoPostgres } from './release-0.1.0.js';

const missing = ['qemu-img', 'mkfs.ext4'].find((t) => !haveTool(t));

describe('upgrading a 0.1.0 database', { skip: missing ? `missing ${missing}` : false, timeout: 120_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let release: string;
  let pg: PgCluster | undefined;

  before(() => {
    tmp = tempDir('sparsify-upgrade-');
    release = join(tmp.dir, 'release.db');
    writeFileSync(release, gunzipSync(readFileSync(FIXTURE)));
  });

  after(() => releaseAll(stopAllServers, () => pg?.stop(), () => tmp?.cleanup()));

  it('on SQLite: the data folder of 0.1.0 works unchanged', async () => {
    const dir = join(tmp.dir, 'sqlite');
    mkdirSync(join(dir, 'data'), { recursive: true });
    writeFileSync(join(dir, 'data', 'sparsify.db'), readFileSync(release));
    const server = await startServer({ dataDir: join(dir, 'data'), domains: [makeDomain(dir)] });
    await checkUpgraded(server, releaseRows(release));
    await server.stop();
    assert.match(server.output(), /schema upgraded from version 1 to \d/);
  });

  it('on PostgreSQL: the same rows in a version-1 schema', { skip: postgresMissing() }, async () => {
    pg = await startPostgres();
    const url = pg.database('upgrade');
    const rows = releaseRows(release);
    await loadIntoPostgres(url, rows);
    const dir = join(tmp.dir, 'pg');
    const server = await startServer({ dataDir: join(dir, 'data'), domains: [makeDomain(dir)], database: url });
    await checkUpgraded(server, rows);
    await server.stop();
    assert.ok(!server.output().includes(pg.password), 'the password is never printed');
  });
});
