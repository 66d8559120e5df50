/**
 * Commands `intercept` and `release`: a thin shell over src/intercept/.
 * The enforcer netns is the one neuv-bpf runs in (--netns or the current one).
 */
import { Command, Option } from 'commander';
import * as path from 'node:path';
import { CommandRegistrar, printJson, throughService, warnIfNoDp } from './context';
import { UsageError } from '../errors';
import { InterceptResult, ReleaseResult, Target, intercept, release } from '../intercept';
import { MODES, ModeName } from '../pairs';
import { PID, PORT_ID, parsePid } from '../numbers';
import { integerOption } from './options';

interface TargetOpts {
  pid?: number | string;
  containerNetns?: string;
}

/** Exactly one of --pid and --container-netns. */
export function targetFrom(o: TargetOpts): Target {
  if ((o.pid === undefined) === (o.containerNetns === undefined)) {
    throw new UsageError('name the container with exactly one of --pid PID or --container-netns PATH');
  }
  if (o.pid !== undefined) return { pid: parsePid(o.pid, '--pid') };
  return { netns: o.containerNetns! };
}

/** The target as the service takes it: a netns path made absolute (the service has its own working directory). */
function serviceTarget(t: Target): { pid: number } | { netns: string } {
  if ('pid' in t) return { pid: t.pid };
  return { netns: t.netns.includes('/') ? path.resolve(t.netns) : t.netns };
}

export function interceptLine(r: InterceptResult): string {
  const p = r.pair;
  return (
    (r.recovered ? `first: ${r.recovered}\n` : '') +
    `intercepted ${r.port} of ${r.target}: ${r.vex} (original port) / ${r.vin}, MAC ${r.mac}, ` +
    `id ${p.id} ucmac ${p.ucmac} bcmac ${p.bcmac}, mode ${p.mode}${p.ipv6ToDp ? ', IPv6 to the DP' : ''}; ` +
    `carried over ${r.addresses.length} address(es), ${r.routes} route(s), ${r.neighbours} neighbour(s)` +
    (r.ifindexKept ? '' : `; ${r.port}'s ifindex changed`) +
    (p.warning ? `\nwarning: ${p.warning}` : '')
  );
}

export function releaseLine(r: ReleaseResult): string {
  if (r.recovered) return `released ${r.port} of ${r.target}: ${r.recovered}`;
  return (
    `released ${r.port} of ${r.target}: ${r.vex} is ${r.port} again (MAC ${r.mac}), ${r.vin} deleted` +
    (r.pairId === null ? ' (no pair to delete)' : `, pair id ${r.pairId} deleted`) +
    `; restored ${r.addresses.length} address(es), ${r.routes} route(s), ${r.neighbours} neighbour(s)`
  );
}

function targetOptions(cmd: Command): Command {
  return cmd
    .addOption(integerOption('--pid <pid>', "a process in the container (its network namespace is the container's)", PID))
    .option('--container-netns <path>', 'the container network namespace: a path, or a name under /var/run/netns')
    .option('--port <name>', "the container's port", 'eth0')
    .option('--json', 'print the result as JSON');
}

export const registerInterceptCommands: CommandRegistrar = (program, ctx) => {
  targetOptions(
    program
      .command('intercept')
      .description(
        "take a container's port into the datapath: rename it to vex<tag>-<port> and move it to this (the enforcer) netns, " +
          'put a new veth with the same name, MAC, MTU, addresses, routes and neighbours in its place (peer vin<tag>-<port>), ' +
          'then pair add; any failure rolls every step back',
      ),
  )
    .addOption(new Option('--mode <mode>', 'mode of the new pair (drop: added in bypass and switched before the new port is up)').choices(MODES as unknown as string[]).default('bypass'))
    .addOption(integerOption('--id <n>', 'pin the port id (0..65535; default: the vex ifindex & 0xffff if free)', PORT_ID))
    .option('--ipv6-to-dp', "send the workload's IPv6 unicast through the DP too")
    .action(async (o: TargetOpts & { port: string; mode: ModeName; id?: number; ipv6ToDp?: boolean }) => {
      const c = ctx();
      const target = targetFrom(o);
      const r = await throughService(
        c,
        (s) => s.intercept({ ...serviceTarget(target), port: o.port }, { mode: o.mode, id: o.id, ipv6ToDp: o.ipv6ToDp === true }),
        () => intercept({ pinRoot: c.pinRoot, target, port: o.port, mode: o.mode, id: o.id, ipv6ToDp: o.ipv6ToDp === true }),
      );
      warnIfNoDp([r.pair.mode]);
      if (c.json) printJson(c, r);
      else c.out(interceptLine(r));
    });

  targetOptions(
    program
      .command('release')
      .description(
        'undo intercept: pair del, the original port goes back into the container under its name with its MAC, MTU, ' +
          'addresses, routes and neighbours, the intercepting veth pair is deleted',
      ),
  ).action(async (o: TargetOpts & { port: string }) => {
    const c = ctx();
    const target = targetFrom(o);
    const r = await throughService(
      c,
      (s) => s.release({ ...serviceTarget(target), port: o.port }),
      () => release({ pinRoot: c.pinRoot, target, port: o.port }),
    );
    if (c.json) printJson(c, r);
    else c.out(releaseLine(r));
  });
};
