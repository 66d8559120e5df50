/**
 * release: intercept's reverse. It records nothing on the side: the
 * container's port is a veth whose peer is vin<tag>-<port> in the enforcer
 * netns, which names vex; the workload MAC, addresses, routes and
 * neighbours are read from that port at release time. The original port
 * goes back under its original ifindex. The steps are RELEASE_STEPS.
 */
import { NotFoundError } from '../errors';
import { validateIfName } from '../link';
import { withLock } from '../lock';
import { log } from '../log';
import { JournalRecord, findNetns, findRecord, INTERCEPT_LOCK, interceptedNow, recoverLocked, removeRecord, writeRecord } from './journal';
import { Datapath, PairView } from '../pairs';
import { Undo } from '../undo';
import { caughtSignal } from '../signals';
import { enforcerRunner, NsRunner } from './runner';
import { addAddresses, restorePort, restoreRoutesAndNeighbours, snapshotPort } from './snapshot';
import { INTERCEPT_LOCK_WAIT_MS, checkEnforcer, RELEASE_STEPS, mustBeAbsent, openDatapath, recordIds, recoverTarget, step } from './steps';
import { Target, portNames, resolveTarget, tempMac } from './target';

export interface ReleaseOptions {
  pinRoot: string;
  target: Target;
  port?: string;
  enforcer?: string;
}

export interface ReleaseResult {
  target: string;
  port: string;
  vex: string;
  vin: string;
  mac: string;
  /** The pair that was deleted (null: there was none, e.g. after unload). */
  pairId: number | null;
  addresses: string[];
  routes: number;
  neighbours: number;
  /** The journal had a half-done operation on this port: what finishing it did (nothing else was needed). */
  recovered?: string;
}

export async function release(opts: ReleaseOptions): Promise<ReleaseResult> {
  return withLock(opts.pinRoot, () => releaseLocked(opts), INTERCEPT_LOCK_WAIT_MS, INTERCEPT_LOCK);
}

export interface ReleaseRecordedOptions {
  pinRoot: string;
  /** The inode of the container's network namespace when it was intercepted (its journal record's). */
  netnsInode: number;
  port?: string;
  enforcer?: string;
}

/**
 * release of a container named by the inode its network namespace had when
 * it was intercepted (the key of its journal record), whatever became of it
 * since: while that netns is there and intercepted, a release as above; once
 * it is gone (podman tears a container's netns down before its poststop
 * hooks run), what is left of the interception (pair, vin, vex, record) is
 * removed, as repair would, and `recovered` says so.
 */
export async function releaseRecorded(o: ReleaseRecordedOptions): Promise<ReleaseResult> {
  return withLock(o.pinRoot, async () => {
    const port = validateIfName(o.port ?? 'eth0', 'port name');
    checkEnforcer(o.pinRoot, o.enforcer);
    const rec = findRecord(o.pinRoot, o.netnsInode, port);
    if (!rec) throw new NotFoundError(`${port} of the netns with inode ${o.netnsInode} is not intercepted (no journal record of it)`);
    const live = findNetns(rec.target);
    if (live && (await interceptedNow(rec, new NsRunner(live, `the container netns (${rec.target.desc})`), enforcerRunner(o.enforcer)))) {
      return releaseLocked({ pinRoot: o.pinRoot, target: { netns: live }, port, enforcer: o.enforcer });
    }
    const r = await recoverLocked(rec, { pinRoot: o.pinRoot, enforcer: o.enforcer });
    return {
      target: rec.target.desc, port, vex: rec.vex, vin: rec.vin, mac: rec.snap.mac, pairId: null,
      addresses: rec.snap.addrs.map((x) => `${x.local}/${x.prefixlen}`), routes: rec.snap.routes.length, neighbours: rec.snap.neighbours.length,
      recovered: r.line,
    };
  }, INTERCEPT_LOCK_WAIT_MS, INTERCEPT_LOCK);
}

async function releaseLocked(opts: ReleaseOptions): Promise<ReleaseResult> {
  const lg = log('release');
  const port = validateIfName(opts.port ?? 'eth0', 'port name');
  const t = resolveTarget(opts.target);
  const ctr = new NsRunner(t.path, `the container netns (${t.desc})`);
  const enf = enforcerRunner(opts.enforcer);
  checkEnforcer(opts.pinRoot, opts.enforcer);

  // ---- a half-done intercept or release of this port: bringing it to rest is the release
  const recovered = await recoverTarget(opts.pinRoot, t, port, opts.enforcer);
  if (recovered && !recovered.intercepted) {
    const r = recovered.rec;
    return {
      target: t.desc, port, vex: r.vex, vin: r.vin, mac: r.snap.mac, pairId: null,
      addresses: r.snap.addrs.map((x) => `${x.local}/${x.prefixlen}`), routes: r.snap.routes.length, neighbours: r.snap.neighbours.length,
      recovered: recovered.line,
    };
  }

  // ---- find what intercept left: the container's port is a veth whose peer
  // is vin<tag>-<port> in the enforcer netns (whatever the target was named by then)
  const snap = await snapshotPort(ctr, port);
  const enfLinks = await enf.links();
  const vinRe = new RegExp(`^vin(.+)-${port.replace(/[.+]/g, '\\$&')}$`);
  const vinLink = snap.kind === 'veth'
    ? enfLinks.find((l) => l.ifindex === snap.peerIfindex && l.link_index === snap.ifindex && vinRe.test(l.ifname))
    : undefined;
  if (!vinLink) {
    const stray = t.tags.map((tag) => portNames(tag, port).vex).filter((n) => enfLinks.some((l) => l.ifname === n));
    throw new NotFoundError(
      `${port} of ${t.desc} is not intercepted (its peer is no vin...-${port} in ${enf.desc})` +
        (stray.length ? `; but ${stray.join(', ')} is there: a half-done intercept? (neuv-bpf show)` : ''),
    );
  }
  const tag = vinRe.exec(vinLink.ifname)![1]!;
  const { vex, vin } = portNames(tag, port);
  if (!enfLinks.some((l) => l.ifname === vex)) {
    throw new NotFoundError(`${vex} (the original port of ${port} of ${t.desc}) not found in ${enf.desc}: cannot give it back`);
  }
  const tmpName = validateIfName(`nvr${tag}-${port}`);
  await mustBeAbsent(ctr, tmpName);
  await mustBeAbsent(enf, tmpName);
  await mustBeAbsent(ctr, vex);
  const vexMac = (await enf.link(vex))?.address ?? tempMac();
  const M = snap.mac;

  // The pair (the datapath may be unloaded already: then there is nothing to delete).
  let dp: Datapath | undefined;
  let pairView: PairView | undefined;
  try {
    dp = openDatapath(opts.pinRoot, opts.enforcer);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
    lg.info({ pinRoot: opts.pinRoot }, 'datapath not loaded: no pair to delete');
  }
  try {
    if (dp) {
      const shown = await dp.show();
      pairView = shown.pairs.find((p) => p.vex?.name === vex || p.vin?.name === vin);
      if (pairView?.mac && pairView.mac !== M) {
        lg.warn({ pairMac: pairView.mac, portMac: M }, `the pair's workload MAC differs from ${port}'s; restoring ${port}'s`);
      }
    }

    const undo = new Undo('release');
    const before = findRecord(opts.pinRoot, t.ino, port);
    const rec: JournalRecord = { version: 1, op: 'release', step: 'unpair', ...recordIds(t, enf), port, vex, vin, tmpName, snap, time: '' };
    const S = (name: (typeof RELEASE_STEPS)[number], what: string, fn: () => Promise<unknown>) => {
      writeRecord(opts.pinRoot, { ...rec, step: name });
      return step('release', name, what, fn);
    };
    try {
      await S('unpair', `pair del ${vin}/${vex}`, async () => {
        if (dp && pairView) await dp.delPair({ ex: vex });
      });
      if (dp && pairView) {
        const pv = pairView;
        const d = dp;
        undo.push(`pair add ${vin}/${vex}`, () =>
          d.addPair({
            in: vin, ex: vex, mac: pv.mac ?? M, id: pv.id, ipv6ToDp: pv.ipv6ToDp,
            mode: pv.mode === 'fwd' || pv.mode === 'tap' || pv.mode === 'bypass' ? pv.mode : undefined,
          }),
        );
      }

      await S('down', `take the intercepting ${port} down`, () => ctr.set(port, { up: false }));
      undo.push(`addresses, routes and neighbours of ${port}`, () => restorePort(ctr, snap, port));

      await S('flush', `remove the addresses of the intercepting ${port}`, () => ctr.flush(port));

      await S('rename', `rename the intercepting ${port} to ${tmpName}`, () => ctr.set(port, { name: tmpName }));
      undo.push(`rename ${tmpName} back to ${port}`, () => ctr.set(tmpName, { name: port }));

      // Park it beside its peer in the enforcer netns: its ifindex is free for the original port.
      await S('park', `move ${tmpName} to ${enf.desc}`, () => ctr.moveTo(tmpName, enf));
      undo.push(`move ${tmpName} back to the container`, () => enf.moveTo(tmpName, ctr, snap.ifindex));

      await S('move-vex', `move ${vex} back to the container`, () => enf.moveTo(vex, ctr, snap.ifindex));
      undo.push(`move ${vex} back to ${enf.desc}`, async () => {
        await ctr.moveTo(vex, enf);
        await enf.set(vex, { addrGenMode: 'none' });
        await enf.set(vex, { up: true });
      });

      await S('rename-vex', `rename ${vex} to ${port}`, () => ctr.set(vex, { name: port }));
      undo.push(`rename ${port} back to ${vex}`, () => ctr.set(port, { name: vex }));

      await S('mac', `give ${port} its MAC ${M} and MTU ${snap.mtu}`, async () => {
        await ctr.set(port, { mac: M, mtu: snap.mtu, ...(snap.txqlen ? { txqlen: snap.txqlen } : {}) });
      });
      undo.push(`MAC of ${port} back to ${vexMac}`, () => ctr.set(port, { mac: vexMac }));

      await S('addresses', `give ${port} its addresses`, async () => {
        if (snap.addrGenMode) await ctr.set(port, { addrGenMode: snap.addrGenMode });
        // Its own alias back (none, usually): that removes intercept's marker (marker.ts).
        await ctr.set(port, { alias: snap.alias ?? '' });
        await addAddresses(ctr, snap, port);
      });
      undo.push(`remove the addresses of ${port}`, async () => {
        await ctr.set(port, { up: false });
        await ctr.flush(port);
      });
      await S('up', `bring ${port} up`, async () => {
        if (snap.up) await ctr.set(port, { up: true });
      });
      await S('routes', `restore the routes and neighbours of ${port}`, () => restoreRoutesAndNeighbours(ctr, snap, port));
      // Last, and the only step without an undo: the intercepting veth goes, and vin with it.
      await S('delete', `delete ${tmpName} (and its peer ${vin})`, () => enf.del(tmpName));
      removeRecord(opts.pinRoot, rec);
    } catch (e) {
      // Interrupted (src/signals.ts; or a step's child killed by the same Ctrl-C): the CLI's one line says so.
      lg[caughtSignal() ? 'info' : 'warn']({ target: t.desc, port, err: (e as Error).message }, 'release failed; rolling back');
      if ((await undo.run()) === 0) {
        // Intercepted as before: the interception's own record again (if it had one).
        if (before) writeRecord(opts.pinRoot, before);
        else removeRecord(opts.pinRoot, rec);
      } else lg.warn({ target: t.desc, port }, 'the rollback was incomplete: neuv-bpf repair finishes the release from the journal');
      throw e;
    }
  } finally {
    dp?.close();
  }
  const res: ReleaseResult = {
    target: t.desc,
    port,
    vex,
    vin,
    mac: M,
    pairId: pairView?.id ?? null,
    addresses: snap.addrs.map((x) => `${x.local}/${x.prefixlen}`),
    routes: snap.routes.length,
    neighbours: snap.neighbours.length,
  };
  lg.info({ target: t.desc, port, vex }, 'released');
  return res;
}
