/**
 * The engine's threads for the service: sparsify operations and analyses run in a fixed pool of
 * worker threads (piscina), one per job slot and one for the scanner, so the main thread only
 * answers requests, talks to the database and keeps time. The calls look like the library's:
 * the same events, a signal that stops the work between ranges.
 */
import { MessageChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import type { OperationEvents } from '../../index.js';
import type { AnalyzeResult, EngineTask, InPlaceSummary, MainMessage, WorkerMessage } from './protocol.js';

/** How long the threads may take to load the engine at start. */
const READY_MS = 30_000;

/** How long a finished task's last messages are waited for (only if its thread died before saying 'end'). */
const DRAIN_MS = 1000;

export class EnginePool {
  private readonly pool: Piscina;

  /** `keysFile`: LUKS keys for every task (checked by the service at start). */
  constructor(
    private readonly threads: number,
    private readonly keysFile?: string,
    onError: (e: Error) => void = () => undefined,
  ) {
    // Under tsx the sources are .ts; once built they are .js next to this module.
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    this.pool = new Piscina({
      filename: new URL(`./worker${ext}`, import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      // Threads stay: loading the engine costs more than most jobs.
      idleTimeout: 0,
      concurrentTasksPerWorker: 1,
    });
    // A thread that dies fails its task (the job fails and says why); it must not take the host down.
    this.pool.on('error', onError);
  }

  private async runTask<T>(task: EngineTask, events: OperationEvents = {}): Promise<T> {
    const { port1, port2 } = new MessageChannel();
    // The result comes back on piscina's own channel, so it may overtake the task's last messages
    // (the final progress, a warning); the task's 'end' on this port says they have all arrived.
    let ended: () => void = () => undefined;
    const drained = new Promise<void>((r) => (ended = r));
    port1.on('message', (m: WorkerMessage) => {
      if (m.type === 'progress') events.onProgress?.({ done: m.done, total: m.total });
      else if (m.type === 'warning') events.onWarning?.(m.text);
      else if (m.type === 'status') events.onStatus?.(m.text);
      else ended();
    });
    port1.once('close', () => ended());
    const abort = () => port1.postMessage({ type: 'abort' } satisfies MainMessage);
    if (events.signal?.aborted) abort();
    events.signal?.addEventListener('abort', abort, { once: true });
    try {
      return (await this.pool.run({ task: { ...task, keysFile: this.keysFile }, port: port2 }, { transferList: [port2] })) as T;
    } finally {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, DRAIN_MS)))]);
      clearTimeout(timer);
      events.signal?.removeEventListener('abort', abort);
      port1.close();
    }
  }

  /**
   * Every thread loads the engine and answers, or this throws saying why. A thread that cannot
   * load it (a missing native library, a broken install) would otherwise leave every task waiting.
   */
  async ready(timeoutMs = READY_MS): Promise<void> {
    const cannotStart = (e: Error) => new Error(`the engine's threads could not start: ${e.message}`);
    let timer: NodeJS.Timeout | undefined;
    let onError: ((e: Error) => void) | undefined;
    // A thread that fails to load may reject its task or only emit 'error': either ends the wait.
    const failed = new Promise<never>((_, reject) => {
      onError = (e) => reject(cannotStart(e));
      this.pool.once('error', onError);
      timer = setTimeout(() => reject(new Error(`the engine's threads did not start within ${timeoutMs / 1000} s`)), timeoutMs);
    });
    try {
      const pings = Promise.all(Array.from({ length: this.threads }, () => this.runTask({ op: 'ping' })));
      await Promise.race([pings.catch((e: Error) => Promise.reject(cannotStart(e))), failed]);
    } finally {
      clearTimeout(timer);
      if (onError) this.pool.off('error', onError);
    }
  }

  /** The report's figures come back; the disk map stays in the thread. */
  inPlace(req: Omit<Extract<EngineTask, { op: 'in-place' }>, 'op'>, events: OperationEvents): Promise<InPlaceSummary> {
    return this.runTask({ op: 'in-place', ...req }, events);
  }

  copy(req: Omit<Extract<EngineTask, { op: 'copy' }>, 'op'>, events: OperationEvents): Promise<void> {
    return this.runTask({ op: 'copy', ...req }, events);
  }

  analyze(path: string, format?: string): Promise<AnalyzeResult> {
    return this.runTask({ op: 'analyze', path, format });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
