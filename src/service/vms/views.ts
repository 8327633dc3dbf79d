/** What GET /api/vms shows: every host's VMs, each with its disks and the disk records they are, and each host's libvirt connection. */
import type { DiskRecord } from '../store/records.js';
import type { VmInventoryRecord, VmRecord, VmState } from '../store/vms.js';
import { isDown, type LiveFacts } from './virsh.js';
import { diskRefusal, trimmable, vmRefusal } from './trim-checks.js';

export interface VmView {
  /** libvirt's UUID. */
  id: string;
  name: string;
  host: string;
  state: VmState;
  reason: string | null;
  /** Not shut off: its disks cannot be sparsified. */
  up: boolean;
  /** The guest agent's channel (live XML of the host that runs it): connected, disconnected, none; null when that host is not this one. */
  agent: LiveFacts['agent'] | null;
  /** Every writable disk passes discards through (discard='unmap'); null when unknown here. */
  discard: boolean | null;
  /** Can it be trimmed through its agent (a running VM's Trim button), and why not; null when not up. */
  trim: { allowed: boolean; code?: string; reason?: string } | null;
  disks: Array<{
    target: string;
    device: string;
    type: string;
    source: string | null;
    /** The disk of a storage domain this is, when it is one (GET /api/disks/{diskId}). */
    diskId: string | null;
    domainId: string | null;
    path: string | null;
  }>;
}

export interface VmListView {
  vms: VmView[];
  /** Each host's libvirt connection, when it last read it, and why the last read failed. */
  sources: Array<{ host: string; uri: string; error: string | null; refreshedAt: number; changedAt: number }>;
}

/** What this host knows beyond the store: its own VMs' live XML, and whether a disk's storage punches holes. */
export interface TrimFacts {
  host: string;
  liveOf(uuid: string): LiveFacts | undefined;
  canPunch(d: DiskRecord): boolean;
}

/** The Trim button's state, by the same checks a request makes (trim-checks.ts), the agent judged by its channel. */
function trimState(v: VmRecord, live: LiveFacts | undefined, disks: readonly DiskRecord[], facts: TrimFacts): VmView['trim'] {
  if (isDown(v.state)) return null;
  const early = vmRefusal(v, facts.host);
  // Another host's VM: a request is passed on to that host, which checks it against its live XML and agent.
  if (early?.code === 'vm-on-other-host') return { allowed: true, reason: `${v.name} runs on host ${v.host}: the request is passed on to it, which makes the checks and runs the trim` };
  if (early) return { allowed: false, code: early.code, reason: early.detail };
  if (!live) return { allowed: true };
  const byPlace = new Map(disks.map((d) => [`${d.domainId}\u0000${d.rel}`, d]));
  const managed = new Map<string, DiskRecord>();
  for (const d of v.disks) {
    const rec = d.source && d.domainId && d.rel ? byPlace.get(`${d.domainId}\u0000${d.rel}`) : undefined;
    if (rec) managed.set(d.source!, rec);
  }
  const r = diskRefusal(v.name, live.disks, managed, facts.canPunch);
  if (r) return { allowed: false, code: r.code, reason: r.detail };
  if (live.agent !== 'connected') return { allowed: false, code: 'agent-unavailable', reason: live.agent === 'none' ? `${v.name} has no guest agent channel (org.qemu.guest_agent.0): add one and install qemu-guest-agent in the guest` : `the guest agent of ${v.name} is not connected: start qemu-guest-agent in the guest` };
  return { allowed: true };
}

export function vmViews(vms: readonly VmRecord[], inventories: readonly VmInventoryRecord[], disks: readonly DiskRecord[], facts?: TrimFacts): VmListView {
  const byPlace = new Map(disks.map((d) => [`${d.domainId}\u0000${d.rel}`, d.id]));
  return {
    vms: vms.map((v) => {
      const live = facts && v.host === facts.host ? facts.liveOf(v.uuid) : undefined;
      return {
        id: v.uuid,
        name: v.name,
        host: v.host,
        state: v.state,
        reason: v.reason,
        up: !isDown(v.state),
        agent: live?.agent ?? null,
        discard: live ? live.disks.filter(trimmable).every((d) => d.discard === 'unmap') : null,
        trim: facts ? trimState(v, live, disks, facts) : null,
        disks: v.disks.map((d) => ({
          target: d.target,
          device: d.device,
          type: d.type,
          source: d.source,
          diskId: d.domainId && d.rel ? (byPlace.get(`${d.domainId}\u0000${d.rel}`) ?? null) : null,
          domainId: d.domainId,
          path: d.rel,
        })),
      };
    }),
    sources: inventories.map((i) => ({ host: i.host, uri: i.uri, error: i.error, refreshedAt: i.refreshedAt, changedAt: i.changedAt })),
  };
}
