import { useState } from 'react';
import { api, type Compaction, type Domain } from './api';

const CHOICES: Array<{ value: Compaction; label: string }> = [
  { value: 'where-no-holes', label: 'where holes cannot be punched' },
  { value: 'always', label: 'always' },
  { value: 'never', label: 'never' },
];

/** What each choice means, under the control. */
const HELP: Record<Compaction, string> = {
  'where-no-holes': 'In place, images are compacted only where the storage cannot punch holes (or the device cannot discard): there it is the only way space comes back.',
  always: 'In place, every image that can be compacted is: its kept data moves down and the file is shortened, besides the holes.',
  never: 'Never compacted (but vdi, whose format needs it): an image on storage that cannot punch holes is refused in place.',
};

/**
 * The storage domains and their settings: when in-place sparsify compacts their images. A change
 * holds for every host of the cluster (each reads it from the database when it runs a job).
 */
export function DomainsPanel({ domains, onChanged }: { domains: Domain[]; onChanged: (d: Domain) => void }) {
  const [busy, setBusy] = useState<string | null>(null);
  const [note, setNote] = useState<{ id: string; text: string } | null>(null);

  const change = async (d: Domain, compaction: Compaction) => {
    setBusy(d.id);
    try {
      onChanged(await api.setCompaction(d.id, compaction));
      setNote({ id: d.id, text: 'Saved' });
    } catch (e) {
      setNote({ id: d.id, text: `Not saved: ${(e as Error).message}` });
    } finally {
      setBusy(null);
    }
  };

  return (
    <section className="panel" data-testid="domains-panel">
      <h2>Storage domains</h2>
      {domains.length === 0 && <p className="muted">No storage domain is attached.</p>}
      <ul className="hosts">
        {domains.map((d) => (
          <li key={d.id} data-testid="domain-row" data-domain-name={d.name} data-compaction={d.compaction}>
            <div>
              <b>{d.name}</b>{' '}
              <span className={`badge ${d.reachable ? (d.canDiscard ? 'ok' : 'in-use') : 'unreachable'}`} data-testid="domain-holes">
                {d.reachable ? (d.canDiscard ? 'can punch holes' : 'cannot punch holes') : 'unreachable'}
              </span>
            </div>
            <label className="small">
              Compact in place{' '}
              <select value={d.compaction} disabled={busy === d.id} onChange={(e) => void change(d, e.target.value as Compaction)} data-testid="compaction-select" aria-label={`compaction of ${d.name}`}>
                {CHOICES.map((c) => (
                  <option key={c.value} value={c.value}>
                    {c.label}
                  </option>
                ))}
              </select>
            </label>
            <div className="muted small">{HELP[d.compaction]}</div>
            {note?.id === d.id && (
              <div className="small" data-testid="domain-note">
                {note.text}
              </div>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}
