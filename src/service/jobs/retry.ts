/** Waiting out a database outage: a write that must land (a job's end) is tried again until it does. */
import { isUnavailable } from '../store/db.js';

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Run `fn` until it succeeds, waiting 0.5 s growing to 5 s after each "database unavailable".
 * Other errors are thrown at once. Gives up (throwing the last error) after `deadline` (ms since
 * the epoch), if given.
 */
export async function untilAvailable<T>(fn: () => Promise<T>, opts: { deadline?: number; onWait?: (e: Error) => void } = {}): Promise<T> {
  let delay = 500;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (!isUnavailable(e)) throw e;
      if (opts.deadline !== undefined && Date.now() + delay > opts.deadline) throw e;
      opts.onWait?.(e as Error);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}
