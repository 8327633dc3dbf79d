/**
 * The HTTP side: REST API under /api, live updates over server-sent events, the OpenAPI document,
 * and the web UI. Every refusal is `{fault: {reason, detail, code}}` with a 4xx status; bad input
 * never reaches the service as anything but validated values.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Service } from './service.js';
import type { BusMessage } from './bus.js';
import type { JobRecord } from './store.js';
import type { Refusal } from './validate.js';
import { idParams, sparsifyBody, allocationBody, jobsQuery, eventsQuery, disksQuery, policyBody } from './schemas.js';
import { openApiDocument, openApiHtml } from './openapi.js';
import { StaticFiles, findWebRoot } from './static.js';
import type { SparsifyMode, PolicyConfig } from './config.js';

/** package.json is two folders up from src/service, three from dist/src/service. */
function readVersion(): string {
  const req = createRequire(import.meta.url);
  for (const p of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = req(p) as { name?: string; version: string };
      if (pkg.name === 'sparsify') return pkg.version;
    } catch {
      // try the next
    }
  }
  return '0.0.0';
}
export const VERSION = readVersion();

const REASONS: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 409: 'Conflict', 413: 'Payload Too Large', 415: 'Unsupported Media Type', 500: 'Internal Server Error' };

function fault(reply: FastifyReply, status: number, code: string, detail: string): FastifyReply {
  return reply.code(status).send({ fault: { reason: REASONS[status] ?? 'Error', detail, code } });
}

function refuse(reply: FastifyReply, r: Refusal): FastifyReply {
  return fault(reply, r.status, r.code, r.detail);
}

function tokenOk(given: string | undefined, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function buildServer(svc: Service): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    // Unknown fields are errors, not silently dropped; no type coercion of bodies.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  const web = new StaticFiles(findWebRoot());
  const doc = openApiDocument(VERSION);

  // oVirt's action bodies may be empty: an empty JSON body is no body.
  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (text.trim() === '') return done(null, null);
    try {
      done(null, JSON.parse(text));
    } catch {
      const e = new Error('the body is not valid JSON') as Error & { statusCode: number };
      e.statusCode = 400;
      done(e, undefined);
    }
  });

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; validationContext?: string; code?: string }, req, reply) => {
    if (err.validation) return fault(reply, 400, 'invalid-request', `${err.validationContext ?? 'request'} ${err.message.replace(/^(body|params|querystring)\s*/, '')}`);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) svc.log(`internal error on ${req.method} ${req.url}: ${err.stack ?? err.message}`);
    return fault(reply, status, status === 500 ? 'internal-error' : (err.code ?? 'bad-request'), status === 500 ? 'internal error (see the service log)' : err.message);
  });

  app.setNotFoundHandler((req, reply) => {
    if (req.url.startsWith('/api/') || req.url === '/api' || req.method !== 'GET') return fault(reply, 404, 'not-found', `no such resource: ${req.method} ${req.url.split('?')[0]}`);
    if (!web.available) return reply.code(404).type('text/plain').send('The web UI is not built: run `npm run build` (or `npm run build:web`).\nThe API is at /api (see /api/docs).\n');
    const f = web.lookup(req.url);
    if (!f) return fault(reply, 404, 'not-found', `no such file: ${req.url.split('?')[0]}`);
    reply.header('cache-control', f.immutable ? 'public, max-age=31536000, immutable' : 'no-cache');
    return reply.type(f.type).send(f.body);
  });

  const auth = async (req: FastifyRequest, reply: FastifyReply) => {
    const h = req.headers.authorization;
    const given = h?.startsWith('Bearer ') ? h.slice(7).trim() : (req.headers['x-sparsify-token'] as string | undefined);
    if (!tokenOk(given, svc.token)) return fault(reply, 401, 'token-required', 'this call needs the service token: Authorization: Bearer TOKEN (printed at first start, kept in the data folder)');
  };

  type IdReq = FastifyRequest<{ Params: { id: string } }>;

  app.get('/api/info', async () => ({
    name: 'sparsify',
    version: VERSION,
    domains: svc.scanner.domains.map((d) => ({ path: d.root, canDiscard: d.canDiscard })),
    defaultMode: svc.config.defaultMode,
    modes: ['in-place', 'copy-and-replace'],
    concurrency: svc.config.concurrency,
  }));

  app.get('/api/docs', async (req: FastifyRequest<{ Querystring: { format?: string } }>, reply) => {
    const wantsHtml = req.query.format !== 'json' && /text\/html/.test(req.headers.accept ?? '');
    return wantsHtml ? reply.type('text/html; charset=utf-8').send(openApiHtml(doc)) : reply.send(doc);
  });

  app.get('/api/disks', { schema: { querystring: disksQuery } }, async (req: FastifyRequest<{ Querystring: { status?: string; needsSparsify?: string; q?: string } }>) => {
    let disks = svc.listDiskViews();
    const { status, needsSparsify, q } = req.query;
    if (status) disks = disks.filter((d) => d.status === status);
    if (needsSparsify) disks = disks.filter((d) => d.needsSparsify === (needsSparsify === 'true'));
    if (q) disks = disks.filter((d) => d.name.toLowerCase().includes(q.toLowerCase()));
    return { disks };
  });

  app.get('/api/disks/:id', { schema: { params: idParams } }, async (req: IdReq, reply) => {
    const d = svc.getDiskView(req.params.id);
    return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
  });

  app.patch('/api/disks/:id', { schema: { params: idParams, body: allocationBody }, preHandler: auth }, async (req: FastifyRequest<{ Params: { id: string }; Body: { allocation: 'sparse' | 'preallocated' | 'auto' } }>, reply) => {
    const d = svc.setAllocation(req.params.id, req.body.allocation);
    return d ? { disk: d } : fault(reply, 404, 'disk-not-found', 'no such disk');
  });

  app.post(
    '/api/disks/:id/sparsify',
    { schema: { params: idParams, body: sparsifyBody }, preHandler: auth },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { mode?: SparsifyMode; ignore?: string[]; zero?: string[] } | null }>, reply) => {
      const r = await svc.requestSparsify(req.params.id, req.body ?? {});
      if ('refusal' in r) return refuse(reply, r.refusal);
      return reply.code(202).header('location', r.job.href).send({ job: r.job });
    },
  );

  app.post('/api/rescan', { preHandler: auth }, async (_req, reply) => {
    void svc.scanner.scanAll().catch((e) => svc.log(`scan failed: ${(e as Error).message}`));
    return reply.code(202).send({ rescan: 'started' });
  });

  app.get('/api/jobs', { schema: { querystring: jobsQuery } }, async (req: FastifyRequest<{ Querystring: { status?: string; diskId?: string; limit?: string } }>) => {
    const jobs = svc.listJobs({
      status: req.query.status?.split(',') as JobRecord['status'][] | undefined,
      diskId: req.query.diskId,
      limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 200,
    });
    return { jobs: jobs.map((j) => svc.jobView(j)) };
  });

  app.get('/api/jobs/:id', { schema: { params: idParams } }, async (req: IdReq, reply) => {
    const j = svc.getJob(req.params.id);
    return j ? { job: svc.jobView(j) } : fault(reply, 404, 'job-not-found', 'no such job');
  });

  app.post('/api/jobs/:id/cancel', { schema: { params: idParams }, preHandler: auth }, async (req: IdReq, reply) => {
    const r = svc.runner.cancel(req.params.id);
    if ('refusal' in r) return refuse(reply, r.refusal);
    return reply.code(202).send({ job: svc.jobView(svc.getJob(r.job.id) ?? r.job) });
  });

  app.get('/api/events', { schema: { querystring: eventsQuery } }, async (req: FastifyRequest<{ Querystring: { after?: string; limit?: string } }>) => ({
    events: svc.store.listEvents({ afterId: req.query.after ? Number(req.query.after) : 0, limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 100 }),
  }));

  app.get('/api/policy', async () => ({ policy: svc.policy() }));
  app.put<{ Body: Partial<PolicyConfig> }>('/api/policy', { schema: { body: policyBody }, preHandler: auth }, async (req) => ({ policy: svc.setPolicy(req.body) }));

  app.get('/api/stream', (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write('retry: 2000\n\n');
    const send = (type: string, data: unknown) => res.write(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
    // Disk changes come in bursts (a scan): send each disk's latest view once per tick.
    const dirty = new Set<string>();
    let flush: NodeJS.Immediate | undefined;
    const onMessage = (m: BusMessage) => {
      if (m.type === 'disk') {
        dirty.add((m.data as { id: string }).id);
        flush ??= setImmediate(() => {
          flush = undefined;
          for (const id of dirty) {
            const d = svc.getDiskView(id);
            if (d) {
              const { map: _m, layers: _l, ...view } = d;
              send('disk', view);
            }
          }
          dirty.clear();
        });
      } else if (m.type === 'job') send('job', svc.jobView(m.data as JobRecord));
      else send(m.type, m.data);
    };
    const unsubscribe = svc.bus.subscribe(onMessage);
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    req.raw.on('close', () => {
      clearInterval(ping);
      if (flush) clearImmediate(flush);
      unsubscribe();
    });
  });

  return app;
}
