/**
 * Can this running VM be trimmed through its guest agent? First failure wins, each with a stable
 * code and a reason the UI shows where the Trim button is:
 *   1. the VM is known                                         404 vm-not-found
 *   2. its libvirt is this host's (the job runs where the VM does) 409 vm-on-other-host
 *   3. it is not migrating                                     409 vm-migrating
 *   4. it is running (not paused, suspended, shut off)         409 vm-not-running
 *   5. every writable disk's live driver has discard='unmap'   409 discard-not-enabled
 *      (QEMU's default, 'ignore', stops a guest's discards at QEMU: the host gets nothing back)
 *   6. every writable disk's format turns discards into holes  400 format-cannot-discard
 *      (raw, qcow2)
 *   7. its storage punches holes (the storage domain's probe)  400 storage-cannot-punch
 *   8. some disk lies in a storage domain (its lock is the job's) 409 vm-disks-unmanaged
 *   9. the guest agent answers guest-ping within its bound     409 agent-unavailable
 *  10. no job holds one of its disks (a sparsify of the disk,
 *      another trim of the VM)                                 409 disk-locked (in the job's transaction)
 * Steps 1-4 need only the inventory; 5-9 the live XML and the agent, asked on the VM's host.
 */
import type { DiskRecord } from '../store/records.js';
import type { VmRecord } from '../store/vms.js';
import type { Refusal } from '../jobs/validate.js';
import type { LiveDisk } from './agent.js';

/** Formats whose QEMU driver turns a guest's discards into holes (or unallocated clusters) in the image file. */
export const TRIM_FORMATS = ['raw', 'qcow2'];

/** Disks the guest can write (and so trim): not cdroms or floppies, not read-only. */
export const trimmable = (d: Pick<LiveDisk, 'device' | 'readonly'>): boolean => d.device === 'disk' && !d.readonly;

/** Checks 1-4: what the stored inventory says. */
export function vmRefusal(vm: VmRecord | undefined, host: string): Refusal | undefined {
  if (!vm) return { status: 404, code: 'vm-not-found', detail: 'no VM with this UUID is known to any host' };
  if (vm.host !== host) return { status: 409, code: 'vm-on-other-host', detail: `${vm.name} runs on host ${vm.host}: ask that host's API to trim it (the guest agent is reached through the libvirt that runs the VM)` };
  if (vm.state === 'migrating') return { status: 409, code: 'vm-migrating', detail: `${vm.name} is migrating (${vm.reason ?? 'migration'}); trim it once it runs on its new host` };
  if (vm.state !== 'running') return { status: 409, code: 'vm-not-running', detail: `${vm.name} is ${vm.state}${vm.reason ? ` (${vm.reason})` : ''}: only a running guest can trim itself; a VM that is shut off is sparsified instead` };
  return undefined;
}

/** Checks 5-8: the live XML's disks, the disk records of the storage domains, and whether each domain punches holes (8 only when `requireManaged`: the CLI locks nothing). */
export function diskRefusal(vmName: string, live: readonly LiveDisk[], managed: ReadonlyMap<string, DiskRecord>, canPunch: (d: DiskRecord) => boolean, requireManaged = true): Refusal | undefined {
  const disks = live.filter(trimmable);
  if (!disks.length) return { status: 409, code: 'vm-disks-unmanaged', detail: `${vmName} has no writable disk` };
  for (const d of disks) {
    if (d.discard !== 'unmap')
      return {
        status: 409,
        code: 'discard-not-enabled',
        detail: `disk ${d.target} of ${vmName} does not pass discards through (its <driver> has ${d.discard ? `discard='${d.discard}'` : 'no discard attribute'}): the guest's trim would stop at QEMU and the host get nothing back. Fix: add discard='unmap' to the disk's <driver> (virsh edit ${vmName}) and restart the VM`,
      };
  }
  for (const d of disks) {
    if (!d.format || !TRIM_FORMATS.includes(d.format)) return { status: 400, code: 'format-cannot-discard', detail: `disk ${d.target} of ${vmName} is ${d.format ?? 'of no stated format'}: only raw and qcow2 turn a guest's discards into holes` };
  }
  for (const d of disks) {
    const rec = d.source ? managed.get(d.source) : undefined;
    if (rec && !canPunch(rec)) return { status: 400, code: 'storage-cannot-punch', detail: `disk ${d.target} of ${vmName} (${rec.name}) lies on storage that cannot punch holes: a trim would give nothing back` };
  }
  if (requireManaged && !disks.some((d) => d.source && managed.has(d.source))) return { status: 409, code: 'vm-disks-unmanaged', detail: `no disk of ${vmName} lies in a storage domain of this service: a trim job locks its disks there` };
  return undefined;
}

/** Check 9's refusal, from the agent's failure. */
export function agentRefusal(vmName: string, why: string): Refusal {
  return { status: 409, code: 'agent-unavailable', detail: `the guest agent of ${vmName} does not answer (${why}): the guest needs qemu-guest-agent running and a virtio-serial channel org.qemu.guest_agent.0` };
}
