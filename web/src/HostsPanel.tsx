import type { Host } from './api';

function age(ms: number): string {
  if (ms < 1500) return 'just now';
  if (ms < 90_000) return `${Math.round(ms / 1000)} s ago`;
  if (ms < 90 * 60_000) return `${Math.round(ms / 60_000)} min ago`;
  return `${Math.round(ms / 3_600_000)} h ago`;
}

const STATUS_TEXT: Record<Host['status'], string> = { up: 'up', 'non-responsive': 'non-responsive', stopped: 'stopped' };

/** The hosts of the service: status, last heartbeat, the domains each reaches and the jobs it runs. */
export function HostsPanel({ hosts }: { hosts: Host[] }) {
  return (
    <section className="panel" data-testid="hosts-panel">
      <h2>Hosts</h2>
      {hosts.length === 0 && <p className="muted">No host has registered yet.</p>}
      <ul className="hosts">
        {hosts.map((h) => (
          <li key={h.name} data-testid="host-row" data-host-name={h.name} data-host-status={h.status}>
            <div>
              <b>{h.name}</b> <span className={`badge host-${h.status}`}>{STATUS_TEXT[h.status]}</span>{' '}
              <span className="muted small" title={new Date(h.lastHeartbeat).toLocaleString()}>
                heartbeat {age(h.heartbeatAgeMs)}
              </span>
            </div>
            <div className="muted small">
              sparsify {h.version} · {h.jobs.length}/{h.concurrency} jobs
              {h.domains.map((d) => (
                <span key={d.id} className={d.reachable ? '' : 'error'} title={d.error ?? d.path}>
                  {' '}
                  · {d.name}
                  {d.reachable ? '' : ' (unreachable)'}
                </span>
              ))}
            </div>
            {h.jobs.map((j) => (
              <div key={j.id} className="small" data-testid="host-job">
                {j.diskName} <progress max={100} value={j.percent} /> {j.percent}% <span className="muted">{j.step ?? j.status}</span>
              </div>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}
