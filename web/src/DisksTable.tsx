import { bytes, type Disk, type Job } from './api';
import { UsageBar } from './UsageBar';

export type SortKey = 'name' | 'format' | 'virtualSize' | 'actualSize' | 'reclaimableBytes' | 'status';

const COLUMNS: Array<{ key: SortKey; label: string; num?: boolean }> = [
  { key: 'name', label: 'Name' },
  { key: 'format', label: 'Format' },
  { key: 'virtualSize', label: 'Virtual size', num: true },
  { key: 'actualSize', label: 'Actual size', num: true },
  { key: 'reclaimableBytes', label: 'Reclaimable', num: true },
  { key: 'status', label: 'Status' },
];

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

export function DisksTable(props: {
  disks: Disk[];
  activeJobs: Map<string, Job>;
  selected: Set<string>;
  sort: { key: SortKey; dir: 1 | -1 };
  onSort: (k: SortKey) => void;
  onToggle: (id: string) => void;
  onToggleAll: (ids: string[]) => void;
  onSparsify: (d: Disk) => void;
  /** Show the disk's details and job history. */
  onOpen?: (d: Disk) => void;
}) {
  const selectable = props.disks.filter((d) => d.sparsify.allowed).map((d) => d.id);
  const allSelected = selectable.length > 0 && selectable.every((id) => props.selected.has(id));
  return (
    <table className="disks" data-testid="disks-table">
      <thead>
        <tr>
          <th>
            <input type="checkbox" aria-label="select all" checked={allSelected} disabled={!selectable.length} onChange={() => props.onToggleAll(allSelected ? [] : selectable)} />
          </th>
          {COLUMNS.map((c) => (
            <th key={c.key} className={c.num ? 'num' : ''} aria-sort={props.sort.key === c.key ? (props.sort.dir === 1 ? 'ascending' : 'descending') : 'none'}>
              <button className="sort" onClick={() => props.onSort(c.key)}>
                {c.label} {props.sort.key === c.key ? (props.sort.dir === 1 ? '▲' : '▼') : ''}
              </button>
            </th>
          ))}
          <th>Space (used / reclaimable / free)</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.disks.length === 0 && (
          <tr>
            <td colSpan={9} className="muted">
              No disks match.
            </td>
          </tr>
        )}
        {props.disks.map((d) => {
          const job = props.activeJobs.get(d.id);
          const reason = d.sparsify.allowed ? undefined : d.sparsify.reason;
          return (
            <tr key={d.id} data-testid="disk-row" data-disk-name={d.name} data-disk-id={d.id}>
              <td>
                <input type="checkbox" aria-label={`select ${d.name}`} checked={props.selected.has(d.id)} disabled={!d.sparsify.allowed} title={reason} onChange={() => props.onToggle(d.id)} />
              </td>
              <td>
                <div className="name">
                  <button className="link name" onClick={() => props.onOpen?.(d)} data-testid="disk-name">
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
                <button onClick={() => props.onSparsify(d)} disabled={!d.sparsify.allowed} title={reason} data-testid="sparsify-button">
                  Sparsify
                </button>
                {reason && <div className="reason small">{reason}</div>}
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
