/** The event log: what happened to disks, jobs, domains and hosts, newest first. */
import type { Db } from './db.js';
import type { EventRecord, NewEvent } from './records.js';

type Row = { id: number; time: number; severity: EventRecord['severity']; type: EventRecord['type']; disk_id: string | null; job_id: string | null; host: string | null; message: string };
const decode = (r: Row): EventRecord => ({ id: Number(r.id), time: r.time, severity: r.severity, type: r.type, diskId: r.disk_id, jobId: r.job_id, host: r.host, message: r.message });

export class Events {
  constructor(private readonly db: Db) {}

  async add(e: NewEvent, host: string | null): Promise<EventRecord> {
    const time = Date.now();
    const h = e.host === undefined ? host : e.host;
    const r = await this.db.get<{ id: number }>('INSERT INTO events (time, severity, type, disk_id, job_id, host, message) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id', [time, e.severity, e.type, e.diskId, e.jobId, h, e.message]);
    return { id: Number(r!.id), time, severity: e.severity, type: e.type, diskId: e.diskId, jobId: e.jobId, host: h, message: e.message };
  }

  async get(id: number): Promise<EventRecord | undefined> {
    const r = await this.db.get<Row>('SELECT * FROM events WHERE id = ?', [id]);
    return r && decode(r);
  }

  async list(opts: { afterId?: number; limit?: number; jobId?: string; diskId?: string } = {}): Promise<EventRecord[]> {
    const where = ['id > ?'];
    const args: Array<string | number> = [opts.afterId ?? 0];
    if (opts.jobId) {
      where.push('job_id = ?');
      args.push(opts.jobId);
    }
    if (opts.diskId) {
      where.push('disk_id = ?');
      args.push(opts.diskId);
    }
    args.push(opts.limit ?? 200);
    return (await this.db.all<Row>(`SELECT * FROM events WHERE ${where.join(' AND ')} ORDER BY id DESC LIMIT ?`, args)).map(decode);
  }
}
