/**
 * pino's JSON lines made short for a person at a terminal: `14:03:07 INFO  job finished
 * job=3e756978 disk=b.raw`. The time of day, the level, the message, then the fields that tell
 * lines apart; the process id, host and logger name (the same on every line) are left out. A
 * request is one line when it completes (`GET /api/disks 200 3 ms`): its "incoming request" line
 * is held back until then, for its method and path. Errors show their message only.
 */
const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLORS: Record<number, string> = { 10: '90', 20: '90', 30: '32', 40: '33', 50: '31', 60: '35' };
/** On every line, or shown another way. */
const SKIPPED = new Set(['level', 'time', 'pid', 'host', 'hostname', 'name', 'msg', 'req', 'res', 'responseTime', 'reqId', 'err', 'v']);
/** A field longer than this is cut: the JSON format has it whole. */
const MAX_VALUE = 80;
/** Requests still running whose method and path are remembered (beyond it, the oldest are forgotten). */
const MAX_OPEN_REQUESTS = 1000;

const pad2 = (n: number) => String(n).padStart(2, '0');

function clock(ms: unknown): string {
  const d = new Date(typeof ms === 'number' ? ms : Date.now());
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function shortValue(v: unknown): string {
  let s = typeof v === 'string' ? v : JSON.stringify(v);
  if (typeof v === 'string' && /\s/.test(s)) s = JSON.stringify(s);
  return s.length > MAX_VALUE ? `${s.slice(0, MAX_VALUE - 1)}…` : s;
}

/** Ids are long UUIDs: their first 8 characters tell them apart on one screen. */
function shortId(k: string, v: unknown): unknown {
  return (k === 'jobId' || k === 'diskId') && typeof v === 'string' && v.length > 8 ? v.slice(0, 8) : v;
}

interface Line {
  level?: number;
  time?: number;
  msg?: string;
  reqId?: string;
  req?: { method?: string; url?: string };
  res?: { statusCode?: number };
  responseTime?: number;
  err?: { message?: string };
  [k: string]: unknown;
}

/** Formats a stream of pino's JSON lines; holds each request's first line until it completes. */
export class PrettyLog {
  private readonly open = new Map<string, string>();

  constructor(private readonly colors: boolean) {}

  /** One JSON line in, one pretty line out (with its newline), or '' when it is held back. */
  line(json: string): string {
    let o: Line;
    try {
      o = JSON.parse(json) as Line;
    } catch {
      return json.endsWith('\n') ? json : `${json}\n`;
    }
    if (o.msg === 'incoming request' && o.reqId) {
      if (this.open.size >= MAX_OPEN_REQUESTS) this.open.delete(this.open.keys().next().value!);
      this.open.set(o.reqId, `${o.req?.method ?? ''} ${o.req?.url ?? ''}`.trim());
      return '';
    }
    let text = o.msg ?? '';
    if (o.msg === 'request completed' && o.res) {
      const what = (o.reqId && this.open.get(o.reqId)) || `request ${o.reqId ?? ''}`.trim();
      if (o.reqId) this.open.delete(o.reqId);
      text = `${what} ${o.res.statusCode ?? ''}${o.responseTime === undefined ? '' : ` ${Math.round(o.responseTime)} ms`}`;
    }
    const level = o.level ?? 30;
    const name = (LEVEL_NAMES[level] ?? String(level)).padEnd(5);
    const fields = Object.entries(o)
      .filter(([k, v]) => !SKIPPED.has(k) && v !== undefined && v !== null)
      .map(([k, v]) => `${k === 'jobId' ? 'job' : k}=${shortValue(shortId(k, v))}`);
    if (o.err?.message) fields.push(`error=${shortValue(o.err.message)}`);
    if (o.reqId && o.msg !== 'request completed') fields.push(`req=${o.reqId}`);
    const paint = (code: string, t: string) => (this.colors ? `\x1b[${code}m${t}\x1b[0m` : t);
    return `${clock(o.time)} ${paint(LEVEL_COLORS[level] ?? '0', name)} ${text}${fields.length ? ` ${paint('90', fields.join(' '))}` : ''}\n`;
  }
}
