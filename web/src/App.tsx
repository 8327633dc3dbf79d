import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { api, openStream, MAX_STREAM_DISKS, getToken, setToken, newerJob, ApiError, type Disk, type Domain, type Job, type ServiceEvent, type Info, type Host, type StreamHandlers } from './api';
import { diskApi, DEFAULT_QUERY, type DiskQuery, type SortField, type Summary } from './api-disks';
import { DisksTable } from './DisksTable';
import { DiskFilters } from './DiskFilters';
import { SummaryLine, SummaryPanel } from './SummaryPanel';
import { useDiskPages } from './useDiskPages';
import { SparsifyDialog } from './SparsifyDialog';
import { JobsPanel, EventsPanel } from './JobsPanel';
import { HostsPanel } from './HostsPanel';
import { DomainsPanel } from './DomainsPanel';
import { VmsView } from './VmsView';
import { HistoryView } from './HistoryView';
import { PolicyPanel } from './PolicyPanel';
import { DiskDetails } from './DiskDetails';

type View = 'disks' | 'vms' | 'history';

/** Heartbeat ages move on their own: the hosts panel is re-read this often. */
const HOSTS_REFRESH_MS = 5000;
/** The rows on screen settle this long before the live stream is reopened for them. */
const STREAM_DEBOUNCE_MS = 300;
/** The previous stream stays open this long after the next one is asked for, so no change falls between them. */
const STREAM_OVERLAP_MS = 1500;

const sameQuery = (a: DiskQuery, b: DiskQuery) => (Object.keys(a) as Array<keyof DiskQuery>).every((k) => a[k] === b[k]);

export function App() {
  const [info, setInfo] = useState<Info | null>(null);
  const [summary, setSummary] = useState<Summary | null>(null);
  /** Disks shown outside the table (a VM's disks, the details pane), by id. */
  const [extra, setExtra] = useState<Map<string, Disk>>(new Map());
  /** The VM view's disks: fetched one by one and followed by the live stream. */
  const [vmDiskIds, setVmDiskIds] = useState<string[]>([]);
  const [jobs, setJobs] = useState<Map<string, Job>>(new Map());
  const [events, setEvents] = useState<ServiceEvent[]>([]);
  const [hosts, setHosts] = useState<Host[]>([]);
  const [domains, setDomains] = useState<Domain[]>([]);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [query, setQuery] = useState<DiskQuery>(DEFAULT_QUERY);
  const [dialog, setDialog] = useState<Disk[] | null>(null);
  const [connected, setConnected] = useState(false);
  const [message, setMessage] = useState<string | null>(null);
  const [hasToken, setHasToken] = useState(!!getToken());
  const [view, setView] = useState<View>('disks');
  const [openDisk, setOpenDisk] = useState<string | null>(null);
  const [shownIds, setShownIds] = useState<string[]>([]);
  const pages = useDiskPages(query);

  const changeQuery = useCallback((p: Partial<DiskQuery>) => setQuery((old) => (sameQuery({ ...old, ...p }, old) ? old : { ...old, ...p })), []);
  const loadSummary = useCallback(() => void diskApi.summary().then(setSummary, () => undefined), []);
  const loadHosts = useCallback(() => void api.hosts().then(setHosts, () => undefined), []);
  const loadDomains = useCallback(() => void api.domains().then(setDomains, () => undefined), []);
  const load = useCallback(async () => {
    loadSummary();
    try {
      const [i, j, e] = await Promise.all([api.info(), api.jobs(), api.events()]);
      setInfo(i);
      setJobs((m) => new Map(j.map((x) => [x.id, newerJob(m.get(x.id), x)])));
      setEvents(e);
    } catch (err) {
      // A service reachable from the network wants the token for reads too.
      if (err instanceof ApiError && err.status === 401) setHasToken(false);
      setMessage(`Cannot reach the service: ${(err as Error).message}`);
    }
  }, [loadSummary]);

  /** Fetch disks the table may not hold (by id), keeping the ones already known. */
  const fetchExtra = useCallback((ids: string[], again = false) => {
    for (const id of ids) {
      void diskApi.one(id).then(
        (d) => setExtra((m) => (again || !m.has(id) ? new Map(m).set(id, d) : m)),
        () => undefined,
      );
    }
  }, []);

  useEffect(() => {
    void load();
    loadHosts();
    loadDomains();
    const hostsTimer = setInterval(loadHosts, HOSTS_REFRESH_MS);
    return () => clearInterval(hostsTimer);
  }, [load, loadHosts, loadDomains]);

  // The live stream's handlers read the latest state through a ref: the stream itself is reopened
  // only when the disks it follows change.
  const extraRef = useRef(extra);
  extraRef.current = extra;
  const wasDown = useRef(false);
  const reloadAll = () => {
    void load();
    loadHosts();
    loadDomains();
    pages.refresh();
    fetchExtra([...extraRef.current.keys()], true);
  };
  const handlers: StreamHandlers = {
    disk: (d) => {
      pages.patch(d);
      setExtra((m) => (m.has(d.id) ? new Map(m).set(d.id, d) : m));
    },
    summary: (x) => {
      // Disks came or went: the loaded rows are read again so they show up in their place.
      if (summary && x.disks !== summary.disks) pages.refresh();
      setSummary(x);
    },
    diskRemoved: (id) => {
      pages.remove(id);
      setExtra((m) => {
        if (!m.has(id)) return m;
        const n = new Map(m);
        n.delete(id);
        return n;
      });
    },
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
    // Every disk's view says how the domain's setting treats it: the loaded rows are read again.
    domains: () => {
      loadDomains();
      loadSummary();
      pages.refresh();
      fetchExtra([...extraRef.current.keys()], true);
    },
    resync: reloadAll,
    connected: (ok) => {
      setConnected(ok);
      // Back after a drop: what changed meanwhile was not sent.
      if (ok && wasDown.current) reloadAll();
      wasDown.current = !ok;
    },
  };
  const handlersRef = useRef(handlers);
  handlersRef.current = handlers;

  // The disks the stream follows: the table's rendered rows, the VM view's disks, the open disk.
  const watched = useMemo(() => [...new Set([...(view === 'disks' ? shownIds : []), ...(view === 'vms' ? vmDiskIds : []), ...(openDisk ? [openDisk] : [])])].slice(0, MAX_STREAM_DISKS).join(','), [view, shownIds, vmDiskIds, openDisk]);
  const [streamIds, setStreamIds] = useState<string | null>(null);
  useEffect(() => {
    const t = setTimeout(() => setStreamIds(watched), streamIds === null ? 0 : STREAM_DEBOUNCE_MS);
    return () => clearTimeout(t);
  }, [watched]);
  useEffect(() => {
    if (streamIds === null) return;
    const relay: StreamHandlers = {
      disk: (d) => handlersRef.current.disk(d),
      summary: (x) => handlersRef.current.summary(x),
      diskRemoved: (id) => handlersRef.current.diskRemoved(id),
      job: (j) => handlersRef.current.job(j),
      progress: (p) => handlersRef.current.progress(p),
      event: (e) => handlersRef.current.event(e),
      hosts: () => handlersRef.current.hosts(),
      domains: () => handlersRef.current.domains(),
      resync: () => handlersRef.current.resync(),
      connected: (ok) => handlersRef.current.connected(ok),
    };
    const close = openStream(relay, streamIds ? streamIds.split(',') : []);
    return () => void setTimeout(close, STREAM_OVERLAP_MS);
  }, [streamIds]);

  const watchVmDisks = useCallback(
    (ids: string[]) => {
      setVmDiskIds((old) => (old.join(',') === ids.join(',') ? old : ids));
      fetchExtra(ids);
    },
    [fetchExtra],
  );

  /** Every disk the UI holds now: the loaded rows and the ones shown elsewhere. */
  const known = useMemo(() => {
    const m = new Map(extra);
    for (const d of pages.rows) m.set(d.id, d);
    return m;
  }, [extra, pages.rows]);

  const openDetails = (d: Disk) => {
    setExtra((m) => new Map(m).set(d.id, d));
    setOpenDisk(d.id);
  };

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
  // A job that ended changed sizes: the totals are read again (the stream's summary may come later).
  useEffect(() => {
    if (jobsVersion) loadSummary();
  }, [jobsVersion, loadSummary]);

  const selectedDisks = [...selected].map((id) => known.get(id)).filter((d): d is Disk => !!d && d.sparsify.allowed);

  const onSort = useCallback((field: SortField) => setQuery((q) => ({ ...q, sort: field, dir: q.sort === field && q.dir === 'asc' ? 'desc' : 'asc' })), []);

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
        <SummaryLine summary={summary} />
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
      {view === 'vms' && <VmsView disks={known} onWatch={watchVmDisks} activeJobs={activeJobs} onSparsify={(d) => setDialog([d])} onOpenDisk={openDetails} onError={setMessage} />}
      {view === 'history' && (
        <main>
          <HistoryView version={jobsVersion} />
          <aside>
            <PolicyPanel onError={setMessage} />
          </aside>
        </main>
      )}
      <div className="toolbar" hidden={view !== 'disks'}>
        <DiskFilters query={query} domains={domains} onChange={changeQuery} />
        <button className="primary" disabled={!selectedDisks.length} title={selectedDisks.length ? undefined : 'Select disks that can be sparsified'} onClick={() => setDialog(selectedDisks)} data-testid="sparsify-selected">
          Sparsify selected ({selectedDisks.length})
        </button>
        <button onClick={() => void api.rescan().catch((e: Error) => setMessage(e.message))}>Rescan</button>
      </div>
      <main hidden={view !== 'disks'}>
        <DisksTable
          disks={pages.rows}
          more={pages.more}
          loading={pages.loading}
          error={pages.error}
          activeJobs={activeJobs}
          selected={selected}
          query={query}
          onSort={onSort}
          onLoadMore={pages.loadMore}
          onRetry={pages.retry}
          onShown={setShownIds}
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
          onOpen={openDetails}
        />
        <aside>
          <SummaryPanel summary={summary} />
          <HostsPanel hosts={hosts} />
          <DomainsPanel domains={domains} onChanged={(d) => setDomains((l) => l.map((x) => (x.id === d.id ? d : x)))} />
          <JobsPanel jobs={jobList} onCancel={(j) => void cancelJob(j)} />
          <EventsPanel events={events} />
        </aside>
      </main>
      {openDisk && known.get(openDisk) && <DiskDetails disk={known.get(openDisk)!} version={jobsVersion} onClose={() => setOpenDisk(null)} />}
      {dialog && <SparsifyDialog disks={dialog} info={info} onCancel={() => setDialog(null)} onConfirm={onConfirm} />}
      <footer className="muted small">
        sparsify {info?.version} · host {info?.host} · {info?.database === 'postgres' ? 'cluster on PostgreSQL' : 'single host on SQLite'} · domains: {info?.domains.map((d) => `${d.name} (${d.path})`).join(', ')} · <a href="/api/docs">API</a>
      </footer>
    </div>
  );
}
