import { bytes, type Disk } from './api';

/**
 * One disk's virtual size split three ways: data the guest uses (allocated, kept), space allocated
 * on the host but free in the guest (what sparsify gives back), and space never allocated.
 */
export function UsageBar({ disk }: { disk: Disk }) {
  const v = disk.virtualSize ?? 0;
  if (!v) return <span className="muted">—</span>;
  const reclaim = Math.max(0, disk.reclaimableBytes ?? 0);
  const used = Math.max(0, Math.min(v, disk.actualSize) - reclaim);
  const free = Math.max(0, v - used - reclaim);
  const pct = (n: number) => `${((n * 100) / v).toFixed(2)}%`;
  const title = `used ${bytes(used)} · reclaimable ${bytes(reclaim)} · not allocated ${bytes(free)} (of ${bytes(v)})`;
  return (
    <div className="usage" title={title} aria-label={title} data-testid="usage-bar">
      <span className="used" style={{ width: pct(used) }} />
      <span className="reclaim" style={{ width: pct(reclaim) }} />
      <span className="free" style={{ width: pct(free) }} />
    </div>
  );
}
