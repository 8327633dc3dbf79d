import type { Job, ServiceEvent } from './api';
import { JobFigures } from './JobFigures';

function when(t: number | null): string {
  return t ? new Date(t).toLocaleTimeString() : '';
}

export function JobsPanel({ jobs, onCancel }: { jobs: Job[]; onCancel: (j: Job) => void }) {
  return (
    <section className="panel" data-testid="jobs-panel">
      <h2>Jobs</h2>
      {jobs.length === 0 && <p className="muted">No jobs yet.</p>}
      <ul className="jobs">
        {jobs.map((j) => (
          <li key={j.id} className={`job ${j.status}`} data-testid="job" data-job-status={j.status}>
            <div className="job-head">
              <b>{j.diskName}</b> <span className={`badge ${j.status}`}>{j.status}</span> {j.step && <span className="muted">{j.step}</span>}
              {(j.status === 'pending' || j.status === 'running') && (
                <button className="link" onClick={() => onCancel(j)}>
                  cancel
                </button>
              )}
            </div>
            <progress max={100} value={j.progress.percent} /> <span className="num">{j.progress.percent}%</span>
            <div className="muted small">
              {j.options.mode} · {when(j.startedAt ?? j.createdAt)}
              {j.host && (
                <>
                  {' '}
                  · on <span data-testid="job-host">{j.host}</span>
                  {j.attempts > 1 ? ` (attempt ${j.attempts})` : ''}
                </>
              )}
              {j.status === 'finished' && (
                <>
                  {' '}
                  · <JobFigures job={j} />
                </>
              )}
              {j.error && <div className="error">{j.error}</div>}
            </div>
          </li>
        ))}
      </ul>
    </section>
  );
}

export function EventsPanel({ events }: { events: ServiceEvent[] }) {
  return (
    <section className="panel" data-testid="events-panel">
      <h2>Events</h2>
      {events.length === 0 && <p className="muted">No events yet.</p>}
      <ul className="events">
        {events.map((e) => (
          <li key={e.id} className={e.severity}>
            <span className="muted">{when(e.time)}</span> {e.message}
          </li>
        ))}
      </ul>
    </section>
  );
}
