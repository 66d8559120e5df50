/**
 * unload without black-holing anyone. loader.ts's unload() detaches every
 * hook and deletes vbr-neuv: an intercepted container's traffic then has
 * nowhere to go (its eth0's peer vin is in no pair, its original port vex
 * sits unused in the enforcer netns) until someone releases it. So
 * teardown() refuses while pairs or intercepted containers exist, listing
 * them; with `force` it first releases every intercepted container (its
 * original port back in its netns, working: the release of src/intercept/)
 * and deletes the pairs left, then unloads. It sits above the loader, the
 * pair API, the journal and intercept, which it uses.
 */
import { ConflictError } from './errors';
import { checkHome, homeGone } from './home';
import { JournalRecord, findNetns, listRecords, recoverAll } from './intercept/journal';
import { release } from './intercept';
import { UnloadResult, unload, unloadOrphan } from './loader';
import { Pins, checkPrivileges, isLoaded } from './pins';
import { withLock } from './lock';
import { log } from './log';
import { Datapath } from './pairs';
import { ifIndexToName } from './bpf';
import { decodeId, decodeU32Key } from './layout';

export interface TeardownOptions {
  /** Release every intercepted container and delete every pair first. */
  force?: boolean;
}

export interface TeardownResult extends UnloadResult {
  /** force: the containers released ("eth0 of pid 1234"). */
  released: string[];
  /** force: the pairs deleted after the releases. */
  pairsDeleted: number[];
}

/** A pair as neuv_ids has it, with its ports' names here. */
export interface PairInUse {
  id: number;
  vin: string;
  vex: string;
}

/** What keeps a datapath in use: its pairs and the intercepted containers of its journal. */
export interface InUse {
  pairs: PairInUse[];
  intercepted: JournalRecord[];
}

/** Read from the maps and the journal without the pin root's lock (the caller may hold it). */
export function inUse(pinRoot: string): InUse {
  const intercepted = listRecords(pinRoot);
  if (!isLoaded(pinRoot)) return { pairs: [], intercepted };
  const name = (ifindex: number) => ifIndexToName(ifindex) ?? `ifindex ${ifindex}`;
  const pairs = Pins.with(pinRoot, ['ids'], ({ ids }) =>
    ids.entries().map(([k, v]) => {
      const d = decodeId(v);
      return { id: decodeU32Key(k), vin: name(d.vinIfindex), vex: name(d.vexIfindex) };
    }),
  );
  return { pairs: pairs.sort((a, b) => a.id - b.id), intercepted };
}

const container = (r: JournalRecord) => `${r.port} of ${r.target.desc}`;

/** One line: "2 pairs and 1 intercepted container: id 5 vexab-eth0/vinab-eth0 (eth0 of pid 123), id 7 a/b". */
export function describeInUse(u: InUse, max = 5): string {
  const byVin = new Map(u.intercepted.map((r) => [r.vin, r]));
  const items = u.pairs.map((p) => {
    const r = byVin.get(p.vin);
    return `id ${p.id} ${p.vex}/${p.vin}${r ? ` (${container(r)})` : ''}`;
  });
  const paired = new Set(u.pairs.map((p) => p.vin));
  for (const r of u.intercepted) if (!paired.has(r.vin)) items.push(`${container(r)} (${r.step === 'intercepted' ? 'intercepted, no pair' : `${r.op} cut short at ${r.step}`})`);
  const shown = items.slice(0, max).join(', ') + (items.length > max ? `, and ${items.length - max} more` : '');
  const n = (k: number, w: string) => `${k} ${w}${k === 1 ? '' : 's'}`;
  return `${n(u.pairs.length, 'pair')} and ${n(u.intercepted.length, 'intercepted container')}: ${shown}`;
}

/**
 * Unloads the datapath at pinRoot (this thread's netns must be its home):
 * refused while it is in use unless `force`, which releases and deletes
 * first. The caller holds no lock (release and the pair API take theirs);
 * the unload itself checks again under the pin root's lock.
 */
export async function teardown(pinRoot: string, opts: TeardownOptions = {}): Promise<TeardownResult> {
  const lg = log('loader');
  checkPrivileges();
  // Its netns gone (and its ports with it): nothing to release or detach, only the pins to remove.
  if (opts.force && homeGone(pinRoot)) return withLock(pinRoot, () => ({ ...unloadOrphan(pinRoot), released: [], pairsDeleted: [] }));
  checkHome(pinRoot);
  const released: string[] = [];
  const pairsDeleted: number[] = [];
  let u = inUse(pinRoot);
  if ((u.pairs.length || u.intercepted.length) && opts.force) {
    // Half-done intercepts and releases, and containers that are gone, first (repair's journal recovery).
    const rec = await recoverAll({ pinRoot });
    for (const a of rec.actions) lg.info({ action: a }, 'unload --force: recovered');
    for (const r of listRecords(pinRoot)) {
      const at = findNetns(r.target);
      if (!at) continue; // gone since: its pair goes below
      await release({ pinRoot, target: { netns: at }, port: r.port });
      released.push(container(r));
      lg.info({ container: container(r) }, 'unload --force: released');
    }
    u = inUse(pinRoot);
    if (u.pairs.length) {
      const dp = Datapath.open(pinRoot);
      try {
        // One batch (Datapath.delPairs): the hooks over one netlink socket, one RCU grace period for all.
        for (const r of await dp.delPairs(u.pairs.map((p) => ({ id: p.id })))) pairsDeleted.push(r.id);
      } finally {
        dp.close();
      }
      lg.info({ pairs: pairsDeleted }, 'unload --force: pairs deleted');
    }
  }
  return withLock(pinRoot, async () => {
    const now = inUse(pinRoot);
    if (now.pairs.length || now.intercepted.length) {
      throw new ConflictError(
        `refusing to unload ${pinRoot}: ${describeInUse(now)}; release the containers and delete the pairs first, or unload --force (releases them, then deletes the pairs)`,
      );
    }
    return { ...(await unload(pinRoot)), released, pairsDeleted };
  });
}
