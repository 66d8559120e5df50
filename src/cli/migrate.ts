/**
 * Commands `discover`, `adopt` and `handback`: migration from NeuVector's tc
 * pipe, a thin shell over src/migrate/. The enforcer netns is the one
 * neuv-bpf runs in (--netns or the current one).
 */
import { CommandRegistrar, printJson } from './context';
import { NeuvError, UsageError, cutValue } from '../errors';
import { readInputFile } from '../input';
import { table } from '../format';
import { AdoptResult, Discovery, HandbackResult, adopt, discover, handback } from '../migrate';

const yesNo = (b: boolean) => (b ? 'yes' : 'no');

/** discover as text: one row per pair, then notes, then what could not be classified. */
export function discoveryLines(d: Discovery): string[] {
  const out: string[] = [];
  if (d.pairs.length === 0 && d.unclassified.length === 0) {
    out.push(`no NeuVector tc pipe state here: no vin/vex pair with NeuVector's rules${d.vbr.present ? `, none on vbr-neuv (${d.vbr.nvRules} filters)` : ', no vbr-neuv'}`);
    return out;
  }
  const vbr = d.vbr.present
    ? `vbr-neuv ifindex ${d.vbr.ifindex}, MTU ${d.vbr.mtu}, ${d.vbr.qdisc} qdisc, ${d.vbr.nvRules} NeuVector rule(s), neuv-bpf ${d.vbr.ours === 'none' ? 'not attached' : `attached (${d.vbr.ours})`}`
    : 'no vbr-neuv';
  out.push(`NeuVector tc pipe: ${d.pairs.length} pair(s), ${d.unclassified.length} thing(s) not classified; ${vbr}`);
  if (d.pairs.length) {
    out.push(
      ...table(
        ['vin', 'vex', 'ifindex', 'MAC', 'UCMAC', 'id', 'UCMAC from', 'mode', 'pedit', 'vbr-neuv rules', 'qdiscs', 'neuv-bpf'],
        d.pairs.map((p) => [
          p.in,
          p.ex,
          `${p.vinIfindex}/${p.vexIfindex}`,
          p.mac,
          p.ucmac,
          String(p.id),
          p.ucmacFrom,
          p.mode,
          yesNo(p.pedit),
          p.vbrRules === 'none' ? 'none' : `${p.vbrRules} ${[p.vbrPrefs.da === null ? '' : `DA ${p.vbrPrefs.da}`, p.vbrPrefs.sa === null ? '' : `SA ${p.vbrPrefs.sa}`].filter(Boolean).join(' ')}`,
          `${p.qdisc.vin}/${p.qdisc.vex}`,
          p.ours.vin === 'none' && p.ours.vex === 'none' ? '-' : `${p.ours.vin}/${p.ours.vex}`,
        ]),
        ['l', 'l', 'r', 'l', 'l', 'r'],
      ),
    );
  }
  const notes = d.pairs.flatMap((p) => p.notes.map((n) => `  ${p.in}/${p.ex}: ${n}`));
  if (notes.length) out.push('notes:', ...notes);
  if (d.unclassified.length) {
    out.push('not classified (adopt leaves these alone):', ...d.unclassified.map((u) => `  ${u.what}: ${u.why}`));
  }
  if (d.kernel) {
    out.push(`this kernel (${d.kernel.release}): act_pedit ${yesNo(d.kernel.actPedit)}, act_gact ${yesNo(d.kernel.actGact)} (handback needs act_pedit for FWD and act_gact for TAP's vbr-neuv drop rules)`);
  }
  return out;
}

export function adoptLines(r: AdoptResult): string[] {
  const out: string[] = [];
  if (r.plan.length === 0) {
    out.push('nothing to adopt: no NeuVector tc pipe pair here');
  } else if (r.dryRun) {
    out.push(`adopt plan for ${r.plan.length} pair(s) (dry run: nothing changed):`);
    if (r.load) out.push(`  load the datapath first (vbr-neuv kept with its qdisc and NeuVector rules, MTU ${r.jumbo ? 9000 : 2048}; neuv_vbr runs ahead of those rules)`);
    for (const p of r.plan) {
      out.push(`  ${p.pair.in}/${p.pair.ex}: id ${p.pair.id} ${p.pair.ucmac}, MAC ${p.pair.mac}, ${p.pair.mode}`);
      p.steps.forEach((s, k) => out.push(`    ${k + 1}. ${s}`));
    }
  } else {
    if (r.load) out.push('loaded the datapath (vbr-neuv kept; neuv_vbr runs ahead of its NeuVector rules)');
    for (const a of r.adopted) {
      out.push(
        `adopted ${a.in}/${a.ex}: id ${a.id} ucmac ${a.ucmac} MAC ${a.mac} mode ${a.mode}, hooks ${a.attach.vin}/${a.attach.vex}, ` +
          `probe ok, deleted ${a.removed.length} NeuVector filter(s) (${a.ms} ms)`,
      );
    }
    if (!r.failed) out.push(`adopted ${r.adopted.length} of ${r.plan.length} pair(s); none of their NeuVector filters is left`);
  }
  for (const w of r.warnings) out.push(`warning: ${w}`);
  if (r.skipped.length) out.push(`left on NeuVector's rules (not classified, see discover):`, ...r.skipped.map((u) => `  ${u.what}: ${u.why}`));
  return out;
}

export function handbackLines(r: HandbackResult): string[] {
  const out: string[] = [];
  out.push(`${r.dryRun ? 'would hand back' : 'handed back'} ${r.pairs.length} pair(s) to NeuVector's tc pipe${r.dryRun ? ' (dry run: nothing changed)' : ''}:`);
  for (const q of r.qdiscsAdded) out.push(`  ${r.dryRun ? 'add' : 'added'} an ingress qdisc on ${q}`);
  for (const p of r.pairs) {
    const vbr = p.rules.some((a) => a[3] === 'vbr-neuv') ? `vbr-neuv prefs ${p.exPref} (DA) and ${p.inPref} (SA)` : 'none on vbr-neuv';
    out.push(`  ${p.in}/${p.ex}: ${p.mode} id ${p.id} ${p.ucmac} MAC ${p.mac}, ${p.rules.length} rule(s), ${vbr}`);
    if (r.dryRun) for (const a of p.rules) out.push(`    tc ${a.join(' ')}`);
  }
  for (const w of r.warnings) out.push(`warning: ${w}`);
  if (r.unloaded) out.push('neuv-bpf is unloaded here (pins removed); vbr-neuv/vth-neuv are kept for NeuVector\'s DP');
  return out;
}

function readPlan(file: string): Discovery {
  const text = readInputFile(file, '--from');
  try {
    return JSON.parse(text) as Discovery;
  } catch {
    throw new UsageError(`--from ${file === '-' ? '- (stdin)' : cutValue(file)} is not JSON (expected discover --json output)`);
  }
}

export const registerMigrateCommands: CommandRegistrar = (program, ctx) => {
  program
    .command('discover')
    .description(
      "find NeuVector's tc pipe state here: vin/vex pairs, the workload MAC and UCMAC its rules encode, the mode they imply, " +
        'qdisc kinds, and what cannot be classified (read only)',
    )
    .option('--json', 'print the result as JSON (the input of adopt --from)')
    .action(async () => {
      const c = ctx();
      const d = await discover(c.pinRoot);
      if (c.json) printJson(c, d);
      else for (const l of discoveryLines(d)) c.out(l);
    });

  program
    .command('adopt')
    .description(
      "take every discovered NeuVector pair over without a gap: load the datapath if needed, write its entries, attach ahead of NeuVector's " +
        "filters, verify with a probe, then delete NeuVector's filters of the pair; stops at the first pair that fails",
    )
    .option('--dry-run', 'print the plan, change nothing')
    .option('--from <file>', 'adopt only the pairs of this discover --json output (- for stdin); refused if any changed since')
    .option('--json', 'print the result as JSON')
    .action(async (o: { dryRun?: boolean; from?: string }) => {
      const c = ctx();
      const r = await adopt({ pinRoot: c.pinRoot, dryRun: o.dryRun === true, from: o.from ? readPlan(o.from) : undefined });
      if (c.json) printJson(c, r);
      else for (const l of adoptLines(r)) c.out(l);
      if (r.failed) {
        const left = r.plan.length - r.adopted.length - (r.failed.step === 'remove' ? 0 : 1);
        throw new NeuvError(
          `adopt stopped at ${r.failed.in}/${r.failed.ex} (step ${r.failed.step}): ${r.failed.error}; that pair is ${r.failed.state}` +
            (left > 0 ? `; ${left} later pair(s) not attempted` : ''),
        );
      }
    });

  program
    .command('handback')
    .description(
      "the reverse of adopt, for a node being rolled back: install NeuVector's rules for every pair, then detach neuv-bpf (vbr-neuv, " +
        'then each pair: hooks, then entries) and remove the pins; vbr-neuv/vth-neuv stay. Refused where the kernel lacks what a pair needs',
    )
    .option('--dry-run', 'print the tc rules it would install, change nothing')
    .option('--json', 'print the result as JSON')
    .action(async (o: { dryRun?: boolean }) => {
      const c = ctx();
      const r = await handback({ pinRoot: c.pinRoot, dryRun: o.dryRun === true });
      if (c.json) printJson(c, r);
      else for (const l of handbackLines(r)) c.out(l);
    });
};
