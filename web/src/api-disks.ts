/**
 * The disk list as the server pages it (issue 21's contract): `GET /api/disks?limit=N&after=CURSOR`
 * gives one page and the cursor of the next (`next`, null on the last page) for one sort and one set
 * of filters; ties are broken by disk id on the server; `GET /api/summary` gives the totals.
 */
import { call, type Disk, type DiskStatus } from './api';

/** The fields the server sorts on. */
export type SortField = 'name' | 'actualSize' | 'virtualSize' | 'reclaimable' | 'status';

export interface DiskQuery {
  sort: SortField;
  dir: 'asc' | 'desc';
  q: string;
  status: '' | DiskStatus;
  domain: string;
  needsSparsify: boolean;
}

export const DEFAULT_QUERY: DiskQuery = { sort: 'name', dir: 'asc', q: '', status: '', domain: '', needsSparsify: false };

export interface Totals {
  disks: number;
  virtualBytes: number;
  actualBytes: number;
  reclaimableBytes: number;
  needsSparsify: number;
}

export interface Summary extends Totals {
  byStatus: Partial<Record<DiskStatus, Totals>>;
  byDomain: Array<Totals & { domainId: string; name: string }>;
}

export interface DiskPage {
  disks: Disk[];
  next: string | null;
}

/** The query string of one page: only the filters that are set, so equal queries give equal URLs (and ETags). */
export function pageUrl(q: DiskQuery, limit: number, after: string | null): string {
  const p = new URLSearchParams();
  p.set('limit', String(limit));
  if (after) p.set('after', after);
  p.set('sort', `${q.sort}:${q.dir}`);
  if (q.q.trim()) p.set('q', q.q.trim());
  if (q.status) p.set('status', q.status);
  if (q.domain) p.set('domain', q.domain);
  if (q.needsSparsify) p.set('needsSparsify', 'true');
  return `/api/disks?${p.toString()}`;
}

/** Rows per request: a screen or two of rows, a small answer. */
export const PAGE_SIZE = 150;

const fetchPage = (url: string) => call<DiskPage>('GET', url).then((r) => ({ disks: r.disks, next: r.next ?? null }));

/** The first page, asked for as soon as the script runs (before React renders), taken once by the table. */
let early: { url: string; answer: Promise<DiskPage> } | null = null;

export function prefetchFirstPage(): void {
  const url = pageUrl(DEFAULT_QUERY, PAGE_SIZE, null);
  const answer = fetchPage(url);
  // A failure is the table's to show, when it takes the answer.
  answer.catch(() => undefined);
  early = { url, answer };
}

export const diskApi = {
  page: (q: DiskQuery, limit: number, after: string | null) => {
    const url = pageUrl(q, limit, after);
    if (early?.url === url) {
      const { answer } = early;
      early = null;
      return answer;
    }
    return fetchPage(url);
  },
  summary: () => call<{ summary: Summary }>('GET', '/api/summary').then((r) => r.summary),
  /** One disk (for the VM view and the details pane, which show disks the table may not hold). */
  one: (id: string) => call<{ disk: Disk }>('GET', `/api/disks/${encodeURIComponent(id)}`).then((r) => r.disk),
};
