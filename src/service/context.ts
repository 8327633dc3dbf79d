/** What every room of the service is handed: the store, the bus, this host, the settings and the log. */
import type { Store } from './store/store.js';
import type { Bus } from './bus.js';
import type { ServiceConfig } from './config.js';
import type { EventRecord, NewEvent } from './store/records.js';
import { isUnavailable } from './store/db.js';
import type { Metrics } from './metrics.js';
import type { Logger } from './logging.js';

export interface ServiceContext {
  readonly store: Store;
  readonly bus: Bus;
  readonly config: ServiceConfig;
  /** This host's name in the cluster. */
  readonly host: string;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Record an event and tell every host; never throws (an event lost while the database is away is logged). */
  record(e: NewEvent): Promise<EventRecord | undefined>;
}

export function eventRecorder(store: Store, bus: Bus, host: string, log: Logger): (e: NewEvent) => Promise<EventRecord | undefined> {
  return async (e) => {
    try {
      const ev = await store.events.add(e, host);
      bus.publish({ type: 'event', id: ev.id });
      return ev;
    } catch (err) {
      log[isUnavailable(err) ? 'warn' : 'error'](`event not recorded: ${e.message} (${(err as Error).message})`);
      return undefined;
    }
  };
}
