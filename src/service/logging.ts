/**
 * Logs through pino (fastify's own logger) on stderr, in one of two forms:
 * - json: one object per line with the level, the time, this host's name and a message; request
 *   lines carry fastify's request id, job lines the job's id. For journald, a collector, jq.
 * - pretty: the same lines made short for a person (log-pretty.ts).
 * By default pretty when stderr is a terminal, json otherwise; `--log-format` chooses.
 * `--log-level` chooses how much.
 */
import pino from 'pino';
import { PrettyLog } from './log-pretty.js';

/** A structured logger (pino underneath): a message, and fields that go in the JSON line. */
export interface Logger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  debug(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line carries `fields` (a job's id, a request's id). */
  child(fields: Record<string, unknown>): Logger;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

function wrap(p: pino.Logger): Logger {
  return {
    info: (msg, fields) => p.info(fields ?? {}, msg),
    warn: (msg, fields) => p.warn(fields ?? {}, msg),
    error: (msg, fields) => p.error(fields ?? {}, msg),
    debug: (msg, fields) => p.debug(fields ?? {}, msg),
    child: (fields) => wrap(p.child(fields)),
  };
}

/** The format a start uses: the one asked for, else pretty on a terminal. */
export function chooseLogFormat(asked: LogFormat | undefined, stderrIsTerminal: boolean): { format: LogFormat; why: string } {
  if (asked) return { format: asked, why: 'asked for' };
  return stderrIsTerminal ? { format: 'pretty', why: 'stderr is a terminal' } : { format: 'json', why: 'stderr is not a terminal' };
}

export function createLogger(level: LogLevel, host: string, format: LogFormat = 'json'): { log: Logger; pino: pino.Logger } {
  // Synchronous: the last lines before an exit are not lost.
  const stderr = pino.destination({ dest: 2, sync: true });
  const dest =
    format === 'json'
      ? stderr
      : (() => {
          const pretty = new PrettyLog(Boolean(process.stderr.isTTY) && !process.env.NO_COLOR);
          return {
            write: (line: string) => {
              const text = pretty.line(line);
              if (text) stderr.write(text);
            },
          };
        })();
  const p = pino({ level, base: { pid: process.pid, host }, name: 'sparsify' }, dest);
  return { log: wrap(p), pino: p };
}

/** For library callers and tests: a Logger that says nothing. */
export const silentLogger: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined, child: () => silentLogger };
