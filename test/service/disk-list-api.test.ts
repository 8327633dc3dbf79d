/**
 * GET /api/disks by pages, the whole list streamed, /api/summary, ETags and the live stream's
 * following of named disks, against a running service on a domain of a few hundred files (three
 * real ext4 guests with deleted data among empty sparse images). The whole list as the in-memory
 * catalog serves it is the reference for the pages and for the streamed list of a site past the
 * catalog's budget (a second server started with a budget of 10 disks on the same data).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, readStream, waitFor, makeGuestDisk, type Server } from './service-helpers.js';

type Disk = Record<string, any> & { id: string; name: string };
const SPARSE = 240;
const GUESTS = 3;

async function allPages(s: Server, query: string, limit: number): Promise<{ disks: Disk[]; pages: number }> {
  const disks: Disk[] = [];
  let after: string | null = null;
  let pages = 0;
  do {
    const r: { status: number; body: { disks: Disk[]; next: string | null } } = await http(s, 'GET', `/api/disks?limit=${limit}${query}${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    disks.push(...r.body.disks);
    after = r.body.next;
    pages++;
    assert.ok(pages < 1000, 'paging never ends');
  } while (after);
  return { disks, pages };
}

describe('the disk list by pages, streamed, and its totals', { timeout: 300_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let s: Server;
  let all: Disk[];

  before(async () => {
    tmp = tempDir('sparsify-list-api-');
    const domain = join(tmp.dir, 'images');
    mkdirSync(domain);
    for (let i = 0; i < GUESTS; i++) makeGuestDisk(join(domain, `guest-${i}.raw`), tmp.dir, `g${i}`);
    for (let i = 0; i < SPARSE; i++) {
      const fd = openSync(join(domain, `thin-${String(i).padStart(3, '0')}.raw`), 'w');
      ftruncateSync(fd, (1 + (i % 5)) * 2 ** 30);
      closeSync(fd);
    }
    s = await startServer({ dataDir: join(tmp.dir, 'data'), domains: [domain], args: ['--threshold-bytes', '1048576', '--threshold-percent', '1', '--scan-interval', '0'] });
    all = await waitFor('every disk analysed', async () => {
      const r = await http<{ disks: Disk[] }>(s, 'GET', '/api/disks');
      return r.body.disks.length === SPARSE + GUESTS && r.body.disks.every((d) => d.analysis.state === 'done') ? r.body.disks : undefined;
    }, 120_000);
  });

  after(() => releaseAll(stopAllServers, () => tmp?.cleanup()));

  it('pages through every disk once, in the order asked, and the filters pick what the whole list says', async () => {
    const byId = new Map(all.map((d) => [d.id, d]));
    const bytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
    const cases: Array<[string, (a: Disk, b: Disk) => number, (d: Disk) => boolean]> = [
      ['', (a, b) => bytes(a.name, b.name) || bytes(a.id, b.id), () => true],
      ['&sort=virtualSize:desc', (a, b) => (b.virtualSize ?? -1) - (a.virtualSize ?? -1) || bytes(b.id, a.id), () => true],
      ['&sort=reclaimable:desc&needsSparsify=true', (a, b) => (b.reclaimableBytes ?? -1) - (a.reclaimableBytes ?? -1) || bytes(b.id, a.id), (d) => d.needsSparsify],
      ['&sort=actualSize&status=ok&q=THIN-1', (a, b) => a.actualSize - b.actualSize || bytes(a.id, b.id), (d) => d.status === 'ok' && d.name.includes('thin-1')],
      [`&domain=${all[0]!.domainId}&sort=status:desc`, (a, b) => bytes(b.status, a.status) || bytes(b.id, a.id), () => true],
    ];
    for (const [query, order, keep] of cases) {
      const { disks, pages } = await allPages(s, query, 17);
      const want = all.filter(keep).sort(order).map((d) => d.id);
      assert.ok(want.length > 0, `the case ${query} selects something`);
      assert.deepEqual(disks.map((d) => d.id), want, `pages of ${query}`);
      assert.equal(pages, Math.max(1, Math.ceil(want.length / 17)), `page count of ${query}`);
      for (const d of disks) assert.deepEqual(d, byId.get(d.id), 'a page shows the same view as the whole list');
    }
    assert.equal((await allPages(s, '&needsSparsify=true', 100)).disks.length, GUESTS, 'the guests with deleted data need sparsify, the empty images do not');
  });

  it('refuses a cursor it did not give, one of another sort or a forged or expired one, with 400 and a code', async () => {
    const bad = await http(s, 'GET', '/api/disks?limit=5&after=not-a-cursor');
    assert.equal(bad.status, 400);
    assert.equal(bad.body.fault.code, 'bad-cursor', JSON.stringify(bad.body));
    const first = await http(s, 'GET', '/api/disks?limit=5&sort=name');
    const other = await http(s, 'GET', `/api/disks?limit=5&sort=actualSize&after=${first.body.next}`);
    assert.equal(other.status, 400);
    assert.match(other.body.fault.detail, /sort name:asc/);
    // A cursor is the client's to send back: one whose mark was tampered with is refused, not passed to the database.
    const parts = JSON.parse(Buffer.from(first.body.next, 'base64url').toString()) as unknown[];
    const forged = Buffer.from(JSON.stringify([parts[0], parts[1], parts[2], "0'; DROP TABLE disks; --", parts[4]])).toString('base64url');
    const refused = await http(s, 'GET', `/api/disks?limit=5&sort=name&after=${forged}`);
    assert.equal(refused.status, 400);
    assert.equal(refused.body.fault.code, 'bad-cursor');
    // Past its hour the moves that place its disks may be gone: the client is told to start again.
    const old = Buffer.from(JSON.stringify([parts[0], parts[1], parts[2], parts[3], Date.now() - 2 * 3600_000])).toString('base64url');
    const expired = await http(s, 'GET', `/api/disks?limit=5&sort=name&after=${old}`);
    assert.equal(expired.status, 400);
    assert.equal(expired.body.fault.code, 'cursor-expired', JSON.stringify(expired.body));
    assert.equal((await http(s, 'GET', `/api/disks?limit=5&sort=name&after=${first.body.next}`)).status, 200);
    assert.equal((await http(s, 'GET', '/api/disks?limit=5000')).status, 400);
    assert.equal((await http(s, 'GET', '/api/disks?sort=size')).status, 400);
  });

  it('sums the totals as the whole list does', async () => {
    const r = await http(s, 'GET', '/api/summary');
    assert.equal(r.status, 200);
    const sum = r.body.summary;
    assert.equal(sum.disks, all.length);
    assert.equal(sum.actualBytes, all.reduce((t, d) => t + d.actualSize, 0));
    assert.equal(sum.virtualBytes, all.reduce((t, d) => t + (d.virtualSize ?? 0), 0));
    assert.equal(sum.reclaimableBytes, all.reduce((t, d) => t + (d.reclaimableBytes ?? 0), 0));
    assert.equal(sum.needsSparsify, all.filter((d) => d.needsSparsify).length);
    assert.deepEqual(sum.analysis, { done: all.length, pending: 0, failed: 0 });
    assert.equal(sum.byStatus.ok.disks, all.filter((d) => d.status === 'ok').length);
    assert.equal(sum.byDomain.length, 1);
    assert.equal(sum.byDomain[0].disks, all.length);
  });

  it('tags every list answer and answers 304 to a client that holds it', async () => {
    for (const path of ['/api/disks', '/api/disks?limit=10&sort=name:desc', '/api/summary', '/api/disks?status=ok']) {
      const a = await http(s, 'GET', path);
      const tag = a.headers.get('etag');
      assert.ok(tag, `${path} has an ETag`);
      const res = await fetch(s.url + path, { headers: { 'if-none-match': tag! } });
      assert.equal(res.status, 304, `${path} with its own ETag`);
      assert.equal((await res.text()).length, 0);
    }
    // A change gives the page a new tag.
    const page = await http(s, 'GET', '/api/disks?limit=3');
    const d = page.body.disks[0];
    assert.equal((await http(s, 'PATCH', `/api/disks/${d.id}`, { allocation: 'preallocated' })).status, 200);
    const res = await fetch(`${s.url}/api/disks?limit=3`, { headers: { 'if-none-match': page.headers.get('etag')! } });
    assert.equal(res.status, 200, 'a changed page is sent again');
    assert.equal((await http(s, 'PATCH', `/api/disks/${d.id}`, { allocation: 'auto' })).status, 200);
  });

  it('streams the whole list from the database past the catalog budget, as JSON and NDJSON, the same as the catalog', async () => {
    const big = await startServer({ dataDir: join(tmp.dir, 'data-2'), domains: [join(tmp.dir, 'images')], env: { SPARSIFY_LIST_CACHE_DISKS: '10' }, args: ['--threshold-bytes', '1048576', '--threshold-percent', '1', '--scan-interval', '0'] });
    try {
      const listed = await waitFor('the second host lists every disk', async () => {
        const r = await http<{ disks: Disk[] }>(big, 'GET', '/api/disks');
        return r.body.disks.length === all.length && r.body.disks.every((d) => d.analysis.state === 'done') ? r.body.disks : undefined;
      }, 120_000);
      assert.deepEqual(listed.map((d) => d.name).sort(), all.map((d) => d.name).sort());
      const nd = await fetch(`${big.url}/api/disks?format=ndjson`);
      assert.match(nd.headers.get('content-type') ?? '', /ndjson/);
      const lines = (await nd.text()).trim().split('\n').map((l) => JSON.parse(l) as Disk);
      assert.deepEqual(lines, listed, 'NDJSON holds the same views in the same order');
    } finally {
      await big.stop();
    }
  });

  it('sends disk events only for the disks a stream follows, and the totals', async () => {
    const [a, b] = all;
    const stream = await readStream(s, `/api/stream?disks=${a!.id}`);
    try {
      await new Promise((r) => setTimeout(r, 300));
      for (const d of [a!, b!]) assert.equal((await http(s, 'PATCH', `/api/disks/${d.id}`, { allocation: 'preallocated' })).status, 200);
      await waitFor('a disk event and a summary event', async () => stream.text().includes('event: summary') && stream.text().includes(a!.id), 10_000);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(!stream.text().includes(b!.id), 'no event of a disk the stream does not follow');
    } finally {
      await stream.close();
      for (const d of [a!, b!]) await http(s, 'PATCH', `/api/disks/${d.id}`, { allocation: 'auto' });
    }
    assert.equal((await http(s, 'GET', `/api/stream?disks=${Array.from({ length: 301 }, (_, i) => `d${i}`).join(',')}`)).status, 400);
  });

  it('rescans unchanged files without probing them again, and says so', async () => {
    const before = Date.now();
    assert.equal((await http(s, 'POST', '/api/rescan')).status, 202);
    const scan = await waitFor('the rescan ends', async () => {
      const info = (await http(s, 'GET', '/api/info')).body;
      return !info.scan.running && info.scan.last && info.scan.last.startedAt >= before ? info.scan.last : undefined;
    }, 60_000);
    assert.equal(scan.files, all.length);
    assert.equal(scan.changed, 0);
  });
});
