/** One disk's row of the disk table: what it is, where, its sizes, its state, its live job and its Sparsify button. */
import type { Ref } from 'react';
import { bytes, type Disk, type Job } from './api';
import { UsageBar } from './UsageBar';

const STATUS_TEXT: Record<Disk['status'], string> = { ok: 'OK', locked: 'locked', 'in-use': 'in use', illegal: 'illegal', unreachable: 'unreachable' };

/** What happens inside the disk's LUKS volumes: sparsified with a key, or kept whole. */
function Encrypted({ opened, keptWhole }: { opened: number; keptWhole: number }) {
  return (
    <div className="small" data-testid="encrypted" data-opened={opened} data-kept-whole={keptWhole}>
      {opened > 0 && <span className="badge ok">{opened === 1 ? 'encrypted volume opened' : `${opened} encrypted volumes opened`}</span>}{' '}
      {keptWhole > 0 && (
        <span className="badge in-use" title="No key for it in the service's keys file: its space is kept as it is">
          {keptWhole === 1 ? 'encrypted volume kept whole (no key)' : `${keptWhole} encrypted volumes kept whole (no key)`}
        </span>
      )}
    </div>
  );
}

export function DiskRow(props: {
  disk: Disk;
  job: Job | undefined;
  selected: boolean;
  /** The virtualizer measures each row it renders (rows differ in height). */
  measure: Ref<HTMLTableRowElement>;
  index: number;
  onToggle: () => void;
  onSparsify: () => void;
  onOpen: () => void;
}) {
  const d = props.disk;
  const job = props.job;
  const reason = d.sparsify.allowed ? undefined : d.sparsify.reason;
  return (
    <tr ref={props.measure} data-index={props.index} data-testid="disk-row" data-disk-name={d.name} data-disk-id={d.id}>
      <td>
        <input type="checkbox" aria-label={`select ${d.name}`} checked={props.selected} disabled={!d.sparsify.allowed} title={reason} onChange={() => props.onToggle()} />
      </td>
      <td>
        <div className="name">
          <button className="link name" onClick={() => props.onOpen()} data-testid="disk-name">
            {d.name}
          </button>
        </div>
        <div className="muted small">
          {d.domain}
          {d.path !== d.name ? `: ${d.path}` : ''}
        </div>
        {d.device && (
          <div className="muted small" data-testid="device-badge" title={`discard_max_bytes ${d.device.discardMaxBytes ?? 'not said'}`}>
            block device {d.device.target}
            {d.device.discardMaxBytes === 0 ? ' (cannot discard)' : ''}
          </div>
        )}
        {d.storage.compacts && d.sparsify.allowed && (
          <div className="muted small" data-testid="compacts" title={d.storage.canRelease ? 'the domain compacts every image' : 'the storage cannot punch holes: compaction gives the space back'}>
            compacted in place
          </div>
        )}
        {d.chain.depth > 1 && <div className="muted small">backing chain of {d.chain.depth}</div>}
        {d.chain.derivedIds.length > 0 && <div className="muted small">{d.chain.derivedIds.length} derived disk(s)</div>}
        {d.analysis.encrypted && <Encrypted {...d.analysis.encrypted} />}
        {d.vms.map((v) => (
          <div key={`${v.host}/${v.id}`} className="small" data-testid="disk-vm" data-vm-state={v.state}>
            VM <b>{v.name}</b> <span className={`badge vm-${v.state === 'shut-off' ? 'down' : 'up'}`}>{v.state === 'shut-off' ? 'down' : v.state}</span>
          </div>
        ))}
        {!!d.analysis.snapshotOnlyBytes && (
          <div className="muted small" title={d.analysis.snapshotAdvice ?? undefined} data-testid="snapshot-only">
            {bytes(d.analysis.snapshotOnlyBytes)} free only in earlier snapshots: merge them first
          </div>
        )}
      </td>
      <td>
        {d.format ?? '—'}
        {d.allocation === 'preallocated' && <div className="muted small">preallocated</div>}
      </td>
      <td className="num">{bytes(d.virtualSize)}</td>
      <td className="num" data-testid="actual-size" data-bytes={d.actualSize}>
        {bytes(d.actualSize)}
      </td>
      <td className="num">
        {d.analysis.state === 'done' ? bytes(d.reclaimableBytes) : d.analysis.state === 'failed' ? <span title={d.analysis.error ?? ''}>n/a</span> : <span className="muted">analyzing…</span>}
        {d.needsSparsify && (
          <div>
            <span className="badge needs" data-testid="needs-badge">
              needs sparsify
            </span>
          </div>
        )}
      </td>
      <td>
        <span className={`badge ${d.status}`} title={d.error ?? undefined}>
          {STATUS_TEXT[d.status]}
        </span>
      </td>
      <td className="usage-cell">
        <UsageBar disk={d} />
        {job && (
          <div className="live" data-testid="live-progress">
            <progress max={100} value={job.progress.percent} /> <span data-testid="live-percent">{job.progress.percent}%</span> <span className="muted small">{job.step ?? job.status}</span>
          </div>
        )}
      </td>
      <td>
        <button onClick={() => props.onSparsify()} disabled={!d.sparsify.allowed} title={reason} data-testid="sparsify-button">
          Sparsify
        </button>
        {reason && <div className="reason small">{reason}</div>}
      </td>
    </tr>
  );
}
