/**
 * Kernel suite (issue 25): the paths we make are never followed where a
 * local user planted something. /sys/fs/bpf is mode 1777, so the pin root
 * can be there before `load`: a symbolic link, a directory of another user,
 * a directory with group or other bits, or (with --bpffs) another pin root's
 * pin; the lock directory can be writable by others, not root's, or a link;
 * each file we make under it (lock, wait, config and trace locks, journal
 * directory, records and their temporaries, watch state and its temporary)
 * can be a planted link. Each is refused with one line and exit 8 (UNSAFE),
 * and what it pointed at is left as it was: content, mode, owner. Two pin
 * roots that used to share a name under the lock directory (/sys/fs/bpf/a/b
 * and /sys/fs/bpf/a_b) get files of their own.
 *
 * The shared /run/neuv-bpf is only used through names of this run's own pin
 * roots; the checks of the lock directory itself run on private ones
 * (NEUV_BPF_LOCK_DIR).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CliResult, cli, leakChecks, makeNetns, makePinRoot, oneErrorLine, onCleanup, removeLockFiles, requireKernel, uniqueName } from './helpers';
import { ExitCode } from '../src/errors';
import { JournalRecord, findRecord, journalDir, writeRecord } from '../src/intercept/journal';
import { lockDirFile, lockDirFiles, lockPath, pinRootStem } from '../src/lock';
import { readWatchState, watchStatePath, writeWatchState } from '../src/dp/watch';
import { UnsafePathError } from '../src/safefs';

const NOBODY = 65534;
const MAC = '02:00:00:00:00:01';

/** A file or directory outside our paths for a link to point at; unchanged() asserts nothing touched it. */
function plantTarget(kind: 'file' | 'dir' = 'file', under?: string, files: string[] = []): { path: string; unchanged: () => void } {
  const p = under ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-paths-')), 'precious');
  onCleanup(() => fs.rmSync(under ? p : path.dirname(p), { recursive: true, force: true }));
  if (kind === 'file') fs.writeFileSync(p, 'precious\n', { mode: 0o644 });
  else fs.mkdirSync(p, { mode: 0o755 });
  for (const f of files) fs.writeFileSync(path.join(p, f), 'precious\n');
  fs.chmodSync(p, kind === 'file' ? 0o644 : 0o755);
  const st0 = fs.statSync(p);
  const what = () => {
    const st = fs.statSync(p);
    return { mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, mtime: st.mtimeMs, content: kind === 'file' ? fs.readFileSync(p, 'utf8') : fs.readdirSync(p).join(',') };
  };
  const before = { ...what(), mtime: st0.mtimeMs };
  return { path: p, unchanged: () => assert.deepEqual(what(), before, `${p} changed`) };
}

/** A symbolic link at p (a file of ours under the lock directory, say) to target; removed at cleanup. */
function plantLink(p: string, target: string): void {
  fs.rmSync(p, { force: true });
  fs.symlinkSync(target, p);
  onCleanup(() => fs.rmSync(p, { force: true }));
}

/** Exit 7, one line on stderr matching re, nothing on stdout. */
function refused(r: CliResult, re: RegExp): void {
  assert.equal(r.code, ExitCode.UNSAFE, `exit ${r.code}: ${r.stderr}`);
  assert.match(oneErrorLine(r), re);
  assert.equal(r.stdout, '');
}

describe('paths a local user can plant (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  describe('the pin root', function () {
    it('a symbolic link there (to a bpffs directory, to a plain one): every command refuses, load chmods nothing and pins nothing in the target', function () {
      const ns = makeNetns();
      const onBpffs = plantTarget('dir', `/sys/fs/bpf/${uniqueName('nbt')}`);
      const plain = plantTarget('dir');
      for (const target of [onBpffs, plain]) {
        const pins = makePinRoot();
        plantLink(pins, target.path);
        const g = ['--netns', ns.name, '--bpffs', pins];
        refused(cli([...g, 'load']), /^neuv-bpf: pin root \S+ is a symbolic link: not what neuv-bpf makes; choose another pin root \(--bpffs\), or remove it if nothing uses it$/);
        for (const args of [['unload'], ['show'], ['pair', 'add', '--in', 'a', '--ex', 'b', '--mac', MAC], ['repair']]) refused(cli([...g, ...args]), /is a symbolic link/);
        target.unchanged();
        assert.equal(ns.ip('link', 'show').includes('vbr-neuv'), false, 'no vbr-neuv made');
        assert.deepEqual(lockDirFiles(pins), [], 'no lock taken');
      }
    });

    it('a directory of another user (nobody), one with mode 777 or 755, one under a directory of nobody: refused, left as they were', function () {
      const ns = makeNetns();
      const theirs = makePinRoot();
      fs.mkdirSync(theirs, { mode: 0o700 });
      fs.chownSync(theirs, NOBODY, NOBODY);
      const open = makePinRoot();
      fs.mkdirSync(open);
      fs.chmodSync(open, 0o777);
      const readable = makePinRoot();
      fs.mkdirSync(readable);
      fs.chmodSync(readable, 0o755);
      const parent = makePinRoot();
      fs.mkdirSync(parent, { mode: 0o755 });
      fs.chownSync(parent, NOBODY, NOBODY);
      const cases: Array<[string, RegExp]> = [
        [theirs, /^neuv-bpf: pin root \S+ is owned by uid 65534: not what neuv-bpf makes; choose another pin root/],
        [open, /^neuv-bpf: pin root \S+ has mode 777, not 700: not what neuv-bpf makes; chmod 700 \S+ if it is yours, or choose another pin root/],
        [readable, /has mode 755, not 700/],
        [path.join(parent, 'pins'), /^neuv-bpf: pin root \S+\/pins is under \S+, which is owned by uid 65534: not what neuv-bpf makes/],
      ];
      for (const [pins, re] of cases) {
        const dir = fs.existsSync(pins) ? pins : parent;
        const st0 = fs.statSync(dir);
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'load']), re);
        const st = fs.statSync(dir);
        assert.deepEqual([st.mode, st.uid, st.gid], [st0.mode, st0.uid, st0.gid], `${dir}: mode and owner unchanged`);
        assert.deepEqual(fs.readdirSync(dir), [], `nothing pinned in ${dir}`);
      }
      assert.equal(ns.ip('link', 'show').includes('vbr-neuv'), false, 'no vbr-neuv made');
      // Once it is ours (as the message says), load takes it.
      fs.chmodSync(readable, 0o700);
      assert.equal(cli(['--netns', ns.name, '--bpffs', readable, 'load']).code, 0);
      assert.equal(cli(['--netns', ns.name, '--bpffs', readable, 'unload']).code, 0);
    });

    it('--bpffs naming a pin of another pin root: refused; the pin keeps its mode, that datapath stays consistent', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
      for (const pin of ['neuv_ports', 'prog_vin']) {
        refused(cli(['--netns', makeNetns().name, '--bpffs', path.join(pins, pin), 'load']), /^neuv-bpf: pin root \S+ is not a directory: not what neuv-bpf makes/);
        assert.equal(fs.statSync(path.join(pins, pin)).mode & 0o777, 0o600, `${pin} mode`);
      }
      const chk = cli(['--netns', ns.name, '--bpffs', pins, 'show', '--check']);
      assert.equal(chk.code, 0, chk.stderr);
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'unload']).code, 0);
    });

    it('/sys/fs/bpf/a/b and /sys/fs/bpf/a_b: loaded side by side, each with lock files of its own', function () {
      const a = makePinRoot();
      fs.mkdirSync(a, { mode: 0o700 });
      const ab = `${a}/b`;
      const a_b = `${a}_b`;
      onCleanup(() => {
        fs.rmSync(a_b, { recursive: true, force: true });
        removeLockFiles(ab, a_b);
      });
      assert.notEqual(lockPath(ab), lockPath(a_b));
      for (const p of [ab, a_b]) {
        const r = cli(['--netns', makeNetns().name, '--bpffs', p, 'load']);
        assert.equal(r.code, 0, r.stderr);
      }
      const [fa, fb] = [lockDirFiles(ab), lockDirFiles(a_b)];
      assert.ok(fa.includes(path.basename(lockPath(ab))) && fb.includes(path.basename(lockPath(a_b))), `${fa} / ${fb}`);
      assert.deepEqual(fa.filter((f) => fb.includes(f)), [], 'no file shared');
      assert.equal(pinRootStem(a_b).endsWith('%5Fb'), true);
    });
  });

  describe('files under the lock directory (this run\'s names in the shared one)', function () {
    for (const what of ['lock', 'lock.wait', 'config.lock']) {
      it(`a symbolic link at ${what}: load refuses, the target unchanged, nothing left loaded`, function () {
        const ns = makeNetns();
        const pins = makePinRoot();
        const t = plantTarget();
        plantLink(lockDirFile(pins, what), t.path);
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'load']), new RegExp(`^neuv-bpf: ${what} file \\S+\\.${what.replace('.', '\\.')} is a symbolic link: not what neuv-bpf makes; remove it`));
        t.unchanged();
        assert.equal(fs.existsSync(pins), false, 'the pin root load made is removed again');
        assert.equal(ns.ip('link', 'show').includes('vbr-neuv'), false, 'vbr-neuv removed again');
      });
    }

    describe('of a loaded datapath', function () {
      let ns: ReturnType<typeof makeNetns>;
      let pins: string;
      // Each test its own (leakChecks' afterEach removes what a test made; the netns takes vbr-neuv with it).
      beforeEach(function () {
        ns = makeNetns();
        pins = makePinRoot();
        const r = cli(['--netns', ns.name, '--bpffs', pins, 'load']);
        assert.equal(r.code, 0, r.stderr);
      });

      it('trace.lock a symbolic link: trace refuses, the target is not truncated nor given a pid', function () {
        const t = plantTarget();
        plantLink(lockDirFile(pins, 'trace.lock'), t.path);
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'trace', '--count', '1']), /^neuv-bpf: trace\.lock file \S+ is a symbolic link/);
        t.unchanged();
      });

      it('the watch state a symbolic link: watch refuses at start (not read); writing it refuses too', function () {
        const t = plantTarget();
        plantLink(watchStatePath(pins), t.path);
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'watch', '--dp', 'local']), /^neuv-bpf: watch\.json file \S+ is a symbolic link/);
        assert.throws(() => readWatchState(pins), UnsafePathError);
        assert.throws(() => writeWatchState(pins, [{ id: 1, mac: MAC }]), UnsafePathError);
        t.unchanged();
      });

      it("the watch state's temporary a symbolic link: refused, the target unchanged", function () {
        const t = plantTarget();
        plantLink(`${watchStatePath(pins)}.${process.pid}.tmp`, t.path);
        assert.throws(() => writeWatchState(pins, [{ id: 1, mac: MAC }]), /temporary watch\.json file \S+ is a symbolic link/);
        t.unchanged();
        assert.equal(fs.existsSync(watchStatePath(pins)), false);
      });

      it('the journal directory a symbolic link: repair refuses, nothing written or removed in the target', function () {
        const t = plantTarget('dir', undefined, ['4026530000-eth0.json.tmp1', '4026530000-eth0.json']);
        plantLink(journalDir(pins), t.path);
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'repair']), /^neuv-bpf: journal directory \S+ is a symbolic link/);
        assert.throws(() => writeRecord(pins, record()), UnsafePathError);
        t.unchanged();
      });

      it("a journal record and a record's temporary symbolic links: refused, the targets unchanged", function () {
        fs.mkdirSync(journalDir(pins), { mode: 0o700 });
        onCleanup(() => fs.rmSync(journalDir(pins), { recursive: true, force: true }));
        const rec = record();
        const p = path.join(journalDir(pins), `${rec.target.ino}-${rec.port}.json`);
        const tmpTarget = plantTarget();
        plantLink(`${p}.tmp${process.pid}`, tmpTarget.path);
        assert.throws(() => writeRecord(pins, rec), /temporary journal record \S+ is a symbolic link/);
        tmpTarget.unchanged();
        fs.rmSync(`${p}.tmp${process.pid}`);
        const recTarget = plantTarget();
        plantLink(p, recTarget.path);
        assert.throws(() => findRecord(pins, rec.target.ino, rec.port), /journal record \S+ is a symbolic link/);
        assert.throws(() => writeRecord(pins, rec), /journal record \S+ is a symbolic link/);
        recTarget.unchanged();
        refused(cli(['--netns', ns.name, '--bpffs', pins, 'repair']), /journal record \S+ is a symbolic link/);
      });
    });
  });

  describe('the lock directory itself (private ones: NEUV_BPF_LOCK_DIR)', function () {
    /** A lock directory path of this test, under /run like the real one; removed at cleanup. */
    const privateDir = (): string => {
      const d = `/run/${uniqueName('nbt')}-lockdir`;
      onCleanup(() => fs.rmSync(d, { recursive: true, force: true }));
      return d;
    };
    const load = (lockDir: string, pins = makePinRoot(), ns = makeNetns()) => ({ pins, ns, r: cli(['--netns', ns.name, '--bpffs', pins, 'load'], { env: { NEUV_BPF_LOCK_DIR: lockDir } }) });

    it('missing: made root 0700, the lock files in it 0600', function () {
      const d = privateDir();
      const { pins, ns, r } = load(d);
      assert.equal(r.code, 0, r.stderr);
      const st = fs.lstatSync(d);
      assert.deepEqual([st.isDirectory(), st.uid, st.mode & 0o7777], [true, 0, 0o700]);
      const lock = `${pinRootStem(pins)}.lock`;
      assert.ok(fs.readdirSync(d).includes(lock), fs.readdirSync(d).join(' '));
      assert.equal(fs.statSync(path.join(d, lock)).mode & 0o777, 0o600);
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'unload'], { env: { NEUV_BPF_LOCK_DIR: d } }).code, 0);
    });

    it('mode 1777, owned by nobody, a symbolic link, under a directory writable by all: refused before anything is made, left as it was', function () {
      const sticky = privateDir();
      fs.mkdirSync(sticky);
      fs.chmodSync(sticky, 0o1777);
      const theirs = privateDir();
      fs.mkdirSync(theirs, { mode: 0o700 });
      fs.chownSync(theirs, NOBODY, NOBODY);
      const link = privateDir();
      const linked = privateDir();
      fs.mkdirSync(linked, { mode: 0o700 });
      fs.symlinkSync(linked, link);
      const openParent = privateDir();
      fs.mkdirSync(openParent);
      fs.chmodSync(openParent, 0o777);
      const cases: Array<[string, RegExp]> = [
        [sticky, /^neuv-bpf: lock directory \S+ has mode 1777, not 700: not what neuv-bpf makes; chmod 700 \S+ if it is yours, or remove it/],
        [theirs, /^neuv-bpf: lock directory \S+ is owned by uid 65534: not what neuv-bpf makes; remove it/],
        [link, /^neuv-bpf: lock directory \S+ is a symbolic link: not what neuv-bpf makes/],
        [path.join(openParent, 'locks'), /^neuv-bpf: lock directory \S+ is under \S+, which is writable by others \(mode 777\) and not sticky/],
      ];
      for (const [d, re] of cases) {
        const before = fs.lstatSync(d, { throwIfNoEntry: false });
        const { pins, ns, r } = load(d);
        refused(r, re);
        const after = fs.lstatSync(d, { throwIfNoEntry: false });
        assert.deepEqual([after?.mode, after?.uid], [before?.mode, before?.uid], `${d} as it was`);
        if (after?.isDirectory()) assert.deepEqual(fs.readdirSync(d), [], `nothing made in ${d}`);
        assert.equal(fs.existsSync(pins), false, 'no pin root made');
        assert.equal(ns.ip('link', 'show').includes('vbr-neuv'), false, 'no vbr-neuv made');
      }
      assert.deepEqual(fs.readdirSync(linked), [], 'nothing made where the link points');
    });

    it('--bpffs / is a usage error and leaves no empty-named lock', function () {
      const d = privateDir();
      fs.mkdirSync(d, { mode: 0o700 });
      const r = cli(['--netns', makeNetns().name, '--bpffs', '/', 'load'], { env: { NEUV_BPF_LOCK_DIR: d } });
      assert.equal(r.code, ExitCode.USAGE, r.stderr);
      assert.match(oneErrorLine(r), /pin root '\/' is the root directory/);
      assert.deepEqual(fs.readdirSync(d), []);
    });
  });
});

/** A journal record as intercept writes it (the values do not matter here). */
function record(): JournalRecord {
  return {
    version: 1, op: 'intercept', step: 'down', port: 'eth0', vex: 'vex2a-eth0', vin: 'vin2a-eth0', time: '',
    target: { desc: 'pid 42', pid: 42, path: '/proc/42/ns/net', ino: 4026530000, dev: 4 },
    enforcer: { path: null, ino: 4026531840, dev: 4 },
    snap: { name: 'eth0', ifindex: 2, kind: 'veth', mac: '02:00:00:00:00:01', mtu: 1500, txqlen: 1000, alias: undefined, up: true, addrGenMode: 'eui64', numTxQueues: 1, numRxQueues: 1, peerIfindex: 9, addrs: [], routes: [], neighbours: [] },
  };
}
