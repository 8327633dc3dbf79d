/**
 * The systemd unit for `sparsify serve` (packaging/sparsify.service): systemd-analyze verify
 * accepts it (Debian's systemd package provides it even where systemd is not PID 1; the man pages
 * its Documentation= names are found in this tree's build), and it holds the hardening, the
 * environment file, the restart and the stop that the service's own settings need.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { haveTool, runStatus } from '../helpers/fixtures.js';
import { repoRoot } from '../service/service-helpers.js';
import { defaultConfig } from '../../src/service/config.js';

const UNIT = join(repoRoot, 'packaging', 'sparsify.service');

/** The unit's [Service] settings: each key with all its values, in order (a key may repeat). */
function serviceSettings(): Map<string, string[]> {
  const text = readFileSync(UNIT, 'utf8');
  const body = text.slice(text.indexOf('[Service]'), text.indexOf('[Install]'));
  const out = new Map<string, string[]>();
  for (const line of body.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

describe('the systemd unit', { timeout: 120_000 }, () => {
  it('systemd-analyze verify accepts it', { skip: haveTool('systemd-analyze') ? false : 'no systemd-analyze (apt-get install systemd)' }, () => {
    const r = runStatus('env', [`MANPATH=${join(repoRoot, 'dist', 'man')}`, 'systemd-analyze', 'verify', UNIT]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.equal(r.stdout + r.stderr, '', 'not a warning');
  });

  it('is hardened: its own user, a read-only system but for the data folder and domains, no capabilities', () => {
    const s = serviceSettings();
    const one = (k: string) => s.get(k)?.at(-1);
    assert.equal(one('User'), 'sparsify');
    assert.equal(one('NoNewPrivileges'), 'yes');
    assert.equal(one('ProtectSystem'), 'strict');
    assert.equal(one('ProtectHome'), 'yes');
    assert.equal(one('PrivateTmp'), 'yes');
    assert.equal(one('CapabilityBoundingSet'), '', 'no capability at all');
    const data = one('Environment')?.match(/^SPARSIFY_DATA_DIR=(.*)$/)?.[1];
    assert.ok(data, 'the data folder is set');
    assert.ok(s.get('ReadWritePaths')!.includes(data), 'the data folder is writable');
    assert.ok(s.get('ReadWritePaths')!.includes('-/var/lib/libvirt/images'), "libvirt's default pool, when present");
    assert.equal(one('SupplementaryGroups'), 'disk', 'block devices through their group');
  });

  it('takes the secrets from an environment file, restarts on failure, and stops cleanly within the shutdown timeout', () => {
    const s = serviceSettings();
    const one = (k: string) => s.get(k)?.at(-1);
    assert.equal(one('EnvironmentFile'), '-/etc/sparsify/sparsify.env');
    assert.equal(one('Restart'), 'on-failure');
    assert.equal(one('KillSignal'), 'SIGTERM');
    // The service exits at most 5 s after --shutdown-timeout: systemd must not kill it first.
    const stopSec = Number(/^(\d+)s?$/.exec(one('TimeoutStopSec') ?? '')?.[1]);
    assert.ok(stopSec > defaultConfig().shutdownTimeoutSeconds + 5, `TimeoutStopSec=${stopSec}`);
    assert.match(one('ExecStart') ?? '', /^\/usr\/bin\/env sparsify serve$/);
  });
});
