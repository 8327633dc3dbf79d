/** The service and its hosts: health, info, hosts (and retiring one), events, policy, rescan, metrics. */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { PolicyConfig } from '../../config.js';
import { eventsQuery, hostParams, policyBody } from '../schemas.js';
import { fault as faultBody, listOf, one, secured } from '../docs.js';
import { fault } from '../faults.js';

const tags = ['cluster'];
const health = { type: 'object', properties: { status: { type: 'string', description: 'ok, or degraded' }, database: { type: 'string', description: 'ok, or unavailable' } } };

export function clusterRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get(
    '/api/health',
    { schema: { tags, summary: 'Is this host up, and can it reach the database? Needs no token.', response: { 200: health, 503: health } } },
    async (_req, reply) => {
      const ok = await svc.store.hosts.now().then(
        () => true,
        () => false,
      );
      return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'degraded', database: ok ? 'ok' : 'unavailable' });
    },
  );

  app.get('/api/info', { schema: { tags, summary: 'This host: version, database, domains, default mode' } }, async () => ({
    name: 'sparsify',
    version: svc.version,
    host: svc.ctx.host,
    instance: svc.registry.instance,
    database: svc.store.kind,
    queue: svc.queue.kind,
    domains: svc.mounts.list().map((d) => ({ id: d.id, name: d.name, path: d.root, reachable: d.reachable, canDiscard: d.canDiscard })),
    defaultMode: svc.config.defaultMode,
    modes: ['in-place', 'copy-and-replace'],
    concurrency: svc.config.concurrency,
    /** This host's scans of the domains it scans: the one under way, and the last that ended. */
    scan: { running: svc.scanner.running, last: svc.scanner.last },
  }));

  app.get('/api/hosts', { schema: { tags, summary: 'The hosts: status, last heartbeat, version, the domains each reaches, the jobs each runs', response: { 200: listOf('hosts', 'Host', '{"hosts": [Host]}') } } }, async () => ({
    hosts: await svc.listHosts(),
  }));

  app.delete(
    '/api/hosts/:name',
    { schema: { tags, summary: 'Retire a host that is not up (stop its sparsify serve first)', security: secured, params: hostParams, response: { 204: { type: 'null', description: 'Removed' }, 401: faultBody, 404: faultBody, 409: faultBody } }, preHandler: auth },
    async (req: FastifyRequest<{ Params: { name: string } }>, reply) => {
      const r = await svc.retireHost(req.params.name);
      if (r === 'unknown') return fault(reply, 404, 'host-not-found', 'no such host');
      if (r === 'up') return fault(reply, 409, 'host-up', `host ${req.params.name} is up: stop its sparsify serve first (its jobs are handed back), then retire it`);
      return reply.code(204).send();
    },
  );

  app.get(
    '/api/events',
    { schema: { tags, summary: 'Events, newest first', querystring: eventsQuery, response: { 200: listOf('events', 'Event', '{"events": [Event]}'), 400: faultBody } } },
    async (req: FastifyRequest<{ Querystring: { after?: string; limit?: string } }>) => ({
      events: await svc.listEvents({ afterId: req.query.after ? Number(req.query.after) : 0, limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 100 }),
    }),
  );

  app.get('/api/policy', { schema: { tags, summary: 'The "needs sparsify" threshold and the schedule', response: { 200: one('policy', 'Policy', '{"policy": Policy}') } } }, async () => ({ policy: await svc.getPolicy() }));
  app.put<{ Body: Partial<PolicyConfig> }>(
    '/api/policy',
    { schema: { tags, summary: 'Change the policy (for every host)', security: secured, body: policyBody, response: { 200: one('policy', 'Policy', '{"policy": Policy}'), 400: faultBody, 401: faultBody } }, preHandler: auth },
    async (req) => ({ policy: await svc.setPolicy(req.body) }),
  );

  app.post('/api/rescan', { schema: { tags, summary: 'Rescan the storage domains now (each by the host that scans it)', security: secured, response: { 202: { type: 'object', properties: { rescan: { type: 'string' } } }, 401: faultBody } }, preHandler: auth }, async (_req, reply) => {
    svc.bus.publish({ type: 'rescan' });
    return reply.code(202).send({ rescan: 'started' });
  });

  app.get('/metrics', { schema: { tags, summary: 'Prometheus metrics (text format): jobs by state, bytes given back, job durations, disks by status, API latency', security: [{ token: [] }, { metricsToken: [] }] } }, async (_req, reply) =>
    reply.type(svc.ctx.metrics.contentType).send(await svc.ctx.metrics.text()),
  );
}
