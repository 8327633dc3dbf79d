/** In-process notifications that the live stream (SSE) forwards to browsers. */
import { EventEmitter } from 'node:events';

export type BusMessage =
  | { type: 'disk'; data: unknown }
  | { type: 'disk-removed'; data: { id: string } }
  | { type: 'job'; data: unknown }
  | { type: 'progress'; data: { jobId: string; diskId: string; done: number; total: number } }
  | { type: 'event'; data: unknown };

export class Bus {
  private readonly ee = new EventEmitter();

  constructor() {
    // Every open browser tab is one listener.
    this.ee.setMaxListeners(0);
  }

  publish(m: BusMessage): void {
    this.ee.emit('message', m);
  }

  subscribe(fn: (m: BusMessage) => void): () => void {
    this.ee.on('message', fn);
    return () => this.ee.off('message', fn);
  }
}
