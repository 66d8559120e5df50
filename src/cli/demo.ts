/**
 * Command `demo`: a throwaway topology in private netns, real traffic through
 * each mode, a table of what got through (src/demo.ts). Exit code 1 when
 * something did not behave as the datapath's rules say it must.
 */
import type { CommandRegistrar } from './context';
import { NeuvError } from '../errors';
import { configureLogging, resolveLevel } from '../log';

export const registerDemoCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('demo')
    .description(
      'build a throwaway topology (host bridge, two containers, enforcer netns) with its own pin root, intercept both containers, ' +
        'run ping/TCP/UDP/ARP/broadcast/multicast/IPv6 in BYPASS, TAP and FWD (a stub DP blocking port 9999), print what got through, remove everything',
    )
    .action(async () => {
      const c = ctx();
      // The demo's own output is the point: library logs only from warn up, unless asked for.
      const g = program.opts<{ logLevel?: string }>();
      if (!g.logLevel && !process.env.NEUV_BPF_LOG_LEVEL) configureLogging(resolveLevel('warn'));
      if (program.opts<{ netns?: string }>().netns) throw new NeuvError('demo makes its own namespaces: drop --netns');
      const { runDemo } = await import('../demo');
      const r = await runDemo({ out: c.out });
      if (!r.ok) throw new NeuvError(`demo: ${r.mismatches.length} result(s) not as expected`);
    });
};
