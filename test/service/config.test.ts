/** Service configuration: defaults, config file < environment < flags, and clear errors. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, ConfigError } from '../../src/service/config.js';
import { tempDir } from '../helpers/fixtures.js';

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
    writeFileSync(file, JSON.stringify({ port: 9000, host: '0.0.0.0', domains: ['/a', '/b'], thresholdPercent: 5, concurrency: 2 }));
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
    writeFileSync(file, '{"prot": 1}');
    assert.throws(() => loadConfig({ flags: { config: file }, env: {} }), /unknown setting 'prot'/);
    writeFileSync(file, '{nope');
    assert.throws(() => loadConfig({ flags: { config: file }, env: {} }), /config file/);
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
