// What a policy module may reserve by itself. The OPA SDK hands the module one imported memory, capped;
// a module that defines its own memory (or a large table) escapes that cap: RSS grew to 3.9 GB in 7 s
// for a module declaring its own. WebAssembly.Module.imports/exports name memories but not their
// limits, so this reads the import (2), table (4) and memory (5) sections of the binary itself.
import { fail, ok, type Result } from '../common/result.js';
import { errorMessage } from '../common/errors.js';

export interface WasmLimits {
  /** largest memory, in 64 KiB pages, a module may define or ask for */
  maxMemoryPages: number;
  /** largest table (entries) a module may define or import */
  maxTableEntries: number;
}

const SECTION_IMPORT = 2;
const SECTION_TABLE = 4;
const SECTION_MEMORY = 5;
const SECTION_GLOBAL = 6;

class Reader {
  constructor(
    private readonly bytes: Uint8Array,
    public pos = 0,
  ) {}
  get done(): boolean {
    return this.pos >= this.bytes.length;
  }
  byte(): number {
    if (this.pos >= this.bytes.length) throw new Error('truncated module');
    return this.bytes[this.pos++]!;
  }
  /** unsigned LEB128 (up to 64 bits, as a number: limits above 2^53 are refused as too large anyway) */
  uleb(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return result;
      scale *= 128;
    }
    throw new Error('malformed LEB128 number');
  }
  skip(n: number): void {
    if (n > this.bytes.length - this.pos) throw new Error('truncated module');
    this.pos += n;
  }
  name(): string {
    const n = this.uleb();
    const start = this.pos;
    this.skip(n);
    return new TextDecoder().decode(this.bytes.subarray(start, start + n));
  }
  limits(): { min: number; max?: number; flags: number } {
    const flags = this.byte();
    if (flags > 0x07) throw new Error(`unknown limits flags 0x${flags.toString(16)}`);
    const min = this.uleb();
    return flags & 0x01 ? { flags, min, max: this.uleb() } : { flags, min };
  }
}

/**
 * Fails, saying why, when the module defines a memory without a maximum or above the cap, a 64-bit or
 * shared memory of its own, asks for an imported memory larger than the cap, or declares a table
 * beyond its limit. Structural errors are left to WebAssembly.compile, except where they stop this read.
 */
export function checkWasmLimits(wasm: Uint8Array, limits: WasmLimits): Result<void> {
  try {
    return check(wasm, limits);
  } catch (e) {
    return fail(`policy.wasm cannot be read: ${errorMessage(e)}`);
  }
}

function check(wasm: Uint8Array, limits: WasmLimits): Result<void> {
  const r = new Reader(wasm);
  const magic = [0x00, 0x61, 0x73, 0x6d];
  if (wasm.length < 8 || magic.some((b, i) => wasm[i] !== b)) return fail('policy.wasm is not a WebAssembly module');
  r.skip(8);
  const capMiB = (limits.maxMemoryPages * 64) / 1024;
  while (!r.done) {
    const id = r.byte();
    const size = r.uleb();
    const end = r.pos + size;
    if (end > wasm.length) throw new Error(`section ${id} runs past the end`);
    const s = new Reader(wasm.subarray(0, end), r.pos);
    if (id === SECTION_IMPORT) {
      for (let n = s.uleb(); n > 0; n--) {
        const where = `${s.name()}.${s.name()}`;
        const kind = s.byte();
        if (kind === 0x00) s.uleb();
        else if (kind === 0x01) {
          s.byte();
          const t = s.limits();
          if (t.min > limits.maxTableEntries)
            return fail(`policy.wasm imports a table ${where} of ${t.min} entries (limit ${limits.maxTableEntries})`);
        } else if (kind === 0x02) {
          const m = s.limits();
          if (m.min > limits.maxMemoryPages)
            return fail(`policy.wasm asks for ${m.min} pages of memory (${where}); the cap is ${capMiB} MiB`);
        } else if (kind === 0x03) s.skip(2);
        else if (kind === 0x04) {
          s.byte();
          s.uleb();
        } else return fail(`policy.wasm has an import of unknown kind ${kind}`);
      }
    } else if (id === SECTION_TABLE) {
      for (let n = s.uleb(); n > 0; n--) {
        const first = s.byte();
        // 0x40 0x00: a table with an initialiser expression (function references proposal)
        if (first === 0x40) return fail('policy.wasm declares a table with an initialiser (not an OPA module)');
        const t = s.limits();
        if (t.min > limits.maxTableEntries || (t.max ?? 0) > limits.maxTableEntries * 16)
          return fail(`policy.wasm declares a table of ${t.min} entries (limit ${limits.maxTableEntries})`);
      }
    } else if (id === SECTION_MEMORY) {
      for (let n = s.uleb(); n > 0; n--) {
        const m = s.limits();
        if (m.flags & 0x04) return fail('policy.wasm declares a 64-bit memory of its own');
        if (m.flags & 0x02) return fail('policy.wasm declares a shared memory of its own');
        if (m.max === undefined)
          return fail(`policy.wasm declares a memory of its own without a maximum (the cap is ${capMiB} MiB)`);
        if (m.max > limits.maxMemoryPages || m.min > limits.maxMemoryPages)
          return fail(
            `policy.wasm declares a memory of its own of up to ${(m.max * 64) / 1024} MiB (the cap is ${capMiB} MiB)`,
          );
      }
    }
    r.pos = end;
  }
  return ok(undefined);
}

/**
 * How many mutable globals the module defines (state outside its memory), or undefined when its
 * global section cannot be read. An OPA module has one, its stack pointer (wasm-image.ts relies on it).
 */
export function mutableGlobalCount(wasm: Uint8Array): number | undefined {
  try {
    const r = new Reader(wasm, 8);
    let count = 0;
    while (!r.done) {
      const id = r.byte();
      const size = r.uleb();
      const end = r.pos + size;
      if (id === SECTION_GLOBAL) {
        for (let n = r.uleb(); n > 0; n--) {
          r.byte(); // value type
          if (r.byte() === 0x01) count++;
          skipConstExpr(r);
        }
      }
      r.pos = end;
    }
    return count;
  } catch {
    return undefined;
  }
}

/** A constant expression up to its `end`: the instructions with their immediates (else it throws). */
function skipConstExpr(r: Reader): void {
  for (;;) {
    const op = r.byte();
    if (op === 0x0b) return;
    if (op === 0x41 || op === 0x42 || op === 0x23 || op === 0xd2)
      r.uleb(); // LEB128 immediates (signed read as unsigned: same length)
    else if (op === 0x43) r.skip(4);
    else if (op === 0x44) r.skip(8);
    else if (op === 0xd0) r.byte();
    else if (![0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e].includes(op))
      throw new Error(`opcode 0x${op.toString(16)} in a constant`);
  }
}
