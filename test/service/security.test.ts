/**
 * Who may read what. Listening beyond localhost, no route of the API, the event stream or the
 * metrics answers without the token, nor with a wrong one; the health check does. /metrics also
 * takes its read-only token, which opens nothing else. Over HTTPS (--tls-cert, --tls-key) the same
 * holds, and plain HTTP is not served.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { tempDir, run, haveTool, releaseAll } from '../helpers/fixtures.js';
import { startServer, stopAllServers, http, TOKEN } from './service-helpers.js';

const METRICS_TOKEN = 'metrics-only-token-42';

describe('tokens on every call when listening beyond localhost', { timeout: 120_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };

  before(() => {
    tmp = tempDir('sparsify-security-');
  });
  after(() => releaseAll(stopAllServers, () => tmp?.cleanup()));

  it('answers nothing but the health check without the token, and nothing with a wrong one', async () => {
    const server = await startServer({ dataDir: join(tmp.dir, 'open'), args: ['--host', '0.0.0.0', '--metrics-token', METRICS_TOKEN] });
    const url = server.url.replace('0.0.0.0', '127.0.0.1');
    const s = { ...server, url };
    const doc = (await http(s, 'GET', '/api/docs/json')).body as { paths: Record<string, Record<string, unknown>> };
    const routes = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => ({ method: m.toUpperCase(), path: path.replace(/\{[^}]+\}/g, (p) => (p === '{name}' ? 'somehost' : randomUUID())) })));
    assert.ok(routes.length >= 14, `the document lists the routes: ${routes.length}`);
    for (const r of routes) {
      for (const token of [null, 'wrong-token-0000000000', METRICS_TOKEN]) {
        if (r.path === '/metrics' && token === METRICS_TOKEN) continue;
        const res = await http(s, r.method, r.path, undefined, { token });
        if (r.path === '/api/health') assert.equal(res.status, 200, 'the health check needs no token');
        else assert.equal(res.status, 401, `${r.method} ${r.path} with ${token === null ? 'no token' : token === METRICS_TOKEN ? 'the metrics token' : 'a wrong token'}: ${JSON.stringify(res.body).slice(0, 200)}`);
      }
    }
    // The live stream, too.
    assert.equal((await fetch(`${url}/api/stream`)).status, 401);
    // With the tokens: the disk list and the metrics.
    assert.equal((await http(s, 'GET', '/api/disks')).status, 200);
    const metrics = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    assert.equal(metrics.status, 200);
    const text = await metrics.text();
    for (const name of ['sparsify_jobs', 'sparsify_disks', 'sparsify_reclaimed_bytes_total', 'sparsify_job_duration_seconds', 'sparsify_http_request_duration_seconds']) assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    assert.match(text, /sparsify_http_request_duration_seconds_count\{method="GET",route="\/api\/disks",status="200"\} [1-9]/);
    await server.stop();
  });

  it('keeps reads open on localhost, as before', async () => {
    const server = await startServer({ dataDir: join(tmp.dir, 'local') });
    assert.equal((await http(server, 'GET', '/api/disks', undefined, { token: null })).status, 200);
    assert.equal((await http(server, 'POST', '/api/rescan', undefined, { token: null })).status, 401, 'changes still need it');
    await server.stop();
  });

  it('serves HTTPS with --tls-cert and --tls-key', { skip: haveTool('openssl') ? false : 'no openssl' }, async () => {
    const cert = join(tmp.dir, 'cert.pem');
    const key = join(tmp.dir, 'key.pem');
    run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
    const server = await startServer({ dataDir: join(tmp.dir, 'tls'), args: ['--host', '0.0.0.0', '--tls-cert', cert, '--tls-key', key] });
    assert.match(server.url, /^https:\/\//);
    const url = new URL(server.url.replace('0.0.0.0', '127.0.0.1'));
    const get = (path: string, token?: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpsRequest({ host: url.hostname, port: url.port, path, ca: readFileSync(cert), headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
          let body = '';
          res.on('data', (b: Buffer) => (body += b.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    assert.equal((await get('/api/health')).status, 200);
    assert.equal((await get('/api/disks')).status, 401);
    assert.equal((await get('/api/disks', TOKEN)).status, 200);
    await assert.rejects(fetch(`http://127.0.0.1:${url.port}/api/health`), 'no plain HTTP on the HTTPS port');
    await server.stop();
  });
});
