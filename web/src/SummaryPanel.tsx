/**
 * The totals of every disk as `/api/summary` gives them (and the stream's `summary` messages keep
 * them): the header line, and bars of each storage domain's and each status's actual and
 * reclaimable bytes. Never computed from the loaded rows, which are a page or two of the whole.
 */
import { bytes, type DiskStatus } from './api';
import type { Summary, Totals } from './api-disks';

const STATUS_TEXT: Record<DiskStatus, string> = { ok: 'OK', locked: 'locked', 'in-use': 'in use', illegal: 'illegal', unreachable: 'unreachable' };

export function SummaryLine({ summary }: { summary: Summary | null }) {
  if (!summary) return <span className="muted" data-testid="totals">loading the totals…</span>;
  return (
    <span className="muted" data-testid="totals" data-disks={summary.disks} data-actual={summary.actualBytes} data-reclaimable={summary.reclaimableBytes} data-needs={summary.needsSparsify}>
      <span data-testid="total-disks">{summary.disks.toLocaleString('en')}</span> disks · <span data-testid="total-actual">{bytes(summary.actualBytes)}</span> on the host ·{' '}
      <span data-testid="total-reclaimable">{bytes(summary.reclaimableBytes)}</span> reclaimable · <span data-testid="total-needs">{summary.needsSparsify.toLocaleString('en')}</span> need sparsify
    </span>
  );
}

/** One bar: actual bytes, the reclaimable part of them in the reclaim colour, scaled to the largest. */
function Bar({ label, t, max, testId, id }: { label: string; t: Totals; max: number; testId: string; id: string }) {
  const pct = (n: number) => `${max ? Math.min(100, (n * 100) / max) : 0}%`;
  const reclaim = Math.min(t.reclaimableBytes, t.actualBytes);
  return (
    <li data-testid={testId} data-id={id} data-disks={t.disks} data-actual={t.actualBytes} data-reclaimable={t.reclaimableBytes} data-needs={t.needsSparsify}>
      <div className="small">
        <b>{label}</b> · {t.disks.toLocaleString('en')} disks · {bytes(t.actualBytes)} · {bytes(t.reclaimableBytes)} reclaimable{t.needsSparsify ? ` · ${t.needsSparsify.toLocaleString('en')} need sparsify` : ''}
      </div>
      <div className="usage" title={`${bytes(t.actualBytes)} on the host, ${bytes(t.reclaimableBytes)} reclaimable`}>
        <span className="used" style={{ width: pct(t.actualBytes - reclaim) }} />
        <span className="reclaim" style={{ width: pct(reclaim) }} />
      </div>
    </li>
  );
}

export function SummaryPanel({ summary }: { summary: Summary | null }) {
  if (!summary) return null;
  const statuses = (Object.keys(STATUS_TEXT) as DiskStatus[]).filter((s) => summary.byStatus[s]?.disks);
  const max = Math.max(1, ...summary.byDomain.map((d) => d.actualBytes), ...statuses.map((s) => summary.byStatus[s]!.actualBytes));
  return (
    <section className="panel" data-testid="summary-panel">
      <h2>Space by domain and status</h2>
      <ul className="hosts">
        {summary.byDomain.map((d) => (
          <Bar key={d.domainId} label={d.name} t={d} max={max} testId="summary-domain" id={d.domainId} />
        ))}
      </ul>
      <ul className="hosts">
        {statuses.map((s) => (
          <Bar key={s} label={STATUS_TEXT[s]} t={summary.byStatus[s]!} max={max} testId="summary-status" id={s} />
        ))}
      </ul>
    </section>
  );
}
