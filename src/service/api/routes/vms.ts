/** /api/vms: every host's VMs (from its libvirt) with their state and disks; a refresh on demand. */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import { vmParams, vmsQuery } from '../schemas.js';
import { fault } from '../faults.js';

export function vmRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get('/api/vms', { schema: { querystring: vmsQuery } }, async (req: FastifyRequest<{ Querystring: { host?: string; up?: string } }>) => {
    const { host, up } = req.query;
    const all = await svc.listVms();
    return { vms: all.vms.filter((v) => (!host || v.host === host) && (!up || v.up === (up === 'true'))), sources: all.sources };
  });

  app.get('/api/vms/:id', { schema: { params: vmParams } }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const found = (await svc.listVms()).vms.filter((v) => v.id === req.params.id.toLowerCase());
    // One VM may be known to several hosts' libvirt (defined on each): all of them are shown.
    return found.length ? { vms: found } : fault(reply, 404, 'vm-not-found', 'no VM with this UUID is known to any host');
  });

  app.post('/api/vms/refresh', { preHandler: auth }, async (_req, reply) => {
    await svc.refreshVms();
    return reply.code(200).send(await svc.listVms());
  });
}
