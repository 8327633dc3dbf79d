import { useEffect, useState } from 'react';
import { bytes, type Disk, type Job } from './api';
import { vmApi, VM_STATE_TEXT } from './api-vms';
import { reducibleTo, storageText } from './JobFigures';

function when(t: number | null): string {
  return t ? new Date(t).toLocaleString() : '—';
}

/** A block device's discard facts, as Linux reports them. */
function DeviceLine({ d }: { d: NonNullable<Disk['device']> }) {
  const max = d.discardMaxBytes === null ? 'not said' : d.discardMaxBytes === 0 ? '0 (cannot discard)' : bytes(d.discardMaxBytes);
  return (
    <p className="small" data-testid="disk-device" data-discard-max={d.discardMaxBytes ?? ''} data-discard-granularity={d.discardGranularity ?? ''} data-provisioning-mode={d.provisioningMode ?? ''}>
      Block device <code>{d.target}</code>, {bytes(d.size)} · discard_max_bytes {max} · discard_granularity {d.discardGranularity === null ? 'not said' : bytes(d.discardGranularity)}
      {d.provisioningMode && <> · provisioning_mode {d.provisioningMode}</>}
      {d.held && <> · held by the kernel (mounted, swap, RAID, LVM or device-mapper)</>}
    </p>
  );
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
  // The newest finished job says where a compacted image on a device ends now.
  const last = jobs?.find((j) => j.status === 'finished');
  const end = reducibleTo(last?.result);
  const reduce = last && end !== null ? { job: last, bytes: end } : null;
  return (
    <div className="backdrop" role="presentation" onClick={props.onClose}>
      <div className="dialog wide" role="dialog" aria-modal="true" aria-labelledby="disk-title" data-testid="disk-details" onClick={(e) => e.stopPropagation()}>
        <h2 id="disk-title">{d.name}</h2>
        <p className="muted small">
          {d.domain}: {d.path} · {d.format ?? 'unreadable'} · virtual {bytes(d.virtualSize)} · actual {bytes(d.actualSize)}
          {d.chain.depth > 1 ? ` · leaf of a chain of ${d.chain.depth}` : ''}
        </p>
        {d.device && <DeviceLine d={d.device} />}
        <p className="muted small" data-testid="disk-storage">
          {storageText(d)}
        </p>
        {reduce && (
          <p className="advice small" data-testid="disk-reducible">
            After the job of {when(reduce.job.endedAt)} the image ends at {bytes(reduce.bytes)}: the volume can be reduced to {bytes(reduce.bytes)}.
          </p>
        )}
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
                <th className="num">By holes</th>
                <th className="num">By truncation</th>
                <th>Compaction</th>
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
                  <td className="num" data-testid="job-given-back">
                    {j.result?.isBlockDevice ? (j.result.released ? <span className="small">discarded {bytes(j.result.discarded)} on the device</span> : '—') : bytes(j.bytesReclaimed)}
                  </td>
                  <td className="num" data-testid="job-by-holes">{j.result ? bytes(j.result.byHoles) : '—'}</td>
                  <td className="num" data-testid="job-by-truncation">{j.result ? bytes(j.result.byTruncation) : '—'}</td>
                  <td className="small">
                    {j.result?.compacted ? (
                      <>
                        {bytes(j.result.bytesMoved)} moved, end {bytes(j.result.endBefore)} → {bytes(j.result.endAfter)}
                      </>
                    ) : j.result ? (
                      'no'
                    ) : (
                      '—'
                    )}
                    {j.status === 'finished' && reducibleTo(j.result) !== null && <div>the volume can be reduced to {bytes(reducibleTo(j.result))}</div>}
                  </td>
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
