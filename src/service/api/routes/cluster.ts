/** The service and its hosts: /api/info, /api/hosts (and retiring one), /api/policy, /api/events, /api/rescan. */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { PolicyConfig } from '../../config.js';
import { eventsQuery, hostParams, policyBody } from '../schemas.js';
import { fault } from '../faults.js';

export function clusterRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get('/api/info', async () => ({
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
  }));

  app.get('/api/hosts', async () => ({ hosts: await svc.listHosts() }));

  app.delete('/api/hosts/:name', { schema: { params: hostParams }, preHandler: auth }, async (req: FastifyRequest<{ Params: { name: string } }>, reply) => {
    const r = await svc.retireHost(req.params.name);
    if (r === 'unknown') return fault(reply, 404, 'host-not-found', 'no such host');
    if (r === 'up') return fault(reply, 409, 'host-up', `host ${req.params.name} is up: stop its sparsify serve first (its jobs are handed back), then retire it`);
    return reply.code(204).send();
  });

  app.get('/api/events', { schema: { querystring: eventsQuery } }, async (req: FastifyRequest<{ Querystring: { after?: string; limit?: string } }>) => ({
    events: await svc.listEvents({ afterId: req.query.after ? Number(req.query.after) : 0, limit: req.query.limit ? Math.max(1, Number(req.query.limit)) : 100 }),
  }));

  app.get('/api/policy', async () => ({ policy: await svc.getPolicy() }));
  app.put<{ Body: Partial<PolicyConfig> }>('/api/policy', { schema: { body: policyBody }, preHandler: auth }, async (req) => ({ policy: await svc.setPolicy(req.body) }));

  app.post('/api/rescan', { preHandler: auth }, async (_req, reply) => {
    // Every host rescans the domains it is the scanner of.
    svc.bus.publish({ type: 'rescan' });
    return reply.code(202).send({ rescan: 'started' });
  });
}
