import { useState } from 'react';
import { bytes, type Disk, type Info } from './api';

/** Confirmation before sparsifying: which disks, what each should give back, and how. */
export function SparsifyDialog(props: {
  disks: Disk[];
  info: Info | null;
  onCancel: () => void;
  onConfirm: (mode: string) => Promise<Array<{ disk: Disk; error?: string }>>;
}) {
  const [mode, setMode] = useState(props.info?.defaultMode ?? 'in-place');
  const [busy, setBusy] = useState(false);
  const [errors, setErrors] = useState<Array<{ disk: Disk; error?: string }>>([]);
  const total = props.disks.reduce((s, d) => s + (d.reclaimableBytes ?? 0), 0);
  const confirm = async () => {
    setBusy(true);
    const results = await props.onConfirm(mode);
    setBusy(false);
    const failed = results.filter((r) => r.error);
    if (failed.length) setErrors(failed);
  };
  return (
    <div className="backdrop" role="presentation">
      <div className="dialog" role="dialog" aria-modal="true" aria-labelledby="dlg-title" data-testid="sparsify-dialog">
        <h2 id="dlg-title">Sparsify {props.disks.length === 1 ? 'this disk' : `${props.disks.length} disks`}?</h2>
        <p>Free space inside each disk is given back to the storage. Each disk is locked while its job runs; its data is not changed.</p>
        <table className="small">
          <thead>
            <tr>
              <th>Disk</th>
              <th className="num">Actual size</th>
              <th className="num">Expected to give back</th>
            </tr>
          </thead>
          <tbody>
            {props.disks.map((d) => (
              <tr key={d.id}>
                <td>{d.name}</td>
                <td className="num">{bytes(d.actualSize)}</td>
                <td className="num" data-testid="expected-reclaim">{d.analysis.state === 'done' ? bytes(d.reclaimableBytes) : 'not analyzed yet'}</td>
              </tr>
            ))}
          </tbody>
          <tfoot>
            <tr>
              <td colSpan={2}>Total</td>
              <td className="num">{bytes(total)}</td>
            </tr>
          </tfoot>
        </table>
        {props.disks.some((d) => d.analysis.snapshotAdvice) && (
          <p className="advice small" data-testid="dialog-snapshot-advice">
            Free space held only by earlier snapshots is not given back: {props.disks.filter((d) => d.analysis.snapshotOnlyBytes).map((d) => `${d.name} ${bytes(d.analysis.snapshotOnlyBytes)}`).join(', ')}. To sparsify effectively, merge the snapshots first.
          </p>
        )}
        <label className="mode">
          Mode{' '}
          <select value={mode} onChange={(e) => setMode(e.target.value)} data-testid="mode-select">
            <option value="in-place">in place (discard free space)</option>
            <option value="copy-and-replace">copy and replace (write a sparse copy, then swap)</option>
          </select>
        </label>
        {errors.length > 0 && (
          <ul className="refusals" role="alert">
            {errors.map((r) => (
              <li key={r.disk.id}>
                <b>{r.disk.name}</b>: {r.error}
              </li>
            ))}
          </ul>
        )}
        <div className="buttons">
          <button onClick={props.onCancel} disabled={busy}>
            {errors.length ? 'Close' : 'Cancel'}
          </button>
          {!errors.length && (
            <button className="primary" onClick={() => void confirm()} disabled={busy} data-testid="confirm-sparsify">
              Sparsify
            </button>
          )}
        </div>
      </div>
    </div>
  );
}
