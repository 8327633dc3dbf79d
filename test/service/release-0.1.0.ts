/**
 * The database sparsify 0.1.0 wrote (test/fixtures/service/release-0.1.0.db.gz, the real file that
 * release wrote; see the README beside it), and what an upgrade must keep of it: the domain it
 * saw, its rows, loading them into a version-1 PostgreSQL schema, and the checks after the upgrade.
 * Used by the schema-upgrade test and by the packaging test's upgrade through the installed package.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { run } from '../helpers/fixtures.js';
import { http, waitFor, repoRoot, type Server } from './service-helpers.js';
import { PgDb } from '../../src/service/store/pg-db.js';
import { migrate, MIGRATIONS } from '../../src/service/store/migrations.js';

export const FIXTURE = join(repoRoot, 'test', 'fixtures', 'service', 'release-0.1.0.db.gz');
export const A_ID = '6a6f1b84-e6ad-42ea-82ab-aa48118eaeee';
export const B_ID = 'bd042ceb-be22-47e1-bcb7-53af489e25b8';
export const FINISHED_JOB = 'de665e3a-56d6-4d8c-b060-4f8e4f10f1d0';
export const KILLED_JOB = '3e756978-fece-46fd-855e-057b47fcf33c';

export type Rows = Record<'disks' | 'jobs' | 'events' | 'settings', Array<Record<string, unknown>>>;

export function releaseRows(file: string): Rows {
  const db = new Database(file, { readonly: true });
  try {
    const all = (t: string) => db.prepare(`SELECT * FROM ${t}`).all() as Array<Record<string, unknown>>;
    return { disks: all('disks'), jobs: all('jobs'), events: all('events'), settings: all('settings') };
  } finally {
    db.close();
  }
}

/** The domain the release saw: the same relative paths, so the disks are found again. */
export function makeDomain(dir: string): string {
  const domain = join(dir, 'images');
  mkdirSync(domain, { recursive: true });
  run('qemu-img', ['create', '-q', '-f', 'qcow2', join(domain, 'b.qcow2'), '64M']);
  run('truncate', ['-s', '16M', join(domain, 'a.raw')]);
  run('mkfs.ext4', ['-q', join(domain, 'a.raw')]);
  return domain;
}

export async function checkUpgraded(server: Server, before: Rows): Promise<void> {
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

/** The release's rows in a version-1 schema of the PostgreSQL database at `url`, as 0.1.0 would have left them there. */
export async function loadIntoPostgres(url: string, rows: Rows): Promise<void> {
  const db = PgDb.connect(url, { applicationName: 'test', onError: () => undefined });
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
}
