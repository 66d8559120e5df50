/**
 * `neuv-bpf oci-hook`: the OCI runtime hook of src/hook/, run by podman or
 * CRI-O from a hooks.d file (deploy/neuv-bpf-hook.json) with the container's
 * state on stdin. A thin shell: read stdin (bounded), parse, run, one line.
 */
import * as fs from 'node:fs';
import * as tty from 'node:tty';
import { Option } from 'commander';
import { CommandRegistrar, printJson } from './context';
import { UsageError } from '../errors';
import { readBounded } from '../input';
import { HOOK_MODES, HookMode, HookOptions, HookResult, MAX_STATE_BYTES, OciState, failedOpen, parseOciState, runHook } from '../hook';
import { dpLocator } from '../dp/watch';
import { readEndpointPolicy } from '../service/endpoints';

/** The state on stdin: a pipe or a file of at most MAX_STATE_BYTES, never a terminal or a directory. */
function readState(): string {
  if (tty.isatty(0)) throw new UsageError("stdin is a terminal: oci-hook reads the container's OCI state there, as the container runtime writes it");
  if (fs.fstatSync(0).isDirectory()) throw new UsageError('stdin is a directory, not the OCI state');
  return readBounded(0, MAX_STATE_BYTES, 'the OCI state on stdin').toString('utf8');
}

export const registerOciHookCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('oci-hook')
    .description(
      "OCI runtime hook (podman, CRI-O: hooks.d): reads the container's state on stdin; at createRuntime/prestart intercepts its port " +
        'before its process runs, in the mode of its annotation io.neuv-bpf.mode (fwd, tap, bypass, drop, none); at poststop releases it ' +
        '(or removes what is left once its netns is gone); through the service when one listens, else in this process',
    )
    .addOption(new Option('--default-mode <mode>', 'mode of a container without the annotation (none: not intercepted)').choices(HOOK_MODES as unknown as string[]).default('bypass'))
    .addOption(
      new Option('--on-failure <policy>', 'closed: a failed intercept fails the container (it does not start); open: it starts unintercepted, logged and counted')
        .choices(['closed', 'open'])
        .default('closed'),
    )
    .option('--socket <path>', "the service's socket (default: /run/neuv-bpf/<pin root>.sock)")
    .option('--standalone', 'never through the service')
    .option('--dp <where>', "with --dp-register: the DP ('local', or a pid file its supervisor rewrites) to register containers with when the hook runs standalone")
    .option(
      '--dp-register <policy>',
      "with --dp, standalone (no service listening; the service registers with its own --dp-register): register the container with the DP " +
        "before it runs, as serve --dp-register does (its endpoint, inline in fwd, and this policy file, or none), and remove it at poststop",
    )
    .option('--json', 'print the result as JSON')
    .action(async (o: { defaultMode: HookMode; onFailure: 'closed' | 'open'; socket?: string; standalone?: boolean; dp?: string; dpRegister?: string }) => {
      const c = ctx();
      const opts: HookOptions = { pinRoot: c.pinRoot, defaultMode: o.defaultMode, failOpen: o.onFailure === 'open', socket: o.socket, standalone: o.standalone === true };
      let r: HookResult;
      let state: OciState | undefined;
      try {
        if ((o.dp === undefined) !== (o.dpRegister === undefined)) throw new UsageError('--dp and --dp-register go together: the DP to register containers with, and their policy');
        if (o.dp !== undefined) opts.dp = { locate: dpLocator(o.dp), where: o.dp, policy: readEndpointPolicy(o.dpRegister!) };
        state = parseOciState(readState());
        if (c.setupError !== undefined) throw c.setupError;
        r = await runHook(state, opts);
      } catch (e) {
        // runHook applied the policy to what it ran; this is a state it could not read, or a set-up that failed.
        // A poststop's failure is the runtime's to log: the container is stopped either way.
        if (!opts.failOpen || state?.status === 'stopped') throw e;
        r = await failedOpen(state?.id ?? '(unreadable state)', e, opts);
      }
      if (r.action === 'failed-open') process.stderr.write(`neuv-bpf: oci-hook: ${r.line}\n`);
      if (c.json) printJson(c, r);
      else c.out(r.line);
    });
};
