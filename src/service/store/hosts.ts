/**
 * Hosts, storage domains and which host reaches which domain. Liveness is judged on the
 * database's clock, so hosts with skewed clocks still agree on who is late.
 */
import type { Db } from './db.js';
import type { CompactionSetting, DomainRecord, HostDomain, HostRecord } from './records.js';

type HostRow = { name: string; instance: string; status: HostRecord['status']; version: string; url: string | null; started_at: number; last_heartbeat: number; concurrency: number };
const decodeHost = (r: HostRow): HostRecord => ({ name: r.name, instance: r.instance, status: r.status, version: r.version, url: r.url, startedAt: r.started_at, lastHeartbeat: r.last_heartbeat, concurrency: r.concurrency });

type HostDomainRow = { host: string; domain_id: string; path: string; reachable: number; can_discard: number; error: string | null; checked_at: number };
type DomainRow = { id: string; name: string; created_at: number; compaction: CompactionSetting };
const decodeDomain = (r: DomainRow): DomainRecord => ({ id: r.id, name: r.name, createdAt: r.created_at, compaction: r.compaction });

const decodeHostDomain = (r: HostDomainRow): HostDomain => ({ host: r.host, domainId: r.domain_id, path: r.path, reachable: !!r.reachable, canDiscard: !!r.can_discard, error: r.error, checkedAt: r.checked_at });

export class Hosts {
  constructor(private readonly db: Db) {}

  /**
   * Register this process as host `h.name`. Refused (the live record is returned) when another
   * process uses the name and heartbeated within `timeoutMs`: two processes must never share one.
   */
  async register(h: Omit<HostRecord, 'lastHeartbeat' | 'status'>, timeoutMs: number): Promise<{ ok: true } | { ok: false; holder: HostRecord; ageMs: number }> {
    return this.db.transaction(async (tx) => {
      const now = await this.now(tx);
      const row = await tx.get<HostRow>(`SELECT * FROM hosts WHERE name = ?${tx.lockRows}`, [h.name]);
      if (row && row.status === 'up' && row.instance !== h.instance && now - row.last_heartbeat < timeoutMs) return { ok: false as const, holder: decodeHost(row), ageMs: now - row.last_heartbeat };
      await tx.run(
        `INSERT INTO hosts (name, instance, status, version, url, started_at, last_heartbeat, concurrency) VALUES (?, ?, 'up', ?, ?, ?, ${tx.nowMs}, ?)
         ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, status = 'up', version = excluded.version, url = excluded.url,
           started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat, concurrency = excluded.concurrency`,
        [h.name, h.instance, h.version, h.url, h.startedAt, h.concurrency],
      );
      return { ok: true as const };
    });
  }

  /** The database's clock, in ms. */
  async now(db: Db = this.db): Promise<number> {
    return (await db.get<{ now: number }>(`SELECT ${db.nowMs} AS now`))!.now;
  }

  /** Beat; false when the record is no longer ours (retired, or taken by another instance). */
  async heartbeat(name: string, instance: string): Promise<boolean> {
    return (await this.db.run(`UPDATE hosts SET last_heartbeat = ${this.db.nowMs}, status = 'up' WHERE name = ? AND instance = ?`, [name, instance])) === 1;
  }

  async setUrl(name: string, instance: string, url: string): Promise<void> {
    await this.db.run('UPDATE hosts SET url = ? WHERE name = ? AND instance = ?', [url, name, instance]);
  }

  async markStopped(name: string, instance: string): Promise<void> {
    await this.db.run("UPDATE hosts SET status = 'stopped' WHERE name = ? AND instance = ?", [name, instance]);
  }

  /** Hosts that were up and missed their heartbeats for `timeoutMs` become non-responsive; returns them. */
  async sweep(timeoutMs: number): Promise<string[]> {
    const rows = await this.db.all<{ name: string }>(`UPDATE hosts SET status = 'non-responsive' WHERE status = 'up' AND last_heartbeat < ${this.db.nowMs} - ? RETURNING name`, [timeoutMs]);
    return rows.map((r) => r.name);
  }

  async list(): Promise<HostRecord[]> {
    return (await this.db.all<HostRow>('SELECT * FROM hosts ORDER BY name')).map(decodeHost);
  }

  async get(name: string): Promise<HostRecord | undefined> {
    const r = await this.db.get<HostRow>('SELECT * FROM hosts WHERE name = ?', [name]);
    return r && decodeHost(r);
  }

  /** Retire a host that is not up: its record and its domain mounts go. */
  async remove(name: string): Promise<'removed' | 'up' | 'unknown'> {
    return this.db.transaction(async (tx) => {
      const r = await tx.get<HostRow>(`SELECT * FROM hosts WHERE name = ?${tx.lockRows}`, [name]);
      if (!r) return 'unknown';
      if (r.status === 'up') return 'up';
      await tx.run('DELETE FROM host_domains WHERE host = ?', [name]);
      await tx.run('DELETE FROM hosts WHERE name = ?', [name]);
      return 'removed';
    });
  }

  async putMount(m: HostDomain): Promise<void> {
    await this.db.run(
      `INSERT INTO host_domains (host, domain_id, path, reachable, can_discard, error, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (host, domain_id) DO UPDATE SET path = excluded.path, reachable = excluded.reachable, can_discard = excluded.can_discard,
         error = excluded.error, checked_at = excluded.checked_at`,
      [m.host, m.domainId, m.path, m.reachable ? 1 : 0, m.canDiscard ? 1 : 0, m.error, m.checkedAt],
    );
  }

  /** Forget mounts of this host that are no longer configured. */
  async pruneMounts(host: string, keep: readonly string[]): Promise<void> {
    const rows = await this.db.all<{ domain_id: string }>('SELECT domain_id FROM host_domains WHERE host = ?', [host]);
    for (const r of rows) if (!keep.includes(r.domain_id)) await this.db.run('DELETE FROM host_domains WHERE host = ? AND domain_id = ?', [host, r.domain_id]);
  }

  async mounts(): Promise<HostDomain[]> {
    return (await this.db.all<HostDomainRow>('SELECT * FROM host_domains ORDER BY host, domain_id')).map(decodeHostDomain);
  }

  /** Record a domain a host attached (its identity file's facts); its settings are kept as they are. */
  async putDomain(d: Pick<DomainRecord, 'id' | 'name' | 'createdAt'>): Promise<void> {
    await this.db.run('INSERT INTO domains (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name', [d.id, d.name, d.createdAt]);
  }

  async domains(): Promise<DomainRecord[]> {
    return (await this.db.all<DomainRow>('SELECT id, name, created_at, compaction FROM domains ORDER BY name, id')).map(decodeDomain);
  }

  async domain(id: string): Promise<DomainRecord | undefined> {
    const r = await this.db.get<DomainRow>('SELECT id, name, created_at, compaction FROM domains WHERE id = ?', [id]);
    return r && decodeDomain(r);
  }

  /** Change a domain's compaction setting; undefined when there is no such domain. */
  async setCompaction(id: string, compaction: CompactionSetting): Promise<DomainRecord | undefined> {
    const rows = await this.db.all<DomainRow>('UPDATE domains SET compaction = ? WHERE id = ? RETURNING id, name, created_at, compaction', [compaction, id]);
    return rows[0] && decodeDomain(rows[0]);
  }
}
