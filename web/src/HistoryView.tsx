import { useEffect, useState } from 'react';
import { bytes } from './api';
import { vmApi, type History } from './api-vms';
import { LineChart, seriesColor } from './Chart';

const RANGES = [1, 7, 30, 90, 365];

/**
 * The job history as charts: the space given back over time (summed), and each storage domain's
 * actual size as the jobs changed it. Read again whenever a job finishes (`version` changes).
 */
export function HistoryView({ version }: { version: number }) {
  const [days, setDays] = useState(30);
  const [h, setH] = useState<History | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    vmApi.history(days).then(
      (r) => live && (setH(r), setError(null)),
      (e: Error) => live && setError(e.message),
    );
    return () => {
      live = false;
    };
  }, [days, version]);

  const total = h?.reclaimed.length ? h.reclaimed[h.reclaimed.length - 1]![1] : 0;
  const reclaimed = h ? [{ name: 'given back', color: seriesColor(1), step: true, points: [[h.since, 0] as [number, number], ...h.reclaimed, [h.now, total] as [number, number]] }] : [];
  const domains = h ? h.domains.map((d, i) => ({ name: d.name, color: seriesColor(i === 1 ? 7 : i), step: true, points: d.points })) : [];
  return (
    <div className="history" data-testid="history-view">
      <div className="toolbar">
        <b>History</b>
        <label>
          last{' '}
          <select value={days} onChange={(e) => setDays(Number(e.target.value))} aria-label="history range">
            {RANGES.map((d) => (
              <option key={d} value={d}>
                {d === 1 ? '24 hours' : `${d} days`}
              </option>
            ))}
          </select>
        </label>
        {h && (
          <span className="muted" data-testid="history-summary">
            {h.jobs} finished job(s), {bytes(total)} given back
          </span>
        )}
      </div>
      {error && <div className="message">{error}</div>}
      {h && (
        <div className="charts">
          <LineChart title="Space given back (summed)" series={reclaimed} from={h.since} to={h.now} testId="chart-reclaimed" />
          <LineChart title="Actual size of each storage domain, as the jobs changed it" series={domains} from={h.since} to={h.now} testId="chart-domains" />
        </div>
      )}
    </div>
  );
}
