/**
 * This host's storage domains: the configured folders, the UUID each one holds, and whether it is
 * reachable right now. The only place that turns a disk record into a path on this host: a domain
 * that is not reachable here (unmounted, unreadable, another share mounted in its place) yields no
 * path, so no job and no scan touches it.
 */
import { lstatSync } from 'node:fs';
import { isAbsolute, resolve, sep } from 'node:path';
import type { ServiceContext } from '../context.js';
import type { DiskRecord } from '../store/records.js';
import { legacyDomainId } from '../store/migrations.js';
import { attachDomain, readIdentity, DomainError } from './identity.js';
import { canPunchHoles } from './host-probe.js';
import { isDeviceLink } from './device-probe.js';

export interface Mount {
  id: string;
  name: string;
  /** Real path of the folder on this host. */
  root: string;
  reachable: boolean;
  canDiscard: boolean;
  error: string | null;
}

export class DomainUnreachableError extends Error {}

export class Mounts {
  private readonly byId = new Map<string, Mount>();

  constructor(
    private readonly ctx: ServiceContext,
    private readonly paths: readonly string[],
  ) {}

  /**
   * Attach every configured folder (creating its identity on first attach) and record it. A 0.1.0
   * database named domains by their position in the configuration: those disks get the UUID now.
   */
  async attach(): Promise<void> {
    for (const [index, path] of this.paths.entries()) {
      const { root, identity, created } = await attachDomain(path);
      if (this.byId.has(identity.id)) throw new DomainError(`${path} and ${this.byId.get(identity.id)!.root} are the same storage domain (${identity.id})`);
      const m: Mount = { id: identity.id, name: identity.name, root, reachable: true, canDiscard: canPunchHoles(root), error: null };
      this.byId.set(m.id, m);
      await this.ctx.store.hosts.putDomain(identity);
      await this.publish(m);
      const adopted = await this.ctx.store.disks.adoptLegacyDomain(legacyDomainId(index), m.id);
      if (created) await this.ctx.record({ severity: 'info', type: 'domain-attached', diskId: null, jobId: null, message: `Storage domain ${m.name} (${m.id}) created at ${root} on ${this.ctx.host}` });
      if (adopted) this.ctx.log.info(`domain ${root}: ${adopted} disks of the previous release now belong to domain ${m.id}`);
    }
    await this.ctx.store.hosts.pruneMounts(this.ctx.host, [...this.byId.keys()]);
  }

  private async publish(m: Mount): Promise<void> {
    await this.ctx.store.hosts.putMount({ host: this.ctx.host, domainId: m.id, path: m.root, reachable: m.reachable, canDiscard: m.canDiscard, error: m.error, checkedAt: Date.now() });
  }

  /** Re-read each domain's identity; record the ones that went away or came back. Returns those. */
  async check(): Promise<Mount[]> {
    const changed: Mount[] = [];
    for (const m of this.byId.values()) {
      let error: string | null = null;
      try {
        const id = await readIdentity(m.root);
        if (id.id !== m.id) error = `${m.root} now holds another storage domain (${id.id})`;
      } catch (e) {
        error = (e as Error).message;
      }
      const reachable = error === null;
      if (reachable === m.reachable) continue;
      m.reachable = reachable;
      m.error = error;
      if (reachable) m.canDiscard = canPunchHoles(m.root);
      changed.push(m);
      await this.publish(m);
      await this.ctx.record(
        reachable
          ? { severity: 'info', type: 'domain-reachable', diskId: null, jobId: null, message: `Storage domain ${m.name} is reachable again on ${this.ctx.host}` }
          : { severity: 'error', type: 'domain-unreachable', diskId: null, jobId: null, message: `Storage domain ${m.name} is unreachable on ${this.ctx.host}: ${error}` },
      );
    }
    if (changed.length) this.ctx.bus.publish({ type: 'hosts' });
    return changed;
  }

  list(): Mount[] {
    return [...this.byId.values()];
  }

  get(id: string): Mount | undefined {
    return this.byId.get(id);
  }

  reachableIds(): string[] {
    return this.list()
      .filter((m) => m.reachable)
      .map((m) => m.id);
  }

  /**
   * The file behind a disk record on this host, checked again on every use: its domain reachable
   * here, the path inside it, a regular file, or a symlink that leads to a block device (the only
   * symlinks that are disks). Throws otherwise.
   */
  pathOf(d: Pick<DiskRecord, 'id' | 'domainId' | 'rel'>): string {
    const m = this.byId.get(d.domainId);
    if (!m) throw new DomainUnreachableError(`disk ${d.id}: its storage domain is not mounted on ${this.ctx.host}`);
    if (!m.reachable) throw new DomainUnreachableError(`disk ${d.id}: storage domain ${m.name} is unreachable on ${this.ctx.host} (${m.error})`);
    if (isAbsolute(d.rel) || d.rel.split(/[\\/]/).includes('..')) throw new Error(`disk ${d.id}: its location is outside the storage domain`);
    const full = resolve(m.root, d.rel);
    if (!full.startsWith(m.root + sep)) throw new Error(`disk ${d.id}: its location is outside the storage domain`);
    let st;
    try {
      st = lstatSync(full);
    } catch (e) {
      throw new Error(`${d.rel} is no longer in storage domain ${m.name} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    if (st.isSymbolicLink()) {
      if (!isDeviceLink(full)) throw new Error(`${d.rel} in storage domain ${m.name} is a symlink that no longer leads to a block device`);
    } else if (!st.isFile()) throw new Error(`${d.rel} in storage domain ${m.name} is no longer a regular file`);
    return full;
  }
}
