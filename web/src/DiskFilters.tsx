/**
 * The disk table's filters, all answered by the server: name search (sent once typing pauses),
 * status, storage domain and "needs sparsify". Each change starts the table over from its first page.
 */
import { useEffect, useState } from 'react';
import type { Domain, DiskStatus } from './api';
import type { DiskQuery } from './api-disks';

/** Typing pauses this long before the search goes to the server. */
const SEARCH_DEBOUNCE_MS = 250;

export function DiskFilters(props: { query: DiskQuery; domains: Domain[]; onChange: (q: Partial<DiskQuery>) => void }) {
  const [text, setText] = useState(props.query.q);
  const { onChange } = props;
  useEffect(() => {
    const t = setTimeout(() => onChange({ q: text }), SEARCH_DEBOUNCE_MS);
    return () => clearTimeout(t);
  }, [text, onChange]);
  const q = props.query;
  return (
    <>
      <input type="search" placeholder="Filter by name" value={text} onChange={(e) => setText(e.target.value)} aria-label="filter" data-testid="filter-name" />
      <select value={q.status} onChange={(e) => onChange({ status: e.target.value as '' | DiskStatus })} aria-label="status filter" data-testid="filter-status">
        <option value="">any status</option>
        <option value="ok">OK</option>
        <option value="locked">locked</option>
        <option value="in-use">in use</option>
        <option value="illegal">illegal</option>
        <option value="unreachable">unreachable</option>
      </select>
      <select value={q.domain} onChange={(e) => onChange({ domain: e.target.value })} aria-label="domain filter" data-testid="filter-domain">
        <option value="">every domain</option>
        {props.domains.map((d) => (
          <option key={d.id} value={d.id}>
            {d.name}
          </option>
        ))}
      </select>
      <label>
        <input type="checkbox" checked={q.needsSparsify} onChange={(e) => onChange({ needsSparsify: e.target.checked })} data-testid="filter-needs" /> needs sparsify only
      </label>
    </>
  );
}
