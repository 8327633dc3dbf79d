/**
 * The rows of the disk table, loaded page by page from the server as the table scrolls. A new sort
 * or filter starts over from the first page; an answer for an older query is dropped (a generation
 * counter), so rows of two orders never mix. Relies on the server's cursors: `next` continues the
 * same sort and filters, null on the last page.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { ApiError, type Disk } from './api';
import { diskApi, PAGE_SIZE, type DiskQuery } from './api-disks';
/** The server answers at most this many rows at once. */
const MAX_LIMIT = 1000;

export interface DiskPages {
  rows: Disk[];
  /** More pages after the loaded rows. */
  more: boolean;
  loading: boolean;
  error: string | null;
  /** Ask for the next page (no-op while one is on its way or after the last). */
  loadMore: () => void;
  /** Ask again for the page that failed. */
  retry: () => void;
  /** Read the loaded rows again from the first page (settings changed what every row says). */
  refresh: () => void;
  /** A disk's new view, from the live stream: replaces its row where it is loaded. */
  patch: (d: Disk) => void;
  remove: (id: string) => void;
}

export function useDiskPages(query: DiskQuery): DiskPages {
  const [rows, setRows] = useState<Disk[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const gen = useRef(0);
  const busy = useRef(false);
  const state = useRef({ rows, next });
  state.current = { rows, next };

  const load = useCallback(
    async (after: string | null, limit: number, replace: boolean) => {
      const mine = ++gen.current;
      busy.current = true;
      setLoading(true);
      try {
        const page = await diskApi.page(query, limit, after);
        if (mine !== gen.current) return;
        setError(null);
        setNext(page.next);
        setRows((old) => {
          if (replace) return page.disks;
          const have = new Set(old.map((d) => d.id));
          return [...old, ...page.disks.filter((d) => !have.has(d.id))];
        });
      } catch (e) {
        if (mine !== gen.current) return;
        // A cursor kept too long (or from before an upgrade): read the loaded rows again from the top.
        if (after && e instanceof ApiError && (e.code === 'cursor-expired' || e.code === 'bad-cursor')) {
          busy.current = false;
          void load(null, Math.min(MAX_LIMIT, state.current.rows.length + PAGE_SIZE), true);
          return;
        }
        setError((e as Error).message);
      } finally {
        if (mine === gen.current) {
          busy.current = false;
          setLoading(false);
        }
      }
    },
    [query],
  );

  // A new sort or filter: the first page of the new order.
  useEffect(() => {
    setRows([]);
    setNext(null);
    void load(null, PAGE_SIZE, true);
  }, [load]);

  const loadMore = useCallback(() => {
    const { next: after } = state.current;
    if (busy.current || !after) return;
    void load(after, PAGE_SIZE, false);
  }, [load]);

  const retry = useCallback(() => {
    const { rows: loaded, next: after } = state.current;
    if (loaded.length && after) void load(after, PAGE_SIZE, false);
    else void load(null, Math.min(MAX_LIMIT, Math.max(PAGE_SIZE, loaded.length)), true);
  }, [load]);

  const refresh = useCallback(() => {
    const limit = Math.min(MAX_LIMIT, Math.max(PAGE_SIZE, state.current.rows.length));
    void load(null, limit, true);
  }, [load]);

  const patch = useCallback((d: Disk) => setRows((old) => (old.some((x) => x.id === d.id) ? old.map((x) => (x.id === d.id ? d : x)) : old)), []);
  const remove = useCallback((id: string) => setRows((old) => (old.some((x) => x.id === id) ? old.filter((x) => x.id !== id) : old)), []);

  return { rows, more: next !== null, loading, error, loadMore, retry, refresh, patch, remove };
}
