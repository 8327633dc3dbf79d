import { useEffect, useState } from 'react';
import { bytes } from './api';
import { vmApi, type Policy } from './api-vms';

const MiB = 1 << 20;

/**
 * The "needs sparsify" policy, editable: a disk needs sparsify when it can give back at least the
 * threshold in bytes and in percent of its actual size; the schedule sparsifies those disks once
 * per interval for the whole cluster.
 */
export function PolicyPanel({ onError }: { onError: (m: string) => void }) {
  const [saved, setSaved] = useState<Policy | null>(null);
  const [form, setForm] = useState({ thresholdMiB: '', thresholdPercent: '', scheduleEnabled: false, intervalMinutes: '' });
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState<string | null>(null);

  const show = (p: Policy) => {
    setSaved(p);
    setForm({ thresholdMiB: String(Math.round(p.thresholdBytes / MiB)), thresholdPercent: String(p.thresholdPercent), scheduleEnabled: p.scheduleEnabled, intervalMinutes: String(Math.max(1, Math.round(p.scheduleIntervalSeconds / 60))) });
  };

  useEffect(() => {
    vmApi.policy().then(show, (e: Error) => onError(`Cannot read the policy: ${e.message}`));
  }, [onError]);

  const save = async () => {
    const thresholdMiB = Number(form.thresholdMiB);
    const thresholdPercent = Number(form.thresholdPercent);
    const minutes = Number(form.intervalMinutes);
    if (!Number.isInteger(thresholdMiB) || thresholdMiB < 0 || !Number.isInteger(thresholdPercent) || thresholdPercent < 0 || thresholdPercent > 100 || !Number.isInteger(minutes) || minutes < 1 || minutes > 43200) {
      setNote('Whole numbers: MiB ≥ 0, percent 0 to 100, interval 1 to 43200 minutes');
      return;
    }
    setBusy(true);
    try {
      show(await vmApi.setPolicy({ thresholdBytes: thresholdMiB * MiB, thresholdPercent, scheduleEnabled: form.scheduleEnabled, scheduleIntervalSeconds: minutes * 60 }));
      setNote('Saved');
    } catch (e) {
      setNote(`Not saved: ${(e as Error).message}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="panel" data-testid="policy-panel">
      <h2>Policy</h2>
      <form
        className="policy"
        onSubmit={(e) => {
          e.preventDefault();
          void save();
        }}
      >
        <label>
          Needs sparsify from <input type="number" min={0} value={form.thresholdMiB} onChange={(e) => setForm({ ...form, thresholdMiB: e.target.value })} data-testid="policy-threshold-mib" /> MiB
        </label>
        <label>
          and <input type="number" min={0} max={100} value={form.thresholdPercent} onChange={(e) => setForm({ ...form, thresholdPercent: e.target.value })} data-testid="policy-threshold-percent" /> % of the actual size
        </label>
        <label>
          <input type="checkbox" checked={form.scheduleEnabled} onChange={(e) => setForm({ ...form, scheduleEnabled: e.target.checked })} data-testid="policy-schedule" /> sparsify those disks every{' '}
          <input type="number" min={1} value={form.intervalMinutes} onChange={(e) => setForm({ ...form, intervalMinutes: e.target.value })} data-testid="policy-interval" /> minutes
        </label>
        <div>
          <button className="primary" disabled={busy} data-testid="policy-save">
            Save policy
          </button>{' '}
          {note && (
            <span className="small" data-testid="policy-note">
              {note}
            </span>
          )}
        </div>
        {saved && (
          <div className="muted small" data-testid="policy-current">
            Now: {bytes(saved.thresholdBytes)} and {saved.thresholdPercent}%; schedule {saved.scheduleEnabled ? `every ${Math.round(saved.scheduleIntervalSeconds / 60)} min` : 'off'}
          </div>
        )}
      </form>
    </section>
  );
}
