/**
 * Command `repair`: a thin shell over src/repair.ts. Prints one line per
 * action; exits 0 when the state is consistent afterwards, else 1 with one
 * error line naming the first problem left (each printed above it).
 */
import { CommandRegistrar, Ctx, printJson } from './context';
import { ExitCode, NeuvError } from '../errors';
import { repair } from '../repair';

export const registerRepairCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('repair')
    .description('fix what show --check reports where it can: re-attach lost hooks, rewrite lost entries, finish cut-short mode switches, remove pairs whose ports vanished and stray leftovers')
    .option('--dry-run', 'only say what would be done')
    .option('--json', 'print the result as JSON')
    .action(async (o: { dryRun?: boolean }) => {
      const c: Ctx = ctx();
      const r = await repair(c.pinRoot, { dryRun: o.dryRun });
      if (c.json) printJson(c, r);
      else {
        for (const a of r.actions) c.out(`${r.dryRun ? 'would fix' : 'fixed'}: ${a}`);
        for (const l of r.left) c.out(`${r.dryRun ? 'problem' : 'left'}: ${l}`);
        if (r.consistent) c.out(r.actions.length ? 'consistent now' : 'nothing to repair: consistent');
      }
      if (!r.consistent) {
        const what = r.dryRun ? 'problem' : 'problem left';
        throw new NeuvError(`${r.left.length} ${what}${r.left.length === 1 ? '' : 's'}: ${r.left[0]}`, ExitCode.FAILURE);
      }
    });
};
