/**
 * load / unload: the datapath's life cycle on a node (NeuVector's Connect and
 * Cleanup). Spec, then live object, with ownership: every step that creates
 * something registers its undo, and a failure runs the undos in reverse so
 * the kernel is left as it was found.
 */
import { Undo } from './undo';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BPF_NOEXIST, BpfObject, MapFd, ProgFd, pinFd } from './bpf';
import { attach, attachState, detach, preferredKind, TC_HANDLE, TC_PRIORITY } from './attach';
import { features } from './features';
import { enableFlowLookups, updateConfig } from './config';
import { ConflictError, ExitCode, NeuvError, NotFoundError, UsageError } from './errors';
import {
  MAPS,
  Role,
  checkAgainstBtf,
  decodePort,
  decodeU32Key,
  VBR_IFINDEX,
  VTH_IFINDEX,
  PortFlag,
  FLOWS_DEFAULT,
  PortDecl,
  PortEntry,
  PORT_UPDATE,
  encodePort,
} from './layout';
import { VBR, VTH, ensureDpPair, ifindexIfExists, ifname, run } from './link';
import { log } from './log';
import { withLock } from './lock';
import { faultPoint } from './faults';
import { PACKAGE_ROOT } from './root';
import { checkPinRoot, checkPrivileges, ensurePinRoot, isBpffs, isLoaded, mapPinPath, Pins, PROGS, ProgRole, progPinPath, removePinRoot, withPinnedMap } from './pins';
import { checkHome, homeHere, vbrOwner, writeHome } from './home';

export { TC_HANDLE, TC_PRIORITY };


/** The object shipped with the package: build/neuv.bpf.o next to dist/. */
export function defaultObjectPath(): string {
  return path.join(PACKAGE_ROOT, 'build', 'neuv.bpf.o');
}

// ---------------------------------------------------------------- load

export interface LoadOptions {
  pinRoot: string;
  objPath?: string;
  jumbo?: boolean;
  /** const volatile globals of the object, e.g. { neuv_build_tag: 2 }. */
  rodata?: Record<string, number>;
  /**
   * max_entries of neuv_flows (flow offload). Default: the size of the pinned
   * map when there is one, else FLOWS_DEFAULT. A pinned map keeps its size:
   * asking for another one is refused (unload first).
   */
  flows?: number;
}

/** Largest `--flows` accepted (an LRU entry costs ~130 bytes of kernel memory). */
export const MAX_FLOWS = 1 << 26;

/** The size neuv_flows gets: the pinned one's, or what was asked (refused if a pinned one differs). */
function flowsSize(pinRoot: string, pinned: boolean, asked: number | undefined): number {
  if (asked !== undefined && (!Number.isInteger(asked) || asked < 1 || asked > MAX_FLOWS)) {
    throw new UsageError(`--flows ${asked}: expected an integer from 1 to ${MAX_FLOWS}`);
  }
  if (!pinned) return asked ?? FLOWS_DEFAULT;
  const have = withPinnedMap(mapPinPath(pinRoot, 'flows'), (m) => m.info.maxEntries);
  if (asked !== undefined && asked !== have) {
    throw new UsageError(
      `${MAPS.flows.name} is pinned with ${have} entries: a pinned map keeps its size, so --flows ${asked} needs neuv-bpf unload first (offloaded flows are lost; the DP offloads them again)`,
    );
  }
  return have;
}

export interface LoadResult {
  pinRoot: string;
  created: boolean; // vbr-neuv/vth-neuv created by this run
  replaced: boolean; // programs replaced in place (a previous load existed)
  progIds: Record<ProgRole, number>;
  mapIds: Record<string, number>;
  reattached: number; // vin/vex hooks swapped to the new programs
  attach: 'tcx' | 'tc'; // how vbr-neuv is attached
}

/** Checks the object's BTF against src/layout/; throws listing every disagreement. */
export function checkLayout(obj: BpfObject): void {
  const problems = checkAgainstBtf(obj);
  if (problems.length) {
    throw new NeuvError(
      `${obj.path} does not match the loader's map layouts (src/layout/ vs bpf/neuv.h): ${problems.join('; ')}`,
      ExitCode.KERNEL,
    );
  }
}

/**
 * Loads the datapath under opts.pinRoot (idempotent: a rerun replaces the
 * programs in place and keeps the maps), holding the pin root's lock (a
 * caller already holding it, as the CLI's adopt does, goes on under it).
 */
export async function load(opts: LoadOptions): Promise<LoadResult> {
  const objPath = opts.objPath ?? defaultObjectPath();
  if (!fs.existsSync(objPath)) {
    throw new NotFoundError(`BPF object ${objPath} not found${opts.objPath ? '' : ' (run make build)'}`);
  }
  checkPrivileges();
  return withLock(opts.pinRoot, () => loadLocked(opts, objPath));
}

async function loadLocked(opts: LoadOptions, objPath: string): Promise<LoadResult> {
  const lg = log('loader');
  const feats = features();
  const kind = preferredKind(); // before any change: a forced, missing feature fails here
  const pinRoot = opts.pinRoot;
  await ensurePinRoot(pinRoot, false); // a pin root that cannot be is refused as such first
  checkHome(pinRoot); // a loaded pin root is reloaded only in its own netns
  refuseSecondDatapath(pinRoot);
  const undo = new Undo('loader');
  if (await ensurePinRoot(pinRoot)) undo.push(`remove ${pinRoot}`, () => fs.rmdirSync(pinRoot));
  const hadPins = new Set(fs.readdirSync(pinRoot));
  const replaced = hadPins.has(MAPS.ports.name);

  try {
    const obj = BpfObject.open(objPath, {
      pinRoot,
      rodata: { neuv_set_pkt_type: feats.pktTypeFix ? 1 : 0, ...(process.env.NEUV_BPF_BUILD_TAG ? { neuv_build_tag: Number(process.env.NEUV_BPF_BUILD_TAG) >>> 0 } : {}), ...opts.rodata },
    });
    undo.push('close object', () => obj.close());
    checkLayout(obj);
    const portsBefore = setAsideOldPorts(pinRoot, undo);
    obj.setMaxEntries(MAPS.flows.name, flowsSize(pinRoot, hadPins.has(MAPS.flows.name), opts.flows));
    const mtu = opts.jumbo ? 9000 : 2048;
    const { created, mtuWas } = await ensureDpPair(mtu, VBR_IFINDEX, VTH_IFINDEX);
    faultPoint('load:after-dp-pair');
    if (created) undo.push(`delete ${VBR}`, () => run('ip', ['link', 'del', 'dev', VBR], { allowFail: true }));
    if (mtuWas !== undefined) {
      undo.push(`restore the MTU ${mtuWas} of ${VBR}/vth-neuv`, async () => {
        for (const dev of [VBR, VTH]) await run('ip', ['link', 'set', 'dev', dev, 'mtu', String(mtuWas)], { allowFail: true });
      });
    }
    const vbrIndex = ifindexIfExists(VBR);

    obj.load();
    faultPoint('load:after-obj-load');
    if (portsBefore) {
      // The new neuv_ports gets the old entries before any hook runs its program.
      const pm = obj.map(MAPS.ports.name);
      // A key already there was copied by a killed load already.
      for (const [k, e] of portsBefore.entries) insertPortEntry(pm, k, e);
      lg.info({ entries: portsBefore.entries.length }, 'neuv_ports upgraded to the layout with a lock (entries copied)');
    }
    // Maps libbpf pinned anew in this run go away on failure; reused ones stay.
    for (const name of Object.values(MAPS).map((m) => m.name)) {
      if (!hadPins.has(name)) undo.push(`unpin ${name}`, () => fs.rmSync(path.join(pinRoot, name), { force: true }));
    }
    // Where this datapath lives (src/home.ts): every other command checks it first.
    writeHome(obj.map(MAPS.home.name), homeHere());
    const config = obj.map(MAPS.config.name);
    // Only dp_ifindex is the loader's: a reused config keeps a running trace's lease and filter.
    updateConfig(pinRoot, config, (c) => (c.dpIfindex === vbrIndex ? undefined : { ...c, dpIfindex: vbrIndex }));
    // Flow entries in a reused neuv_flows (written before NEUV_CFG_FLOWS existed): make the programs look.
    if (obj.map(MAPS.flows.name).keys().length && enableFlowLookups(pinRoot, config)) lg.info('neuv_flows holds entries: flow lookups enabled');
    faultPoint('load:after-config');

    // Attach (or swap in place) vbr-neuv, then every vin/vex already in the map.
    const progFds = { vin: obj.progFd(PROGS.vin), vex: obj.progFd(PROGS.vex), vbr: obj.progFd(PROGS.vbr) };
    const vbrAtt = attach(pinRoot, vbrIndex, VBR, progFds.vbr, kind);
    faultPoint('load:after-vbr-attach');
    if (!vbrAtt.replaced && !created) {
      undo.push('detach vbr-neuv', () => detach(pinRoot, vbrIndex, VBR, vbrAtt.qdiscCreated));
    }

    let reattached = 0;
    const ports = obj.map(MAPS.ports.name);
    for (const [k, v] of ports.entries()) {
      const ifindex = decodeU32Key(k);
      const entry = decodePort(v);
      const name = ifname(ifindex);
      if (!name) {
        lg.warn({ ifindex }, 'port in the map has no interface any more; not reattached (see neuv-bpf show)');
        continue;
      }
      if (attachState(pinRoot, ifindex).kind === 'none') {
        lg.warn({ ifindex, name }, 'port hook was missing; attaching it again');
      }
      attach(pinRoot, ifindex, name, entry.role === Role.VIN ? progFds.vin : progFds.vex, kind);
      reattached++;
      faultPoint('load:after-reattach');
    }

    // Pin the programs: pin beside, then rename over the old pin (atomic on bpffs).
    const progIds = {} as Record<ProgRole, number>;
    for (const role of Object.keys(PROGS) as ProgRole[]) {
      const final = progPinPath(pinRoot, role);
      const tmp = `${final}_new`; // bpffs refuses names with a '.'
      fs.rmSync(tmp, { force: true });
      pinFd(progFds[role], tmp);
      faultPoint('load:after-prog-pin-tmp');
      fs.renameSync(tmp, final);
      faultPoint('load:after-prog-pin');
      fs.chmodSync(final, 0o600);
      const p = new ProgFd(progFds[role], false);
      progIds[role] = p.info().id;
    }
    const mapIds: Record<string, number> = {};
    for (const m of Object.values(MAPS)) {
      const fd = obj.map(m.name);
      mapIds[m.name] = fd.info.id;
      fs.chmodSync(path.join(pinRoot, m.name), 0o600);
    }
    faultPoint('load:before-commit');
    undo.clear();
    obj.close();
    // Every hook runs the new programs now, which use the new map: the old one can go.
    if (portsBefore) fs.rmSync(portsBefore.aside, { force: true });
    lg.info({ pinRoot, replaced, progIds, reattached, attach: vbrAtt.kind }, replaced ? 'programs replaced in place' : 'datapath loaded');
    return { pinRoot, created, replaced, progIds, mapIds, reattached, attach: vbrAtt.kind };
  } catch (e) {
    await undo.run();
    throw e;
  }
}

/** One datapath per enforcer netns: refuses when vbr-neuv here runs another pin root's neuv_vbr. */
function refuseSecondDatapath(pinRoot: string): void {
  const other = vbrOwner(pinRoot);
  if (!other) return;
  throw new ConflictError(
    `${VBR} in this netns already runs neuv_vbr (program id ${other.progId}) of pin root ${other.owner}: one datapath per enforcer netns ` +
      `(use --bpffs ${other.owner.startsWith('/') ? other.owner.split(', ')[0] : '<its pin root>'}, or unload that one first)`,
  );
}

/**
 * A datapath loaded by an older build pinned neuv_ports with 20-byte values
 * (before struct neuv_port had its lock). libbpf cannot reuse a pinned map of
 * another value size, so that pin is moved aside to neuv_ports_old (the
 * running programs keep the map: they hold it), load() pins a new one and
 * copies the entries into it before any hook is swapped, and the old pin is
 * removed once the new programs run. A failed load puts the old pin back
 * (undo). A load killed half-way leaves neuv_ports_old: the next load copies
 * from it again, adding only the entries the new map lacks.
 */
function setAsideOldPorts(pinRoot: string, undo: Undo): { entries: Array<[Buffer, ReturnType<typeof decodePort>]>; aside: string } | undefined {
  const pin = mapPinPath(pinRoot, 'ports');
  const aside = `${pin}_old`; // bpffs refuses names with a '.'
  const valueSize = (p: string) => withPinnedMap(p, (m) => m.info.valueSize);
  if (fs.existsSync(pin)) {
    const size = valueSize(pin);
    if (size === PortDecl.size && !fs.existsSync(aside)) return undefined;
    if (size !== PortDecl.size) {
      if (size !== LEGACY_PORT_SIZE) {
        throw new NeuvError(`pinned ${MAPS.ports.name} has ${size}-byte values; this loader knows ${PortDecl.size} (and ${LEGACY_PORT_SIZE}, before the lock): unload first`, ExitCode.CONFLICT);
      }
      fs.rmSync(aside, { force: true });
      fs.renameSync(pin, aside);
      undo.push(`put back the old ${MAPS.ports.name}`, () => {
        fs.rmSync(pin, { force: true });
        fs.renameSync(aside, pin);
      });
    }
  } else if (!fs.existsSync(aside)) {
    return undefined;
  }
  // decodePort reads bytes 0-17, the same in both layouts.
  return { entries: withPinnedMap(aside, (old) => old.entries().map(([k, v]) => [Buffer.from(k), decodePort(v)])), aside };
}
const LEGACY_PORT_SIZE = 20;

/**
 * Inserts one port entry as it is (the loader's upgrade copies the entries of
 * an old neuv_ports into the new one); false when the key is there already.
 */
function insertPortEntry(ports: MapFd, key: Buffer, e: PortEntry): boolean {
  try {
    ports.update(key, encodePort(e), PORT_UPDATE | BPF_NOEXIST);
    return true;
  } catch (err) {
    if ((err as { errno?: number }).errno !== EEXIST) throw err;
    return false;
  }
}
const EEXIST = 17;

// ---------------------------------------------------------------- unload

export interface UnloadResult {
  pinRoot: string;
  detached: number;
  removed: string[];
  wasLoaded: boolean;
}

/**
 * Detaches every port we attached, removes vbr-neuv/vth-neuv and every pin,
 * holding the pin root's lock (as load). Idempotent. Pairs left in the maps
 * lose their hooks: `unload` and teardown() refuse while any exists.
 */
/**
 * `unload --force` of a pin root whose netns is gone (homeGone in home.ts):
 * its hooks, ports and vbr-neuv went with that netns, so nothing is detached
 * or deleted (here the pairs' ifindexes name other interfaces); the pins are
 * removed. The caller holds the pin root's lock.
 */
export function unloadOrphan(pinRoot: string): UnloadResult {
  checkPrivileges();
  if (checkPinRoot(pinRoot) && !isBpffs(pinRoot)) throw new NeuvError(`${pinRoot} is not on a bpffs: refusing to remove it`, ExitCode.USAGE);
  const removed = removePinRoot(pinRoot);
  log('loader').warn({ pinRoot, removed: removed.length }, 'the netns this datapath was loaded in is gone: its pins removed, nothing detached');
  return { pinRoot, detached: 0, removed, wasLoaded: true };
}

export async function unload(pinRoot: string): Promise<UnloadResult> {
  checkPrivileges();
  return withLock(pinRoot, () => unloadLocked(pinRoot));
}

async function unloadLocked(pinRoot: string): Promise<UnloadResult> {
  const lg = log('loader');
  if (checkPinRoot(pinRoot) && !isBpffs(pinRoot)) throw new NeuvError(`${pinRoot} is not on a bpffs: refusing to remove it`, ExitCode.USAGE);
  checkHome(pinRoot); // the hooks and vbr-neuv to remove are in the netns it was loaded in
  let detached = 0;
  const wasLoaded = isLoaded(pinRoot);
  if (wasLoaded) {
    Pins.with(
      pinRoot,
      ['ports'],
      (pinned) => {
        for (const [k, v] of pinned.ports.entries()) {
          const ifindex = decodeU32Key(k);
          const entry = decodePort(v);
          const name = ifname(ifindex);
          if (!name) continue;
          if (detach(pinRoot, ifindex, name, (entry.flags & PortFlag.QDISC_OURS) !== 0)) detached++;
        }
      },
      { legacyPorts: true },
    );
  }
  // No pin root: nothing of ours; vbr-neuv running another pin root's program is that one's.
  const vbr = fs.existsSync(pinRoot) && !vbrOwner(pinRoot) ? ifindexIfExists(VBR) : 0;
  if (vbr) {
    if (detach(pinRoot, vbr, VBR, false)) detached++;
    await run('ip', ['link', 'del', 'dev', VBR]);
  }
  const removed = fs.existsSync(pinRoot) ? removePinRoot(pinRoot) : [];
  lg.info({ pinRoot, detached, removed: removed.length }, wasLoaded ? 'datapath unloaded' : 'nothing was loaded');
  return { pinRoot, detached, removed, wasLoaded };
}
