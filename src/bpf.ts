/**
 * The FFI module: the only file in src/ that touches koffi. It binds libbpf
 * (Debian's libbpf.so.1) and a few libc calls, and exposes typed functions and
 * small classes that own file descriptors. Pointers never leave this module.
 *
 * libbpf 1.x convention: functions returning int give a negative errno;
 * functions returning a pointer give NULL and set errno.
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { KernelError, NeuvError, ExitCode } from './errors';
import { log } from './log';

type Ptr = bigint;
type LibraryHandle = ReturnType<typeof koffi.load>;

let libbpfHandle: LibraryHandle | undefined;
let libcHandle: LibraryHandle | undefined;

function loadLib(names: string[], what: string): LibraryHandle {
  let last: unknown;
  for (const n of names) {
    try {
      return koffi.load(n);
    } catch (e) {
      last = e;
    }
  }
  throw new NeuvError(
    `cannot load ${what} (${names.join(' or ')}): install Debian's libbpf1 (make deps)`,
    ExitCode.NOT_FOUND,
    { cause: last },
  );
}

// ---------------------------------------------------------------- struct types

const OpenOpts = koffi.struct('neuv_bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'void *',
  relaxed_maps: 'bool',
  pin_root_path: 'void *',
  _stub: 'uint32_t',
  kconfig: 'void *',
  btf_custom_path: 'void *',
  kernel_log_buf: 'void *',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});

const TcHook = koffi.struct('neuv_bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});

const TcOpts = koffi.struct('neuv_bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});

const TestRunOpts = koffi.struct('neuv_bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

// ---------------------------------------------------------------- bindings

interface Lib {
  libbpf_version_string: () => string;
  libbpf_set_print: (fn: Ptr | null) => Ptr;
  libbpf_num_possible_cpus: () => number;
  bpf_object__open_file: (path: string, opts: Ptr | null) => Ptr;
  bpf_object__load: (obj: Ptr) => number;
  bpf_object__close: (obj: Ptr) => void;
  bpf_object__find_program_by_name: (obj: Ptr, name: string) => Ptr;
  bpf_object__find_map_by_name: (obj: Ptr, name: string) => Ptr;
  bpf_object__next_program: (obj: Ptr, prev: Ptr | null) => Ptr;
  bpf_object__next_map: (obj: Ptr, prev: Ptr | null) => Ptr;
  bpf_object__btf: (obj: Ptr) => Ptr;
  bpf_program__fd: (p: Ptr) => number;
  bpf_program__name: (p: Ptr) => string;
  bpf_program__pin: (p: Ptr, path: string) => number;
  bpf_program__set_log_level: (p: Ptr, level: number) => number;
  bpf_map__fd: (m: Ptr) => number;
  bpf_map__name: (m: Ptr) => string;
  bpf_map__pin_path: (m: Ptr) => string | null;
  bpf_map__is_pinned: (m: Ptr) => boolean;
  bpf_map__set_pin_path: (m: Ptr, path: string | null) => number;
  bpf_map__reuse_fd: (m: Ptr, fd: number) => number;
  bpf_map__unpin: (m: Ptr, path: string | null) => number;
  bpf_map__initial_value: (m: Ptr, psize: bigint[]) => Ptr;
  bpf_map__set_initial_value: (m: Ptr, data: Buffer, size: number) => number;
  bpf_map__set_max_entries: (m: Ptr, n: number) => number;
  bpf_map_update_elem: (fd: number, key: Buffer, value: Buffer, flags: bigint) => number;
  bpf_map_lookup_elem: (fd: number, key: Buffer, value: Buffer) => number;
  bpf_map_delete_elem: (fd: number, key: Buffer) => number;
  bpf_map_get_next_key: (fd: number, key: Buffer | null, next: Buffer) => number;
  bpf_obj_get: (path: string) => number;
  bpf_obj_pin: (fd: number, path: string) => number;
  bpf_obj_get_info_by_fd: (fd: number, info: Buffer, len: number[]) => number;
  bpf_prog_get_fd_by_id: (id: number) => number;
  bpf_map_get_fd_by_id: (id: number) => number;
  bpf_tc_hook_create: (hook: object) => number;
  bpf_tc_hook_destroy: (hook: object) => number;
  bpf_tc_attach: (hook: object, opts: object) => number;
  bpf_tc_detach: (hook: object, opts: object) => number;
  bpf_tc_query: (hook: object, opts: object) => number;
  bpf_prog_test_run_opts: (fd: number, opts: object) => number;
  bpf_link_create: (progFd: number, target: number, attachType: number, opts: Ptr | null) => number;
  bpf_link_update: (linkFd: number, progFd: number, opts: Ptr | null) => number;
  bpf_link_detach: (linkFd: number) => number;
  bpf_prog_load: (type: number, name: string, license: string, insns: Buffer, cnt: number, opts: Ptr | null) => number;
  libbpf_probe_bpf_helper: (progType: number, helper: number, opts: Ptr | null) => number;
  btf__find_by_name_kind: (btf: Ptr, name: string, kind: number) => number;
  btf__type_by_id: (btf: Ptr, id: number) => Ptr;
  btf__name_by_offset: (btf: Ptr, off: number) => string | null;
  btf__resolve_size: (btf: Ptr, id: number) => bigint | number;
  btf__resolve_type: (btf: Ptr, id: number) => number;
  ring_buffer__new: (mapFd: number, cb: Ptr, ctx: Ptr | null, opts: Ptr | null) => Ptr;
  ring_buffer__free: (rb: Ptr) => void;
  ring_buffer__consume: (rb: Ptr) => number;
  ring_buffer__epoll_fd: (rb: Ptr) => number;
  // libc
  vsnprintf: (buf: Ptr, size: number, fmt: Ptr, ap: Ptr) => number;
  setns: (fd: number, nstype: number) => number;
  if_nametoindex: (name: string) => number;
  if_indextoname: (index: number, buf: Buffer) => Ptr;
  close: (fd: number) => number;
  flock: (fd: number, op: number) => number;
  bpf_fn_dup: (fd: number) => number;
  syscall: (nr: number, ...typedArgs: unknown[]) => number;
}

let L: Lib | undefined;
let printCb: Ptr | undefined;
let printBuf: Ptr | undefined;
const PRINT_BUF_SIZE = 1 << 20;

function lib(): Lib {
  if (L) return L;
  const b = (libbpfHandle = loadLib(['libbpf.so.1', 'libbpf.so'], 'libbpf'));
  const c = (libcHandle = loadLib(['libc.so.6'], 'libc'));
  const f = (h: LibraryHandle, sig: string) => h.func(sig) as never;
  L = {
    libbpf_version_string: f(b, 'const char *libbpf_version_string(void)'),
    libbpf_set_print: f(b, 'void *libbpf_set_print(void *fn)'),
    libbpf_num_possible_cpus: f(b, 'int libbpf_num_possible_cpus(void)'),
    bpf_object__open_file: f(b, 'void *bpf_object__open_file(const char *path, void *opts)'),
    bpf_object__load: f(b, 'int bpf_object__load(void *obj)'),
    bpf_object__close: f(b, 'void bpf_object__close(void *obj)'),
    bpf_object__find_program_by_name: f(b, 'void *bpf_object__find_program_by_name(void *obj, const char *name)'),
    bpf_object__find_map_by_name: f(b, 'void *bpf_object__find_map_by_name(void *obj, const char *name)'),
    bpf_object__next_program: f(b, 'void *bpf_object__next_program(void *obj, void *prev)'),
    bpf_object__next_map: f(b, 'void *bpf_object__next_map(void *obj, void *prev)'),
    bpf_object__btf: f(b, 'void *bpf_object__btf(void *obj)'),
    bpf_program__fd: f(b, 'int bpf_program__fd(void *p)'),
    bpf_program__name: f(b, 'const char *bpf_program__name(void *p)'),
    bpf_program__pin: f(b, 'int bpf_program__pin(void *p, const char *path)'),
    bpf_program__set_log_level: f(b, 'int bpf_program__set_log_level(void *p, uint32_t level)'),
    bpf_map__fd: f(b, 'int bpf_map__fd(void *m)'),
    bpf_map__name: f(b, 'const char *bpf_map__name(void *m)'),
    bpf_map__pin_path: f(b, 'const char *bpf_map__pin_path(void *m)'),
    bpf_map__is_pinned: f(b, 'bool bpf_map__is_pinned(void *m)'),
    bpf_map__set_pin_path: f(b, 'int bpf_map__set_pin_path(void *m, const char *path)'),
    bpf_map__reuse_fd: f(b, 'int bpf_map__reuse_fd(void *m, int fd)'),
    bpf_map__unpin: f(b, 'int bpf_map__unpin(void *m, const char *path)'),
    bpf_map__initial_value: f(b, 'void *bpf_map__initial_value(void *m, _Out_ size_t *psize)'),
    bpf_map__set_initial_value: f(b, 'int bpf_map__set_initial_value(void *m, const void *data, size_t size)'),
    bpf_map__set_max_entries: f(b, 'int bpf_map__set_max_entries(void *m, uint32_t max_entries)'),
    bpf_map_update_elem: f(b, 'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
    bpf_map_lookup_elem: f(b, 'int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
    bpf_map_delete_elem: f(b, 'int bpf_map_delete_elem(int fd, const void *key)'),
    bpf_map_get_next_key: f(b, 'int bpf_map_get_next_key(int fd, const void *key, void *next)'),
    bpf_obj_get: f(b, 'int bpf_obj_get(const char *path)'),
    bpf_obj_pin: f(b, 'int bpf_obj_pin(int fd, const char *path)'),
    bpf_obj_get_info_by_fd: f(b, 'int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)'),
    bpf_prog_get_fd_by_id: f(b, 'int bpf_prog_get_fd_by_id(uint32_t id)'),
    bpf_map_get_fd_by_id: f(b, 'int bpf_map_get_fd_by_id(uint32_t id)'),
    bpf_tc_hook_create: f(b, 'int bpf_tc_hook_create(neuv_bpf_tc_hook *hook)'),
    bpf_tc_hook_destroy: f(b, 'int bpf_tc_hook_destroy(neuv_bpf_tc_hook *hook)'),
    bpf_tc_attach: f(b, 'int bpf_tc_attach(neuv_bpf_tc_hook *hook, _Inout_ neuv_bpf_tc_opts *opts)'),
    bpf_tc_detach: f(b, 'int bpf_tc_detach(neuv_bpf_tc_hook *hook, neuv_bpf_tc_opts *opts)'),
    bpf_tc_query: f(b, 'int bpf_tc_query(neuv_bpf_tc_hook *hook, _Inout_ neuv_bpf_tc_opts *opts)'),
    bpf_prog_test_run_opts: f(b, 'int bpf_prog_test_run_opts(int fd, _Inout_ neuv_bpf_test_run_opts *opts)'),
    bpf_link_create: f(b, 'int bpf_link_create(int prog_fd, int target_fd, int attach_type, void *opts)'),
    bpf_link_update: f(b, 'int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
    bpf_link_detach: f(b, 'int bpf_link_detach(int link_fd)'),
    bpf_prog_load: f(b, 'int bpf_prog_load(int type, const char *name, const char *license, const void *insns, size_t cnt, void *opts)'),
    libbpf_probe_bpf_helper: f(b, 'int libbpf_probe_bpf_helper(int prog_type, int helper_id, void *opts)'),
    btf__find_by_name_kind: f(b, 'int btf__find_by_name_kind(void *btf, const char *name, uint32_t kind)'),
    btf__type_by_id: f(b, 'void *btf__type_by_id(void *btf, uint32_t id)'),
    btf__name_by_offset: f(b, 'const char *btf__name_by_offset(void *btf, uint32_t off)'),
    btf__resolve_size: f(b, 'int64_t btf__resolve_size(void *btf, uint32_t id)'),
    btf__resolve_type: f(b, 'int btf__resolve_type(void *btf, uint32_t id)'),
    ring_buffer__new: f(b, 'void *ring_buffer__new(int map_fd, void *sample_cb, void *ctx, void *opts)'),
    ring_buffer__free: f(b, 'void ring_buffer__free(void *rb)'),
    ring_buffer__consume: f(b, 'int ring_buffer__consume(void *rb)'),
    ring_buffer__epoll_fd: f(b, 'int ring_buffer__epoll_fd(void *rb)'),
    vsnprintf: f(c, 'int vsnprintf(void *buf, size_t size, void *fmt, void *ap)'),
    setns: f(c, 'int setns(int fd, int nstype)'),
    if_nametoindex: f(c, 'unsigned int if_nametoindex(const char *name)'),
    if_indextoname: f(c, 'void *if_indextoname(unsigned int index, void *buf)'),
    close: f(c, 'int close(int fd)'),
    flock: f(c, 'int flock(int fd, int op)'),
    bpf_fn_dup: f(c, 'int dup(int fd)'),
    syscall: f(c, 'long syscall(long number, ...)'),
  };
  installPrint(L);
  return L;
}

// libbpf_print_level: 0 = warn, 1 = info, 2 = debug. Warnings become info (a
// refusal they describe is reported as our own error line); info and debug
// both become debug, so `--log-level debug` shows everything libbpf says.
const PrintFn = koffi.proto('int neuv_libbpf_print_fn(int level, void *fmt, void *ap)');

function installPrint(l: Lib): void {
  printBuf = koffi.alloc('char', PRINT_BUF_SIZE) as Ptr;
  printCb = koffi.register((level: number, fmt: Ptr, ap: Ptr): number => {
    // Skip the formatting work entirely when the level would not print.
    const lg = log('libbpf');
    let target: 'info' | 'debug' | 'trace' = level === 0 ? 'info' : 'debug';
    if (!lg.isLevelEnabled(target) && !captureActive) return 0;
    const n = l.vsnprintf(printBuf!, PRINT_BUF_SIZE, fmt, ap);
    if (n <= 0) return 0;
    const len = Math.min(n, PRINT_BUF_SIZE - 1);
    const text = Buffer.from(koffi.view(printBuf!, len)).toString('utf8').replace(/\n$/, '');
    // Netlink's extended ack for refusals we expect and handle (EEXIST on an
    // existing clsact, ENOENT on a query) is not worth an info line.
    if (target === 'info' && text.includes('Kernel error message')) target = 'debug';
    if (captureActive) {
      // Held back while a load runs: a refusal is reported as one error line
      // first, then the verifier log; a success logs them afterwards, in order.
      captured.push(text);
      deferred.push({ level: target, text });
      return 0;
    }
    if (lg.isLevelEnabled(target)) lg[target](text);
    return 0;
  }, koffi.pointer(PrintFn));
  l.libbpf_set_print(printCb);
}

// libbpf warnings (level 0) also feed an in-memory capture while a load runs, so
// a verifier refusal can be reported with its log whatever the log level.
let captureActive = false;
let captured: string[] = [];
let deferred: Array<{ level: 'info' | 'debug' | 'trace'; text: string }> = [];

function captureDuring<T>(fn: () => T): { result?: T; error?: unknown; messages: string[] } {
  captureActive = true;
  captured = [];
  deferred = [];
  try {
    return { result: fn(), messages: captured };
  } catch (error) {
    return { error, messages: captured };
  } finally {
    captureActive = false;
  }
}

/** Logs the libbpf messages held back by the last capture (after a successful load). */
function flushDeferred(): void {
  const lg = log('libbpf');
  for (const m of deferred) if (lg.isLevelEnabled(m.level)) lg[m.level](m.text);
  deferred = [];
}

function errno(): number {
  return koffi.errno();
}

const BPF_F_NO_PREALLOC = 1;
/** Pauses between retries of a map update that got a transient ENOMEM (MapFd.update). */
const ENOMEM_RETRY_MS = [1, 4, 15, 30, 50, 150];
const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

function check(ret: number, context: string, hint?: string): number {
  if (ret < 0) throw new KernelError(context, -ret, hint);
  return ret;
}

// ---------------------------------------------------------------- fds

export function closeFd(fd: number): void {
  if (fd >= 0) lib().close(fd);
}

export function libbpfVersion(): string {
  return lib().libbpf_version_string();
}

export function possibleCpus(): number {
  return check(lib().libbpf_num_possible_cpus(), 'count possible CPUs');
}

// ---------------------------------------------------------------- info

export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

export interface ProgInfo {
  type: number;
  id: number;
  tag: string;
  name: string;
  verifiedInsns: number;
  xlatedLen: number;
}

function objInfo(fd: number, size: number, what: string): Buffer {
  const buf = Buffer.alloc(size);
  const len = [size];
  check(lib().bpf_obj_get_info_by_fd(fd, buf, len), `read ${what} info`);
  return buf;
}

function cstr(buf: Buffer, off: number, max: number): string {
  const s = buf.subarray(off, off + max);
  const z = s.indexOf(0);
  return s.subarray(0, z < 0 ? max : z).toString('utf8');
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

export function progInfo(fd: number): ProgInfo {
  // struct bpf_prog_info: type@0 id@4 tag[8]@8 jited_len@16 xlated_len@20 ...
  // name[16]@64 ... verified_insns@216 (kernel >= 5.16; 0 before).
  const b = objInfo(fd, 232, 'program');
  return {
    type: b.readUInt32LE(0),
    id: b.readUInt32LE(4),
    tag: b.subarray(8, 16).toString('hex'),
    xlatedLen: b.readUInt32LE(20),
    name: cstr(b, 64, 16),
    verifiedInsns: b.readUInt32LE(216),
  };
}

// ---------------------------------------------------------------- maps

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

  /** flags: BPF_ANY, BPF_NOEXIST or BPF_EXIST (| BPF_F_LOCK). Per-CPU maps take one value replicated to all CPUs. */
  update(k: Buffer, v: Buffer, flags = BPF_ANY): void {
    let val = v;
    if (this.perCpu && v.length === this.info.valueSize) {
      const stride = Math.ceil(this.info.valueSize / 8) * 8;
      val = Buffer.alloc(this.valueBufSize);
      for (let off = 0; off < val.length; off += stride) v.copy(val, off);
    }
    if (val.length !== this.valueBufSize) {
      throw new NeuvError(`map ${this.name}: value is ${v.length} bytes, expected ${this.info.valueSize}`);
    }
    const key = this.key(k);
    let r = lib().bpf_map_update_elem(this.fd, key, val, BigInt(flags));
    // A map without preallocation (BPF_F_NO_PREALLOC: neuv_stats, neuv_flow_stats) takes its
    // elements from the kernel's BPF memory allocator, whose per-CPU caches are refilled
    // asynchronously (irq_work): on a busy CPU an update can find the cache empty and get
    // ENOMEM although memory is there. Retried a few times over ~250 ms before it is an error.
    if (r === -12 && this.info.flags & BPF_F_NO_PREALLOC) {
      for (const ms of ENOMEM_RETRY_MS) {
        log('bpf').debug({ map: this.name, waitMs: ms }, 'map update: ENOMEM from a map without preallocation, retrying');
        sleepSync(ms);
        r = lib().bpf_map_update_elem(this.fd, key, val, BigInt(flags));
        if (r !== -12) break;
      }
    }
    check(r, `update map ${this.name}`);
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

  /** All entries that still exist while iterating. */
  entries(): Array<[Buffer, Buffer]> {
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

// ---------------------------------------------------------------- programs

export class ProgFd {
  readonly fd: number;
  private owned: boolean;
  constructor(fd: number, owned: boolean) {
    this.fd = fd;
    this.owned = owned;
  }
  static fromPin(path: string): ProgFd {
    const fd = lib().bpf_obj_get(path);
    if (fd < 0) throw new KernelError(`open pinned program ${path}`, -fd);
    return new ProgFd(fd, true);
  }
  static fromId(id: number): ProgFd {
    const fd = lib().bpf_prog_get_fd_by_id(id);
    if (fd < 0) throw new KernelError(`open program id ${id}`, -fd);
    return new ProgFd(fd, true);
  }
  info(): ProgInfo {
    return progInfo(this.fd);
  }
  pin(path: string): void {
    check(lib().bpf_obj_pin(this.fd, path), `pin program at ${path}`);
  }
  close(): void {
    if (this.owned) {
      closeFd(this.fd);
      this.owned = false;
    }
  }
}

/** Pins any bpf fd (map, program, link) at path. */
export function pinFd(fd: number, path: string): void {
  check(lib().bpf_obj_pin(fd, path), `pin at ${path}`);
}

// ---------------------------------------------------------------- BTF

export interface BtfMember {
  name: string;
  offset: number; // bytes
  size: number; // bytes
}
export interface BtfStruct {
  name: string;
  size: number;
  members: BtfMember[];
}
export interface BtfEnum {
  name: string;
  values: Record<string, number>;
}

const BTF_KIND_ENUM = 6;
const BTF_KIND_STRUCT = 4;

// ---------------------------------------------------------------- objects

export interface OpenOptions {
  /** Maps with LIBBPF_PIN_BY_NAME are reused from / pinned under this directory. */
  pinRoot?: string;
  /** Values for `const volatile` globals (in .rodata), by name: 32-bit unsigned. */
  rodata?: Record<string, number>;
  /** Ask the verifier for its log on success too (log_level 1). */
  verifierLog?: boolean;
}

/** An opened, then loaded, BPF object. close() releases every fd it holds. */
export class BpfObject {
  private obj: Ptr;
  readonly path: string;
  private loaded = false;

  private constructor(obj: Ptr, path: string) {
    this.obj = obj;
    this.path = path;
  }

  /** Opens (parses) an object file. Nothing reaches the kernel yet. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    if (!fs.existsSync(path)) {
      throw new NeuvError(`BPF object ${path} not found (run make build)`, ExitCode.NOT_FOUND);
    }
    const l = lib();
    const keep: Ptr[] = [];
    const str = (s: string): Ptr => {
      const p = koffi.alloc('char', Buffer.byteLength(s) + 1) as Ptr;
      koffi.encode(p, 'char', s, Buffer.byteLength(s) + 1);
      keep.push(p);
      return p;
    };
    const o = {
      sz: koffi.sizeof(OpenOpts),
      object_name: null,
      relaxed_maps: false,
      pin_root_path: opts.pinRoot ? str(opts.pinRoot) : null,
      _stub: 0,
      kconfig: null,
      btf_custom_path: null,
      kernel_log_buf: null,
      kernel_log_size: 0,
      kernel_log_level: 0,
    };
    const optsPtr = koffi.alloc(OpenOpts, 1) as Ptr;
    koffi.encode(optsPtr, OpenOpts, o);
    let obj: Ptr;
    try {
      obj = l.bpf_object__open_file(path, optsPtr);
    } finally {
      // libbpf copies pin_root_path; the opts can go.
      koffi.free(optsPtr);
      for (const p of keep) koffi.free(p);
    }
    if (!obj) throw new KernelError(`open BPF object ${path}`, errno());
    const bo = new BpfObject(obj, path);
    try {
      if (opts.rodata) bo.setRodata(opts.rodata);
      if (opts.verifierLog) {
        for (const p of bo.programPtrs()) l.bpf_program__set_log_level(p, 1);
      }
    } catch (e) {
      bo.close();
      throw e;
    }
    return bo;
  }

  private programPtrs(): Ptr[] {
    const out: Ptr[] = [];
    let p: Ptr | null = null;
    for (;;) {
      p = lib().bpf_object__next_program(this.obj, p);
      if (!p) break;
      out.push(p);
    }
    return out;
  }

  private mapPtrs(): Ptr[] {
    const out: Ptr[] = [];
    let m: Ptr | null = null;
    for (;;) {
      m = lib().bpf_object__next_map(this.obj, m);
      if (!m) break;
      out.push(m);
    }
    return out;
  }

  programNames(): string[] {
    return this.programPtrs().map((p) => lib().bpf_program__name(p));
  }

  mapNames(): string[] {
    return this.mapPtrs().map((m) => lib().bpf_map__name(m));
  }

  /** Sets 32-bit `const volatile` globals by name, using the object's BTF for offsets. */
  private setRodata(values: Record<string, number>): void {
    const l = lib();
    const m = this.mapPtrs().find((p) => l.bpf_map__name(p).endsWith('.rodata'));
    if (!m) throw new NeuvError(`${this.path}: no .rodata section for ${Object.keys(values).join(', ')}`);
    const size = [0n];
    const init = l.bpf_map__initial_value(m, size);
    if (!init) throw new NeuvError(`${this.path}: .rodata has no initial value`);
    const n = Number(size[0]);
    const data = Buffer.from(koffi.view(init, n));
    const vars = this.datasecVars('.rodata');
    for (const [name, value] of Object.entries(values)) {
      const v = vars.get(name);
      if (!v) throw new NeuvError(`${this.path}: no const volatile global '${name}'`);
      if (v.size !== 4) throw new NeuvError(`${this.path}: global '${name}' is ${v.size} bytes, expected 4`);
      data.writeUInt32LE(value >>> 0, v.offset);
    }
    check(l.bpf_map__set_initial_value(m, data, n), `set .rodata of ${this.path}`);
  }

  /** Variables of a DATASEC (e.g. .rodata): name -> offset/size. */
  private datasecVars(sec: string): Map<string, { offset: number; size: number }> {
    const l = lib();
    const btf = l.bpf_object__btf(this.obj);
    const out = new Map<string, { offset: number; size: number }>();
    if (!btf) return out;
    const id = l.btf__find_by_name_kind(btf, sec, 15 /* BTF_KIND_DATASEC */);
    if (id < 0) return out;
    const t = l.btf__type_by_id(btf, id);
    const info = koffi.decode(t, 4, 'uint32_t') as number;
    const vlen = info & 0xffff;
    for (let i = 0; i < vlen; i++) {
      const base = 12 + i * 12; // struct btf_var_secinfo { type, offset, size }
      const varId = koffi.decode(t, base, 'uint32_t') as number;
      const off = koffi.decode(t, base + 4, 'uint32_t') as number;
      const sz = koffi.decode(t, base + 8, 'uint32_t') as number;
      const vt = l.btf__type_by_id(btf, varId);
      const name = l.btf__name_by_offset(btf, koffi.decode(vt, 0, 'uint32_t') as number) ?? '';
      out.set(name, { offset: off, size: sz });
    }
    return out;
  }

  /** A struct's layout from the object's BTF, or undefined if absent. */
  btfStruct(name: string): BtfStruct | undefined {
    const l = lib();
    const btf = l.bpf_object__btf(this.obj);
    if (!btf) return undefined;
    const id = l.btf__find_by_name_kind(btf, name, BTF_KIND_STRUCT);
    if (id < 0) return undefined;
    const t = l.btf__type_by_id(btf, id);
    const info = koffi.decode(t, 4, 'uint32_t') as number;
    const size = koffi.decode(t, 8, 'uint32_t') as number;
    const vlen = info & 0xffff;
    const kflag = info >>> 31;
    const members: BtfMember[] = [];
    for (let i = 0; i < vlen; i++) {
      const base = 12 + i * 12; // struct btf_member { name_off, type, offset }
      const nameOff = koffi.decode(t, base, 'uint32_t') as number;
      const type = koffi.decode(t, base + 4, 'uint32_t') as number;
      const rawOff = koffi.decode(t, base + 8, 'uint32_t') as number;
      const bitOff = kflag ? rawOff & 0xffffff : rawOff;
      members.push({
        name: l.btf__name_by_offset(btf, nameOff) ?? '',
        offset: bitOff / 8,
        size: Number(l.btf__resolve_size(btf, type)),
      });
    }
    return { name, size, members };
  }

  /** An enum's values from the object's BTF, or undefined if absent. */
  btfEnum(name: string): BtfEnum | undefined {
    const l = lib();
    const btf = l.bpf_object__btf(this.obj);
    if (!btf) return undefined;
    const id = l.btf__find_by_name_kind(btf, name, BTF_KIND_ENUM);
    if (id < 0) return undefined;
    const t = l.btf__type_by_id(btf, id);
    const vlen = (koffi.decode(t, 4, 'uint32_t') as number) & 0xffff;
    const values: Record<string, number> = {};
    for (let i = 0; i < vlen; i++) {
      const base = 12 + i * 8; // struct btf_enum { name_off, val }
      const n = l.btf__name_by_offset(btf, koffi.decode(t, base, 'uint32_t') as number) ?? '';
      values[n] = koffi.decode(t, base + 4, 'int32_t') as number;
    }
    return { name, values };
  }

  /**
   * Loads into the kernel (maps created or reused from pins, programs verified).
   * On a verifier refusal the error carries the log (also logged at debug).
   */
  load(): void {
    const l = lib();
    const { result, error, messages } = captureDuring(() => l.bpf_object__load(this.obj));
    const r = error === undefined ? (result as number) : -22;
    if (r >= 0) flushDeferred();
    else deferred = [];
    if (r < 0) {
      const vlog = messages.join('\n');
      const lg = log('loader');
      const verifier = /BEGIN PROG LOAD LOG/.test(vlog);
      if (vlog) lg.debug({ libbpf: vlog }, 'libbpf output of the failed load');
      const err = new KernelError(
        `load BPF object ${this.path}`,
        -r,
        verifier ? 'the verifier refused a program' : undefined,
        verifier ? ExitCode.KERNEL : undefined,
      );
      (err as KernelError & { verifierLog?: string }).verifierLog = vlog;
      throw err;
    }
    this.loaded = true;
  }

  private progPtr(name: string): Ptr {
    const p = lib().bpf_object__find_program_by_name(this.obj, name);
    if (!p) throw new NeuvError(`${this.path}: no program '${name}'`, ExitCode.NOT_FOUND);
    return p;
  }

  private mapPtr(name: string): Ptr {
    const m = lib().bpf_object__find_map_by_name(this.obj, name);
    if (!m) throw new NeuvError(`${this.path}: no map '${name}'`, ExitCode.NOT_FOUND);
    return m;
  }

  /** The fd of a loaded program (owned by this object: valid until close()). */
  progFd(name: string): number {
    if (!this.loaded) throw new NeuvError(`${this.path}: not loaded`);
    return check(lib().bpf_program__fd(this.progPtr(name)), `fd of program ${name}`);
  }

  /** A loaded map (the fd is owned by this object: valid until close()). */
  map(name: string): MapFd {
    if (!this.loaded) throw new NeuvError(`${this.path}: not loaded`);
    const fd = check(lib().bpf_map__fd(this.mapPtr(name)), `fd of map ${name}`);
    return new MapFd(fd, false);
  }

  /** Where a pinned-by-name map is (or will be) pinned. */
  mapPinPath(name: string): string | null {
    return lib().bpf_map__pin_path(this.mapPtr(name));
  }

  /** Sets a map's max_entries (call between open and load; a pinned map is reused only with the same size). */
  setMaxEntries(name: string, n: number): void {
    if (this.loaded) throw new NeuvError(`${this.path}: max_entries of ${name} must be set before load`);
    check(lib().bpf_map__set_max_entries(this.mapPtr(name), n >>> 0), `set max_entries of map ${name} to ${n}`);
  }

  /** Reuses an existing map for `name` (call between open and load). */
  reuseMap(name: string, fd: number): void {
    check(lib().bpf_map__reuse_fd(this.mapPtr(name), fd), `reuse map ${name}`);
  }

  close(): void {
    if (this.obj) {
      lib().bpf_object__close(this.obj);
      this.obj = 0n;
    }
  }
}

// ---------------------------------------------------------------- tc

export const TC_INGRESS = 1;
export const TC_EGRESS = 2;
export const TC_F_REPLACE = 1;

function tcHook(ifindex: number, point: number) {
  return { sz: koffi.sizeof(TcHook), ifindex, attach_point: point, parent: 0 };
}

/** Creates the clsact qdisc. Returns false if one (or another qdisc kind) already existed. */
export function tcHookCreate(ifindex: number, ctx: string): boolean {
  const r = lib().bpf_tc_hook_create(tcHook(ifindex, TC_INGRESS));
  if (r === -17) return false; // EEXIST: clsact (or a legacy ingress qdisc) already there
  check(r, `create clsact qdisc on ${ctx}`);
  return true;
}

/** Destroys the clsact qdisc (both directions) and everything attached to it. */
export function tcHookDestroy(ifindex: number, ctx: string): void {
  const r = lib().bpf_tc_hook_destroy(tcHook(ifindex, TC_INGRESS | TC_EGRESS));
  if (r === -2 || r === -19 || r === -22) return; // already gone (EINVAL: no clsact on the device any more)
  check(r, `remove clsact qdisc from ${ctx}`);
}

/** Attaches (or with replace, swaps in place) a direct-action program. Returns the prog id. */
export function tcAttach(ifindex: number, progFd: number, handle: number, priority: number, replace: boolean, ctx: string): number {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: progFd, flags: replace ? TC_F_REPLACE : 0, prog_id: 0, handle, priority };
  check(lib().bpf_tc_attach(tcHook(ifindex, TC_INGRESS), opts), `attach ${ctx} ingress`);
  return opts.prog_id;
}

/** Detaches our filter; returns false if it was not there. */
export function tcDetach(ifindex: number, handle: number, priority: number, ctx: string): boolean {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const r = lib().bpf_tc_detach(tcHook(ifindex, TC_INGRESS), opts);
  if (r === -2 || r === -19 || r === -22) return false; // no such filter / device / qdisc
  check(r, `detach ${ctx} ingress`);
  return true;
}

/** The program id attached at handle/priority, or 0 if none. */
export function tcQuery(ifindex: number, handle: number, priority: number): number {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const r = lib().bpf_tc_query(tcHook(ifindex, TC_INGRESS), opts);
  if (r < 0) return 0;
  return opts.prog_id;
}

// ---------------------------------------------------------------- test run

export interface TestRunOptions {
  repeat?: number;
  /** Bytes of a struct __sk_buff to pass as ctx_in (e.g. to set ifindex). */
  ctxIn?: Buffer;
  /** Capacity for data_out; default the input length + 256. */
  dataOutSize?: number;
}
export interface TestRunResult {
  retval: number;
  dataOut: Buffer;
  /** Mean nanoseconds per run. */
  duration: number;
}

let runOut: { ptr: Ptr; size: number } | undefined;

/** BPF_PROG_TEST_RUN: runs a program on a frame; a redirect forwards nothing. */
export function testRun(progFd: number, data: Buffer, opts: TestRunOptions = {}): TestRunResult {
  const l = lib();
  const outSize = opts.dataOutSize ?? data.length + 256;
  if (!runOut || runOut.size < outSize) {
    if (runOut) koffi.free(runOut.ptr);
    runOut = { ptr: koffi.alloc('uint8_t', outSize) as Ptr, size: outSize };
  }
  const o = {
    sz: koffi.sizeof(TestRunOpts),
    data_in: koffi.address(data),
    data_out: runOut.ptr,
    data_size_in: data.length,
    data_size_out: outSize,
    ctx_in: opts.ctxIn ? koffi.address(opts.ctxIn) : null,
    ctx_out: null,
    ctx_size_in: opts.ctxIn ? opts.ctxIn.length : 0,
    ctx_size_out: 0,
    retval: 0,
    repeat: opts.repeat ?? 1,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  check(l.bpf_prog_test_run_opts(progFd, o), 'BPF_PROG_TEST_RUN');
  const n = Math.min(o.data_size_out, outSize);
  // retval as the int the program returned (TC_ACT_UNSPEC is -1), not the u32 the kernel stores.
  return { retval: o.retval | 0, dataOut: Buffer.from(koffi.view(runOut.ptr, n)), duration: o.duration };
}

// ---------------------------------------------------------------- links (tcx)

export const BPF_TCX_INGRESS = 46;

/** struct bpf_link_info: type@0 id@4 prog_id@8, then for tcx: ifindex@16 attach_type@20. */
export function linkInfo(fd: number): { type: number; id: number; progId: number; ifindex: number } {
  const b = objInfo(fd, 64, 'link');
  return { type: b.readUInt32LE(0), id: b.readUInt32LE(4), progId: b.readUInt32LE(8), ifindex: b.readUInt32LE(16) };
}

/** Swaps the program of a link in place (atomic for tcx links). */
export function linkUpdate(linkFd: number, progFd: number, ctx: string): void {
  check(lib().bpf_link_update(linkFd, progFd, null), `replace program of ${ctx}`);
}

/** Detaches a link even if it is pinned elsewhere. */
export function linkDetach(linkFd: number, ctx: string): void {
  check(lib().bpf_link_detach(linkFd), `detach ${ctx}`);
}

/** Opens a pinned object (map, program, link) by path; the caller closes the fd. Returns -errno if absent. */
export function objGet(path: string): number {
  return lib().bpf_obj_get(path);
}

const BPF_PROG_TYPE_SCHED_CLS = 3;

/** Loads `r0 = 0; exit` as a SCHED_CLS program, for feature probes. Returns the fd or -errno. */
export function loadTrivialTcProg(): number {
  const insns = Buffer.from('b700000000000000' + '9500000000000000', 'hex');
  return lib().bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, 'neuv_probe', 'GPL', insns, 2, null);
}

/** libbpf_probe_bpf_helper for a SCHED_CLS program: true when the kernel has the helper. */
export function probeTcHelper(helperId: number): boolean {
  return lib().libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, helperId, null) === 1;
}

/** bpf_link_create with the raw result (fd or -errno), for probes. */
export function linkCreateRaw(progFd: number, ifindex: number, attachType: number): number {
  return lib().bpf_link_create(progFd, ifindex, attachType, null);
}

/** bpf_link_create: returns the link fd (closing it detaches unless pinned). */
export function linkCreate(progFd: number, ifindex: number, attachType: number, ctx: string): number {
  return check(lib().bpf_link_create(progFd, ifindex, attachType, null), `attach ${ctx} (tcx link)`);
}

// ---------------------------------------------------------------- ring buffers

// int ring_buffer_sample_fn(void *ctx, void *data, size_t size)
const SampleFn = koffi.proto('int neuv_ringbuf_sample_fn(void *ctx, void *data, size_t size)');

/** Returned by our sample callback to stop a consume early (the record it saw is kept). */
const BATCH_FULL = -1024;

/**
 * A BPF ring buffer reader (libbpf ring_buffer). Records are copied out of
 * the mapped ring into Buffers. `watch` reads from the Node event loop: the
 * libbpf epoll fd is watched with a libuv poll handle, so nothing blocks; a
 * burst is drained in batches of `batch` records with a turn of the event
 * loop in between. The map fd must stay open until close().
 */
export class RingBuffer {
  private rb: Ptr;
  private cb: Ptr;
  private pending: Buffer[] = [];
  private limit = Infinity;
  private poll: ReturnType<typeof koffi.node.poll> | undefined;
  private drainScheduled: NodeJS.Immediate | undefined;

  private constructor(rb: Ptr, cb: Ptr) {
    this.rb = rb;
    this.cb = cb;
  }

  static open(mapFd: number, what = 'ring buffer'): RingBuffer {
    const l = lib();
    let self: RingBuffer | undefined;
    const cb = koffi.register((_ctx: Ptr, data: Ptr, size: number | bigint): number => {
      // Never throw across the FFI boundary: libbpf would not unwind it.
      try {
        const n = Number(size);
        self!.pending.push(Buffer.from(koffi.view(data, n)));
        return self!.pending.length >= self!.limit ? BATCH_FULL : 0;
      } catch {
        return BATCH_FULL;
      }
    }, koffi.pointer(SampleFn)) as Ptr;
    const rb = l.ring_buffer__new(mapFd, cb, null, null);
    if (!rb) {
      const e = errno();
      koffi.unregister(cb);
      throw new KernelError(`open ${what}`, e);
    }
    self = new RingBuffer(rb, cb);
    return self;
  }

  /** The epoll fd that becomes readable when records are waiting. */
  get epollFd(): number {
    return lib().ring_buffer__epoll_fd(this.rb);
  }

  /** Copies out up to `max` waiting records (all of them by default) without blocking. */
  consume(max = Infinity): Buffer[] {
    if (!this.rb) return [];
    this.pending = [];
    this.limit = max;
    const r = lib().ring_buffer__consume(this.rb);
    const out = this.pending;
    this.pending = [];
    if (r < 0 && r !== BATCH_FULL && out.length < max) throw new KernelError('read ring buffer', -r);
    return out;
  }

  /**
   * Calls onRecords with each batch of records as they arrive, from the
   * event loop. `ref: false` lets the process exit while watching.
   */
  watch(onRecords: (records: Buffer[]) => void, opts: { batch?: number; ref?: boolean; onError?: (e: unknown) => void } = {}): void {
    if (this.poll) throw new NeuvError('ring buffer is already watched');
    const batch = opts.batch ?? 4096;
    const drain = (): void => {
      this.drainScheduled = undefined;
      if (!this.rb) return;
      try {
        const recs = this.consume(batch);
        if (recs.length) onRecords(recs);
        // A full batch: there may be more; read on after other events had their turn.
        if (recs.length >= batch && this.rb) this.drainScheduled = setImmediate(drain);
      } catch (e) {
        if (opts.onError) opts.onError(e);
        else throw e;
      }
    };
    this.poll = koffi.node.poll(this.epollFd, { readable: true }, () => {
      if (!this.drainScheduled) drain();
    });
    if (opts.ref === false) this.poll.unref();
    drain(); // whatever was there before the watch started
  }

  /** Stops watching (records stay in the ring until consumed). */
  unwatch(): void {
    if (this.drainScheduled) clearImmediate(this.drainScheduled);
    this.drainScheduled = undefined;
    if (this.poll) {
      this.poll.close();
      this.poll = undefined;
    }
  }

  close(): void {
    this.unwatch();
    if (this.rb) {
      lib().ring_buffer__free(this.rb);
      this.rb = 0n;
    }
    if (this.cb) {
      koffi.unregister(this.cb);
      this.cb = 0n;
    }
  }
}

// ---------------------------------------------------------------- libc

export const CLONE_NEWNET = 0x40000000;

/** Moves the calling (main) thread into the network namespace open at fd. */
export function setns(fd: number, nstype: number, ctx: string): void {
  if (lib().setns(fd, nstype) < 0) throw new KernelError(`enter network namespace ${ctx}`, errno());
}

/** Interface index in the current netns, or 0 if there is no such interface. */
export function ifNameToIndex(name: string): number {
  return lib().if_nametoindex(name);
}

/** Interface name in the current netns, or undefined. */
export function ifIndexToName(index: number): string | undefined {
  const buf = Buffer.alloc(16);
  const p = lib().if_indextoname(index, buf);
  if (!p) return undefined;
  return cstr(buf, 0, 16);
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** flock(2); returns false on EWOULDBLOCK with LOCK_NB. */
export function flock(fd: number, op: number, ctx: string): boolean {
  if (lib().flock(fd, op) < 0) {
    const e = errno();
    if (e === 11) return false;
    throw new KernelError(`lock ${ctx}`, e);
  }
  return true;
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
  const nr = SYS_MEMBARRIER[process.arch];
  const r = nr === undefined ? -1 : lib().syscall(nr, 'int', MEMBARRIER_CMD_GLOBAL, 'unsigned int', 0, 'int', 0);
  if (Number(r) !== 0) {
    log('bpf').debug({ arch: process.arch, errno: nr === undefined ? undefined : errno() }, `membarrier(MEMBARRIER_CMD_GLOBAL) refused: sleeping ${GRACE_FALLBACK_MS} ms for an RCU grace period instead`);
    sleepSync(GRACE_FALLBACK_MS);
  }
  deletedSinceGrace = false;
  graceWaits++;
}

/** How many times rcuGraceAfterDeletes() waited (for the tests). */
export function rcuGraceWaits(): number {
  return graceWaits;
}

/** Makes sure libbpf is loadable (and its print callback installed). */
export function init(): void {
  lib();
}

export const _internal = { captureDuring, libbpfHandle: () => libbpfHandle, libcHandle: () => libcHandle };
