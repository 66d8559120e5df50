/**
 * `neuv-bpf serve`: the API service of src/service/ until SIGTERM/SIGINT.
 * A thin shell over Service: parsing, one line when it serves, stop on a signal.
 */
import { Option } from 'commander';
import { CommandRegistrar, printJson } from './context';
import { CONTAINER_MODES, ContainerMode, DOCKER_SOCKET, RUNTIMES, RuntimeName } from '../runtime';
import { UsageError } from '../errors';
// The service (its HTTP server, prom-client, the DP watcher) is loaded when serve runs, not by every
// command: importing it here cost each CLI run about 40% of its start-up.
import type * as ServiceModule from '../service';
import { parseOffloadRule } from '../offload';
import { DpWatchCmdOpts, addDpWatchOptions, dpWatchOptions, raiseWatcherPriority } from './watch';

export const registerServeCommands: CommandRegistrar = (program, ctx) => {
  const cmd = program
    .command('serve')
    .description(
      'own the datapath of this netns and pin root (load it if needed, else adopt it as it is) and serve the API ' +
        '(HTTP/1.1 + JSON on a unix socket, docs/api.md) until SIGTERM/SIGINT; the pinned datapath keeps forwarding when it stops or dies',
    )
    .option('--socket <path>', "the API's unix socket, created 0600 (default: /run/neuv-bpf/<pin root>.sock)")
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (bound in the netns the service runs in)')
    .option(
      '--offload <rule>',
      "with --dp: write the DP's decisions into the flow map, so the kernel carries (or drops) the rest of a session: " +
        "after=N (packets the DP saw each way first, default 1), oneway, ports=P[-Q][:...], apps=ID[:...], proto=tcp|udp, deny=yes|no, " +
        "idle=S (30), recheck=S (10: back to the DP for its policy of now), every=MS (100); 'off'. Kept for the next service (default: the rule kept)",
    )
    .option(
      '--dp-register <policy>',
      'with --dp, on a node without NeuVector\'s agent: register every container the service intercepts (the OCI hook\'s, the runtime watcher\'s, the API\'s) ' +
        "with the DP before the call returns, so before the container runs: its endpoint (inline in fwd), and this policy: a JSON file " +
        '{"defaultAction": "allow"|"deny", "rules": [{"id", "dip", "port", "proto", "action", "ingress"}, ...]}, or none',
    )
    .addOption(
      new Option(
        '--runtime <name>',
        "follow the container runtime's events: intercept a container when it starts (in the mode of its annotation io.neuv-bpf.mode, " +
          'as the OCI hook does; intercepted already, by the hook say: left as it is), release it once it died; at start, running ' +
          "containers not intercepted are intercepted and records of containers gone released. podman: its CLI (podman events); " +
          "docker: the Docker Engine API on --runtime-socket (dockerd's, or podman's: podman system service)",
      ).choices(RUNTIMES as unknown as string[]),
    )
    .option('--runtime-socket <path>', `with --runtime docker: the API's unix socket (default ${DOCKER_SOCKET}; podman's service: /run/podman/podman.sock)`)
    .option('--runtime-arg <arg>', "with --runtime: a global option for every call of the runtime's CLI, repeated for each word (--runtime-arg=--root --runtime-arg=/var/lib/x)", (v: string, prev: string[] = []) => [...prev, v])
    .addOption(new Option('--default-mode <mode>', 'with --runtime: the mode of a container without the annotation (none: not intercepted); give the hook the same').choices(CONTAINER_MODES as unknown as string[]).default('bypass'))
    .option('--json', 'print the serving line as JSON');
  // DP supervision: the options of `neuv-bpf watch` (its keep-alive and ring ones prefixed dp-).
  type ServeOpts = { socket?: string; metrics?: string; offload?: string; dpRegister?: string; runtime?: RuntimeName; runtimeArg?: string[]; runtimeSocket?: string; defaultMode: ContainerMode; json?: boolean };
  addDpWatchOptions(cmd, 'dp-', false).action(async (o: ServeOpts & DpWatchCmdOpts) => {
    const c = ctx();
    const { Service, parseListenAddress, readEndpointPolicy }: typeof ServiceModule = await import('../service');
    const metrics = o.metrics === undefined ? undefined : parseListenAddress(o.metrics);
    const dp = dpWatchOptions(o, 'dp-');
    const offload = o.offload === undefined ? undefined : (parseOffloadRule(o.offload) ?? 'off');
    if (o.runtimeArg && o.runtime !== 'podman') throw new UsageError('--runtime-arg needs --runtime podman (the options of its CLI)');
    if (o.runtimeSocket !== undefined && o.runtime !== 'docker') throw new UsageError('--runtime-socket needs --runtime docker (the API it is the socket of)');
    if (o.runtimeSocket !== undefined && (!o.runtimeSocket.startsWith('/') || o.runtimeSocket.length > 107 || o.runtimeSocket.includes('\0'))) {
      throw new UsageError(`--runtime-socket ${JSON.stringify(o.runtimeSocket.slice(0, 60))}: not the absolute path of a unix socket (at most 107 bytes)`);
    }
    for (const a of o.runtimeArg ?? []) {
      if (a === '' || a.length > 4096 || a.includes('\0')) throw new UsageError(`--runtime-arg ${JSON.stringify(a.slice(0, 60))}: not an argument (1 to 4096 characters, no NUL)`);
    }
    const runtime = o.runtime ? { name: o.runtime, args: o.runtimeArg ?? [], socket: o.runtimeSocket, defaultMode: o.defaultMode } : undefined;
    // The DP supervisor at `watch`'s priority: raised before the service starts any worker thread.
    if (dp) raiseWatcherPriority('serve');
    const dpRegister = o.dpRegister === undefined ? undefined : (readEndpointPolicy(o.dpRegister) ?? null);
    const svc = await Service.start({ pinRoot: c.pinRoot, socket: o.socket, metrics, dp, offload, runtime, dpRegister });
    const i = svc.info;
    if (c.json) printJson(c, i);
    else {
      c.out(
        `serving pin root ${i.pinRoot} (datapath ${i.datapath}) on ${i.socket}` +
          (i.metrics ? `, metrics on http://${i.metrics.host.includes(':') ? `[${i.metrics.host}]` : i.metrics.host}:${i.metrics.port}/metrics` : '') +
          (i.dp ? `, supervising the DP (fail-${i.dp.policy}${i.dp.register ? ', registering containers' : ''}), offload ${i.offload}` : '') +
          (i.runtime ? `, following ${i.runtime.name}${i.runtime.socket ? ` on ${i.runtime.socket}` : ''} (default mode ${i.runtime.defaultMode})` : ''),
      );
    }
    await new Promise<void>((resolve) => {
      for (const s of ['SIGINT', 'SIGTERM'] as const) process.once(s, () => resolve());
    });
    await svc.stop();
  });
};
