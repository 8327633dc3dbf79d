/**
 * Every disk's view, kept in memory on each host and brought up to date by the bus: a disk that
 * changed here is read again on the next request (a client sees its own changes at once), one
 * that changed on another host within REMOTE_LAG_MS at most; only its view (and its backing
 * disk's, whose derived list may change) is rebuilt. Hosts or the policy changing rebuild every
 * view from the records in memory; a resync, or a minute gone by, reloads everything. So listing
 * 2,000 disks costs one cached string while nothing changes, and little more while jobs run on
 * every host.
 */
import { randomUUID } from 'node:crypto';
import type { Bus, BusMessage } from './bus.js';
import type { Store } from './store/store.js';
import type { DiskRecord } from './store/records.js';
import { diskView, derivedIndex, type DiskView, type ViewContext } from './views.js';
import { BlockedJson, type EncodedBody } from './list-body.js';

const FULL_RELOAD_MS = 60_000;
/**
 * The memory budget: a site with more present disks than this is not kept (records, views and
 * their JSON take some 8 KB a disk: 20,000 disks raised a host's peak RSS from ~250 to 426 MiB, so
 * the budget is some 40 MB); its whole list is streamed from the database instead (DiskList.stream).
 */
export const CATALOG_MAX_DISKS = Number(process.env['SPARSIFY_LIST_CACHE_DISKS'] ?? 5_000);
/** Changes made by other hosts are read at most this often: a busy cluster changes disks many times a second. */
const REMOTE_LAG_MS = 200;

type Context = Omit<ViewContext, 'derived'>;

export class DiskCatalog {
  private records = new Map<string, DiskRecord>();
  private readonly views = new Map<string, { view: DiskView; json: string }>();
  private readonly dirty = new Set<string>();
  private readonly dirtyRemote = new Set<string>();
  private loadedAt = 0;
  private updatedAt = 0;
  private reload = true;
  private rebuildAll = true;
  private readonly body = new BlockedJson('{"disks":[', ']}');
  private refreshing: Promise<void> | undefined;
  private again = false;
  private readonly unsubscribe: () => void;
  /** The site is over budget: nothing is kept until a full reload finds it within. */
  private over = false;
  private readonly tags = new WeakMap<EncodedBody, string>();
  private bodies = 0;
  private readonly instance = randomUUID().slice(0, 8);

  constructor(
    private readonly store: Store,
    bus: Bus,
    private readonly context: () => Promise<Context>,
  ) {
    this.unsubscribe = bus.subscribe((m, remote) => this.onMessage(m, remote));
  }

  private onMessage(m: BusMessage, remote: boolean): void {
    if (m.type === 'disk' || m.type === 'disk-removed') (remote ? this.dirtyRemote : this.dirty).add(m.id);
    else if (m.type === 'hosts' || m.type === 'domains' || m.type === 'policy' || m.type === 'vms') this.rebuildAll = true;
    else if (m.type === 'resync') this.reload = true;
  }

  /** `{"disks": [...]}` of all present disks, encoded once per change (only the changed disks' blocks); undefined over budget. */
  async listJson(): Promise<EncodedBody | undefined> {
    await this.refresh();
    if (this.over) return undefined;
    return this.body.encode((id) => this.views.get(id)!.json);
  }

  /**
   * The ETag of a body listJson gave: the body is made again whenever any view in it changed, so
   * its identity names its content (a count per body; hashing 1.5 MB per change cost a few ms a
   * request while jobs ran).
   */
  tagOf(body: EncodedBody): string {
    let t = this.tags.get(body);
    if (!t) {
      t = `"catalog-${this.instance}-${++this.bodies}"`;
      this.tags.set(body, t);
    }
    return t;
  }

  /**
   * One refresh at a time; callers arriving meanwhile wait for the next one, which sees their
   * changes. Other hosts' changes may be seen up to REMOTE_LAG_MS late anyway, so a request that
   * has only those to wait for is answered from what is kept while they are read.
   */
  private async refresh(): Promise<void> {
    const localDue = () => this.reload || this.rebuildAll || this.dirty.size > 0 || Date.now() - this.loadedAt >= FULL_RELOAD_MS;
    if (this.refreshing) {
      if (!localDue()) return;
      this.again = true;
      await this.refreshing.catch(() => undefined);
      if (!this.again) return;
    }
    const remoteDue = this.dirtyRemote.size > 0 && Date.now() - this.updatedAt >= REMOTE_LAG_MS;
    const local = localDue();
    if (!local && !remoteDue) return;
    this.again = false;
    this.refreshing = this.update().finally(() => (this.refreshing = undefined));
    if (local) return this.refreshing;
    // Read in the background; a failure (the database away) is met again by the next request.
    this.refreshing.catch(() => undefined);
  }

  private async update(): Promise<void> {
    try {
      await this.apply();
    } catch (e) {
      // The changes it took are not applied: read everything again next time.
      this.reload = true;
      throw e;
    }
  }

  private async apply(): Promise<void> {
    const full = this.reload || Date.now() - this.loadedAt >= FULL_RELOAD_MS;
    const changed = full ? [] : [...new Set([...this.dirty, ...this.dirtyRemote])];
    this.dirty.clear();
    this.dirtyRemote.clear();
    this.updatedAt = Date.now();
    let rebuild = this.rebuildAll || full;
    this.reload = false;
    this.rebuildAll = false;
    const ctx = await this.context();
    let touched = new Set<string>();
    if (full) {
      this.over = (await this.store.disks.countPresent()) > CATALOG_MAX_DISKS;
      if (this.over) {
        this.records = new Map();
        this.views.clear();
        this.body.reset([]);
        this.loadedAt = Date.now();
        return;
      }
      const all = await this.store.disks.list();
      this.records = new Map(all.map((d) => [d.id, d]));
      this.loadedAt = Date.now();
    } else if (this.over) {
      return;
    } else if (changed.length) {
      const fresh = new Map((await this.store.disks.getMany(changed)).map((d) => [d.id, d]));
      for (const id of changed) {
        const before = this.records.get(id);
        const after = fresh.get(id);
        // Its backing disk's derived list may change with it.
        if (before?.backingId) touched.add(before.backingId);
        if (after?.backingId) touched.add(after.backingId);
        touched.add(id);
        if (after && after.present) this.records.set(id, after);
        else this.records.delete(id);
      }
      // Keep the order of first sight.
      if ([...fresh.values()].some((d) => d.present && !this.views.has(d.id))) rebuild = true;
    }
    const v: ViewContext = { ...ctx, derived: derivedIndex([...this.records.values()]) };
    let members = rebuild;
    if (rebuild) {
      const sorted = [...this.records.values()].sort((a, b) => a.firstSeen - b.firstSeen || (a.id < b.id ? -1 : 1));
      this.views.clear();
      for (const d of sorted) this.put(d, v);
      touched = new Set();
    }
    for (const id of touched) {
      const d = this.records.get(id);
      if (d) {
        this.put(d, v);
        this.body.touch(id);
      } else members = this.views.delete(id) || members;
    }
    if (members) this.body.reset([...this.views.keys()]);
  }

  private put(d: DiskRecord, v: ViewContext): void {
    const view = diskView(d, v);
    this.views.set(d.id, { view, json: JSON.stringify(view) });
  }

  close(): void {
    this.unsubscribe();
  }
}
