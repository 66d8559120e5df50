/**
 * Struct declarations as src/layout/ states them (checked against the
 * object's BTF by checkAgainstBtf) and a codec that reads and writes a
 * buffer through them: the only place member offsets and widths are used.
 */

/** A struct as src/layout/ encodes it: used by the BTF check and by Fields. */
export interface StructDecl {
  name: string;
  size: number;
  members: Array<{ name: string; offset: number; size: number }>;
}

/**
 * Reads and writes the members of a declared struct at the offsets and with
 * the widths the declaration gives (the ones checkAgainstBtf compares with
 * the object), so a codec cannot disagree with its declaration. `base` is
 * where the struct starts in the buffer (a struct inside another).
 */
export class Fields {
  private readonly at = new Map<string, { offset: number; size: number }>();

  constructor(readonly decl: StructDecl) {
    for (const m of decl.members) this.at.set(m.name, m);
  }

  /** A member's offset and size (throws for a name the declaration lacks: a codec bug). */
  member(name: string): { offset: number; size: number } {
    const m = this.at.get(name);
    if (!m) throw new Error(`struct ${this.decl.name} has no member ${name}`);
    return m;
  }

  off(name: string, base = 0): number {
    return base + this.member(name).offset;
  }

  /** Unsigned host-order (little-endian) integer of the member's width (1, 2 or 4 bytes). */
  u(b: Buffer, name: string, base = 0): number {
    const m = this.member(name);
    if (m.size === 1) return b.readUInt8(base + m.offset);
    if (m.size === 2) return b.readUInt16LE(base + m.offset);
    if (m.size === 4) return b.readUInt32LE(base + m.offset);
    throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 1/2/4-byte integer`);
  }

  setU(b: Buffer, name: string, v: number, base = 0): void {
    const m = this.member(name);
    if (m.size === 1) b.writeUInt8(v & 0xff, base + m.offset);
    else if (m.size === 2) b.writeUInt16LE(v & 0xffff, base + m.offset);
    else if (m.size === 4) b.writeUInt32LE(v >>> 0, base + m.offset);
    else throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 1/2/4-byte integer`);
  }

  /** Signed host-order integer of the member's width (1, 2 or 4 bytes). */
  i(b: Buffer, name: string, base = 0): number {
    const m = this.member(name);
    if (m.size === 1) return b.readInt8(base + m.offset);
    if (m.size === 2) return b.readInt16LE(base + m.offset);
    if (m.size === 4) return b.readInt32LE(base + m.offset);
    throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 1/2/4-byte integer`);
  }

  setI(b: Buffer, name: string, v: number, base = 0): void {
    const m = this.member(name);
    if (m.size === 1) b.writeInt8(v, base + m.offset);
    else if (m.size === 2) b.writeInt16LE(v, base + m.offset);
    else if (m.size === 4) b.writeInt32LE(v, base + m.offset);
    else throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 1/2/4-byte integer`);
  }

  /** Network-order (big-endian) integer: __be16 ports. */
  be(b: Buffer, name: string, base = 0): number {
    const m = this.member(name);
    if (m.size === 2) return b.readUInt16BE(base + m.offset);
    if (m.size === 4) return b.readUInt32BE(base + m.offset);
    throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 2/4-byte integer`);
  }

  setBe(b: Buffer, name: string, v: number, base = 0): void {
    const m = this.member(name);
    if (m.size === 2) b.writeUInt16BE(v & 0xffff, base + m.offset);
    else if (m.size === 4) b.writeUInt32BE(v >>> 0, base + m.offset);
    else throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 2/4-byte integer`);
  }

  u64(b: Buffer, name: string, base = 0): bigint {
    const m = this.member(name);
    if (m.size !== 8) throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 64-bit integer`);
    return b.readBigUInt64LE(base + m.offset);
  }

  setU64(b: Buffer, name: string, v: bigint, base = 0): void {
    const m = this.member(name);
    if (m.size !== 8) throw new Error(`struct ${this.decl.name}.${name}: ${m.size} bytes is not a 64-bit integer`);
    b.writeBigUInt64LE(v, base + m.offset);
  }

  /** A copy of a byte-array member (or its first `len` bytes). */
  bytes(b: Buffer, name: string, base = 0, len?: number): Buffer {
    const m = this.member(name);
    const o = base + m.offset;
    return Buffer.from(b.subarray(o, o + (len ?? m.size)));
  }

  setBytes(b: Buffer, name: string, src: Uint8Array, base = 0): void {
    const m = this.member(name);
    if (src.length > m.size) throw new Error(`struct ${this.decl.name}.${name}: ${src.length} bytes do not fit in ${m.size}`);
    Buffer.from(src.buffer, src.byteOffset, src.length).copy(b, base + m.offset);
  }
}

