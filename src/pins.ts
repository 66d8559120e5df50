/**
 * The pin root and the one way to open a loaded datapath's pins. The pin
 * root: where it is (pinRootFrom, DEFAULT_PIN_ROOT), the privileges and the
 * bpffs it needs (checkPrivileges, checkPinRoot, ensurePinRoot), its removal
 * (removePinRoot).
 * Its maps: `Pins.open(pinRoot, names)` opens the maps asked for (all or
 * nothing), `close()` closes them.
 * Its programs: openProg / withProg / pinnedProgId (prog_<role>).
 * withPinnedMap reads one map pin whatever else is pinned (the loader, on a
 * half-loaded datapath).
 * The flow offload maps are optional (a datapath loaded by an older version
 * has none): absent, their getters return undefined. neuv_ports must have
 * the current layout (with its lock) unless `legacyPorts` says a 20-byte one
 * is fine (unload: it only reads the first 18 bytes, the same in both).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MapFd, ProgFd } from './bpf';
import { ExitCode, NeuvError, NotFoundError } from './errors';
import { MAPS, PortDecl } from './layout';
import { run } from './link';
import { log } from './log';
import { checkAncestors, checkOwnDir } from './safefs';

// ---------------------------------------------------------------- the pin root

export const DEFAULT_PIN_ROOT = '/sys/fs/bpf/neuv';
export const BPF_FS_MAGIC = 0xcafe4a11;

export function pinRootFrom(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const p = flag ?? env.NEUV_BPF_PIN_ROOT ?? DEFAULT_PIN_ROOT;
  if (!path.isAbsolute(p)) throw new NeuvError(`pin root '${p}' must be an absolute path`, ExitCode.USAGE);
  const root = path.normalize(p).replace(/\/+$/, '');
  if (!root) throw new NeuvError(`pin root '${p}' is the root directory: name a directory on a bpffs, such as ${DEFAULT_PIN_ROOT}`, ExitCode.USAGE);
  return root;
}

const PIN_ROOT_FIX = 'choose another pin root (--bpffs), or remove it if nothing uses it';

/**
 * Whether the pin root exists, refusing one that is not what load makes
 * (UnsafePathError): a symbolic link, not a directory (a pin, say), owned
 * by another user, with group or other bits, or under a directory another
 * user can change (src/safefs.ts). Every command but `version` checks it
 * before touching anything; whether it is on a bpffs is load's and unload's.
 */
export function checkPinRoot(pinRoot: string): boolean {
  checkAncestors(pinRoot, 'pin root');
  return checkOwnDir(pinRoot, 'pin root', PIN_ROOT_FIX) !== undefined;
}

// ---------------------------------------------------------------- privileges

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;
const CAP_BPF = 39;

/** Throws a clear error unless we have CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN). */
export function checkPrivileges(status: string = fs.readFileSync('/proc/self/status', 'utf8')): void {
  const m = /^CapEff:\s*([0-9a-f]+)/m.exec(status);
  const eff = m ? BigInt('0x' + m[1]) : 0n;
  const has = (c: number) => (eff >> BigInt(c)) & 1n;
  const missing: string[] = [];
  if (!has(CAP_NET_ADMIN)) missing.push('CAP_NET_ADMIN');
  if (!has(CAP_BPF) && !has(CAP_SYS_ADMIN)) missing.push('CAP_BPF');
  if (missing.length) {
    throw new NeuvError(`needs root (CAP_BPF and CAP_NET_ADMIN): missing ${missing.join(' and ')}`, ExitCode.PERMISSION);
  }
}

// ---------------------------------------------------------------- bpffs

export function isBpffs(p: string): boolean {
  try {
    return fs.statfsSync(p).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Makes the pin root (0700) on a bpffs, or checks the one there
 * (checkPinRoot); returns whether it made it. The standard parent
 * /sys/fs/bpf is mounted if it is not bpffs yet; any other non-bpffs location
 * is refused rather than mounting over somebody's directory. Nothing that is
 * there already is chmodded. create false: the checks only (load runs them
 * before its own, then makes it).
 */
export async function ensurePinRoot(pinRoot: string, create = true): Promise<boolean> {
  const parent = path.dirname(pinRoot);
  if (!isBpffs(parent)) {
    if (parent === '/sys/fs/bpf' && fs.existsSync(parent)) {
      await run('mount', ['-t', 'bpf', 'bpf', parent]);
      log('loader').info({ at: parent }, 'mounted bpffs');
    } else {
      throw new NeuvError(
        `pin root ${pinRoot} is not on a bpffs (its parent ${parent} is not bpffs; mount -t bpf bpf ${parent})`,
        ExitCode.USAGE,
      );
    }
  }
  if (checkPinRoot(pinRoot)) {
    if (!isBpffs(pinRoot)) throw new NeuvError(`pin root ${pinRoot} is not on a bpffs (a mount over it?): ${PIN_ROOT_FIX}`, ExitCode.USAGE);
    return false;
  }
  if (!create) return false;
  try {
    fs.mkdirSync(pinRoot, { mode: 0o700 });
  } catch (e) {
    // Made by someone else since the check: it must pass the check now.
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new NeuvError(`cannot create pin root ${pinRoot}: ${(e as Error).message}`, ExitCode.FAILURE);
    checkPinRoot(pinRoot);
    return false;
  }
  checkPinRoot(pinRoot);
  return true;
}

/** Removes every pin under pinRoot and the directory (refused unless it is on a bpffs); returns the names removed. */
export function removePinRoot(pinRoot: string): string[] {
  if (!checkPinRoot(pinRoot)) return [];
  if (!isBpffs(pinRoot)) throw new NeuvError(`${pinRoot} is not on a bpffs: refusing to remove it`, ExitCode.USAGE);
  const removed = fs.readdirSync(pinRoot);
  for (const f of removed) fs.rmSync(path.join(pinRoot, f), { recursive: true, force: true });
  fs.rmdirSync(pinRoot);
  return removed;
}

// ---------------------------------------------------------------- the pinned maps

export type MapName = keyof typeof MAPS;
/** Maps a datapath loaded by an older version may not have. */
export const OPTIONAL_MAPS: ReadonlySet<MapName> = new Set<MapName>(['flows', 'flowStats', 'home']);

export interface PinsOptions {
  /** Accept a neuv_ports pinned by an older build (20-byte values, no lock): read-only use. */
  legacyPorts?: boolean;
}

export function mapPinPath(pinRoot: string, name: MapName): string {
  return path.join(pinRoot, MAPS[name].name);
}

/** A datapath is loaded under pinRoot: its neuv_ports is pinned there. */
export function isLoaded(pinRoot: string): boolean {
  return fs.existsSync(mapPinPath(pinRoot, 'ports'));
}

export function notLoaded(pinRoot: string): NotFoundError {
  return new NotFoundError(`the datapath is not loaded (no maps under ${pinRoot}): run neuv-bpf load first`);
}

/** Runs fn on one pinned map opened by its path, without Pins.open's checks, and closes it. */
export function withPinnedMap<T>(pin: string, fn: (m: MapFd) => T): T {
  const m = MapFd.fromPin(pin);
  try {
    return fn(m);
  } finally {
    m.close();
  }
}

export class Pins {
  private constructor(
    readonly pinRoot: string,
    private readonly fds: Partial<Record<MapName, MapFd>>,
  ) {}

  /** Opens the named maps (NotFoundError when nothing is loaded); closes what it opened if one fails. */
  static open(pinRoot: string, names: readonly MapName[], opts: PinsOptions = {}): Pins {
    if (!isLoaded(pinRoot)) throw notLoaded(pinRoot);
    const fds: Partial<Record<MapName, MapFd>> = {};
    const p = new Pins(pinRoot, fds);
    try {
      for (const n of names) {
        if (fds[n]) continue;
        const pin = mapPinPath(pinRoot, n);
        if (OPTIONAL_MAPS.has(n) && !fs.existsSync(pin)) continue;
        const fd = MapFd.fromPin(pin);
        fds[n] = fd;
        if (n === 'ports' && !opts.legacyPorts && fd.info.valueSize !== PortDecl.size) {
          throw new NeuvError(
            `${MAPS.ports.name} under ${pinRoot} has ${fd.info.valueSize}-byte entries: the datapath was loaded by an older neuv-bpf; run neuv-bpf load to upgrade it`,
            ExitCode.CONFLICT,
          );
        }
      }
      return p;
    } catch (e) {
      p.close();
      throw e;
    }
  }

  /** Opens the maps, runs fn, closes them (also when fn throws). */
  static with<T>(pinRoot: string, names: readonly MapName[], fn: (p: Pins) => T, opts: PinsOptions = {}): T {
    const p = Pins.open(pinRoot, names, opts);
    try {
      return fn(p);
    } finally {
      p.close();
    }
  }

  /** A map that was opened; a programming error if it was not asked for. */
  map(n: MapName): MapFd {
    const fd = this.fds[n];
    if (!fd) throw new NeuvError(`internal: map ${MAPS[n].name} was not opened`);
    return fd;
  }

  get ports(): MapFd {
    return this.map('ports');
  }
  get ids(): MapFd {
    return this.map('ids');
  }
  get stats(): MapFd {
    return this.map('stats');
  }
  get global(): MapFd {
    return this.map('global');
  }
  get config(): MapFd {
    return this.map('config');
  }
  /** undefined when not pinned (an older datapath) or not asked for. */
  get flows(): MapFd | undefined {
    return this.fds.flows;
  }
  get flowStats(): MapFd | undefined {
    return this.fds.flowStats;
  }

  close(): void {
    for (const k of Object.keys(this.fds) as MapName[]) {
      this.fds[k]!.close();
      delete this.fds[k];
    }
  }
}

// ---------------------------------------------------------------- the pinned programs

export const PROGS = { vin: 'neuv_vin', vex: 'neuv_vex', vbr: 'neuv_vbr' } as const;
export type ProgRole = keyof typeof PROGS;

export function progPinPath(pinRoot: string, role: ProgRole): string {
  return path.join(pinRoot, `prog_${role}`);
}

/** Opens the program pinned for a role (the caller closes it); NotFoundError when there is none. */
export function openProg(pinRoot: string, role: ProgRole): ProgFd {
  const p = progPinPath(pinRoot, role);
  if (!fs.existsSync(p)) throw new NotFoundError(`program ${p} is not pinned: run neuv-bpf load first`);
  return ProgFd.fromPin(p);
}

/** Opens the program pinned for a role, runs fn, closes it. */
export function withProg<T>(pinRoot: string, role: ProgRole, fn: (p: ProgFd) => T): T {
  const p = openProg(pinRoot, role);
  try {
    return fn(p);
  } finally {
    p.close();
  }
}

/** The id of the program pinned for a role, 0 when there is none (or it cannot be read). */
export function pinnedProgId(pinRoot: string, role: ProgRole): number {
  try {
    return withProg(pinRoot, role, (p) => p.info().id);
  } catch {
    return 0;
  }
}
