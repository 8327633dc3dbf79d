/**
 * The disk list as pages, streams and totals, read from the database per request: what it costs
 * grows with the page asked for, not with the site. A page's views are built from its records,
 * the disks derived from them (one indexed query) and what the cluster knows (domains reached,
 * the policy, the VMs); the cursor carries the sort and where the page ended.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Store } from './store/store.js';
import type { Bus } from './bus.js';
import type { PolicyConfig } from './config.js';
import type { SparsifyMode } from './store/records.js';
import { SORT_FIELDS, type After, type ListFilter, type ListOverlay, type ListStatus, type Sort, type SortField, type SummaryRow, type Totals } from './store/disk-pages.js';
import { CURSOR_TTL_MS, CursorTooOld } from './store/list-moves.js';
import { diskView, derivedIndex, type DiskView, type DomainState } from './views.js';
import { activeVms, placesWhere, type VmIndex } from './vms/attachments.js';

export const STATUSES: readonly ListStatus[] = ['ok', 'locked', 'in-use', 'illegal', 'unreachable'];
export const MAX_PAGE = 1000;
/** Rows read at a time while the whole list is streamed. */
const STREAM_CHUNK = 500;
/** Totals are made again at most this often while disks keep changing. */
const SUMMARY_MAX_AGE_MS = 1000;
/** How often moves older than any live cursor are deleted (by whichever host serves pages). */
const PRUNE_EVERY_MS = 5 * 60_000;

export interface ListContext {
  policy: PolicyConfig;
  domains: Map<string, DomainState>;
  defaultMode: SparsifyMode;
  vms: VmIndex;
}

/** The query string of GET /api/disks. */
export interface ListParams {
  /** Digits, 1 to MAX_PAGE. */
  limit?: string;
  after?: string;
  sort?: string;
  domain?: string;
  status?: string;
  vm?: string;
  needsSparsify?: string;
  q?: string;
}

/** A request the list cannot answer: 400 with this code. */
export class ListRequestError extends Error {
  constructor(
    readonly code: 'bad-sort' | 'bad-cursor' | 'bad-status' | 'bad-limit' | 'cursor-expired',
    message: string,
  ) {
    super(message);
  }
}

export interface Summary extends Totals {
  analysis: { done: number; pending: number; failed: number };
  byStatus: Record<ListStatus, Totals>;
  byDomain: Array<Totals & { domainId: string; name: string }>;
}

const zero = (): Totals => ({ disks: 0, virtualBytes: 0, actualBytes: 0, reclaimableBytes: 0, needsSparsify: 0 });
function add(t: Totals, r: Totals): void {
  t.disks += r.disks;
  t.virtualBytes += r.virtualBytes;
  t.actualBytes += r.actualBytes;
  t.reclaimableBytes += r.reclaimableBytes;
  t.needsSparsify += r.needsSparsify;
}

export function parseSort(s: string | undefined, fallback: Sort): Sort {
  if (!s) return fallback;
  const [field, dir = 'asc'] = s.split(':');
  if (!SORT_FIELDS.includes(field as SortField) || (dir !== 'asc' && dir !== 'desc')) {
    throw new ListRequestError('bad-sort', `sort must be one of ${SORT_FIELDS.join(', ')}, with :asc or :desc (got "${s}")`);
  }
  return { field: field as SortField, desc: dir === 'desc' };
}

const sortText = (s: Sort) => `${s.field}:${s.desc ? 'desc' : 'asc'}`;

/**
 * A cursor: the sort, where the page ended, the first page's mark and the minute it was read (to the
 * minute, so the same page read again is the same body, and keeps its ETag).
 */
export function encodeCursor(sort: Sort, after: After & { mark: string }, issuedAt = Math.floor(Date.now() / 60_000) * 60_000): string {
  return Buffer.from(JSON.stringify([sortText(sort), after.value, after.id, after.mark, issuedAt])).toString('base64url');
}

export interface Cursor {
  after: After & { mark: string };
  /** When its first page was read. */
  issuedAt: number;
}

export function decodeCursor(c: string, sort: Sort, validMark: (mark: string) => boolean, now = Date.now()): Cursor {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(c, 'base64url').toString('utf8'));
  } catch {
    v = undefined;
  }
  const bad = () => new ListRequestError('bad-cursor', 'the cursor (after) is not one this service gave');
  if (!Array.isArray(v) || v.length !== 5) throw bad();
  const [sorted, value, id, mark, issuedAt] = v as unknown[];
  if (typeof sorted !== 'string' || (typeof value !== 'string' && typeof value !== 'number') || typeof id !== 'string') throw bad();
  if (typeof mark !== 'string' || !validMark(mark) || typeof issuedAt !== 'number' || !Number.isFinite(issuedAt)) throw bad();
  if (sorted !== sortText(sort)) throw new ListRequestError('bad-cursor', `the cursor belongs to sort ${sorted}, not ${sortText(sort)}: start again without it`);
  // Older than this, the changes that place its disks may have been forgotten.
  if (now - issuedAt > CURSOR_TTL_MS) throw new ListRequestError('cursor-expired', `the cursor is older than ${CURSOR_TTL_MS / 60_000} minutes: start again from the first page`);
  return { after: { value, id, mark }, issuedAt };
}

export class DiskList {
  /** Which disks the VMs that are not down use, per VM index read. */
  private readonly busy = new WeakMap<VmIndex, Promise<string[]>>();
  /** Changes this host has heard of (every host's, through the bus): a streamed list's version. */
  private generation = 0;
  private readonly instance = randomUUID().slice(0, 8);
  private readonly pruning: NodeJS.Timeout;
  private summaryCache: { value: Promise<Summary>; at: number; dirty: boolean } | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly store: Store,
    bus: Bus,
    private readonly context: () => Promise<ListContext>,
  ) {
    // The moves no live cursor can need are forgotten now and then (by every host: deleting twice is harmless).
    this.pruning = setInterval(() => void store.diskPages.pruneMoves().catch(() => undefined), PRUNE_EVERY_MS).unref();
    this.unsubscribe = bus.subscribe((m) => {
      if (m.type === 'progress' || m.type === 'job' || m.type === 'event') return;
      this.generation++;
      if (this.summaryCache) this.summaryCache.dirty = true;
    });
  }

  private vmBusy(vms: VmIndex): Promise<string[]> {
    let p = this.busy.get(vms);
    if (!p) {
      const places = placesWhere(vms, (refs) => activeVms(refs).length > 0);
      p = this.store.disks.atPlaces(places).then((ds) => ds.map((d) => d.id));
      this.busy.set(vms, p);
    }
    return p;
  }

  private async overlay(ctx: ListContext): Promise<ListOverlay> {
    const unreachable = [...ctx.domains.values()].filter((d) => !d.reachable).map((d) => d.id);
    return { unreachable, vmBusy: await this.vmBusy(ctx.vms), thresholdBytes: ctx.policy.thresholdBytes, thresholdPercent: ctx.policy.thresholdPercent };
  }

  private async filter(p: ListParams, ctx: ListContext): Promise<ListFilter> {
    const f: ListFilter = {};
    if (p.domain) f.domainId = p.domain;
    if (p.status) {
      if (!STATUSES.includes(p.status as ListStatus)) throw new ListRequestError('bad-status', `status must be one of ${STATUSES.join(', ')}`);
      f.status = p.status as ListStatus;
    }
    if (p.needsSparsify) f.needsSparsify = p.needsSparsify === 'true';
    if (p.q) f.q = p.q;
    if (p.vm) {
      const places = placesWhere(ctx.vms, (refs) => refs.some((r) => r.id === p.vm || r.name === p.vm));
      f.ids = await this.store.disks.atPlaces(places).then((ds) => ds.map((d) => d.id));
    }
    return f;
  }

  private async views(records: Parameters<typeof diskView>[0][], ctx: ListContext): Promise<DiskView[]> {
    const derived = derivedIndex(await this.store.diskPages.derivedOf(records.map((r) => r.id)));
    const v = { ...ctx, derived };
    return records.map((r) => diskView(r, v));
  }

  /** One page: `limit` views after the cursor, and the cursor of the next page (null on the last). */
  async page(p: ListParams): Promise<{ disks: DiskView[]; next: string | null }> {
    const sort = parseSort(p.sort, { field: 'name', desc: false });
    const cursor = p.after ? decodeCursor(p.after, sort, (m) => this.store.diskPages.validMark(m)) : undefined;
    const limit = Number(p.limit ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) throw new ListRequestError('bad-limit', `limit must be 1 to ${MAX_PAGE}`);
    const ctx = await this.context();
    const [f, o] = await Promise.all([this.filter(p, ctx), this.overlay(ctx)]);
    // One more than asked tells whether a next page exists.
    const { rows, mark } = await this.store.diskPages.page(f, o, sort, cursor?.after, limit + 1).catch((e: unknown) => {
      throw e instanceof CursorTooOld ? new ListRequestError('cursor-expired', `${e.message}: start again from the first page`) : e;
    });
    const shown = rows.slice(0, limit);
    const last = shown[shown.length - 1];
    return {
      disks: await this.views(
        shown.map((r) => r.record),
        ctx,
      ),
      next: rows.length > limit && last && mark !== null ? encodeCursor(sort, { value: last.sortValue, id: last.record.id, mark }, cursor?.issuedAt) : null,
    };
  }

  /** The whole filtered list in chunks (first seen first unless sorted), read as it is sent. */
  async *stream(p: Omit<ListParams, 'limit' | 'after'>): AsyncGenerator<DiskView[]> {
    const sort = parseSort(p.sort, { field: 'seen', desc: false });
    const ctx = await this.context();
    const [f, o] = await Promise.all([this.filter(p, ctx), this.overlay(ctx)]);
    for await (const records of this.store.diskPages.chunks(f, o, sort, STREAM_CHUNK)) yield await this.views(records, ctx);
  }

  /**
   * The ETag of a whole list before it is read: what this host has heard change, and the minute
   * (a word lost on the bus costs at most a minute of a stale 304).
   */
  streamTag(url: string): string {
    const q = createHash('sha1').update(url).digest('base64url').slice(0, 12);
    return `W/"${this.instance}.${this.generation}.${Math.floor(Date.now() / 60_000)}.${q}"`;
  }

  /** Counts and byte totals per domain and status, made again at most once a second while disks change. */
  summary(): Promise<Summary> {
    const c = this.summaryCache;
    if (!c || (c.dirty && Date.now() - c.at >= SUMMARY_MAX_AGE_MS)) {
      const value = this.makeSummary();
      value.catch(() => (this.summaryCache = undefined));
      this.summaryCache = { value, at: Date.now(), dirty: false };
    }
    return this.summaryCache!.value;
  }

  private async makeSummary(): Promise<Summary> {
    const ctx = await this.context();
    const rows: SummaryRow[] = await this.store.diskPages.summary(await this.overlay(ctx));
    const s: Summary = { ...zero(), analysis: { done: 0, pending: 0, failed: 0 }, byStatus: Object.fromEntries(STATUSES.map((st) => [st, zero()])) as Record<ListStatus, Totals>, byDomain: [] };
    const domains = new Map<string, Totals & { domainId: string; name: string }>();
    for (const r of rows) {
      add(s, r);
      add(s.byStatus[r.status], r);
      s.analysis[r.analysis] += r.disks;
      let d = domains.get(r.domainId);
      if (!d) domains.set(r.domainId, (d = { domainId: r.domainId, name: ctx.domains.get(r.domainId)?.name ?? r.domainId, ...zero() }));
      add(d, r);
    }
    s.byDomain = [...domains.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return s;
  }

  close(): void {
    clearInterval(this.pruning);
    this.unsubscribe();
  }
}
