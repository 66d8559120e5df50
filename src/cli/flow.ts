/**
 * `neuv-bpf flow allow|deny|revoke|list`: the flow offload map by hand (what
 * a DP does through src/flows.ts or with plain bpf syscalls). A thin shell
 * over Flows; parsing and printing only.
 */
import { CommandRegistrar, printJson, throughService } from './context';
import { UsageError } from '../errors';
import { table, si } from '../format';
import { FlowSpec, FlowView, OffloadResult, withFlows } from '../flows';
import type { Json } from '../service/client';
import { FLOW_SECONDS, PORT_ID, parsePortId } from '../numbers';
import { integerOption, secondsOption } from './options';

interface FlowOpts {
  id?: number | string;
  proto?: string;
  src?: string;
  dst?: string;
  timeout?: number;
  idle?: number;
  all?: boolean;
}

/** --id, --proto, --src, --dst: all four. */
export function flowSpecFrom(o: FlowOpts): FlowSpec {
  const missing = (['id', 'proto', 'src', 'dst'] as const).filter((k) => o[k] === undefined);
  if (missing.length) throw new UsageError(`name the flow with --id N --proto P --src ADDR[:PORT] --dst ADDR[:PORT] (missing ${missing.map((k) => `--${k}`).join(', ')})`);
  return { id: parsePortId(o.id, '--id'), proto: o.proto!, src: o.src!, dst: o.dst! };
}

const idOption = (description: string) => integerOption('--id <n>', description, PORT_ID);

const ep = (e: { addr: string; port: number }, withPort: boolean) => (withPort ? `${e.addr}:${e.port}` : e.addr);

function expires(v: FlowView): string {
  if (v.expired) return 'expired';
  if (v.expiresInMs === null) return v.idleNs ? `idle ${Number(v.idleNs / 1_000_000n) / 1000}s (not used yet)` : 'never';
  return `${(v.expiresInMs / 1000).toFixed(1)}s`;
}

export function formatFlows(vs: FlowView[], capacity?: number): string[] {
  const out: string[] = [`${vs.length} flow${vs.length === 1 ? '' : 's'} offloaded${capacity ? ` (map size ${capacity})` : ''}`];
  if (!vs.length) return out;
  const rows = vs.map((v) => {
    const ports = v.protoName === 'tcp' || v.protoName === 'udp';
    return [String(v.id), v.protoName, ep(v.a, ports), ep(v.b, ports), v.verdict, expires(v), si(v.packets), si(v.bytes, 'B')];
  });
  out.push(...table(['ID', 'PROTO', 'A', 'B', 'VERDICT', 'EXPIRES', 'PACKETS', 'BYTES'], rows, ['r', 'l', 'l', 'l', 'l', 'r', 'r', 'r']));
  return out;
}

function offloadedLine(r: OffloadResult): string {
  const ports = r.protoName === 'tcp' || r.protoName === 'udp';
  const t: string[] = [];
  if (r.deadlineNs) t.push(`expires in ${(r.expiresInMs! / 1000).toFixed(1)}s`);
  if (r.idleNs) t.push(`idle timeout ${Number(r.idleNs / 1_000_000n) / 1000}s`);
  const note = r.pairMode === 'fwd' ? '' : ` (pair ${r.id} is in ${r.pairMode}: entries only apply in fwd, and a mode switch clears them)`;
  return `${r.replaced ? 'replaced' : 'offloaded'} ${r.verdict} pair ${r.id} ${r.protoName} ${ep(r.a, ports)} <-> ${ep(r.b, ports)}${t.length ? ', ' + t.join(', ') : ''}${note}`;
}

/** An entry as the service returns it (JSON numbers) with its counters and times as bigints again. */
function fromJson(r: Json<OffloadResult>): OffloadResult {
  const big = (n: number) => BigInt(Math.round(n));
  return { ...r, deadlineNs: big(r.deadlineNs), idleNs: big(r.idleNs), lastNs: big(r.lastNs), packets: big(r.packets), bytes: big(r.bytes) };
}

export const registerFlowCommands: CommandRegistrar = (program, ctx) => {
  const flow = program
    .command('flow')
    .description('flow offload: decisions of the DP applied in the kernel to a pair in fwd (allow: straight to the peer; deny: dropped)');

  for (const verdict of ['allow', 'deny'] as const) {
    flow
      .command(verdict)
      .description(
        verdict === 'allow'
          ? "offload a flow: its frames (both directions) go straight to the pair's other port, without the DP"
          : 'drop a flow in the kernel: its frames (both directions) never reach the DP',
      )
      .addOption(idOption('pair id'))
      .option('--proto <p>', 'tcp, udp, icmp or an IP protocol number')
      .option('--src <addr[:port]>', 'source IPv4 address (and port for tcp/udp)')
      .option('--dst <addr[:port]>', 'destination IPv4 address (and port for tcp/udp)')
      .addOption(secondsOption('--timeout <s>', `expire this many seconds from now (${FLOW_SECONDS.min}..${FLOW_SECONDS.max})`, FLOW_SECONDS))
      .addOption(secondsOption('--idle <s>', `expire after this many seconds without a frame (${FLOW_SECONDS.min}..${FLOW_SECONDS.max})`, FLOW_SECONDS))
      .option('--json', 'print the entry as JSON')
      .action(async (o: FlowOpts) => {
        const c = ctx();
        const spec = flowSpecFrom(o);
        const opts = { verdict, timeoutS: o.timeout, idleS: o.idle };
        const r = await throughService(
          c,
          async (s) => fromJson(await s.offload(spec, opts)),
          async () => withFlows(c.pinRoot, (f) => f.offload(spec, opts)),
        );
        if (c.json) printJson(c, r);
        else c.out(offloadedLine(r));
      });
  }

  flow
    .command('revoke')
    .description("remove a flow's entry (its frames go to the DP again), or with --all every entry of pair --id")
    .addOption(idOption('pair id'))
    .option('--proto <p>', 'tcp, udp, icmp or an IP protocol number')
    .option('--src <addr[:port]>', 'source (either direction names the same entry)')
    .option('--dst <addr[:port]>', 'destination')
    .option('--all', 'every entry of the pair --id')
    .option('--json', 'print the result as JSON')
    .action(async (o: FlowOpts) => {
      const c = ctx();
      if (o.all) {
        if (o.id === undefined || o.proto !== undefined || o.src !== undefined || o.dst !== undefined) {
          throw new UsageError('--all takes the pair --id only');
        }
        const id = parsePortId(o.id, '--id');
        const n = await throughService(c, async (s) => (await s.revokeAll(id)).revoked, async () => withFlows(c.pinRoot, (f) => f.clearPair(id)));
        if (c.json) printJson(c, { id, revoked: n });
        else c.out(`revoked ${n} flow${n === 1 ? '' : 's'} of pair ${id}`);
        return;
      }
      const spec = flowSpecFrom(o);
      const found = await throughService(c, async (s) => (await s.revoke(spec)).revoked === 1, async () => withFlows(c.pinRoot, (f) => f.revoke(spec)));
      if (c.json) printJson(c, { revoked: found ? 1 : 0 });
      else c.out(found ? 'revoked' : 'no such flow entry (already gone: expired, ended by FIN/RST, evicted or revoked)');
    });

  flow
    .command('list')
    .description('every offloaded flow: pair, protocol, endpoints, verdict, expiry, frames and bytes it handled')
    .addOption(idOption('only the flows of this pair'))
    .option('--json', 'print the list as JSON')
    .action((o: FlowOpts) => {
      const c = ctx();
      const id = o.id === undefined ? undefined : parsePortId(o.id, '--id');
      const { list, capacity } = withFlows(c.pinRoot, (f) => ({ list: f.list({ id }), capacity: f.capacity }));
      if (c.json) printJson(c, list);
      else c.out(formatFlows(list, capacity).join('\n'));
    });
};
