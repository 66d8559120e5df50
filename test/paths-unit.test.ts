/**
 * Unit: pin root names under the lock directory are one to one
 * (pinRootStem), and src/safefs.ts opens what we make without following
 * what was planted there (in a private directory under the OS's tmpdir).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ExitCode } from '../src/errors';
import { lockDirFile, pinRootStem } from '../src/lock';
import { pinRootFrom } from '../src/pins';
import { UnsafePathError, checkOwnDir, ensureOwnDir, openOwnFile, readOwnFile, writeOwnFileAtomic } from '../src/safefs';

describe('pin root names under the lock directory (unit)', function () {
  it('keep the names of before for [A-Za-z0-9/-] pin roots', function () {
    assert.equal(path.basename(lockDirFile('/sys/fs/bpf/neuv', 'lock')), '_sys_fs_bpf_neuv.lock');
    assert.equal(pinRootStem('/sys/fs/bpf/neuv-demo-42'), '_sys_fs_bpf_neuv-demo-42');
  });

  it('are one to one: a/b vs a_b, a name with a dot vs a longer `what`, %, bytes past ASCII', function () {
    const roots = ['/sys/fs/bpf/a/b', '/sys/fs/bpf/a_b', '/sys/fs/bpf/a%5Fb', '/sys/fs/bpf/x.config', '/sys/fs/bpf/x', '/sys/fs/bpf/é', '/sys/fs/bpf/%C3%A9', '/sys/fs/bpf/a b', '/sys/fs/bpf/a=b'];
    const names = new Map<string, string>();
    for (const r of roots) {
      for (const what of ['lock', 'lock.wait', 'config.lock', 'journal', 'watch.json']) {
        const f = lockDirFile(r, what);
        assert.equal(names.get(f), undefined, `${r} ${what} and ${names.get(f)} share ${f}`);
        names.set(f, `${r} ${what}`);
      }
      assert.match(pinRootStem(r), /^[A-Za-z0-9_%-]+$/, 'no dot in a stem: its first dot ends it');
    }
  });

  it("a pin root too long for a file name: '=' and its SHA-256, still one to one", function () {
    const long = `/sys/fs/bpf/${'x'.repeat(300)}`;
    assert.match(pinRootStem(long), /^=[0-9a-f]{64}$/);
    assert.notEqual(pinRootStem(long), pinRootStem(`${long}y`));
    assert.ok(path.basename(lockDirFile(long, 'lock.wait')).length < 255);
  });

  it("--bpffs / is a usage error, not the pin root ''", function () {
    for (const p of ['/', '//', '/./']) assert.throws(() => pinRootFrom(p, {}), (e: unknown) => (e as { code?: number }).code === ExitCode.USAGE && /is the root directory/.test((e as Error).message));
  });
});

describe('src/safefs.ts (unit)', function () {
  let dir: string;
  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-safefs-'));
  });
  afterEach(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const target = (): { p: string; same: () => void } => {
    const p = path.join(dir, 'target');
    fs.writeFileSync(p, 'precious\n');
    return { p, same: () => assert.equal(fs.readFileSync(p, 'utf8'), 'precious\n') };
  };
  const unsafe = (re: RegExp) => (e: unknown) => e instanceof UnsafePathError && e.code === ExitCode.UNSAFE && re.test(e.message);

  it('openOwnFile creates 0600 and reopens; a symbolic link, a hard link, a file writable by others, a FIFO are refused (the FIFO without blocking)', function () {
    const p = path.join(dir, 'f.lock');
    const fd = openOwnFile(p, fs.constants.O_RDWR | fs.constants.O_CREAT, 'lock file')!;
    fs.closeSync(fd);
    assert.equal(fs.statSync(p).mode & 0o777, 0o600);
    fs.closeSync(openOwnFile(p, fs.constants.O_RDWR | fs.constants.O_CREAT, 'lock file')!);
    assert.equal(openOwnFile(path.join(dir, 'none'), fs.constants.O_RDONLY, 'state file'), undefined);
    const t = target();
    fs.symlinkSync(t.p, path.join(dir, 'link'));
    assert.throws(() => openOwnFile(path.join(dir, 'link'), fs.constants.O_RDWR | fs.constants.O_CREAT, 'lock file'), unsafe(/^lock file \S+link is a symbolic link: not what neuv-bpf makes; remove it/));
    fs.linkSync(t.p, path.join(dir, 'hard'));
    assert.throws(() => openOwnFile(path.join(dir, 'hard'), fs.constants.O_RDWR, 'lock file'), unsafe(/has 2 hard links/));
    fs.chmodSync(p, 0o666);
    assert.throws(() => openOwnFile(p, fs.constants.O_RDWR, 'lock file'), unsafe(/is writable by others \(mode 666\)/));
    fs.rmSync(path.join(dir, 'hard'));
    t.same();
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    assert.throws(() => readOwnFile(fifo, 'state file'), unsafe(/is not a regular file/));
  });

  it('writeOwnFileAtomic: replaces the file; removes a temporary of ours left by a killed write; refuses links at the file and at the temporary', function () {
    const p = path.join(dir, 'state.json');
    writeOwnFileAtomic(p, `${p}.tmp`, 'one', 'state file');
    fs.writeFileSync(`${p}.tmp`, 'left by a killed write', { mode: 0o600 });
    writeOwnFileAtomic(p, `${p}.tmp`, 'two', 'state file');
    assert.equal(readOwnFile(p, 'state file'), 'two');
    assert.equal(fs.existsSync(`${p}.tmp`), false);
    const t = target();
    fs.symlinkSync(t.p, `${p}.tmp`);
    assert.throws(() => writeOwnFileAtomic(p, `${p}.tmp`, 'three', 'state file'), unsafe(/^temporary state file \S+ is a symbolic link/));
    fs.rmSync(`${p}.tmp`);
    fs.rmSync(p);
    fs.symlinkSync(t.p, p);
    assert.throws(() => writeOwnFileAtomic(p, `${p}.tmp`, 'three', 'state file'), unsafe(/^state file \S+ is a symbolic link/));
    assert.throws(() => readOwnFile(p, 'state file'), unsafe(/is a symbolic link/));
    t.same();
  });

  it('ensureOwnDir makes 0700; refuses a link, a file, a directory with group or other bits, one under a directory writable by all (not sticky)', function () {
    const d = path.join(dir, 'd');
    ensureOwnDir(d, 'lock directory');
    assert.equal(fs.statSync(d).mode & 0o7777, 0o700);
    ensureOwnDir(d, 'lock directory');
    fs.symlinkSync(d, path.join(dir, 'l'));
    assert.throws(() => ensureOwnDir(path.join(dir, 'l'), 'lock directory'), unsafe(/is a symbolic link/));
    fs.writeFileSync(path.join(dir, 'f'), '');
    assert.throws(() => checkOwnDir(path.join(dir, 'f'), 'pin root'), unsafe(/is not a directory/));
    fs.chmodSync(d, 0o750);
    assert.throws(() => ensureOwnDir(d, 'lock directory'), unsafe(/has mode 750, not 700: not what neuv-bpf makes; chmod 700/));
    assert.equal(fs.statSync(d).mode & 0o7777, 0o750, 'not chmodded');
    fs.chmodSync(d, 0o777);
    assert.throws(() => ensureOwnDir(path.join(d, 'sub'), 'lock directory'), unsafe(/is under \S+\/d, which is writable by others \(mode 777\) and not sticky/));
    assert.equal(fs.existsSync(path.join(d, 'sub')), false);
    fs.chmodSync(d, 0o1777);
    ensureOwnDir(path.join(d, 'sub'), 'lock directory');
  });
});
