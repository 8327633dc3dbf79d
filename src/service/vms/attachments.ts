/**
 * Which VMs use which disk, across every host's report: read from the store, kept in memory, and
 * dropped when the bus says some host's VMs changed (or after a few seconds, in case that word was
 * lost). A disk is matched by its storage domain and its path inside it, the same on every host.
 */
import type { Bus } from '../bus.js';
import type { Store } from '../store/store.js';
import type { VmRecord, VmState } from '../store/vms.js';
import { isDown } from './virsh.js';

const MAX_AGE_MS = 5000;

/** A VM as a disk shows it. */
export interface VmRef {
  id: string;
  name: string;
  host: string;
  state: VmState;
  /** The guest's device name for this disk. */
  target: string;
}

export type VmIndex = ReadonlyMap<string, VmRef[]>;

const key = (domainId: string, rel: string): string => `${domainId}\u0000${rel}`;

export function indexVms(vms: readonly VmRecord[]): VmIndex {
  const m = new Map<string, VmRef[]>();
  for (const v of vms) {
    for (const d of v.disks) {
      if (!d.domainId || !d.rel) continue;
      const k = key(d.domainId, d.rel);
      const ref: VmRef = { id: v.uuid, name: v.name, host: v.host, state: v.state, target: d.target };
      const l = m.get(k);
      if (l) l.push(ref);
      else m.set(k, [ref]);
    }
  }
  return m;
}

/** The places in the domains of every disk these VMs use (each once). */
export function vmDiskPlaces(vms: readonly VmRecord[]): Array<{ domainId: string; rel: string }> {
  const seen = new Map<string, { domainId: string; rel: string }>();
  for (const v of vms) for (const d of v.disks) if (d.domainId && d.rel) seen.set(key(d.domainId, d.rel), { domainId: d.domainId, rel: d.rel });
  return [...seen.values()];
}

/** The places of the disks whose VMs pass `keep` (the index's keys read back). */
export function placesWhere(index: VmIndex, keep: (refs: readonly VmRef[]) => boolean): Array<{ domainId: string; rel: string }> {
  const out: Array<{ domainId: string; rel: string }> = [];
  for (const [k, refs] of index) {
    if (!keep(refs)) continue;
    const [domainId, rel] = k.split('\u0000') as [string, string];
    out.push({ domainId, rel });
  }
  return out;
}

/** The VMs that use a disk (by its domain and path). */
export function vmsOf(index: VmIndex, d: { domainId: string; rel: string }): VmRef[] {
  return index.get(key(d.domainId, d.rel)) ?? [];
}

/** Those of them that are not down: a disk they use must not be sparsified. */
export function activeVms(refs: readonly VmRef[]): VmRef[] {
  return refs.filter((v) => !isDown(v.state));
}

/** The VMs that are up and use disk `d`, read from the store now (a job's last check before it writes). */
export async function upVmsOf(store: Store, d: { domainId: string; rel: string }): Promise<VmRef[]> {
  return activeVms(vmsOf(indexVms(await store.vms.list()), d));
}

export class VmAttachments {
  private cache: { value: Promise<VmIndex>; at: number } | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly store: Store,
    bus: Bus,
  ) {
    this.unsubscribe = bus.subscribe((m) => {
      if (m.type === 'vms' || m.type === 'resync') this.cache = undefined;
    });
  }

  index(): Promise<VmIndex> {
    if (!this.cache || Date.now() - this.cache.at >= MAX_AGE_MS) {
      const value = this.store.vms.list().then(indexVms);
      value.catch(() => (this.cache = undefined));
      this.cache = { value, at: Date.now() };
    }
    return this.cache.value;
  }

  close(): void {
    this.unsubscribe();
  }
}
