/** /api/domains: the storage domains, each with how hosts mount it, and its compaction setting (cluster-wide). */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import type { CompactionSetting } from '../../store/records.js';
import { domainBody, domainParams } from '../schemas.js';
import { fault as faultBody, listOf, one, secured } from '../docs.js';
import { fault } from '../faults.js';

const tags = ['domains'];

export function domainRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get('/api/domains', { schema: { tags, summary: 'The storage domains: settings, and how each host mounts them', response: { 200: listOf('domains', 'Domain', '{"domains": [Domain]}') } } }, async () => ({
    domains: await svc.listDomains(),
  }));

  app.get(
    '/api/domains/:id',
    { schema: { tags, summary: 'One storage domain', params: domainParams, response: { 200: one('domain', 'Domain', '{"domain": Domain}'), 400: faultBody, 404: faultBody } } },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const d = await svc.getDomain(req.params.id);
      return d ? { domain: d } : fault(reply, 404, 'domain-not-found', 'no such storage domain');
    },
  );

  app.patch(
    '/api/domains/:id',
    {
      schema: {
        tags,
        summary: "Change when in-place sparsify compacts the domain's images (every host reads it)",
        security: secured,
        params: domainParams,
        body: domainBody,
        response: { 200: one('domain', 'Domain', '{"domain": Domain}'), 400: faultBody, 401: faultBody, 404: faultBody },
      },
      preHandler: auth,
    },
    async (req: FastifyRequest<{ Params: { id: string }; Body: { compaction: CompactionSetting } }>, reply) => {
      const d = await svc.setCompaction(req.params.id, req.body.compaction);
      return d ? { domain: d } : fault(reply, 404, 'domain-not-found', 'no such storage domain');
    },
  );
}
