/** What GET /api/vms shows: every host's VMs, each with its disks and the disk records they are, and each host's libvirt connection. */
import type { DiskRecord } from '../store/records.js';
import type { VmInventoryRecord, VmRecord, VmState } from '../store/vms.js';
import { isDown } from './virsh.js';

export interface VmView {
  /** libvirt's UUID. */
  id: string;
  name: string;
  host: string;
  state: VmState;
  reason: string | null;
  /** Not shut off: its disks cannot be sparsified. */
  up: boolean;
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

export function vmViews(vms: readonly VmRecord[], inventories: readonly VmInventoryRecord[], disks: readonly DiskRecord[]): VmListView {
  const byPlace = new Map(disks.map((d) => [`${d.domainId}\u0000${d.rel}`, d.id]));
  return {
    vms: vms.map((v) => ({
      id: v.uuid,
      name: v.name,
      host: v.host,
      state: v.state,
      reason: v.reason,
      up: !isDown(v.state),
      disks: v.disks.map((d) => ({
        target: d.target,
        device: d.device,
        type: d.type,
        source: d.source,
        diskId: d.domainId && d.rel ? (byPlace.get(`${d.domainId}\u0000${d.rel}`) ?? null) : null,
        domainId: d.domainId,
        path: d.rel,
      })),
    })),
    sources: inventories.map((i) => ({ host: i.host, uri: i.uri, error: i.error, refreshedAt: i.refreshedAt, changedAt: i.changedAt })),
  };
}
