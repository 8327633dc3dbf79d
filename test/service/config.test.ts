/**
 * Service configuration: defaults, config file < environment < flags, clear errors, where the
 * config and keys files are found (--config, SPARSIFY_CONFIG, the configuration folder, the data
 * folder) and their modes, and what --check-config says.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, resolveConfig, ConfigError } from '../../src/service/config.js';
import { tempDir } from '../helpers/fixtures.js';

/** A config file as an operator writes one: mode 0600. */
function writePrivate(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

it('defaults to localhost, a domain under the data folder, no schedule', { timeout: 300_000 }, () => {
  const c = loadConfig({ flags: { dataDir: '/srv/sp' }, env: {} });
  assert.equal(c.host, '127.0.0.1');
  assert.deepEqual(c.domains, ['/srv/sp/images']);
  assert.equal(c.policy.scheduleEnabled, false);
  assert.equal(c.defaultMode, 'in-place');
});

it('layers the config file, the environment and the flags, the later winning', { timeout: 300_000 }, () => {
  const t = tempDir();
  try {
    const file = join(t.dir, 'c.json');
    writePrivate(file, JSON.stringify({ port: 9000, host: '0.0.0.0', domains: ['/a', '/b'], thresholdPercent: 5, concurrency: 2 }));
    const c = loadConfig({ flags: { config: file, port: '9100' }, env: { SPARSIFY_HOST: '::1', SPARSIFY_SCHEDULE: 'yes' } });
    assert.equal(c.port, 9100);
    assert.equal(c.host, '::1');
    assert.deepEqual(c.domains, ['/a', '/b']);
    assert.equal(c.policy.thresholdPercent, 5);
    assert.equal(c.policy.scheduleEnabled, true);
    assert.equal(c.concurrency, 2);
    assert.deepEqual(loadConfig({ flags: { domain: ['/x'] }, env: { SPARSIFY_DOMAINS: '/y:/z' } }).domains, ['/x']);
    assert.deepEqual(loadConfig({ flags: {}, env: { SPARSIFY_DOMAINS: '/y:/z' } }).domains, ['/y', '/z']);
  } finally {
    t.cleanup();
  }
});

it('rejects bad values and unknown keys with a message naming them', { timeout: 300_000 }, () => {
  assert.throws(() => loadConfig({ flags: { port: '99999' }, env: {} }), (e: Error) => e instanceof ConfigError && /port/.test(e.message));
  assert.throws(() => loadConfig({ flags: {}, env: { SPARSIFY_DEFAULT_MODE: 'fast' } }), /defaultMode/);
  assert.throws(() => loadConfig({ flags: { token: 'short' }, env: {} }), /token/);
  const t = tempDir();
  try {
    const file = join(t.dir, 'c.json');
    writePrivate(file, '{"prot": 1}');
    assert.throws(() => loadConfig({ flags: { config: file }, env: {} }), /unknown setting 'prot'/);
    writePrivate(file, '{"token": "nope-not-json');
    // The parser's message would quote the text, a secret here: only where it is.
    assert.throws(() => loadConfig({ flags: { config: file }, env: {} }), (e: Error) => /config file .*: not valid JSON$/.test(e.message) && !e.message.includes('nope'));
  } finally {
    t.cleanup();
  }
});

it('reads VMs from qemu:///system when libvirtd’s socket exists, from the URI given, or not at all with none', { timeout: 300_000 }, async () => {
  const { existsSync } = await import('node:fs');
  const { LIBVIRT_SOCKET } = await import('../../src/service/config.js');
  assert.equal(loadConfig({ flags: {}, env: {} }).libvirt, existsSync(LIBVIRT_SOCKET) ? 'qemu:///system' : undefined);
  assert.equal(loadConfig({ flags: { libvirt: 'qemu+ssh://hv1/system' }, env: {} }).libvirt, 'qemu+ssh://hv1/system');
  assert.equal(loadConfig({ flags: {}, env: { SPARSIFY_LIBVIRT: 'none' } }).libvirt, undefined);
  assert.equal(loadConfig({ flags: {}, env: {} }).libvirtIntervalSeconds, 10);
  assert.throws(() => loadConfig({ flags: { libvirt: 'not a uri' }, env: {} }), /libvirt/);
});

it('finds the config file: --config, else SPARSIFY_CONFIG, else the configuration folder, else the data folder', { timeout: 60_000 }, () => {
  const t = tempDir();
  try {
    const etc = join(t.dir, 'etc');
    const data = join(t.dir, 'data');
    mkdirSync(etc);
    mkdirSync(data);
    const env = { SPARSIFY_CONFIG_DIR: etc, SPARSIFY_DATA_DIR: data };
    let r = resolveConfig({ flags: {}, env });
    assert.equal(r.configFile.path, undefined);
    assert.match(r.configFile.why, /none: no --config, SPARSIFY_CONFIG not set/);
    writePrivate(join(data, 'config.json'), '{"port": 9001}');
    r = resolveConfig({ flags: {}, env });
    assert.equal(r.configFile.path, join(data, 'config.json'));
    assert.equal(r.config.port, 9001);
    assert.equal(r.origins.get('port'), `config file ${join(data, 'config.json')}`);
    writePrivate(join(etc, 'config.json'), '{"port": 9002, "concurrency": 3}');
    r = resolveConfig({ flags: {}, env });
    assert.equal(r.configFile.path, join(etc, 'config.json'));
    assert.match(r.configFile.why, /configuration folder/);
    assert.deepEqual([r.config.port, r.config.concurrency], [9002, 3]);
    writePrivate(join(t.dir, 'env.json'), '{"port": 9003}');
    r = resolveConfig({ flags: {}, env: { ...env, SPARSIFY_CONFIG: join(t.dir, 'env.json') } });
    assert.deepEqual([r.config.port, r.origins.get('port')], [9003, `config file ${join(t.dir, 'env.json')}`]);
    writePrivate(join(t.dir, 'flag.json'), '{"port": 9004}');
    r = resolveConfig({ flags: { config: join(t.dir, 'flag.json') }, env: { ...env, SPARSIFY_CONFIG: join(t.dir, 'env.json'), SPARSIFY_CONCURRENCY: '2' } });
    assert.deepEqual([r.config.port, r.config.concurrency, r.origins.get('concurrency')], [9004, 2, 'environment SPARSIFY_CONCURRENCY']);
    // The data folder's own file cannot move the data folder.
    writePrivate(join(etc, 'config.json'), '{}');
    chmodSync(join(etc, 'config.json'), 0o600);
    writePrivate(join(data, 'config.json'), JSON.stringify({ dataDir: '/elsewhere' }));
    assert.throws(() => resolveConfig({ flags: { config: join(data, 'config.json') }, env }), /cannot move the data folder/);
  } finally {
    t.cleanup();
  }
});

it('refuses a config, keys or token file that others can read, saying how to fix it', { timeout: 60_000 }, () => {
  const t = tempDir();
  try {
    const file = join(t.dir, 'c.json');
    writeFileSync(file, '{"token": "secret-token-123"}');
    chmodSync(file, 0o644);
    assert.throws(
      () => loadConfig({ flags: { config: file }, env: {} }),
      (e: Error) => e instanceof ConfigError && e.message === `config file ${file} has mode 0644: it may hold the token, the database password or keys, and must be mode 0600 (chmod 600 ${file})`,
    );
    chmodSync(file, 0o640);
    assert.throws(() => loadConfig({ flags: { config: file }, env: {} }), /has mode 0640/);
    assert.throws(() => loadConfig({ flags: { config: t.dir }, env: {} }), /not a regular file/);
    assert.throws(() => loadConfig({ flags: { config: join(t.dir, 'absent.json') }, env: {} }), /cannot read it \(ENOENT\)/);
    chmodSync(file, 0o600);
    assert.equal(loadConfig({ flags: { config: file }, env: {} }).token, 'secret-token-123');
  } finally {
    t.cleanup();
  }
});

it('takes the LUKS keys file from the configuration folder, else the data folder', { timeout: 60_000 }, () => {
  const t = tempDir();
  try {
    const etc = join(t.dir, 'etc');
    const data = join(t.dir, 'data');
    mkdirSync(etc);
    mkdirSync(data);
    const env = { SPARSIFY_CONFIG_DIR: etc, SPARSIFY_DATA_DIR: data };
    assert.equal(resolveConfig({ flags: {}, env }).config.keysFile, undefined);
    writePrivate(join(data, 'luks-keys'), '{}');
    assert.equal(resolveConfig({ flags: {}, env }).config.keysFile, join(data, 'luks-keys'));
    writePrivate(join(etc, 'luks-keys'), '{}');
    const r = resolveConfig({ flags: {}, env });
    assert.equal(r.config.keysFile, join(etc, 'luks-keys'));
    assert.match(r.origins.get('keysFile')!, /configuration folder/);
    assert.equal(resolveConfig({ flags: { keysFile: join(t.dir, 'k') }, env }).config.keysFile, join(t.dir, 'k'));
  } finally {
    t.cleanup();
  }
});

it('logs JSON by default off a terminal and pretty on one; --log-format chooses', { timeout: 60_000 }, async () => {
  const { chooseLogFormat } = await import('../../src/service/logging.js');
  assert.equal(chooseLogFormat(undefined, false).format, 'json');
  assert.equal(chooseLogFormat(undefined, true).format, 'pretty');
  assert.equal(chooseLogFormat('json', true).format, 'json');
  assert.equal(loadConfig({ flags: { logFormat: 'pretty' }, env: {} }).logFormat, 'pretty');
  assert.equal(loadConfig({ flags: {}, env: { SPARSIFY_LOG_FORMAT: 'json' } }).logFormat, 'json');
  assert.throws(() => loadConfig({ flags: { logFormat: 'xml' }, env: {} }), /logFormat.*json, pretty|json, pretty/);
});

it('pretty log lines are short: time, level, message, the fields that matter; a request in one line', { timeout: 60_000 }, async () => {
  const { PrettyLog } = await import('../../src/service/log-pretty.js');
  const p = new PrettyLog(false);
  const time = new Date(2026, 0, 2, 14, 3, 7).getTime();
  const line = (o: Record<string, unknown>) => p.line(JSON.stringify({ level: 30, time, pid: 42, host: 'hv1', name: 'sparsify', ...o }));
  assert.equal(line({ msg: 'job finished', jobId: '3e756978-fece-46fd-855e-057b47fcf33c', disk: 'b.raw' }), '14:03:07 INFO  job finished job=3e756978 disk=b.raw\n');
  assert.equal(line({ msg: 'incoming request', reqId: 'req-1', req: { method: 'GET', url: '/api/disks', host: 'x', remoteAddress: '127.0.0.1' } }), '');
  assert.equal(line({ msg: 'request completed', reqId: 'req-1', res: { statusCode: 200 }, responseTime: 2.7 }), '14:03:07 INFO  GET /api/disks 200 3 ms\n');
  assert.equal(line({ level: 50, msg: 'an engine thread failed', err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at x' } }), '14:03:07 ERROR an engine thread failed error=boom\n');
  assert.match(line({ msg: 'x', result: { a: 'y'.repeat(200) } }), /result=\{"a":"y+…\n$/);
  assert.equal(p.line('not json'), 'not json\n');
  assert.match(new PrettyLog(true).line(JSON.stringify({ level: 40, time, msg: 'w' })), /\x1b\[33mWARN /);
});
