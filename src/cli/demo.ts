/**
 * Command `demo`: a throwaway topology in private netns, real traffic through
 * each mode, a table of what got through (harness/demo.ts). Exit code 1 when
 * something did not behave as the datapath's rules say it must.
 */
import type { CommandRegistrar } from './context';
import { NeuvError } from '../errors';
import { configureLogging, resolveLevel } from '../log';
import { findTarball, nvdpUnavailable } from '../../harness/nvdp';

/** Which DP the demo runs here, and why (the same choice as harness/demo.ts makes). */
export function demoDpHere(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NEUV_BPF_DEMO_STUB === '1') return 'the stub DP (NEUV_BPF_DEMO_STUB=1)';
  const why = nvdpUnavailable(env);
  return why ? `the stub DP: ${why}` : `NeuVector's DP, built from ${findTarball(env)}`;
}

export const registerDemoCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('demo')
    .description(
      'build a throwaway topology (host bridge, two containers, enforcer netns) with its own pin root, intercept both containers, ' +
        'run ping/TCP/UDP/ARP/broadcast/multicast/IPv6 in BYPASS, TAP and FWD, print what got through, remove everything. ' +
        "The DP: NeuVector's own, built from its source tarball (third_party/neuvector-dp/, or NEUV_BPF_NVDP_TARBALL; docs/neuvector-dp.md), " +
        'denying port 9999; where it cannot run, the stub DP, blocking the same port (NEUV_BPF_DEMO_STUB=1 forces it)',
    )
    // The machine's answer; not in docs/cli.md, which scripts/gen-cli-docs.js writes the same everywhere.
    .addHelpText('after', () => (process.env.NEUV_BPF_HELP_FOR_DOCS === '1' ? '' : `\nHere the demo runs ${demoDpHere()}.\n`))
    .action(async () => {
      const c = ctx();
      // The demo's own output is the point: library logs only from warn up, unless asked for.
      const g = program.opts<{ logLevel?: string }>();
      if (!g.logLevel && !process.env.NEUV_BPF_LOG_LEVEL) configureLogging(resolveLevel('warn'));
      if (program.opts<{ netns?: string }>().netns) throw new NeuvError('demo makes its own namespaces: drop --netns');
      const { runDemo } = await import('../../harness/demo');
      const r = await runDemo({ out: c.out });
      if (!r.ok) throw new NeuvError(`demo: ${r.mismatches.length} result(s) not as expected`);
    });
};
