/**
 * The HTTP side: the REST API under /api (documented from its own schemas at /api/docs), live
 * updates over server-sent events, Prometheus metrics, and the web UI; HTTPS when given a
 * certificate. Calls that change anything need the token; when the service listens beyond
 * localhost, every call does, reads included, except the health check. Bad input never reaches
 * the service as anything but validated values.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Service } from '../service.js';
import { extname } from 'node:path';
import { serveWebUi } from '../web/static.js';
import { fault, installErrorHandler } from './faults.js';
import { requireToken, readGuard } from './auth.js';
import { LiveFeed, MAX_WATCHED } from './stream.js';
import { streamQuery } from './schemas.js';
import { registerDocs } from './docs.js';
import { diskRoutes } from './routes/disks.js';
import { jobRoutes } from './routes/jobs.js';
import { clusterRoutes } from './routes/cluster.js';
import { vmRoutes } from './routes/vms.js';
import { historyRoutes } from './routes/history.js';
import { domainRoutes } from './routes/domains.js';

export interface ApiServer {
  app: FastifyInstance;
  /** End every open event stream, then stop listening. */
  close(): Promise<void>;
}

/** Is `host` an address only this machine can reach? Then reads need no token. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export async function buildServer(svc: Service, logger?: FastifyBaseLogger): Promise<ApiServer> {
  const { config } = svc;
  const https = config.tlsCert && config.tlsKey ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) } : undefined;
  const app = Fastify({
    ...(https ? { https } : {}),
    // Each request's lines carry its id: the caller's X-Request-Id, or a new one, sent back.
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    bodyLimit: 64 * 1024,
    // Unknown fields are errors, not silently dropped; no type coercion of bodies.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }) as unknown as FastifyInstance;
  // Response schemas document the API; what is sent is the object as it is.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  const feed = new LiveFeed(svc);
  const auth = requireToken(svc.token);

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

  installErrorHandler(app);
  if (!isLoopback(config.host)) app.addHook('onRequest', readGuard(svc.token, config.metricsToken));
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url;
    if (route) svc.ctx.metrics.request(req.method, route, reply.statusCode, reply.elapsedTime / 1000);
  });

  const page = await serveWebUi(app);
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    if (path.startsWith('/api/') || path === '/api' || req.method !== 'GET') return fault(reply, 404, 'not-found', `no such resource: ${req.method} ${path}`);
    if (!page) return reply.code(404).type('text/plain').send('The web UI is not built: run `npm run build` (or `npm run build:web`).\nThe API is at /api (see /api/docs).\n');
    // A missing file is a 404; any other path is one of the UI's own routes: the page.
    if (extname(path)) return fault(reply, 404, 'not-found', `no such file: ${path}`);
    return reply.header('cache-control', 'no-cache').type('text/html; charset=utf-8').send(page);
  });

  await registerDocs(app, svc.version);
  diskRoutes(app, svc, auth);
  jobRoutes(app, svc, auth);
  clusterRoutes(app, svc, auth);
  domainRoutes(app, svc, auth);
  vmRoutes(app, svc, auth);
  historyRoutes(app, svc);

  app.get(
    '/api/stream',
    {
      schema: {
        tags: ['cluster'],
        summary: 'Server-sent events: disk, job, progress, event and hosts messages of every host, and the totals (summary, at most once a second while disks change)',
        description: 'With `disks` (ids, comma-separated, at most 300): disk events only for those disks (the rows a client shows).',
        querystring: streamQuery,
      },
    },
    (req: FastifyRequest<{ Querystring: { disks?: string } }>, reply) => {
      const ids = req.query.disks?.split(',').filter(Boolean);
      if (ids && ids.length > MAX_WATCHED) return fault(reply, 400, 'too-many-disks', `a stream follows at most ${MAX_WATCHED} disks`);
      reply.hijack();
      feed.attach(reply.raw, ids && new Set(ids));
    },
  );

  return {
    app,
    close: async () => {
      feed.close();
      await app.close();
    },
  };
}
