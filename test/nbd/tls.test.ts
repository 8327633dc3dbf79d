/**
 * nbds+unix:// against qemu-nbd with an x509 tls-creds object, certificates made in the test
 * with certtool (a CA, a server certificate for localhost, a client certificate): the copy is
 * the file's copy; a client trusting another CA is refused by the handshake, and a plain
 * nbd+unix:// address is told the server requires TLS. Each a clear error, exit 1.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, writeFileSync, readFileSync, copyFileSync } from 'node:fs';
import { tempDir, run, sha256, releaseAll } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { sparsifyCopy } from '../../src/operations/copy.js';
import { sparsify } from '../helpers/cli.js';
import { qemuNbd, nbdkitTcp, ServerPool, type TestServer } from './servers.js';

const T = { timeout: 60_000 };
let dir = '';
let cleanup = (): void => undefined;
const servers = new ServerPool();
let disk = '';
let serverDir = '';
let clientDir = '';
let strangerDir = '';
/** Our client certificate, but trusting another CA: the server's certificate does not verify. */
let wrongCaDir = '';

/** A CA in `dir` (ca-key.pem, ca-cert.pem). */
function makeCa(d: string, cn: string): void {
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'ca.info'), `cn = ${cn}\nca\ncert_signing_key\nexpiration_days = 2\n`);
  run('certtool', ['--generate-privkey', '--outfile', join(d, 'ca-key.pem')]);
  run('certtool', ['--generate-self-signed', '--load-privkey', join(d, 'ca-key.pem'), '--template', join(d, 'ca.info'), '--outfile', join(d, 'ca-cert.pem')]);
}

/** A certificate signed by the CA in `ca`, written as NAME-key.pem and NAME-cert.pem in `out`. */
function makeCert(ca: string, out: string, name: 'server' | 'client'): void {
  mkdirSync(out, { recursive: true });
  const info = join(out, `${name}.info`);
  writeFileSync(info, name === 'server' ? 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' : 'cn = sparsify-test\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n');
  run('certtool', ['--generate-privkey', '--outfile', join(out, `${name}-key.pem`)]);
  run('certtool', ['--generate-certificate', '--load-privkey', join(out, `${name}-key.pem`), '--load-ca-certificate', join(ca, 'ca-cert.pem'), '--load-ca-privkey', join(ca, 'ca-key.pem'), '--template', info, '--outfile', join(out, `${name}-cert.pem`)]);
  copyFileSync(join(ca, 'ca-cert.pem'), join(out, 'ca-cert.pem'));
}

before(() => {
  ({ dir, cleanup } = tempDir('sparsify-nbd-tls-'));
  disk = join(dir, 'disk.raw');
  buildDisk(disk, { sizeMiB: 32, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 24, ext: { type: 'ext4', files: { 'a/b': Buffer.alloc(1 << 20, 9) } } }] });
  const ca = join(dir, 'ca');
  makeCa(ca, 'sparsify test CA');
  serverDir = join(dir, 'server');
  clientDir = join(dir, 'client');
  makeCert(ca, serverDir, 'server');
  makeCert(ca, clientDir, 'client');
  const other = join(dir, 'other-ca');
  makeCa(other, 'another CA');
  strangerDir = join(dir, 'stranger');
  makeCert(other, strangerDir, 'client');
  wrongCaDir = join(dir, 'wrong-ca');
  mkdirSync(wrongCaDir);
  for (const f of ['client-cert.pem', 'client-key.pem']) copyFileSync(join(clientDir, f), join(wrongCaDir, f));
  copyFileSync(join(other, 'ca-cert.pem'), join(wrongCaDir, 'ca-cert.pem'));
});

after(() => releaseAll(...servers.stops, () => cleanup()));

async function tlsServer(): Promise<TestServer> {
  const s = await qemuNbd(dir, disk, { format: 'raw', extra: ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${serverDir}`, '--tls-creds', 'tls0'] });
  servers.add(s);
  return s;
}

test('nbds+unix with certificates: the copy equals the copy of the file', T, async () => {
  const s = await tlsServer();
  const ref = join(dir, 'ref.raw');
  await sparsifyCopy({ input: disk, output: ref });
  const out = join(dir, 'tls.raw');
  await sparsifyCopy({ input: `nbds+unix:///?socket=${s.socket}&tls-certificates=${clientDir}`, output: out });
  assert.equal(sha256(readFileSync(out)), sha256(readFileSync(ref)));
});

test('a client trusting another CA is refused, and a plain address is told TLS is required', T, async () => {
  const s = await tlsServer();
  let r = sparsify([`nbds+unix:///?socket=${s.socket}&tls-certificates=${strangerDir}`, join(dir, 'x.raw')]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /TLS handshake failed/);
  assert.doesNotMatch(r.stderr, /tls-certificates|stranger/, 'no TLS file paths in messages');
  r = sparsify([`nbd+unix:///?socket=${s.socket}`, join(dir, 'x.raw')]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /the server requires TLS \(use nbds/);
});

test('tls-verify-peer: a server certificate from an unknown CA is refused, and accepted with tls-verify-peer=false', T, async () => {
  const s = await tlsServer();
  const r = sparsify([`nbds+unix:///?socket=${s.socket}&tls-certificates=${wrongCaDir}`, join(dir, 'y.raw')]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /TLS handshake failed/);
  const out = join(dir, 'noverify.raw');
  await sparsifyCopy({ input: `nbds+unix:///?socket=${s.socket}&tls-certificates=${wrongCaDir}&tls-verify-peer=false`, output: out });
  await sparsifyCopy({ input: disk, output: join(dir, 'ref2.raw') });
  assert.equal(sha256(readFileSync(out)), sha256(readFileSync(join(dir, 'ref2.raw'))));
});

test('over TCP: nbd:// and nbds:// (nbdkit on 127.0.0.1, the same certificates)', T, async () => {
  const ref = join(dir, 'ref-tcp.raw');
  await sparsifyCopy({ input: disk, output: ref });
  const port = 20000 + (process.pid % 20000);
  const plain = await nbdkitTcp(dir, port, ['file', disk]);
  servers.add(plain);
  const out = join(dir, 'tcp.raw');
  await sparsifyCopy({ input: `nbd://127.0.0.1:${port}/`, output: out });
  assert.equal(sha256(readFileSync(out)), sha256(readFileSync(ref)));
  await plain.stop();
  const tls = await nbdkitTcp(dir, port + 1, ['--tls=require', `--tls-certificates=${serverDir}`, 'file', disk]);
  servers.add(tls);
  const out2 = join(dir, 'tcp-tls.raw');
  await sparsifyCopy({ input: `nbds://localhost:${port + 1}/?tls-certificates=${clientDir}`, output: out2 });
  assert.equal(sha256(readFileSync(out2)), sha256(readFileSync(ref)));
  await assert.rejects(sparsifyCopy({ input: `nbd://localhost:${port + 1}/`, output: join(dir, 'z.raw') }), /requires TLS/);
  await tls.stop();
});
