/**
 * Reading virsh's output (the real libvirt is tested in vms.test.ts): states and their reasons,
 * migration, a path with spaces, an empty cdrom, and a VM that vanished between the two calls.
 * The text is as `virsh -q` prints it: its `echo` markers end without a newline.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseVms, stateOf, isDown } from '../../src/service/vms/virsh.js';

const info = (name: string, uuid: string, state: string) => `Id:             -\nName:           ${name}\nUUID:           ${uuid}\nOS Type:        hvm\nState:          ${state}\nPersistent:     yes\n`;
const A = '72ff4b9f-4586-4a4c-935d-c05a7d8d4c3f';
const B = 'c3fcddd6-3dae-4460-bf78-f44a3f3676df';
const C = '11111111-2222-3333-4444-555555555555';

describe('virsh output', { timeout: 10_000 }, () => {
  it('reads each VM’s name, state and disks from the markers', () => {
    const text =
      `@@info@@${info('web: one', A, 'paused')}@@state@@paused (migrating)\n@@disks@@ file   disk    vda   /srv/dom ain/web one.qcow2\n file   cdrom   hdc   -\n` +
      `@@info@@@@state@@@@disks@@` +
      `@@info@@${info('db', B, 'shut off')}@@state@@shut off (destroyed)\n@@disks@@ block  disk   sda   /dev/vg/db\n`;
    const vms = parseVms(text);
    assert.deepEqual(vms, [
      {
        uuid: A,
        name: 'web: one',
        state: 'migrating',
        reason: 'migrating',
        disks: [
          { type: 'file', device: 'disk', target: 'vda', source: '/srv/dom ain/web one.qcow2' },
          { type: 'file', device: 'cdrom', target: 'hdc', source: null },
        ],
      },
      { uuid: B, name: 'db', state: 'shut-off', reason: 'destroyed', disks: [{ type: 'block', device: 'disk', target: 'sda', source: '/dev/vg/db' }] },
    ]);
    assert.deepEqual(parseVms(`@@info@@${info('x', C, 'running')}@@state@@running (booted)\n@@disks@@`)[0]!.disks, []);
  });

  it('counts every state but shut off as up', () => {
    assert.equal(stateOf('running', 'booted'), 'running');
    assert.equal(stateOf('running', 'migration canceled'), 'running');
    assert.equal(stateOf('running', 'post-copy'), 'migrating');
    assert.equal(stateOf('in shutdown', null), 'shutting-down');
    assert.equal(stateOf('pmsuspended', 'unknown'), 'suspended');
    assert.equal(stateOf('something new', null), 'unknown');
    for (const s of ['running', 'paused', 'migrating', 'shutting-down', 'crashed', 'suspended', 'unknown'] as const) assert.equal(isDown(s), false, s);
    assert.equal(isDown('shut-off'), true);
  });
});
