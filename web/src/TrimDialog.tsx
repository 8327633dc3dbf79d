import { useState } from 'react';
import { bytes, type Disk, type Job } from './api';
import { vmApi, type Vm } from './api-vms';

/**
 * Confirmation before trimming a running VM: what happens (the guest's agent runs fstrim, QEMU
 * turns the discards into holes in the images, the VM keeps running), then the job's result: what
 * the host got back per image, and what the guest says it trimmed.
 */
export function TrimDialog(props: { vm: Vm; disks: Map<string, Disk>; onClose: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      let j = await vmApi.trim(props.vm.id);
      setJob(j);
      while (j.status === 'pending' || j.status === 'running') {
        await new Promise((r) => setTimeout(r, 500));
        j = await vmApi.job(j.id);
        setJob(j);
      }
      if (j.status !== 'finished') setError(j.error ?? j.status);
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const result = job?.status === 'finished' ? job.trimResult : null;
  return (
    <div className="backdrop" role="presentation">
      <div className="dialog" role="dialog" aria-modal="true" aria-labelledby="trim-title" data-testid="trim-dialog">
        <h2 id="trim-title">Trim {props.vm.name}?</h2>
        <p>
          The VM keeps running. Its guest agent runs fstrim on every mounted filesystem; QEMU turns the guest's discards into holes in the disk images, and the space goes back to the storage. The VM's disks are locked while the job runs (no sparsify meanwhile).
        </p>
        <ul className="small">
          {props.vm.disks
            .filter((d) => d.device === 'disk')
            .map((d) => {
              const rec = d.diskId ? props.disks.get(d.diskId) : undefined;
              return (
                <li key={d.target}>
                  {d.target}: {rec ? `${rec.name}, ${bytes(rec.actualSize)} allocated` : (d.source ?? 'empty')}
                </li>
              );
            })}
        </ul>
        {job && !result && !error && <p className="live" data-testid="trim-progress">{job.status === 'running' ? `${job.step ?? 'running'}…` : job.status}</p>}
        {result && (
          <div data-testid="trim-result">
            <p>
              <b data-testid="trim-given-back">{result.givenBack === null ? 'not measured' : bytes(Math.max(0, result.givenBack))}</b> given back to the host in {result.seconds.toFixed(1)} s.
            </p>
            <p className="small muted">The guest trimmed: {result.guest.map((g) => `${g.path} ${g.trimmed === null ? (g.error ?? '?') : bytes(g.trimmed)}`).join(', ') || 'nothing it reported'}</p>
          </div>
        )}
        {error && (
          <p className="refusals" role="alert" data-testid="trim-error">
            {error}
          </p>
        )}
        <div className="buttons">
          <button onClick={props.onClose} disabled={busy}>
            {job || error ? 'Close' : 'Cancel'}
          </button>
          {!job && !error && (
            <button className="primary" onClick={() => void confirm()} disabled={busy} data-testid="confirm-trim">
              Trim
            </button>
          )}
        </div>
      </div>
    </div>
  );
}
