/** /api/vms: every host's VMs (from its libvirt) with their state and disks; a refresh on demand. */
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import type { Service } from '../../service.js';
import { vmParams, vmsQuery } from '../schemas.js';
import { fault as faultBody, secured } from '../docs.js';
import { fault, refuse } from '../faults.js';
import { ANSWERED_BY, forwardTo, wasForwarded } from '../forward.js';

const tags = ['vms'];
const open = (description: string, properties: Record<string, object> = {}) => ({ type: 'object', description, additionalProperties: true, properties });
const Vm = open('A VM as the host whose libvirt knows it reports it', {
  id: { type: 'string', description: "libvirt's UUID" },
  name: { type: 'string' },
  host: { type: 'string', description: 'The host whose libvirt runs or defines it' },
  state: { type: 'string', description: 'running, paused, migrating, shutting-down, shut-off, crashed, suspended, blocked, idle, unknown' },
  reason: { type: 'string', nullable: true, description: "libvirt's reason for the state" },
  up: { type: 'boolean', description: 'Not shut off: its disks are not sparsified' },
  disks: { type: 'array', items: open('target, device, type, source; diskId, domainId and path when the file is a disk of a storage domain') },
});
const vmList = open('{"vms": [Vm], "sources": [...]}', {
  vms: { type: 'array', items: Vm },
  sources: { type: 'array', items: open("A host's libvirt connection: host, uri, error (why the last read failed), refreshedAt, changedAt") },
});

export function vmRoutes(app: FastifyInstance, svc: Service, auth: preHandlerHookHandler): void {
  app.get(
    '/api/vms',
    { schema: { tags, summary: "Every host's VMs (read from its libvirt) with their state and disks", querystring: vmsQuery, response: { 200: vmList, 400: faultBody } } },
    async (req: FastifyRequest<{ Querystring: { host?: string; up?: string } }>) => {
      const { host, up } = req.query;
      const all = await svc.listVms();
      return { vms: all.vms.filter((v) => (!host || v.host === host) && (!up || v.up === (up === 'true'))), sources: all.sources };
    },
  );

  app.get(
    '/api/vms/:id',
    { schema: { tags, summary: 'One VM by its libvirt UUID, as each host that knows it reports it', params: vmParams, response: { 200: open('{"vms": [Vm]}', { vms: { type: 'array', items: Vm } }), 400: faultBody, 404: faultBody } } },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const found = (await svc.listVms()).vms.filter((v) => v.id === req.params.id.toLowerCase());
      // One VM may be known to several hosts' libvirt (defined on each): all of them are shown.
      return found.length ? { vms: found } : fault(reply, 404, 'vm-not-found', 'no VM with this UUID is known to any host');
    },
  );

  app.post(
    '/api/vms/:id/trim',
    {
      schema: {
        tags,
        summary: "Trim a running VM through its guest agent: the guest's fstrim gives space back without downtime",
        description:
          'A VM that runs on another host is passed on to that host\'s API with the caller\'s token, and its answer relayed (X-Sparsify-Host names the host that answered; 502 host-unreachable, 409 host-unavailable when it cannot be). ' +
          'Checked first, each refused with its code: 404 vm-not-found; 409 vm-on-other-host (a request another host passed on, for a VM that is not here); 409 vm-migrating; 409 vm-not-running; ' +
          "409 discard-not-enabled (a disk's live <driver> lacks discard='unmap'); 400 format-cannot-discard (only raw and qcow2); 400 storage-cannot-punch; " +
          '409 vm-disks-unmanaged (no disk in a storage domain); 409 agent-unavailable (no answer to guest-ping within --agent-ping-timeout); 409 disk-locked (a job holds one of its disks). ' +
          "Then 202 with the job (mode trim); its trimResult has each image's allocated bytes before and after, and the guest agent's own per-mountpoint figures.",
        security: secured,
        params: vmParams,
        response: { 202: open('Accepted: {"job": Job}, Location: the job URL', { job: open('Job') }), 400: faultBody, 401: faultBody, 404: faultBody, 409: faultBody },
      },
      preHandler: auth,
    },
    async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      const id = req.params.id.toLowerCase();
      const r = await svc.trimVm(id);
      if ('refusal' in r) {
        // The agent is reached through the VM's own host: that host checks and runs the trim.
        const target = r.refusal.code === 'vm-on-other-host' && !wasForwarded(req) ? await svc.hostOfRunningVm(id) : undefined;
        if (target) return forwardTo(req, reply, target, svc.config.hostName, svc.forwardTimeoutMs);
        return refuse(reply, r.refusal);
      }
      return reply.code(202).header('location', r.job.href).header(ANSWERED_BY, svc.config.hostName).send({ job: r.job });
    },
  );

  app.post(
    '/api/vms/refresh',
    { schema: { tags, summary: 'Read the VMs from libvirt now, on every host; answers with what this host then knows', security: secured, response: { 200: vmList, 401: faultBody } }, preHandler: auth },
    async () => {
      await svc.refreshVms();
      return svc.listVms();
    },
  );
}
