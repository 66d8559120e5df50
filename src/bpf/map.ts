/**
 * Maps: MapFd (a map by fd: lookup, update, delete, iterate), their info,
 * the update flags, and the RCU grace period after deletes (element reuse).
 */
import { KernelError, NeuvError } from '../errors';
import { log } from '../log';
import koffi from 'koffi';
import { check, closeFd, cstr, errno, lib, MapBatchOpts, objInfo, sleepSync, possibleCpus } from './lib';

export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

export function mapInfo(fd: number): MapInfo {
  // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]
  const b = objInfo(fd, 88, 'map');
  return {
    type: b.readUInt32LE(0),
    id: b.readUInt32LE(4),
    keySize: b.readUInt32LE(8),
    valueSize: b.readUInt32LE(12),
    maxEntries: b.readUInt32LE(16),
    flags: b.readUInt32LE(20),
    name: cstr(b, 24, 16),
  };
}

// ---------------------------------------------------------------- maps

const BPF_F_NO_PREALLOC = 1;
/** Pauses between retries of a map update that got a transient ENOMEM (MapFd.update). */
const ENOMEM_RETRY_MS = [1, 4, 15, 30, 50, 150];

export const MapType = { HASH: 1, ARRAY: 2, PERCPU_HASH: 5, PERCPU_ARRAY: 6, RINGBUF: 27 } as const;

/** Flags of MapFd.update (BPF_MAP_UPDATE_ELEM, include/uapi/linux/bpf.h); BPF_F_LOCK combines with the others. */
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;
export const BPF_F_LOCK = 4;

/** A BPF map by fd. Owns the fd when `owned`. Keys and values are raw bytes. */
export class MapFd {
  readonly fd: number;
  readonly info: MapInfo;
  readonly perCpu: boolean;
  /** Bytes of a whole value buffer (value size rounded to 8 per CPU, for per-CPU maps). */
  readonly valueBufSize: number;
  private owned: boolean;

  constructor(fd: number, owned: boolean) {
    this.fd = fd;
    this.owned = owned;
    this.info = mapInfo(fd);
    this.perCpu = this.info.type === MapType.PERCPU_HASH || this.info.type === MapType.PERCPU_ARRAY;
    this.valueBufSize = this.perCpu ? Math.ceil(this.info.valueSize / 8) * 8 * possibleCpus() : this.info.valueSize;
  }

  static fromPin(path: string): MapFd {
    const fd = lib().bpf_obj_get(path);
    if (fd < 0) throw new KernelError(`open pinned map ${path}`, -fd);
    try {
      return new MapFd(fd, true);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
  }

  get name(): string {
    return this.info.name;
  }

  private key(k: Buffer): Buffer {
    if (k.length !== this.info.keySize) {
      throw new NeuvError(`map ${this.name}: key is ${k.length} bytes, expected ${this.info.keySize}`);
    }
    return k;
  }

  /** The value, or undefined if absent. Per-CPU maps: all CPUs' values back to back. */
  lookup(k: Buffer): Buffer | undefined {
    const v = Buffer.alloc(this.valueBufSize);
    const r = lib().bpf_map_lookup_elem(this.fd, this.key(k), v);
    if (r === -2) return undefined;
    check(r, `look up in map ${this.name}`);
    return v;
  }

  /** Per-CPU maps: split a lookup result into one buffer per CPU. */
  perCpuValues(v: Buffer): Buffer[] {
    const stride = Math.ceil(this.info.valueSize / 8) * 8;
    const out: Buffer[] = [];
    for (let off = 0; off + this.info.valueSize <= v.length; off += stride) out.push(v.subarray(off, off + this.info.valueSize));
    return out;
  }

  /** A value as the kernel takes it: per-CPU maps take one value replicated to all CPUs. */
  private valueBuf(v: Buffer): Buffer {
    let val = v;
    if (this.perCpu && v.length === this.info.valueSize) {
      const stride = Math.ceil(this.info.valueSize / 8) * 8;
      val = Buffer.alloc(this.valueBufSize);
      for (let off = 0; off < val.length; off += stride) v.copy(val, off);
    }
    if (val.length !== this.valueBufSize) {
      throw new NeuvError(`map ${this.name}: value is ${v.length} bytes, expected ${this.info.valueSize}`);
    }
    return val;
  }

  /**
   * Runs a map write, retrying a transient ENOMEM. A map without
   * preallocation (BPF_F_NO_PREALLOC: neuv_stats, neuv_flow_stats) takes its
   * elements from the kernel's BPF memory allocator, whose per-CPU caches are
   * refilled asynchronously (irq_work): on a busy CPU an update can find the
   * cache empty and get ENOMEM although memory is there. Retried a few times
   * over ~250 ms before it is an error.
   */
  private retryEnomem(write: () => number): number {
    let r = write();
    if (r === -12 && this.info.flags & BPF_F_NO_PREALLOC) {
      for (const ms of ENOMEM_RETRY_MS) {
        log('bpf').debug({ map: this.name, waitMs: ms }, 'map update: ENOMEM from a map without preallocation, retrying');
        sleepSync(ms);
        r = write();
        if (r !== -12) break;
      }
    }
    return r;
  }

  /** flags: BPF_ANY, BPF_NOEXIST or BPF_EXIST (| BPF_F_LOCK). Per-CPU maps take one value replicated to all CPUs. */
  update(k: Buffer, v: Buffer, flags = BPF_ANY): void {
    const key = this.key(k);
    const val = this.valueBuf(v);
    check(this.retryEnomem(() => lib().bpf_map_update_elem(this.fd, key, val, BigInt(flags))), `update map ${this.name}`);
  }

  /**
   * Many updates in one system call (BPF_MAP_UPDATE_BATCH), in order; the
   * kernel stops at the first refusal. It takes no BPF_NOEXIST/BPF_EXIST
   * (EINVAL): each element is written as BPF_ANY, so `flags` is 0 or
   * BPF_F_LOCK, and the caller knows which keys are there (read under the
   * pin root's lock). Returns how many were written, and the refusal if there
   * was one (the caller undoes the first `done`).
   */
  updateBatch(keys: Buffer[], values: Buffer[], flags = BPF_ANY): { done: number; error?: KernelError } {
    if (keys.length !== values.length) throw new NeuvError(`map ${this.name}: ${keys.length} keys for ${values.length} values`);
    if (keys.length === 0) return { done: 0 };
    if (flags & ~BPF_F_LOCK) throw new NeuvError(`map ${this.name}: a batch update takes BPF_F_LOCK only, not flags ${flags}`);
    const ks = Buffer.concat(keys.map((k) => this.key(k)));
    const vs = Buffer.concat(values.map((v) => this.valueBuf(v)));
    const opts = { sz: koffi.sizeof(MapBatchOpts), elem_flags: BigInt(flags), flags: 0n };
    let done = 0;
    let r: number;
    // A transient ENOMEM (see retryEnomem) retried from where the batch stopped, the pauses starting over whenever it got further.
    for (let tries = 0; ; ) {
      const n = [keys.length - done];
      r = lib().bpf_map_update_batch(this.fd, ks.subarray(done * this.info.keySize), vs.subarray(done * this.valueBufSize), n, opts);
      const got = n[0] ?? 0;
      done += got;
      if (r !== -12 || !(this.info.flags & BPF_F_NO_PREALLOC) || done >= keys.length) break;
      if (got > 0) tries = 0;
      if (tries >= ENOMEM_RETRY_MS.length) break;
      const ms = ENOMEM_RETRY_MS[tries++]!;
      log('bpf').debug({ map: this.name, waitMs: ms, done }, 'map batch update: ENOMEM from a map without preallocation, retrying');
      sleepSync(ms);
    }
    if (done >= keys.length) return { done };
    if (r < 0) return { done, error: new KernelError(`update map ${this.name} (${keys.length} entries at once, ${done} written)`, -r) };
    return { done };
  }

  /** Returns false if the key was absent. Before anything inserts again, see rcuGraceAfterDeletes(). */
  delete(k: Buffer): boolean {
    const r = lib().bpf_map_delete_elem(this.fd, this.key(k));
    if (r === -2) return false;
    check(r, `delete from map ${this.name}`);
    deletedSinceGrace = true;
    return true;
  }

  /** All keys (a snapshot; entries changing meanwhile may be missed or repeated). */
  keys(): Buffer[] {
    const out: Buffer[] = [];
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.info.keySize);
      const r = lib().bpf_map_get_next_key(this.fd, prev, next);
      if (r === -2) break;
      check(r, `iterate map ${this.name}`);
      out.push(next);
      prev = next;
    }
    return out;
  }

  /**
   * Many deletes in one system call (BPF_MAP_DELETE_BATCH), in order; the
   * kernel stops at the first key it cannot delete (ENOENT: absent). Returns
   * how many were deleted and the refusal if there was one. Before anything
   * inserts again, see rcuGraceAfterDeletes().
   */
  deleteBatch(keys: Buffer[]): { done: number; error?: KernelError } {
    if (keys.length === 0) return { done: 0 };
    const ks = Buffer.concat(keys.map((k) => this.key(k)));
    const n = [keys.length];
    const r = lib().bpf_map_delete_batch(this.fd, ks, n, { sz: koffi.sizeof(MapBatchOpts), elem_flags: 0n, flags: 0n });
    const done = n[0] ?? 0;
    if (done > 0) deletedSinceGrace = true;
    if (r < 0 && done < keys.length) return { done, error: new KernelError(`delete from map ${this.name} (${keys.length} entries at once, ${done} deleted)`, -r) };
    return { done };
  }

  /**
   * All entries (a snapshot bucket by bucket: entries changing meanwhile may
   * be missed), read with BPF_MAP_LOOKUP_BATCH: a system call per few
   * thousand entries, where a key-by-key walk takes two per entry (show of
   * 1,000 pairs reads ~5,000). Keys and values are views of larger buffers.
   */
  entries(): Array<[Buffer, Buffer]> {
    const ks = this.info.keySize;
    const vs = this.valueBufSize;
    // At most ~4 MiB of buffer a call (per-CPU values on a many-core node are large), at least a hash bucket's worth.
    let chunk = Math.max(16, Math.min(this.info.maxEntries, Math.floor((4 << 20) / (ks + vs))));
    const out: Array<[Buffer, Buffer]> = [];
    const opts = { sz: koffi.sizeof(MapBatchOpts), elem_flags: 0n, flags: 0n };
    let token: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(Math.max(8, ks));
      const keys = Buffer.alloc(chunk * ks);
      const vals = Buffer.alloc(chunk * vs);
      const n = [chunk];
      const r = lib().bpf_map_lookup_batch(this.fd, token, next, keys, vals, n, opts);
      const got = n[0] ?? 0;
      if (r < 0 && r !== -2) {
        // ENOSPC: one hash bucket holds more than `chunk` entries (nothing returned): again, larger.
        if (r === -28 && got === 0) {
          chunk *= 2;
          continue;
        }
        // A map type without batch ops (EINVAL, ENOTSUPP), before anything was read: key by key.
        if (token === null && out.length === 0 && (r === -22 || r === -95 || r === -524)) return this.entriesByKey();
        check(r, `read map ${this.name}`);
      }
      for (let k = 0; k < got; k++) out.push([keys.subarray(k * ks, (k + 1) * ks), vals.subarray(k * vs, (k + 1) * vs)]);
      if (r === -2) return out;
      token = next;
    }
  }

  /** entries() key by key (get_next_key, lookup): for map types without batch lookups. */
  private entriesByKey(): Array<[Buffer, Buffer]> {
    const out: Array<[Buffer, Buffer]> = [];
    for (const k of this.keys()) {
      const v = this.lookup(k);
      if (v) out.push([k, v]);
    }
    return out;
  }

  close(): void {
    if (this.owned) {
      closeFd(this.fd);
      this.owned = false;
    }
  }
}

// ---------------------------------------------------------------- element reuse

/** Set by a successful MapFd.delete(), cleared by rcuGraceAfterDeletes(). */
let deletedSinceGrace = false;
let graceWaits = 0;
const SYS_MEMBARRIER: Partial<Record<string, number>> = { x64: 324, arm64: 283 };
const MEMBARRIER_CMD_GLOBAL = 1;
const GRACE_FALLBACK_MS = 50;

/**
 * Hash map elements, preallocated or not, are reused at once: the element a
 * delete frees is what the very next insert on that CPU fills in. A program
 * on another CPU that looked the deleted key up just before is then reading
 * the new key's value (seen here: neuv_vex of a deleted vex port read the vin
 * entry inserted right after it and dropped the frame as drop_role, 4 times
 * in 1.1 million delete-then-insert rounds; with other entries the frame
 * could have gone to another pair's port). The programs run inside RCU
 * read-side sections (tc ingress, softirq), so once an RCU grace period has
 * passed after the delete no program holds the element any more.
 * membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu() in the kernel
 * (kernel/sched/membarrier.c), a few ms. withLock() calls this before it
 * releases a pin root's lock, so the next writer, in this process or
 * another, never hands an element a program may still read to a new key.
 * Where membarrier is refused (nohz_full, seccomp), it sleeps 50 ms instead.
 * A no-op when nothing was deleted since the last call.
 */
export function rcuGraceAfterDeletes(): void {
  if (!deletedSinceGrace) return;
  rcuGrace();
  graceWaits++;
}

/**
 * Waits for an RCU grace period now (membarrier, as rcuGraceAfterDeletes),
 * whatever was deleted: also what a batch of new clsact qdiscs needs before
 * its filters are attached (attach.ts, attachMany).
 */
export function rcuGrace(): void {
  const nr = SYS_MEMBARRIER[process.arch];
  const r = nr === undefined ? -1 : lib().syscall(nr, 'int', MEMBARRIER_CMD_GLOBAL, 'unsigned int', 0, 'int', 0);
  if (Number(r) !== 0) {
    log('bpf').debug({ arch: process.arch, errno: nr === undefined ? undefined : errno() }, `membarrier(MEMBARRIER_CMD_GLOBAL) refused: sleeping ${GRACE_FALLBACK_MS} ms for an RCU grace period instead`);
    sleepSync(GRACE_FALLBACK_MS);
  }
  deletedSinceGrace = false;
}

/** How many times rcuGraceAfterDeletes() waited (for the tests; rcuGrace() called on its own is not counted). */
export function rcuGraceWaits(): number {
  return graceWaits;
}

