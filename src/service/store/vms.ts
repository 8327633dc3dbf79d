/**
 * Virtual machines as each host reads them from its own libvirt: one row per (host, VM), written
 * whole by that host's inventory, and one row per host saying which connection it reads and
 * whether the last read worked. A host that cannot read libvirt keeps its last rows: VMs go on
 * running while libvirtd is down, so their last known state is the safe one to validate against.
 */
import type { Db } from './db.js';

/** libvirt's states, named for people; `migrating` is running or paused for a migration. */
export type VmState = 'running' | 'paused' | 'migrating' | 'shutting-down' | 'shut-off' | 'crashed' | 'suspended' | 'blocked' | 'idle' | 'unknown';

/** A disk a VM uses, as the host running it names it, and where it lies in a storage domain when it does. */
export interface VmDisk {
  /** The guest's device name (vda, sdb, hdc). */
  target: string;
  /** disk, cdrom, floppy, lun. */
  device: string;
  /** file, block, network, volume. */
  type: string;
  /** The source as libvirt has it (a path for files), or null when empty (a cdrom without media). */
  source: string | null;
  /** The file's storage domain and path inside it, when the real path lies in a domain mounted on the reporting host. */
  domainId: string | null;
  rel: string | null;
}

export interface VmRecord {
  /** The host whose libvirt runs (or defines) it. */
  host: string;
  /** libvirt's UUID of the VM. */
  uuid: string;
  name: string;
  state: VmState;
  /** libvirt's reason for the state (booted, user, migration...), when it gave one. */
  reason: string | null;
  disks: VmDisk[];
}

export interface VmInventoryRecord {
  host: string;
  /** The libvirt connection URI this host reads. */
  uri: string;
  /** Why the last read failed; null when it worked. */
  error: string | null;
  /** Last read attempt. */
  refreshedAt: number;
  /** Last time the VMs or their states changed. */
  changedAt: number;
}

type VmRow = { host: string; uuid: string; name: string; state: VmState; reason: string | null; disks: string };
type InventoryRow = { host: string; uri: string; error: string | null; refreshed_at: number; changed_at: number };

const decodeVm = (r: VmRow): VmRecord => ({ host: r.host, uuid: r.uuid, name: r.name, state: r.state, reason: r.reason, disks: JSON.parse(r.disks) as VmDisk[] });

export class Vms {
  constructor(private readonly db: Db) {}

  async list(): Promise<VmRecord[]> {
    return (await this.db.all<VmRow>('SELECT host, uuid, name, state, reason, disks FROM vms ORDER BY name, host, uuid')).map(decodeVm);
  }

  async inventories(): Promise<VmInventoryRecord[]> {
    return (await this.db.all<InventoryRow>('SELECT * FROM vm_inventories ORDER BY host')).map((r) => ({ host: r.host, uri: r.uri, error: r.error, refreshedAt: r.refreshed_at, changedAt: r.changed_at }));
  }

  /** Replace everything `host` reported with `vms` (a successful read), in one transaction. */
  async replace(host: string, uri: string, vms: readonly VmRecord[], at = Date.now()): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run('DELETE FROM vms WHERE host = ?', [host]);
      for (const v of vms) {
        await tx.run('INSERT INTO vms (host, uuid, name, state, reason, disks) VALUES (?, ?, ?, ?, ?, ?)', [host, v.uuid, v.name, v.state, v.reason, JSON.stringify(v.disks)]);
      }
      await this.putInventory(tx, { host, uri, error: null, refreshedAt: at, changedAt: at });
    });
  }

  /** A read that found nothing new, or that failed (`error`): the VMs stay as they were. */
  async touch(host: string, uri: string, error: string | null, at = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO vm_inventories (host, uri, error, refreshed_at, changed_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (host) DO UPDATE SET uri = excluded.uri, error = excluded.error, refreshed_at = excluded.refreshed_at`,
      [host, uri, error, at, at],
    );
  }

  private async putInventory(db: Db, i: VmInventoryRecord): Promise<void> {
    await db.run(
      `INSERT INTO vm_inventories (host, uri, error, refreshed_at, changed_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (host) DO UPDATE SET uri = excluded.uri, error = excluded.error, refreshed_at = excluded.refreshed_at, changed_at = excluded.changed_at`,
      [i.host, i.uri, i.error, i.refreshedAt, i.changedAt],
    );
  }

  /** The host reads no libvirt (any more), or was retired: its VMs are forgotten. */
  async forgetHost(host: string): Promise<number> {
    return this.db.transaction(async (tx) => {
      const n = await tx.run('DELETE FROM vms WHERE host = ?', [host]);
      await tx.run('DELETE FROM vm_inventories WHERE host = ?', [host]);
      return n;
    });
  }
}
