/** load and unload: the datapath as a whole. */
import * as fs from 'node:fs';
import { MAX_FLOWS, load } from '../loader';
import { teardown } from '../teardown';
import { integerOption } from './options';
import { openRegularFile } from '../input';
import { CommandRegistrar, printJson } from './context';

export const registerLoadCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('load')
    .description('create vbr-neuv/vth-neuv if missing, load and pin the BPF object, attach vbr-neuv (idempotent; a rerun replaces the programs in place and keeps the maps)')
    .option('--jumbo', 'MTU 9000 on vbr-neuv/vth-neuv instead of 2048')
    .option('--obj <file>', 'BPF object to load (default: build/neuv.bpf.o of this package)')
    .addOption(integerOption('--flows <n>', `size of the flow offload map neuv_flows (1..${MAX_FLOWS}; default 65536, or the size it is pinned with; changing it needs unload)`, { min: 1, max: MAX_FLOWS }))
    .option('--json', 'print the result as JSON')
    .action(async (o: { jumbo?: boolean; obj?: string; flows?: number }) => {
      const c = ctx();
      if (o.obj !== undefined) fs.closeSync(openRegularFile(o.obj, '--obj').fd); // libbpf would block on a FIFO, read /dev/zero for ever
      const r = await load({ pinRoot: c.pinRoot, objPath: o.obj, jumbo: o.jumbo, flows: o.flows }); // under the pin root's lock
      if (c.json) printJson(c, r);
      else {
        c.out(`${r.replaced ? 'replaced programs in place' : 'loaded'}: pin root ${r.pinRoot}, programs vin=${r.progIds.vin} vex=${r.progIds.vex} vbr=${r.progIds.vbr}` +
          (r.reattached ? `, ${r.reattached} port hooks swapped` : '') + (r.created ? ', created vbr-neuv/vth-neuv' : ''));
      }
    });

  program
    .command('unload')
    .description('detach from every port, unpin everything, delete vbr-neuv/vth-neuv; refused while pairs or intercepted containers exist (listed)')
    .option('--force', 'first release every intercepted container (its original port back) and delete every pair, then unload')
    .option('--json', 'print the result as JSON')
    .action(async (o: { force?: boolean }) => {
      const c = ctx();
      const r = await teardown(c.pinRoot, { force: o.force === true });
      if (c.json) printJson(c, r);
      else {
        const first = (r.released.length ? `released ${r.released.join(', ')}; ` : '') + (r.pairsDeleted.length ? `deleted pair${r.pairsDeleted.length > 1 ? 's' : ''} id ${r.pairsDeleted.join(', ')}; ` : '');
        c.out(first + (r.wasLoaded ? `unloaded: ${r.detached} hooks detached, ${r.removed.length} pins removed` : 'nothing was loaded'));
      }
    });
};
