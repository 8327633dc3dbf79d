import { useEffect, useState } from 'react';
import { bytes, type Disk, type Job } from './api';
import { vmApi, VM_STATE_TEXT } from './api-vms';

function when(t: number | null): string {
  return t ? new Date(t).toLocaleString() : '—';
}

/** One disk: its chain, its VMs, what snapshots hold, and the history of its jobs (newest first). */
export function DiskDetails(props: { disk: Disk; version: number; onClose: () => void }) {
  const d = props.disk;
  const [jobs, setJobs] = useState<Job[] | null>(null);
  useEffect(() => {
    let live = true;
    vmApi.diskJobs(d.id).then(
      (j) => live && setJobs(j),
      () => live && setJobs([]),
    );
    return () => {
      live = false;
    };
  }, [d.id, props.version]);
  return (
    <div className="backdrop" role="presentation" onClick={props.onClose}>
      <div className="dialog wide" role="dialog" aria-modal="true" aria-labelledby="disk-title" data-testid="disk-details" onClick={(e) => e.stopPropagation()}>
        <h2 id="disk-title">{d.name}</h2>
        <p className="muted small">
          {d.domain}: {d.path} · {d.format ?? 'unreadable'} · virtual {bytes(d.virtualSize)} · actual {bytes(d.actualSize)}
          {d.chain.depth > 1 ? ` · leaf of a chain of ${d.chain.depth}` : ''}
        </p>
        {d.vms.length > 0 && (
          <p className="small" data-testid="disk-vms">
            Used by{' '}
            {d.vms.map((v) => (
              <span key={`${v.host}/${v.id}`}>
                <b>{v.name}</b> ({VM_STATE_TEXT[v.state] ?? v.state} on {v.host}, {v.target}){' '}
              </span>
            ))}
          </p>
        )}
        {d.analysis.snapshotAdvice && (
          <p className="advice small" data-testid="snapshot-advice">
            {d.analysis.snapshotAdvice}
          </p>
        )}
        <h3>Jobs</h3>
        {jobs === null && <p className="muted">Loading…</p>}
        {jobs?.length === 0 && <p className="muted">This disk has not been sparsified yet.</p>}
        {jobs && jobs.length > 0 && (
          <table className="small" data-testid="disk-jobs">
            <thead>
              <tr>
                <th>Started</th>
                <th>Mode</th>
                <th>Status</th>
                <th>Host</th>
                <th className="num">Before</th>
                <th className="num">After</th>
                <th className="num">Given back</th>
              </tr>
            </thead>
            <tbody>
              {jobs.map((j) => (
                <tr key={j.id} data-testid="disk-job" data-job-status={j.status}>
                  <td>{when(j.startedAt ?? j.createdAt)}</td>
                  <td>{j.options.mode}</td>
                  <td>
                    <span className={`badge ${j.status}`}>{j.status}</span>
                    {j.error && <div className="error">{j.error}</div>}
                  </td>
                  <td>{j.host ?? '—'}</td>
                  <td className="num">{bytes(j.actualBefore)}</td>
                  <td className="num">{bytes(j.actualAfter)}</td>
                  <td className="num">{bytes(j.bytesReclaimed)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <div className="buttons">
          <button onClick={props.onClose}>Close</button>
        </div>
      </div>
    </div>
  );
}
