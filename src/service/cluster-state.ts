/**
 * What every request needs to know of the cluster and would otherwise ask the database each time:
 * which domains the up hosts reach (and their settings), and the policy. Kept in memory, dropped when the bus says the
 * hosts or the policy changed (on any host), and re-read at least every few seconds in case such
 * a word was lost.
 */
import type { Bus } from './bus.js';
import type { Store } from './store/store.js';
import type { PolicyConfig } from './config.js';
import { domainStates, type DomainState } from './views.js';

const MAX_AGE_MS = 5000;

export class ClusterState {
  private domains: { value: Promise<Map<string, DomainState>>; at: number } | undefined;
  private policyCache: { value: Promise<PolicyConfig>; at: number } | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly store: Store,
    bus: Bus,
    private readonly loadPolicy: () => Promise<PolicyConfig>,
  ) {
    this.unsubscribe = bus.subscribe((m) => {
      if (m.type === 'hosts' || m.type === 'domains' || m.type === 'resync') this.domains = undefined;
      if (m.type === 'policy' || m.type === 'resync') this.policyCache = undefined;
    });
  }

  private fresh<T>(c: { value: Promise<T>; at: number } | undefined): c is { value: Promise<T>; at: number } {
    return !!c && Date.now() - c.at < MAX_AGE_MS;
  }

  domainStates(): Promise<Map<string, DomainState>> {
    if (!this.fresh(this.domains)) {
      const value = domainStates(this.store);
      // A failed read is not kept.
      value.catch(() => (this.domains = undefined));
      this.domains = { value, at: Date.now() };
    }
    return this.domains.value;
  }

  async domain(id: string): Promise<DomainState | undefined> {
    return (await this.domainStates()).get(id);
  }

  policy(): Promise<PolicyConfig> {
    if (!this.fresh(this.policyCache)) {
      const value = this.loadPolicy();
      value.catch(() => (this.policyCache = undefined));
      this.policyCache = { value, at: Date.now() };
    }
    return this.policyCache.value;
  }

  close(): void {
    this.unsubscribe();
  }
}
