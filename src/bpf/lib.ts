/**
 * The FFI's core (src/bpf/: the only folder in src/ that touches koffi): it
 * loads libbpf (Debian's libbpf.so.1) and libc, declares every function and
 * struct the other files of src/bpf/ call, and routes libbpf's messages to
 * pino. The other files wrap it in typed functions and small classes that own
 * file descriptors; pointers never leave src/bpf/.
 *
 * libbpf 1.x convention: functions returning int give a negative errno;
 * functions returning a pointer give NULL and set errno.
 */
import koffi from 'koffi';
import { KernelError, NeuvError, ExitCode } from '../errors';
import { log } from '../log';

export type Ptr = bigint;
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

export const OpenOpts = koffi.struct('neuv_bpf_object_open_opts', {
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

export const TcHook = koffi.struct('neuv_bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});

export const TcOpts = koffi.struct('neuv_bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});

export const MapBatchOpts = koffi.struct('neuv_bpf_map_batch_opts', {
  sz: 'size_t',
  elem_flags: 'uint64_t',
  flags: 'uint64_t',
});

export const TestRunOpts = koffi.struct('neuv_bpf_test_run_opts', {
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
  bpf_map_update_batch: (fd: number, keys: Buffer, values: Buffer, count: number[], opts: object) => number;
  bpf_map_delete_batch: (fd: number, keys: Buffer, count: number[], opts: object) => number;
  bpf_map_lookup_batch: (fd: number, inBatch: Buffer | null, outBatch: Buffer, keys: Buffer, values: Buffer, count: number[], opts: object) => number;
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
  bpf_prog_query: (target: number, type: number, flags: number, attachFlags: Buffer, progIds: Buffer, progCnt: Buffer) => number;
  bpf_link_detach: (linkFd: number) => number;
  bpf_prog_load: (type: number, name: string, license: string, insns: Buffer, cnt: number, opts: Ptr | null) => number;
  libbpf_probe_bpf_helper: (progType: number, helper: number, opts: Ptr | null) => number;
  btf__find_by_name_kind: (btf: Ptr, name: string, kind: number) => number;
  btf__type_by_id: (btf: Ptr, id: number) => Ptr;
  btf__name_by_offset: (btf: Ptr, off: number) => string | null;
  btf__resolve_size: (btf: Ptr, id: number) => bigint | number;
  btf__resolve_type: (btf: Ptr, id: number) => number;
  btf__parse: (path: string, ext: Ptr | null) => Ptr;
  btf__free: (btf: Ptr) => void;
  btf__type_cnt: (btf: Ptr) => number;
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
  socket: (domain: number, type: number, proto: number) => number;
  getsockopt: (fd: number, level: number, name: number, val: Buffer, len: Buffer) => number;
  setsockopt: (fd: number, level: number, name: number, val: Buffer, len: number) => number;
  send: (fd: number, buf: Buffer, len: number, flags: number) => number;
  recv: (fd: number, buf: Buffer, len: number, flags: number) => number;
  bpf_fn_dup: (fd: number) => number;
  syscall: (nr: number, ...typedArgs: unknown[]) => number;
  poll: KoffiFn<(fds: Buffer, nfds: number, timeoutMs: number) => number>;
  eventfd: (initval: number, flags: number) => number;
  write: (fd: number, buf: Buffer, len: number) => number;
}

/** A koffi function that can also run on a worker thread (fn.async(...args, cb)). */
type KoffiFn<F extends (...a: never[]) => unknown> = F & { async: (...args: [...Parameters<F>, (err: unknown, res: ReturnType<F>) => void]) => void };

let L: Lib | undefined;
let printCb: Ptr | undefined;
let printBuf: Ptr | undefined;
const PRINT_BUF_SIZE = 1 << 20;

export function lib(): Lib {
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
    bpf_map_update_batch: f(b, 'int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, const neuv_bpf_map_batch_opts *opts)'),
    bpf_map_delete_batch: f(b, 'int bpf_map_delete_batch(int fd, const void *keys, _Inout_ uint32_t *count, const neuv_bpf_map_batch_opts *opts)'),
    bpf_map_lookup_batch: f(b, 'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, _Inout_ uint32_t *count, const neuv_bpf_map_batch_opts *opts)'),
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
    bpf_prog_query: f(b, 'int bpf_prog_query(int target_fd, int type, uint32_t query_flags, _Out_ void *attach_flags, _Out_ void *prog_ids, _Inout_ void *prog_cnt)'),
    bpf_link_detach: f(b, 'int bpf_link_detach(int link_fd)'),
    bpf_prog_load: f(b, 'int bpf_prog_load(int type, const char *name, const char *license, const void *insns, size_t cnt, void *opts)'),
    libbpf_probe_bpf_helper: f(b, 'int libbpf_probe_bpf_helper(int prog_type, int helper_id, void *opts)'),
    btf__find_by_name_kind: f(b, 'int btf__find_by_name_kind(void *btf, const char *name, uint32_t kind)'),
    btf__type_by_id: f(b, 'void *btf__type_by_id(void *btf, uint32_t id)'),
    btf__name_by_offset: f(b, 'const char *btf__name_by_offset(void *btf, uint32_t off)'),
    btf__resolve_size: f(b, 'int64_t btf__resolve_size(void *btf, uint32_t id)'),
    btf__resolve_type: f(b, 'int btf__resolve_type(void *btf, uint32_t id)'),
    btf__parse: f(b, 'void *btf__parse(const char *path, void *btf_ext)'),
    btf__free: f(b, 'void btf__free(void *btf)'),
    btf__type_cnt: f(b, 'uint32_t btf__type_cnt(void *btf)'),
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
    socket: f(c, 'int socket(int domain, int type, int protocol)'),
    getsockopt: f(c, 'int getsockopt(int fd, int level, int name, _Out_ void *val, _Inout_ void *len)'),
    setsockopt: f(c, 'int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
    send: f(c, 'long send(int fd, const void *buf, size_t len, int flags)'),
    recv: f(c, 'long recv(int fd, _Out_ void *buf, size_t len, int flags)'),
    bpf_fn_dup: f(c, 'int dup(int fd)'),
    syscall: f(c, 'long syscall(long number, ...)'),
    poll: f(c, 'int poll(_Inout_ void *fds, unsigned long nfds, int timeout)'),
    eventfd: f(c, 'int eventfd(unsigned int initval, int flags)'),
    write: f(c, 'long write(int fd, const void *buf, size_t len)'),
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

export function captureDuring<T>(fn: () => T): { result?: T; error?: unknown; messages: string[] } {
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
/** Forgets the libbpf messages held back by the last capture (a failed load reports them itself). */
export function dropDeferred(): void {
  deferred = [];
}

export function flushDeferred(): void {
  const lg = log('libbpf');
  for (const m of deferred) if (lg.isLevelEnabled(m.level)) lg[m.level](m.text);
  deferred = [];
}

export function errno(): number {
  return koffi.errno();
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
export function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

export function check(ret: number, context: string, hint?: string): number {
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

export function objInfo(fd: number, size: number, what: string): Buffer {
  const buf = Buffer.alloc(size);
  const len = [size];
  check(lib().bpf_obj_get_info_by_fd(fd, buf, len), `read ${what} info`);
  return buf;
}

export function cstr(buf: Buffer, off: number, max: number): string {
  const s = buf.subarray(off, off + max);
  const z = s.indexOf(0);
  return s.subarray(0, z < 0 ? max : z).toString('utf8');
}

/** Makes sure libbpf is loadable (and its print callback installed). */
export function init(): void {
  lib();
}

export const _internal = { captureDuring, libbpfHandle: () => libbpfHandle, libcHandle: () => libcHandle };

