/**
 * Trim's preconditions without a VM (the real guest is in trim.test.ts): the live XML's disks and
 * agent channel as libvirt writes them, and each refusal's code in the order the checks run.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseLiveDisks } from '../../src/service/vms/agent.js';
import { agentChannel } from '../../src/service/vms/virsh.js';
import { diskRefusal, vmRefusal } from '../../src/service/vms/trim-checks.js';
import type { DiskRecord } from '../../src/service/store/records.js';
import type { VmRecord } from '../../src/service/store/vms.js';

const xml = (discard: string, format = 'qcow2', agent = "<target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>") => `<domain type='qemu' id='3'>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='${format}'${discard}/>
      <source file='/srv/dom/a b.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/channel/3-x/org.qemu.guest_agent.0'/>
      ${agent}
    </channel>
  </devices>
</domain>`;

const vm = (state: VmRecord['state'], host = 'h1'): VmRecord => ({ host, uuid: '72ff4b9f-4586-4a4c-935d-c05a7d8d4c3f', name: 'web', state, reason: null, disks: [] });
const rec = { id: 'd1', name: 'a b.qcow2', domainId: 'dom' } as DiskRecord;

describe('trim preconditions', { timeout: 10_000 }, () => {
  it('reads each disk’s driver, source and read-only flag, and the agent channel’s state', () => {
    const disks = parseLiveDisks(xml(" discard='unmap'"));
    assert.deepEqual(disks, [
      { target: 'vda', device: 'disk', type: 'file', format: 'qcow2', discard: 'unmap', source: '/srv/dom/a b.qcow2', readonly: false },
      { target: 'hdc', device: 'cdrom', type: 'file', format: 'raw', discard: null, source: null, readonly: true },
    ]);
    assert.equal(agentChannel(xml('')), 'connected');
    assert.equal(agentChannel(xml('', 'qcow2', "<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>")), 'disconnected');
    assert.equal(agentChannel(xml('', 'qcow2', '')), 'none');
  });

  it('refuses in order: unknown, other host, migrating, not running', () => {
    assert.equal(vmRefusal(undefined, 'h1')?.code, 'vm-not-found');
    assert.equal(vmRefusal(vm('running', 'h2'), 'h1')?.code, 'vm-on-other-host');
    assert.equal(vmRefusal(vm('migrating'), 'h1')?.code, 'vm-migrating');
    for (const s of ['paused', 'suspended', 'shut-off'] as const) assert.equal(vmRefusal(vm(s), 'h1')?.code, 'vm-not-running');
    assert.equal(vmRefusal(vm('running'), 'h1'), undefined);
  });

  it('refuses a disk without discard=unmap (saying how to fix it), a format that cannot discard, storage that cannot punch, no managed disk', () => {
    const managed = new Map([['/srv/dom/a b.qcow2', rec]]);
    const none = diskRefusal('web', parseLiveDisks(xml('')), managed, () => true);
    assert.equal(none?.code, 'discard-not-enabled');
    assert.match(none!.detail, /discard='unmap'.*virsh edit web/);
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='ignore'")), managed, () => true)?.code, 'discard-not-enabled');
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='unmap'", 'vmdk')), managed, () => true)?.code, 'format-cannot-discard');
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='unmap'")), managed, () => false)?.code, 'storage-cannot-punch');
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='unmap'")), new Map(), () => true)?.code, 'vm-disks-unmanaged');
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='unmap'")), new Map(), () => true, false), undefined);
    assert.equal(diskRefusal('web', parseLiveDisks(xml(" discard='unmap'")), managed, () => true), undefined);
  });
});
