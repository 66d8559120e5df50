/**
 * intercept: NeuVector's pullContainerPort (docs/datapath.md section 1),
 * then `pair add` through the Datapath API. The steps are INTERCEPT_STEPS,
 * each journalled before it runs and undone in reverse on a failure.
 */
import { ConflictError, NotFoundError, UsageError } from '../errors';
import { validateIfName, VBR } from '../link';
import { withLock } from '../lock';
import { log } from '../log';
import { faultPoint } from '../faults';
import { JournalRecord, INTERCEPT_LOCK, recoverDead, removeRecord, writeRecord } from './journal';
import { AddModeName, Datapath, DEFAULT_ADD_MODE, ModeName, PairAdded } from '../pairs';
import { Undo } from '../undo';
import { caughtSignal } from '../signals';
import { enforcerRunner, NsRunner } from './runner';
import { addAddresses, restorePort, restoreRoutesAndNeighbours, snapshotPort } from './snapshot';
import {
  INTERCEPT_LOCK_WAIT_MS, INTERCEPT_STEPS, checkEnforcer, mustBeAbsent, openDatapath, recordIds, recoverTarget, sameNetns, step,
} from './steps';
import { ResolvedTarget, Target, portNames, resolveTarget, tempMac } from './target';
import { encodeMarker, markerKey, markerOf } from './marker';

export interface InterceptOptions {
  pinRoot: string;
  target: Target;
  /** The container's port, default eth0. */
  port?: string;
  /**
   * Default: the pair API's default (bypass). drop: the pair is added in
   * bypass and switched to drop in the same step, before the new port is up
   * (no frame passes in between).
   */
  mode?: ModeName;
  id?: number;
  ipv6ToDp?: boolean;
  /**
   * The enforcer netns (name or path). Default: the one this process runs in
   * (the CLI has entered --netns by then).
   */
  enforcer?: string;
}

export interface InterceptResult {
  target: string;
  pid: number | null;
  netns: string;
  port: string;
  vex: string;
  vin: string;
  mac: string;
  mtu: number;
  /** The new eth0 kept the original's ifindex. */
  ifindexKept: boolean;
  addresses: string[];
  routes: number;
  neighbours: number;
  pair: PairAdded;
  /** A half-done intercept or release of this port found in the journal and brought to rest first. */
  recovered?: string;
}

export async function intercept(opts: InterceptOptions): Promise<InterceptResult> {
  return withLock(opts.pinRoot, () => interceptLocked(opts), INTERCEPT_LOCK_WAIT_MS, INTERCEPT_LOCK);
}

async function interceptLocked(opts: InterceptOptions): Promise<InterceptResult> {
  const lg = log('intercept');
  const port = validateIfName(opts.port ?? 'eth0', 'port name');
  const t = resolveTarget(opts.target);
  const { vex, vin } = portNames(t.tags[0]!, port);
  const ctr = new NsRunner(t.path, `the container netns (${t.desc})`);
  const enf = enforcerRunner(opts.enforcer);

  // ---- checks: nothing changes until they all pass
  checkEnforcer(opts.pinRoot, opts.enforcer);
  if (await sameNetns(ctr, enf)) {
    throw new UsageError(`${t.desc} is in the enforcer's own network namespace: nothing to intercept (use --netns for the enforcer)`);
  }
  const recovered = await recoverTarget(opts.pinRoot, t, port, opts.enforcer);
  // Dead interceptions first: their pairs hold ifindexes the kernel gives the ports this one moves in.
  for (const line of await recoverDead({ pinRoot: opts.pinRoot, enforcer: opts.enforcer })) lg.info({ target: t.desc }, `first: ${line}`);
  const dp = openDatapath(opts.pinRoot, opts.enforcer);
  try {
    if (!(await enf.link(VBR))) {
      throw new NotFoundError(`${VBR} not found in ${enf.desc}: load the datapath there (neuv-bpf --netns ... load)`);
    }
    if (recovered?.intercepted) return await interceptedAlready(opts, t, ctr, enf, dp, recovered.intercepted, recovered.completed);
    const snap = await snapshotPort(ctr, port);
    if (snap.kind !== 'veth') {
      throw new UsageError(`${port} of ${t.desc} is ${snap.kind ? `a ${snap.kind}` : 'not a veth'}: only veth ports can be intercepted`);
    }
    for (const tag of t.tags) {
      const n = portNames(tag, port);
      if (await enf.link(n.vex)) throw new ConflictError(`${port} of ${t.desc} is already intercepted (${n.vex} is in ${enf.desc}): neuv-bpf release first`);
    }
    await mustBeAbsent(enf, vin);
    await mustBeAbsent(ctr, vex);
    await mustBeAbsent(ctr, vin);
    const M = snap.mac;

    // ---- the sequence
    const undo = new Undo('intercept');
    // The journal record, rewritten before each step: a kill anywhere leaves what repair needs.
    const rec: JournalRecord = {
      version: 1, op: 'intercept', step: 'mark', ...recordIds(t, enf), port, vex, vin, snap,
      pair: { mode: opts.mode, id: opts.id, ipv6ToDp: opts.ipv6ToDp === true }, time: '',
    };
    const J = (s: string) => writeRecord(opts.pinRoot, { ...rec, step: s });
    const S = (name: (typeof INTERCEPT_STEPS)[number], what: string, fn: () => Promise<unknown>) => {
      J(name);
      return step('intercept', name, what, fn);
    };
    let ifindexKept = false;
    let pair: PairAdded;
    try {
      // The kernel's own record of this intercept (marker.ts): what repair needs if the journal record is lost.
      const mark = encodeMarker(markerOf(markerKey(opts.pinRoot, rec.enforcer.ino), t.ino, t.tags[0]!, snap));
      await S('mark', `mark ${port} as being intercepted (its alias)`, () => ctr.set(port, { alias: mark }));
      undo.push(`alias of ${port}`, () => ctr.set(port, { alias: snap.alias ?? '' }));

      await S('down', `take ${port} down`, () => ctr.set(port, { up: false }));
      undo.push(`addresses, routes and neighbours of ${port}`, () => restorePort(ctr, snap, port));

      await S('flush', `remove the addresses of ${port}`, () => ctr.flush(port));

      await S('rename', `rename ${port} to ${vex}`, () => ctr.set(port, { name: vex }));
      undo.push(`rename ${vex} back to ${port}`, () => ctr.set(vex, { name: port }));

      const tmp = tempMac();
      await S('tmpmac', `give ${vex} a temporary MAC`, () => ctr.set(vex, { mac: tmp }));
      undo.push(`MAC of ${vex} back to ${M}`, () => ctr.set(vex, { mac: M }));

      await S('move-vex', `move ${vex} to ${enf.desc}`, () => ctr.moveTo(vex, enf));
      // Back under its own ifindex (free again once the new port is deleted).
      undo.push(`move ${vex} back to the container`, () => enf.moveTo(vex, ctr, snap.ifindex));

      // The new port: the original's name, MAC, MTU, queues and (now free) ifindex; its peer is vin.
      const queues = { numTxQueues: snap.numTxQueues, numRxQueues: snap.numRxQueues };
      const create = (withIndex: boolean) =>
        ctr.addVeth(
          { name: port, index: withIndex ? snap.ifindex : undefined, mac: M, mtu: snap.mtu, txqlen: snap.txqlen, ...queues },
          { name: vin, mtu: snap.mtu, ...queues },
        );
      await S('create', `create ${port} (veth, peer ${vin}) in the container`, async () => {
        try {
          await create(true);
          ifindexKept = true;
        } catch (e) {
          lg.debug({ err: (e as Error).message }, `ifindex ${snap.ifindex} not reusable; new ${port} gets another`);
          await create(false);
        }
      });
      const created = (await ctr.link(port))!.ifindex;
      undo.push(`delete the new ${port}`, async () => {
        const l = await ctr.link(port);
        if (l && l.ifindex === created) await ctr.del(port);
      });

      await S('move-vin', `move ${vin} to ${enf.desc}`, () => ctr.moveTo(vin, enf));
      undo.push(`delete ${vin}`, async () => {
        if (await enf.link(vin)) await enf.del(vin);
      });

      await S('enforcer-up', `bring ${vex} and ${vin} up in ${enf.desc}`, async () => {
        // No IPv6 link-local address on either: they are plumbing, not hosts.
        for (const d of [vex, vin]) await enf.set(d, { addrGenMode: 'none' });
        for (const d of [vex, vin]) await enf.set(d, { up: true });
      });

      pair = await S('pair', `pair add ${vin}/${vex}`, async () => {
        const add = () => dp.addPair({ in: vin, ex: vex, mac: M, mode: addModeOf(opts.mode), id: opts.id, ipv6ToDp: opts.ipv6ToDp === true });
        let added: PairAdded;
        try {
          added = await add();
        } catch (e) {
          // A container that died since the check above freed its vin's ifindex, and vin or vex just got it:
          // its dead pair holds it. Removed, the pair add goes through.
          if (!(e instanceof ConflictError)) throw e;
          const fixed = await recoverDead({ pinRoot: opts.pinRoot, enforcer: opts.enforcer });
          if (!fixed.length) throw e;
          for (const line of fixed) lg.info({ target: t.desc }, `first: ${line}`);
          added = await add();
        }
        if (opts.mode !== 'drop') return added;
        await dp.setMode({ id: added.id }, 'drop');
        return { ...added, mode: 'drop' };
      }) as PairAdded;
      undo.push(`pair del ${vin}/${vex}`, () => dp.delPair({ in: vin }));

      // The new port, configured like the original (its delete undoes all of this).
      await S('offload', `turn checksum offload off on the new ${port}`, () => ctr.checksumOffloadOff(port));
      await S('addresses', `give the new ${port} its addresses`, async () => {
        if (snap.addrGenMode) await ctr.set(port, { addrGenMode: snap.addrGenMode });
        if (snap.alias) await ctr.set(port, { alias: snap.alias });
        await addAddresses(ctr, snap, port);
      });
      await S('up', `bring the new ${port} up`, async () => {
        if (snap.up) await ctr.set(port, { up: true });
      });
      await S('routes', `restore the routes and neighbours of ${port}`, () => restoreRoutesAndNeighbours(ctr, snap, port));
      J('commit');
      faultPoint('intercept:before-commit');
      J('intercepted');
    } catch (e) {
      // Interrupted (src/signals.ts; or a step's child killed by the same Ctrl-C): the CLI's one line says so.
      lg[caughtSignal() ? 'info' : 'warn']({ target: t.desc, port, err: (e as Error).message }, 'intercept failed; rolling back');
      if ((await undo.run()) === 0) removeRecord(opts.pinRoot, rec);
      else lg.warn({ target: t.desc, port }, 'the rollback was incomplete: neuv-bpf repair finishes it from the journal');
      throw e;
    }
    lg.info({ target: t.desc, port, vex, vin, id: pair.id, mode: pair.mode }, 'intercepted');
    return resultOf(t, { port, vex, vin, snap }, pair, ifindexKept, recovered && !recovered.intercepted ? recovered.line : undefined);
  } finally {
    dp.close();
  }
}

/** The mode a pair is added in: drop is reached from bypass (pair add takes fwd, tap, bypass). */
function addModeOf(mode: ModeName | undefined): AddModeName {
  return mode === undefined || mode === 'drop' ? DEFAULT_ADD_MODE : mode;
}

/** What intercept reports: the port as its record names it, the pair, what recovery did first. */
function resultOf(
  t: ResolvedTarget, r: Pick<JournalRecord, 'port' | 'vex' | 'vin' | 'snap'>, pair: PairAdded, ifindexKept: boolean, recovered: string | undefined,
): InterceptResult {
  return {
    target: t.desc,
    pid: t.pid ?? null,
    netns: t.path,
    port: r.port,
    vex: r.vex,
    vin: r.vin,
    mac: r.snap.mac,
    mtu: r.snap.mtu,
    ifindexKept,
    addresses: r.snap.addrs.map((x) => `${x.local}/${x.prefixlen}`),
    routes: r.snap.routes.length,
    neighbours: r.snap.neighbours.length,
    pair,
    ...(recovered ? { recovered } : {}),
  };
}

/**
 * intercept of a port intercepted already (its journal record says so and
 * the kernel agrees: recoverTarget checked), e.g. by a run killed at its
 * commit point: a success when its pair is as asked, like `pair add` of an
 * identical spec (which re-attaches a missing hook too); one ConflictError
 * line saying how it differs otherwise.
 */
async function interceptedAlready(
  opts: InterceptOptions, t: ResolvedTarget, ctr: NsRunner, enf: NsRunner, dp: Datapath, rec: JournalRecord, completed: string | undefined,
): Promise<InterceptResult> {
  const want = { mode: opts.mode ?? DEFAULT_ADD_MODE, id: opts.id, ipv6ToDp: opts.ipv6ToDp === true };
  const have = (await dp.show()).pairs.find((p) => p.vin?.name === rec.vin || p.vex?.name === rec.vex);
  const differ: string[] = [];
  if (have && have.mode !== want.mode) differ.push(`mode ${have.mode}, not ${want.mode}`);
  if (have && want.id !== undefined && have.id !== want.id) differ.push(`id ${have.id}, not ${want.id}`);
  if (have && have.ipv6ToDp !== want.ipv6ToDp) differ.push(`IPv6 ${have.ipv6ToDp ? '' : 'not '}to the DP`);
  if (differ.length) {
    throw new ConflictError(`${rec.port} of ${t.desc} is already intercepted (${rec.vex} is in ${enf.desc}) with ${differ.join(', ')}: neuv-bpf pair mode, or release first`);
  }
  const pair = await dp.addPair({ in: rec.vin, ex: rec.vex, mac: rec.snap.mac, ...want, mode: want.mode === 'drop' ? undefined : want.mode });
  const ifindexKept = (await ctr.link(rec.port))?.ifindex === rec.snap.ifindex;
  log('intercept').info({ target: t.desc, port: rec.port, vex: rec.vex, id: pair.id, mode: pair.mode, created: pair.created }, 'intercepted already, as asked');
  return resultOf(t, rec, pair, ifindexKept, completed);
}
