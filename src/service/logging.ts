/**
 * Structured logs: JSON lines through pino (fastify's own logger), on stderr, one object per line
 * with the level, the time, this host's name and a message; request lines carry fastify's request
 * id, job lines the job's id. `--log-level` chooses how much.
 */
import pino from 'pino';
import type { Logger } from './context.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

function wrap(p: pino.Logger): Logger {
  return {
    info: (msg, fields) => p.info(fields ?? {}, msg),
    warn: (msg, fields) => p.warn(fields ?? {}, msg),
    error: (msg, fields) => p.error(fields ?? {}, msg),
    debug: (msg, fields) => p.debug(fields ?? {}, msg),
    child: (fields) => wrap(p.child(fields)),
  };
}

export function createLogger(level: LogLevel, host: string): { log: Logger; pino: pino.Logger } {
  // Synchronous: the last lines before an exit are not lost.
  const p = pino({ level, base: { pid: process.pid, host }, name: 'sparsify' }, pino.destination({ dest: 2, sync: true }));
  return { log: wrap(p), pino: p };
}

/** For library callers and tests: a Logger that says nothing. */
export const silentLogger: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined, child: () => silentLogger };
