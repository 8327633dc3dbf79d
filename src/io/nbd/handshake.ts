/**
 * The NBD fixed newstyle handshake (doc/proto.md): greeting, client flags, then options:
 * STARTTLS (nbds), STRUCTURED_REPLY, SET_META_CONTEXT "base:allocation", and GO asking for
 * NBD_INFO_BLOCK_SIZE. A server that answers GO with "unsupported" gets the old EXPORT_NAME (no
 * block sizes; 124 zero bytes follow unless NO_ZEROES was agreed). Options the server refuses
 * (structured replies, meta contexts) are simply done without.
 */
import type { Duplex } from 'node:stream';
import { ByteReader } from './byte-reader.js';
import * as P from './protocol.js';

export interface ExportInfo {
  size: number;
  flags: number;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  /** Did the server give block sizes (so the minimum must be obeyed)? */
  blockSizesGiven: boolean;
  structured: boolean;
  /** The id of base:allocation, when the server agreed to it. */
  allocationContext?: number;
}

export class HandshakeError extends Error {}

interface OptionReply {
  type: number;
  data: Buffer;
}

export class Handshake {
  constructor(
    private stream: Duplex,
    private readonly reader: ByteReader,
    private readonly exportName: string,
  ) {}

  private sendOption(opt: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.stream.write(Buffer.concat([h, data]));
  }

  private async readReply(opt: number): Promise<OptionReply> {
    const h = await this.reader.take(20);
    if (h.readBigUInt64BE(0) !== P.OPT_REPLY_MAGIC) throw new HandshakeError('bad option reply magic');
    if (h.readUInt32BE(8) !== opt) throw new HandshakeError(`the reply is for option ${h.readUInt32BE(8)}, not ${opt}`);
    const len = h.readUInt32BE(16);
    if (len > 1 << 24) throw new HandshakeError(`option reply of ${len} bytes`);
    return { type: h.readUInt32BE(12), data: await this.reader.take(len) };
  }

  private exportNameBytes(): Buffer {
    const name = Buffer.from(this.exportName, 'utf8');
    const b = Buffer.alloc(4 + name.length);
    b.writeUInt32BE(name.length, 0);
    name.copy(b, 4);
    return b;
  }

  private refusal(what: string, r: OptionReply): HandshakeError {
    const msg = r.data.length ? `: ${r.data.toString('utf8')}` : '';
    if (r.type === P.REP_ERR_TLS_REQD) return new HandshakeError(`the server requires TLS (use nbds:// or nbds+unix://)`);
    return new HandshakeError(`${what} refused: ${P.optionErrorName(r.type)}${msg}`);
  }

  /** Greeting and client flags; true when the server agreed to NO_ZEROES. */
  async greet(): Promise<boolean> {
    const g = await this.reader.take(18);
    if (g.readBigUInt64BE(0) !== P.NBDMAGIC) throw new HandshakeError('not an NBD server (bad greeting)');
    if (g.readBigUInt64BE(8) !== P.IHAVEOPT) throw new HandshakeError('the server speaks the oldstyle handshake, which is not supported');
    const flags = g.readUInt16BE(16);
    if (!(flags & P.FLAG_FIXED_NEWSTYLE)) throw new HandshakeError('the server does not offer the fixed newstyle handshake');
    const noZeroes = (flags & P.FLAG_NO_ZEROES) !== 0;
    const c = Buffer.alloc(4);
    c.writeUInt32BE(P.FLAG_FIXED_NEWSTYLE | (noZeroes ? P.FLAG_NO_ZEROES : 0));
    this.stream.write(c);
    return noZeroes;
  }

  /** Ask for TLS; on ACK the caller wraps the socket. */
  async startTls(): Promise<void> {
    this.sendOption(P.OPT.STARTTLS);
    const r = await this.readReply(P.OPT.STARTTLS);
    if (r.type !== P.REP.ACK) {
      if (r.type === P.REP_ERR_UNSUP || r.type === P.REP_ERR_POLICY) throw new HandshakeError('the server does not offer TLS (use nbd:// without the s)');
      throw this.refusal('STARTTLS', r);
    }
  }

  /** Switch to a new stream (the TLS one) after STARTTLS. */
  useStream(s: Duplex): void {
    this.stream = s;
  }

  async negotiate(noZeroes: boolean): Promise<ExportInfo> {
    this.sendOption(P.OPT.STRUCTURED_REPLY);
    let r = await this.readReply(P.OPT.STRUCTURED_REPLY);
    if (r.type === P.REP_ERR_TLS_REQD) throw this.refusal('', r);
    const structured = r.type === P.REP.ACK;
    let allocationContext: number | undefined;
    if (structured) {
      const q = Buffer.from('base:allocation');
      const qh = Buffer.alloc(8);
      qh.writeUInt32BE(1, 0);
      qh.writeUInt32BE(q.length, 4);
      this.sendOption(P.OPT.SET_META_CONTEXT, Buffer.concat([this.exportNameBytes(), qh, q]));
      for (;;) {
        r = await this.readReply(P.OPT.SET_META_CONTEXT);
        if (r.type === P.REP.META_CONTEXT && r.data.length >= 4 && r.data.subarray(4).toString() === 'base:allocation') allocationContext = r.data.readUInt32BE(0);
        else if (r.type === P.REP.ACK || r.type & P.REP_ERROR_BIT) break;
      }
    }
    const go = Buffer.alloc(4);
    go.writeUInt16BE(1, 0);
    go.writeUInt16BE(P.INFO.BLOCK_SIZE, 2);
    this.sendOption(P.OPT.GO, Buffer.concat([this.exportNameBytes(), go]));
    const info: ExportInfo = { size: -1, flags: 0, minBlock: 1, preferredBlock: 4096, maxBlock: 32 << 20, blockSizesGiven: false, structured, ...(allocationContext !== undefined ? { allocationContext } : {}) };
    for (;;) {
      r = await this.readReply(P.OPT.GO);
      if (r.type === P.REP.ACK) break;
      if (r.type === P.REP_ERR_UNSUP) return this.exportNameFallback(noZeroes, info);
      if (r.type & P.REP_ERROR_BIT) throw this.refusal(`export '${this.exportName}'`, r);
      if (r.type !== P.REP.INFO || r.data.length < 2) continue;
      const kind = r.data.readUInt16BE(0);
      if (kind === P.INFO.EXPORT && r.data.length >= 12) {
        info.size = Number(r.data.readBigUInt64BE(2));
        info.flags = r.data.readUInt16BE(10);
      } else if (kind === P.INFO.BLOCK_SIZE && r.data.length >= 14) {
        info.minBlock = r.data.readUInt32BE(2);
        info.preferredBlock = r.data.readUInt32BE(6);
        info.maxBlock = r.data.readUInt32BE(10);
        info.blockSizesGiven = true;
      }
    }
    if (info.size < 0) throw new HandshakeError('the server did not give the export size');
    return info;
  }

  private async exportNameFallback(noZeroes: boolean, info: ExportInfo): Promise<ExportInfo> {
    const name = Buffer.from(this.exportName, 'utf8');
    this.sendOption(P.OPT.EXPORT_NAME, name);
    const b = await this.reader.take(10);
    if (!noZeroes) await this.reader.take(124);
    return { ...info, size: Number(b.readBigUInt64BE(0)), flags: b.readUInt16BE(8) };
  }
}
