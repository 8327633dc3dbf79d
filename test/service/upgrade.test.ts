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
import Database from 'better-sqlite3';
import { tempDir, run, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { startServer, stopAllServers, http, waitFor, repoRoot, type Server } from './service-helpers.js';
import { PgDb } from '../../src/service/store/pg-db.js';
import { migrate, MIGRATIONS } from '../../src/service/store/migrations.js';

const FIXTURE = join(repoRoot, 'test', 'fixtures', 'service', 'release-0.1.0.db.gz');
const A_ID = '6a6f1b84-e6ad-42ea-82ab-aa48118eaeee';
const B_ID = 'bd042ceb-be22-47e1-bcb7-53af489e25b8';
const FINISHED_JOB = 'de665e3a-56d6-4d8c-b060-4f8e4f10f1d0';
const KILLED_JOB = '3e756978-fece-46fd-855e-057b47fcf33c';

type Rows = Record<'disks' | 'jobs' | 'events' | 'settings', Array<Record<string, unknown>>>;

function releaseRows(file: string): Rows {
  const db = new Database(file, { readonly: true });
  try {
    const all = (t: string) => db.prepare(`SELECT * FROM ${t}`).all() as Array<Record<string, unknown>>;
    return { disks: all('disks'), jobs: all('jobs'), events: all('events'), settings: all('settings') };
  } finally {
    db.close();
  }
}

/** The domain the release saw: the same relative paths, so the disks are found again. */
function makeDomain(dir: string): string {
  const domain = join(dir, 'images');
  mkdirSync(domain, { recursive: true });
  run('qemu-img', ['create', '-q', '-f', 'qcow2', join(domain, 'b.qcow2'), '64M']);
  run('truncate', ['-s', '16M', join(domain, 'a.raw')]);
  run('mkfs.ext4', ['-q', join(domain, 'a.raw')]);
  return domain;
}

async function checkUpgraded(server: Server, before: Rows): Promise<void> {
  const disks = (await http(server, 'GET', '/api/disks')).body.disks as Array<{ id: string; name: string }>;
  assert.deepEqual(disks.map((d) => `${d.name}:${d.id}`).sort(), [`a.raw:${A_ID}`, `b.qcow2:${B_ID}`]);
  const done = (await http(server, 'GET', `/api/jobs/${FINISHED_JOB}`)).body.job;
  assert.equal(done.status, 'finished');
  assert.equal(done.diskId, A_ID);
  // The job 0.1.0 left running is run again and ends; its disk is unlocked.
  const rerun = await waitFor('the interrupted job to end', async () => {
    const j = (await http(server, 'GET', `/api/jobs/${KILLED_JOB}`)).body.job;
    return j.status === 'finished' || j.status === 'failed' ? j : undefined;
  });
  assert.equal(rerun.status, 'finished', JSON.stringify(rerun));
  assert.equal(rerun.attempts, 2);
  const b = (await http(server, 'GET', `/api/disks/${B_ID}`)).body.disk;
  assert.equal(b.lockedBy, null);
  const events = (await http(server, 'GET', '/api/events?limit=500')).body.events as Array<{ message: string }>;
  for (const e of before.events) assert.ok(events.some((x) => x.message === e.message), `event kept: ${String(e.message)}`);
  assert.equal((await http(server, 'GET', '/api/policy')).body.policy.thresholdBytes, 1048576);
}

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
    const db = PgDb.connect(url, { applicationName: 'test', onError: () => undefined });
    const rows = releaseRows(release);
    try {
      await migrate(db, MIGRATIONS.slice(0, 1));
      for (const [table, list] of Object.entries(rows)) {
        for (const r of list) {
          const cols = Object.keys(r).filter((c) => !(table === 'events' && c === 'id'));
          await db.run(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`, cols.map((c) => r[c] as string | number | null));
        }
      }
    } finally {
      await db.close();
    }
    const dir = join(tmp.dir, 'pg');
    const server = await startServer({ dataDir: join(dir, 'data'), domains: [makeDomain(dir)], database: url });
    await checkUpgraded(server, rows);
    await server.stop();
    assert.ok(!server.output().includes(pg.password), 'the password is never printed');
  });
});
