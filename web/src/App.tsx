import { useEffect, useMemo, useState } from 'react';
import { api, openStream, getToken, setToken, bytes, newerJob, ApiError, type Disk, type Domain, type Job, type ServiceEvent, type Info, type Host } from './api';
import { DisksTable, type SortKey } from './DisksTable';
import { SparsifyDialog } from './SparsifyDialog';
import { JobsPanel, EventsPanel } from './JobsPanel';
import { HostsPanel } from './HostsPanel';
import { DomainsPanel } from './DomainsPanel';
import { VmsView } from './VmsView';
import { HistoryView } from './HistoryView';
import { PolicyPanel } from './PolicyPanel';
import { DiskDetails } from './DiskDetails';

type View = 'disks' | 'vms' | 'history';

const STATUS_ORDER: Record<Disk['status'], number> = { ok: 0, locked: 1, 'in-use': 2, illegal: 3, unreachable: 4 };
/** Heartbeat ages move on their own: the hosts panel is re-read this often. */
const HOSTS_REFRESH_MS = 5000;

function compare(a: Disk, b: Disk, key: SortKey): number {
  if (key === 'name' || key === 'format') return (a[key] ?? '').localeCompare(b[key] ?? '');
  if (key === 'status') return STATUS_ORDER[a.status] - STATUS_ORDER[b.status];
  return (a[key] ?? -1) - (b[key] ?? -1);
}

export function App() {
  const [info, setInfo] = useState<Info | null>(null);
  const [disks, setDisks] = useState<Map<string, Disk>>(new Map());
  const [jobs, setJobs] = useState<Map<string, Job>>(new Map());
  const [events, setEvents] = useState<ServiceEvent[]>([]);
  const [hosts, setHosts] = useState<Host[]>([]);
  const [domains, setDomains] = useState<Domain[]>([]);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [sort, setSort] = useState<{ key: SortKey; dir: 1 | -1 }>({ key: 'name', dir: 1 });
  const [filter, setFilter] = useState('');
  const [statusFilter, setStatusFilter] = useState<'' | Disk['status']>('');
  const [needsOnly, setNeedsOnly] = useState(false);
  const [dialog, setDialog] = useState<Disk[] | null>(null);
  const [connected, setConnected] = useState(false);
  const [message, setMessage] = useState<string | null>(null);
  const [hasToken, setHasToken] = useState(!!getToken());
  const [view, setView] = useState<View>('disks');
  const [openDisk, setOpenDisk] = useState<string | null>(null);

  useEffect(() => {
    const load = async () => {
      try {
        const [i, d, j, e] = await Promise.all([api.info(), api.disks(), api.jobs(), api.events()]);
        setInfo(i);
        setDisks(new Map(d.map((x) => [x.id, x])));
        setJobs((m) => new Map(j.map((x) => [x.id, newerJob(m.get(x.id), x)])));
        setEvents(e);
      } catch (err) {
        // A service reachable from the network wants the token for reads too.
        if (err instanceof ApiError && err.status === 401) setHasToken(false);
        setMessage(`Cannot reach the service: ${(err as Error).message}`);
      }
    };
    const loadHosts = () => void api.hosts().then(setHosts, () => undefined);
    const loadDomains = () => void api.domains().then(setDomains, () => undefined);
    void load();
    loadHosts();
    loadDomains();
    const hostsTimer = setInterval(loadHosts, HOSTS_REFRESH_MS);
    const close = openStream({
      disk: (d) => setDisks((m) => new Map(m).set(d.id, d)),
      diskRemoved: (id) =>
        setDisks((m) => {
          const n = new Map(m);
          n.delete(id);
          return n;
        }),
      job: (j) => setJobs((m) => new Map(m).set(j.id, newerJob(m.get(j.id), j))),
      progress: (p) =>
        setJobs((m) => {
          const j = m.get(p.jobId);
          // A late progress message never takes a job back from its end or from further along.
          if (!j || j.status === 'finished' || j.status === 'failed' || j.status === 'cancelled' || p.done < j.progress.done) return m;
          const percent = p.total ? Math.min(100, Math.floor((p.done * 100) / p.total)) : 0;
          return new Map(m).set(j.id, { ...j, progress: { done: p.done, total: p.total, percent } });
        }),
      event: (e) => setEvents((l) => [e, ...l.filter((x) => x.id !== e.id)].slice(0, 100)),
      // A host reaching its domains differently changes what they can do.
      hosts: () => {
        loadHosts();
        loadDomains();
      },
      // Every disk's view says how the domain's setting treats it.
      domains: () => {
        loadDomains();
        void load();
      },
      resync: () => {
        void load();
        loadHosts();
        loadDomains();
      },
      connected: (ok) => {
        setConnected(ok);
        if (ok) void load();
      },
    });
    return () => {
      clearInterval(hostsTimer);
      close();
    };
  }, []);

  const visible = useMemo(() => {
    const q = filter.trim().toLowerCase();
    const list = [...disks.values()].filter((d) => (!q || d.name.toLowerCase().includes(q) || d.path.toLowerCase().includes(q)) && (!statusFilter || d.status === statusFilter) && (!needsOnly || d.needsSparsify));
    return list.sort((a, b) => compare(a, b, sort.key) * sort.dir || a.name.localeCompare(b.name));
  }, [disks, filter, statusFilter, needsOnly, sort]);

  const jobList = useMemo(() => [...jobs.values()].sort((a, b) => b.createdAt - a.createdAt).slice(0, 50), [jobs]);
  /** The latest job of each disk that is still going, or that ended in the last moments (so 100% shows). */
  const activeJobs = useMemo(() => {
    const m = new Map<string, Job>();
    for (const j of [...jobs.values()].sort((a, b) => a.createdAt - b.createdAt)) {
      if (j.status === 'pending' || j.status === 'running' || (j.endedAt && Date.now() - j.endedAt < 60_000)) m.set(j.diskId, j);
    }
    return m;
  }, [jobs]);

  /** Changes whenever a job ends: the history and a disk's job list are read again. */
  const jobsVersion = useMemo(() => [...jobs.values()].filter((j) => j.endedAt).length, [jobs]);

  const selectedDisks = visible.filter((d) => selected.has(d.id) && d.sparsify.allowed);
  const totals = useMemo(() => {
    let actual = 0;
    let reclaim = 0;
    for (const d of disks.values()) {
      actual += d.actualSize;
      reclaim += d.reclaimableBytes ?? 0;
    }
    return { actual, reclaim };
  }, [disks]);

  const onConfirm = async (mode: string) => {
    const targets = dialog ?? [];
    const results = await Promise.all(
      targets.map(async (disk) => {
        try {
          const job = await api.sparsify(disk.id, mode);
          setJobs((m) => new Map(m).set(job.id, job));
          return { disk };
        } catch (e) {
          return { disk, error: (e as Error).message };
        }
      }),
    );
    setSelected(new Set());
    if (!results.some((r) => r.error)) setDialog(null);
    return results;
  };

  const cancelJob = async (j: Job) => {
    try {
      await api.cancel(j.id);
    } catch (e) {
      setMessage(`Cannot cancel: ${(e as Error).message}`);
    }
  };

  return (
    <div className="app">
      <header>
        <h1>sparsify</h1>
        <span className="muted">
          {disks.size} disks · {bytes(totals.actual)} on the host · {bytes(totals.reclaim)} reclaimable
        </span>
        <span className={`conn ${connected ? 'on' : 'off'}`} title="live updates">
          {connected ? 'live' : 'offline'}
        </span>
      </header>
      {!hasToken && (
        <form
          className="token"
          onSubmit={(e) => {
            e.preventDefault();
            const v = new FormData(e.currentTarget).get('token');
            if (typeof v === 'string' && v.trim()) {
              setToken(v.trim());
              setHasToken(true);
              // Reads may have been refused without it: start over with the token.
              location.reload();
            }
          }}
        >
          Actions need the service token (printed by <code>sparsify serve</code>): <input name="token" aria-label="token" /> <button>Save</button>
        </form>
      )}
      {message && (
        <div className="message" role="alert">
          {message} <button className="link" onClick={() => setMessage(null)}>dismiss</button>
        </div>
      )}
      <nav className="views" role="tablist">
        {(['disks', 'vms', 'history'] as const).map((v) => (
          <button key={v} role="tab" aria-selected={view === v} className={view === v ? 'active' : ''} onClick={() => setView(v)} data-testid={`view-${v}`}>
            {v === 'disks' ? 'Disks' : v === 'vms' ? 'Virtual machines' : 'History'}
          </button>
        ))}
      </nav>
      {view === 'vms' && <VmsView disks={disks} activeJobs={activeJobs} onSparsify={(d) => setDialog([d])} onOpenDisk={(d) => setOpenDisk(d.id)} onError={setMessage} />}
      {view === 'history' && (
        <main>
          <HistoryView version={jobsVersion} />
          <aside>
            <PolicyPanel onError={setMessage} />
          </aside>
        </main>
      )}
      <div className="toolbar" hidden={view !== 'disks'}>
        <input type="search" placeholder="Filter by name" value={filter} onChange={(e) => setFilter(e.target.value)} aria-label="filter" />
        <select value={statusFilter} onChange={(e) => setStatusFilter(e.target.value as '' | Disk['status'])} aria-label="status filter">
          <option value="">any status</option>
          <option value="ok">OK</option>
          <option value="locked">locked</option>
          <option value="in-use">in use</option>
          <option value="illegal">illegal</option>
        </select>
        <label>
          <input type="checkbox" checked={needsOnly} onChange={(e) => setNeedsOnly(e.target.checked)} /> needs sparsify only
        </label>
        <button className="primary" disabled={!selectedDisks.length} title={selectedDisks.length ? undefined : 'Select disks that can be sparsified'} onClick={() => setDialog(selectedDisks)} data-testid="sparsify-selected">
          Sparsify selected ({selectedDisks.length})
        </button>
        <button onClick={() => void api.rescan().catch((e: Error) => setMessage(e.message))}>Rescan</button>
      </div>
      <main hidden={view !== 'disks'}>
        <DisksTable
          disks={visible}
          activeJobs={activeJobs}
          selected={selected}
          sort={sort}
          onSort={(key) => setSort((s) => ({ key, dir: s.key === key ? (s.dir === 1 ? -1 : 1) : 1 }))}
          onToggle={(id) =>
            setSelected((s) => {
              const n = new Set(s);
              if (n.has(id)) n.delete(id);
              else n.add(id);
              return n;
            })
          }
          onToggleAll={(ids) => setSelected(new Set(ids))}
          onSparsify={(d) => setDialog([d])}
          onOpen={(d) => setOpenDisk(d.id)}
        />
        <aside>
          <HostsPanel hosts={hosts} />
          <DomainsPanel domains={domains} onChanged={(d) => setDomains((l) => l.map((x) => (x.id === d.id ? d : x)))} />
          <JobsPanel jobs={jobList} onCancel={(j) => void cancelJob(j)} />
          <EventsPanel events={events} />
        </aside>
      </main>
      {openDisk && disks.get(openDisk) && <DiskDetails disk={disks.get(openDisk)!} version={jobsVersion} onClose={() => setOpenDisk(null)} />}
      {dialog && <SparsifyDialog disks={dialog} info={info} onCancel={() => setDialog(null)} onConfirm={onConfirm} />}
      <footer className="muted small">
        sparsify {info?.version} · host {info?.host} · {info?.database === 'postgres' ? 'cluster on PostgreSQL' : 'single host on SQLite'} · domains: {info?.domains.map((d) => `${d.name} (${d.path})`).join(', ')} · <a href="/api/docs">API</a>
      </footer>
    </div>
  );
}
