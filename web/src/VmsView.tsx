import { useEffect, useState } from 'react';
import { bytes, type Disk, type Job } from './api';
import { vmApi, VM_STATE_TEXT, type Policy, type Vm, type VmSource } from './api-vms';
import { TrimDialog } from './TrimDialog';

/** The VM list is read again this often while the view is open (VMs come and go outside the service). */
const REFRESH_MS = 3000;

const vmKey = (v: Vm) => `${v.host}/${v.id}`;

/**
 * oVirt's Virtual Machines tab: every host's VMs with their state; the selected VM's Disks subtab
 * lists its disks with what each would give back. A VM that is down has each disk's Sparsify
 * button; on a running VM that button becomes Trim (its guest agent trims every filesystem, the
 * VM keeps running), disabled with the reason where trimming cannot work.
 */
export function VmsView(props: { disks: Map<string, Disk>; onWatch: (diskIds: string[]) => void; activeJobs: Map<string, Job>; onSparsify: (d: Disk) => void; onOpenDisk: (d: Disk) => void; onError: (m: string) => void }) {
  const [vms, setVms] = useState<Vm[] | null>(null);
  const [sources, setSources] = useState<VmSource[]>([]);
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<'disks' | 'general'>('disks');
  /** The VM whose Trim dialog is open. */
  const [trimming, setTrimming] = useState<Vm | null>(null);

  useEffect(() => {
    let live = true;
    const load = () =>
      void vmApi.vms().then(
        (r) => {
          if (!live) return;
          setVms(r.vms);
          setSources(r.sources);
        },
        () => undefined,
      );
    load();
    const t = setInterval(load, REFRESH_MS);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);

  const refresh = async () => {
    try {
      const r = await vmApi.refreshVms();
      setVms(r.vms);
      setSources(r.sources);
    } catch (e) {
      props.onError(`Cannot refresh the VMs: ${(e as Error).message}`);
    }
  };

  const list = vms ?? [];
  const vm = list.find((v) => vmKey(v) === selected) ?? list[0];
  // The selected VM's disks are read one by one (the table holds only a page of them) and followed live.
  const diskIds = vm ? vm.disks.flatMap((d) => (d.diskId ? [d.diskId] : [])).join(',') : '';
  const { onWatch } = props;
  useEffect(() => onWatch(diskIds ? diskIds.split(',') : []), [diskIds, onWatch]);
  return (
    <div className="vms" data-testid="vms-view">
      <section className="vm-list">
        <div className="toolbar">
          <b>Virtual machines</b>
          <button onClick={() => void refresh()} data-testid="vms-refresh">
            Refresh
          </button>
        </div>
        {vms === null && <p className="muted">Loading…</p>}
        {vms !== null && list.length === 0 && <p className="muted">{sources.length ? 'No VMs are defined on the hosts.' : 'No host reads VMs from libvirt (start sparsify serve with --libvirt URI).'}</p>}
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>Host</th>
              <th>Status</th>
              <th className="num">Disks</th>
              <th title="The guest agent's channel: connected when qemu-guest-agent runs in the guest">Agent</th>
              <th title="Every disk passes the guest's discards through (discard='unmap')">Discard</th>
            </tr>
          </thead>
          <tbody>
            {list.map((v) => (
              <tr key={vmKey(v)} className={vm && vmKey(vm) === vmKey(v) ? 'selected' : ''} onClick={() => setSelected(vmKey(v))} data-testid="vm-row" data-vm-name={v.name} data-vm-state={v.state}>
                <td>
                  <button className="link" data-testid="vm-name">
                    {v.name}
                  </button>
                </td>
                <td>{v.host}</td>
                <td>
                  <span className={`badge vm-${v.up ? 'up' : 'down'}`} title={v.reason ?? undefined}>
                    {VM_STATE_TEXT[v.state] ?? v.state}
                  </span>
                </td>
                <td className="num">{v.disks.length}</td>
                <td data-testid="vm-agent">{v.agent === null ? '—' : v.agent === 'connected' ? 'yes' : v.agent === 'none' ? 'no' : 'not connected'}</td>
                <td data-testid="vm-discard">{v.discard === null ? '—' : v.discard ? 'unmap' : 'no'}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {sources.map((s) => (
          <div key={s.host} className={`small ${s.error ? 'error' : 'muted'}`}>
            {s.host}: {s.uri} · read {new Date(s.refreshedAt).toLocaleTimeString()}
            {s.error ? ` · ${s.error}` : ''}
          </div>
        ))}
      </section>
      {vm && (
        <section className="vm-detail panel" data-testid="vm-detail" data-vm-name={vm.name}>
          <h2>{vm.name}</h2>
          <div className="subtabs" role="tablist">
            <button role="tab" aria-selected={tab === 'disks'} className={tab === 'disks' ? 'active' : ''} onClick={() => setTab('disks')} data-testid="vm-tab-disks">
              Disks
            </button>
            <button role="tab" aria-selected={tab === 'general'} className={tab === 'general' ? 'active' : ''} onClick={() => setTab('general')}>
              General
            </button>
          </div>
          {tab === 'general' ? (
            <dl className="small">
              <dt>UUID</dt>
              <dd>{vm.id}</dd>
              <dt>Host</dt>
              <dd>{vm.host}</dd>
              <dt>State</dt>
              <dd>
                {VM_STATE_TEXT[vm.state] ?? vm.state}
                {vm.reason ? ` (${vm.reason})` : ''}
              </dd>
            </dl>
          ) : (
            <>
              {vm.trim && <TrimBar vm={vm} onTrim={() => setTrimming(vm)} />}
              <VmDisks vm={vm} disks={props.disks} activeJobs={props.activeJobs} onSparsify={props.onSparsify} onTrim={() => setTrimming(vm)} onOpenDisk={props.onOpenDisk} />
            </>
          )}
        </section>
      )}
      {trimming && <TrimDialog vm={trimming} disks={props.disks} onClose={() => setTrimming(null)} />}
    </div>
  );
}

/** A running VM's action: Trim through its guest agent (its disks cannot be sparsified while it runs). */
function TrimBar(props: { vm: Vm; onTrim: () => void }) {
  const [policy, setPolicy] = useState<Policy | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    void vmApi.policy().then(setPolicy, () => undefined);
  }, [props.vm.id]);
  const t = props.vm.trim!;
  const opted = policy?.trimVms?.includes(props.vm.id) ?? false;
  const toggle = async () => {
    const list = policy?.trimVms ?? [];
    try {
      setPolicy(await vmApi.setPolicy({ trimVms: opted ? list.filter((x) => x !== props.vm.id) : [...list, props.vm.id] }));
      setError(null);
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return (
    <div className="toolbar" data-testid="vm-trim">
      <button className="primary" onClick={props.onTrim} disabled={!t.allowed} title={t.reason} data-testid="trim-button">
        Trim
      </button>
      <span className="small muted"> The guest gives its free space back through its agent, without downtime.</span>{' '}
      <label className="small" title="While the schedule is on, trim this VM when one of its disks needs sparsify">
        <input type="checkbox" checked={opted} disabled={!policy} onChange={() => void toggle()} data-testid="trim-schedule" /> Trim on the schedule
        {policy && !policy.scheduleEnabled ? ' (the schedule is off)' : ''}
      </label>
      {error && <div className="reason">{error}</div>}
      {!t.allowed && t.reason && (
        <div className="reason" data-testid="trim-reason" data-code={t.code}>
          {t.reason}
        </div>
      )}
    </div>
  );
}

function VmDisks(props: { vm: Vm; disks: Map<string, Disk>; activeJobs: Map<string, Job>; onSparsify: (d: Disk) => void; onTrim: () => void; onOpenDisk: (d: Disk) => void }) {
  const trim = props.vm.trim;
  return (
    <table className="small" data-testid="vm-disks">
      <thead>
        <tr>
          <th>Device</th>
          <th>Disk</th>
          <th className="num">Virtual size</th>
          <th className="num">Actual size</th>
          <th className="num">Reclaimable</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.vm.disks.length === 0 && (
          <tr>
            <td colSpan={6} className="muted">
              This VM has no disks.
            </td>
          </tr>
        )}
        {props.vm.disks.map((vd) => {
          const d = vd.diskId ? props.disks.get(vd.diskId) : undefined;
          const job = d ? props.activeJobs.get(d.id) : undefined;
          return (
            <tr key={vd.target} data-testid="vm-disk-row" data-disk-name={d?.name ?? ''}>
              <td>
                {vd.target} <span className="muted">({vd.device})</span>
              </td>
              <td>
                {d ? (
                  <button className="link" onClick={() => props.onOpenDisk(d)}>
                    {d.domain}: {d.path}
                  </button>
                ) : (
                  <span className="muted" title="Not in a storage domain of the service">
                    {vd.source ?? 'empty'}
                  </span>
                )}
                {d && d.analysis.snapshotOnlyBytes ? <div className="muted">{bytes(d.analysis.snapshotOnlyBytes)} held by earlier snapshots</div> : null}
              </td>
              <td className="num">{bytes(d?.virtualSize)}</td>
              <td className="num" data-testid="actual-size" data-bytes={d?.actualSize ?? ''}>
                {bytes(d?.actualSize)}
              </td>
              <td className="num">{d ? (d.analysis.state === 'done' ? bytes(d.reclaimableBytes) : d.analysis.state === 'failed' ? 'n/a' : 'analyzing…') : '—'}</td>
              <td>
                {d && trim && (
                  <>
                    <button onClick={props.onTrim} disabled={!trim.allowed} title={trim.allowed ? `Trim ${props.vm.name} through its guest agent (every filesystem; the VM keeps running)` : trim.reason} data-testid="trim-disk-button">
                      Trim
                    </button>
                    {!trim.allowed && trim.reason && (
                      <div className="reason" data-testid="trim-disk-reason" data-code={trim.code}>
                        {trim.reason}
                      </div>
                    )}
                  </>
                )}
                {d && !trim && (
                  <>
                    <button onClick={() => props.onSparsify(d)} disabled={!d.sparsify.allowed} title={d.sparsify.reason} data-testid="sparsify-button">
                      Sparsify
                    </button>
                    {!d.sparsify.allowed && d.sparsify.reason && (
                      <div className="reason" data-testid="sparsify-reason">
                        {d.sparsify.reason}
                      </div>
                    )}
                    {job && (
                      <div className="live">
                        <progress max={100} value={job.progress.percent} /> <span data-testid="live-percent">{job.progress.percent}%</span> <span className="muted">{job.status === 'running' ? (job.step ?? '') : job.status}</span>
                      </div>
                    )}
                  </>
                )}
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
