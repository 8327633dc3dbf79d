/**
 * The disk table, virtualized: only the rows in view plus an overscan are in the DOM, measured as
 * they render (rows differ in height), between two spacer rows that keep the scroll height. Rows
 * come page by page from the server (useDiskPages): nearing the last loaded row asks for the next
 * page. Column headers sort on the server, so only the fields it sorts on are buttons.
 */
import { useEffect, useRef } from 'react';
import { useVirtualizer } from '@tanstack/react-virtual';
import type { Disk, Job } from './api';
import type { DiskQuery, SortField } from './api-disks';
import { DiskRow } from './DiskRow';

const COLUMNS: Array<{ label: string; sort?: SortField; num?: boolean }> = [
  { label: 'Name', sort: 'name' },
  { label: 'Format' },
  { label: 'Virtual size', sort: 'virtualSize', num: true },
  { label: 'Actual size', sort: 'actualSize', num: true },
  { label: 'Reclaimable', sort: 'reclaimable', num: true },
  { label: 'Status', sort: 'status' },
];

/** A first guess of a row's height before it is measured. */
const ROW_ESTIMATE = 64;
const OVERSCAN = 10;
/** Ask for the next page this many rows before the last loaded one comes into view. */
const PREFETCH_ROWS = 40;

export function DisksTable(props: {
  disks: Disk[];
  more: boolean;
  loading: boolean;
  error: string | null;
  activeJobs: Map<string, Job>;
  selected: Set<string>;
  query: DiskQuery;
  onSort: (k: SortField) => void;
  onLoadMore: () => void;
  /** Ask again after a failed page. */
  onRetry: () => void;
  /** The disks whose rows are rendered now (the live stream follows them). */
  onShown: (ids: string[]) => void;
  onToggle: (id: string) => void;
  onToggleAll: (ids: string[]) => void;
  onSparsify: (d: Disk) => void;
  /** Show the disk's details and job history. */
  onOpen?: (d: Disk) => void;
}) {
  const scroller = useRef<HTMLDivElement>(null);
  const { disks } = props;
  const virtualizer = useVirtualizer({
    count: disks.length,
    getScrollElement: () => scroller.current,
    estimateSize: () => ROW_ESTIMATE,
    overscan: OVERSCAN,
    getItemKey: (i) => disks[i]?.id ?? i,
  });
  const items = virtualizer.getVirtualItems();
  const first = items[0];
  const last = items[items.length - 1];
  const padTop = first ? first.start : 0;
  const padBottom = last ? virtualizer.getTotalSize() - last.end : 0;

  const lastIndex = last?.index ?? -1;
  const { more, loading, error, onLoadMore } = props;
  useEffect(() => {
    // After a failed page, only the Retry button asks again (no loop against a failing server).
    if (more && !loading && !error && lastIndex >= disks.length - PREFETCH_ROWS) onLoadMore();
  }, [more, loading, error, lastIndex, disks.length, onLoadMore]);

  // For measurements: when the first rows reached the DOM (performance.getEntriesByName).
  const rendered = items.length > 0;
  useEffect(() => {
    if (rendered && !performance.getEntriesByName('sparsify:first-rows').length) performance.mark('sparsify:first-rows');
  }, [rendered]);

  const shownKey = items.map((i) => disks[i.index]?.id ?? '').join(',');
  const { onShown } = props;
  useEffect(() => {
    onShown(shownKey ? shownKey.split(',') : []);
  }, [shownKey, onShown]);

  // A new order starts at the top.
  const orderKey = JSON.stringify(props.query);
  useEffect(() => {
    scroller.current?.scrollTo({ top: 0 });
  }, [orderKey]);

  const selectable = disks.filter((d) => d.sparsify.allowed).map((d) => d.id);
  const allSelected = selectable.length > 0 && selectable.every((id) => props.selected.has(id));
  const q = props.query;
  return (
    <div className="table-scroll" ref={scroller} data-testid="disks-scroll">
      <table className="disks" data-testid="disks-table" data-loaded={disks.length} data-more={props.more}>
        {/* Fixed column widths: rows come and go as the table scrolls, and the columns must not move with them. */}
        <colgroup>
          <col style={{ width: '2.4rem' }} />
          <col />
          <col style={{ width: '4.2rem' }} />
          <col style={{ width: '6.2rem' }} />
          <col style={{ width: '6.2rem' }} />
          <col style={{ width: '7rem' }} />
          <col style={{ width: '5.2rem' }} />
          <col style={{ width: '9rem' }} />
          <col style={{ width: '7.5rem' }} />
        </colgroup>
        <thead>
          <tr>
            <th>
              <input type="checkbox" aria-label="select all loaded" title="Select every loaded disk that can be sparsified" checked={allSelected} disabled={!selectable.length} onChange={() => props.onToggleAll(allSelected ? [] : selectable)} />
            </th>
            {COLUMNS.map((c) => (
              <th key={c.label} className={c.num ? 'num' : ''} aria-sort={c.sort && q.sort === c.sort ? (q.dir === 'asc' ? 'ascending' : 'descending') : c.sort ? 'none' : undefined}>
                {c.sort ? (
                  <button className="sort" onClick={() => props.onSort(c.sort!)} data-testid={`sort-${c.sort}`}>
                    {c.label} {q.sort === c.sort ? (q.dir === 'asc' ? '▲' : '▼') : ''}
                  </button>
                ) : (
                  c.label
                )}
              </th>
            ))}
            <th>Space (used / reclaimable / free)</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {disks.length === 0 && (
            <tr>
              <td colSpan={9} className="muted" data-testid="disks-empty">
                {props.loading || props.error ? 'Loading…' : 'No disks match.'}
              </td>
            </tr>
          )}
          {padTop > 0 && (
            <tr aria-hidden="true" className="spacer">
              <td colSpan={9} style={{ height: padTop }} />
            </tr>
          )}
          {items.map((item) => {
            const d = disks[item.index]!;
            return (
              <DiskRow
                key={d.id}
                disk={d}
                index={item.index}
                measure={virtualizer.measureElement}
                job={props.activeJobs.get(d.id)}
                selected={props.selected.has(d.id)}
                onToggle={() => props.onToggle(d.id)}
                onSparsify={() => props.onSparsify(d)}
                onOpen={() => props.onOpen?.(d)}
              />
            );
          })}
          {padBottom > 0 && (
            <tr aria-hidden="true" className="spacer">
              <td colSpan={9} style={{ height: padBottom }} />
            </tr>
          )}
          {props.more && !props.error && disks.length > 0 && (
            <tr>
              <td colSpan={9} className="muted" data-testid="disks-more">
                Loading more…
              </td>
            </tr>
          )}
          {props.error && (
            <tr>
              <td colSpan={9} className="error" role="alert" data-testid="disks-error">
                Cannot read the disks: {props.error}{' '}
                <button className="link" onClick={props.onRetry} data-testid="disks-retry">
                  retry
                </button>
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </div>
  );
}
