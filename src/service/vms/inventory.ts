/**
 * This host's VMs: read from its own libvirt every `intervalSeconds` and on demand, their disks
 * matched by real path to the storage domains mounted here, and reported into the store, where
 * every host's validation finds them. A read that changes nothing writes only its time; one that
 * fails keeps the last VMs (they run on while libvirtd is away) and says why. When the VMs change,
 * the bus tells every host ('vms') and each disk whose VM changed ('disk').
 */
import { realpathSync } from 'node:fs';
import { relative, sep } from 'node:path';
import type { ServiceContext } from '../context.js';
import type { Mounts } from '../domains/mounts.js';
import type { VmDisk, VmRecord } from '../store/vms.js';
import { isUnavailable } from '../store/db.js';
import { readVms, type LibvirtVm, type LiveFacts } from './virsh.js';

export type VmReader = (uri: string) => Promise<LibvirtVm[]>;

export class VmInventory {
  private timer: NodeJS.Timeout | undefined;
  private reading: Promise<void> | undefined;
  private again = false;
  /** What was last written, to write only changes. */
  private last: { json: string; vms: VmRecord[] } | undefined;
  private lastError: string | null = null;
  /** When the last read began that succeeded. */
  private readAt = 0;
  /** The live XML's facts of this host's VMs at the last read (kept in memory: only this host can ask its libvirt). */
  private live = new Map<string, LiveFacts>();

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    /** The libvirt connection; undefined: this host reads no VMs. */
    readonly uri: string | undefined,
    private readonly intervalSeconds: number,
    /** Re-probe a disk now (its QEMU lock went or came with its VM). */
    private readonly refreshDisk: (id: string) => Promise<unknown>,
    private readonly read: VmReader = readVms,
  ) {}

  async start(): Promise<void> {
    if (!this.uri) {
      // This host may have read libvirt in an earlier run: its VMs are no longer known.
      if ((await this.ctx.store.vms.forgetHost(this.ctx.host)) > 0) this.ctx.bus.publish({ type: 'vms' });
      return;
    }
    await this.refresh();
    if (this.intervalSeconds > 0) this.timer = setInterval(() => void this.refresh(), this.intervalSeconds * 1000);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Read now; concurrent callers share one read (and one more if asked during it). Never throws. */
  refresh(): Promise<void> {
    if (!this.uri) return Promise.resolve();
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      try {
        do {
          this.again = false;
          await this.readOnce(this.uri!);
        } while (this.again);
      } finally {
        this.reading = undefined;
      }
    })();
    return this.reading;
  }

  /** Read again unless a read that began less than `maxAgeMs` ago succeeded (a burst of requests shares one read). */
  refreshIfOlder(maxAgeMs: number): Promise<void> {
    return Date.now() - this.readAt < maxAgeMs ? this.settled() : this.refresh();
  }

  /** The read under way, if any (without asking for another). */
  settled(): Promise<void> {
    return this.reading ?? Promise.resolve();
  }

  /** What the last read's live XML said of one of this host's VMs. */
  liveOf(uuid: string): LiveFacts | undefined {
    return this.live.get(uuid);
  }

  /** A disk source's storage domain and path inside it, when its real path lies in a domain reachable here. */
  private locate(source: string | null): Pick<VmDisk, 'domainId' | 'rel'> {
    if (!source) return { domainId: null, rel: null };
    let real: string;
    try {
      real = realpathSync(source);
    } catch {
      real = source;
    }
    for (const m of this.mounts.list()) {
      if (m.reachable && real.startsWith(m.root + sep)) return { domainId: m.id, rel: relative(m.root, real) };
    }
    return { domainId: null, rel: null };
  }

  private async readOnce(uri: string): Promise<void> {
    const { store, bus, log, host } = this.ctx;
    let found: LibvirtVm[];
    const began = Date.now();
    try {
      found = await this.read(uri);
      this.readAt = began;
    } catch (e) {
      const msg = (e as Error).message;
      if (msg !== this.lastError) log.warn(`VMs not read: ${msg}; the last known VMs of ${host} stay as they were`);
      this.lastError = msg;
      await store.vms.touch(host, uri, msg).catch(() => undefined);
      return;
    }
    this.live = new Map(found.flatMap((v) => (v.live ? [[v.uuid, v.live] as const] : [])));
    if (this.lastError) log.info(`VMs read from ${uri} again`);
    this.lastError = null;
    const vms: VmRecord[] = found.map((v) => ({
      host,
      uuid: v.uuid,
      name: v.name,
      state: v.state,
      reason: v.reason,
      disks: v.disks.map((d) => ({ target: d.target, device: d.device, type: d.type, source: d.source, ...(d.type === 'file' || d.type === 'block' ? this.locate(d.source) : { domainId: null, rel: null }) })),
    }));
    const json = JSON.stringify(vms);
    try {
      if (this.last?.json === json) {
        await store.vms.touch(host, uri, null);
        return;
      }
      await store.vms.replace(host, uri, vms);
    } catch (e) {
      if (!isUnavailable(e)) log.error(`VMs not stored: ${(e as Error).message}`);
      return;
    }
    const before = this.last?.vms ?? [];
    this.last = { json, vms };
    bus.publish({ type: 'vms' });
    await this.announceDisks(before, vms);
  }

  /**
   * Each disk whose VM came, went or changed state: its view changes (status, the Sparsify
   * button), and so may QEMU's lock on it, so it is probed again here (the VM's host reaches it).
   */
  private async announceDisks(before: VmRecord[], after: VmRecord[]): Promise<void> {
    const states = (list: VmRecord[]) => {
      const m = new Map<string, string>();
      for (const v of list) for (const d of v.disks) if (d.domainId && d.rel) m.set(`${d.domainId}\u0000${d.rel}`, `${m.get(`${d.domainId}\u0000${d.rel}`) ?? ''}${v.uuid}:${v.state};`);
      return m;
    };
    const a = states(before);
    const b = states(after);
    for (const key of new Set([...a.keys(), ...b.keys()])) {
      if (a.get(key) === b.get(key)) continue;
      const [domainId, rel] = key.split('\u0000') as [string, string];
      const disk = await this.ctx.store.disks.findAt(domainId, rel).catch(() => undefined);
      if (!disk) continue;
      await this.refreshDisk(disk.id).catch(() => undefined);
      this.ctx.bus.publish({ type: 'disk', id: disk.id });
    }
  }
}
