// Messages from data frames (RFC 6455 5.4): the order of a message's frames, the
// limits on its size and fragment count, and its text decoded as it arrives. A
// compressed message (RFC 7692) is inflated as it arrives too, and its inflated size
// counts against the same limit: inflation stops as soon as it is passed.

import { ProtocolError } from "./errors.ts";
import { CloseCode, Opcode } from "./frame.ts";
import type { PerMessageDeflate, Sink } from "./_deflate.ts";
import { decodeUtf8, Utf8Stream } from "./_utf8.ts";

const EMPTY = new Uint8Array(0);

/** Reassembles messages from the data frames of one connection. */
export class MessageAssembler {
  readonly #maxPayload: number;
  readonly #maxFragments: number;
  #opcode: number | undefined; // the message under way, or undefined between messages
  #fin = false; // whether the frame under way is the message's last
  #bytes = 0;
  #count = 0;
  #fragments = EMPTY; // a fragmented binary message so far
  #inflatedPieces: Uint8Array[] = []; // a compressed binary message so far, inflated
  #text = new Utf8Stream();
  #streamed = false; // whether text went through piece()
  #compressed = false; // whether the message under way is compressed (RSV1 on its first frame)
  #inflated = 0; // its bytes once inflated
  readonly #sink: Sink = (piece) => this.#takeInflated(piece);
  /** Inflates compressed messages once permessage-deflate is negotiated. */
  inflater: Pick<PerMessageDeflate, "inflate" | "endMessage"> | undefined;

  constructor(maxPayload: number, maxFragments: number) {
    this.#maxPayload = maxPayload;
    this.#maxFragments = maxFragments;
  }

  /** Room the next frame's payload has within `maxPayload`. */
  get room(): number {
    return this.#maxPayload - this.#bytes;
  }

  /** Whether the message under way is text. */
  get text(): boolean {
    return this.#opcode === Opcode.Text;
  }

  /** Whether the payload of the frame under way goes through `piece()`: text, or compressed. */
  get streamed(): boolean {
    return this.#opcode === Opcode.Text || this.#compressed;
  }

  /**
   * A data frame's header has arrived: checks its place in the message and the limits.
   * `compressed` is its RSV1 (decodeHeader allows it only on a message's first frame).
   */
  begin(opcode: number, fin: boolean, payloadLength: number, compressed = false): void {
    if (opcode === Opcode.Continuation) {
      if (this.#opcode === undefined) {
        throw new ProtocolError("Continuation frame without a message to continue", {
          code: "WS_ERR_UNEXPECTED_CONTINUATION",
        });
      }
    } else if (this.#opcode !== undefined) {
      // RFC 6455 5.4: a new message may not start inside a fragmented one.
      throw new ProtocolError("New data frame inside a fragmented message", { code: "WS_ERR_EXPECTED_CONTINUATION" });
    } else {
      this.#opcode = opcode;
      this.#compressed = compressed;
    }
    this.#fin = fin;
    this.#bytes += payloadLength;
    if (this.#bytes > this.#maxPayload) {
      throw new ProtocolError(`Message of ${this.#bytes} bytes exceeds the limit of ${this.#maxPayload}`, {
        closeCode: CloseCode.MessageTooBig,
        code: "WS_ERR_PAYLOAD_TOO_BIG",
      });
    }
    if (++this.#count > this.#maxFragments) {
      throw new ProtocolError(`Message has more than ${this.#maxFragments} fragments`, {
        closeCode: CloseCode.MessageTooBig,
        code: "WS_ERR_TOO_MANY_FRAGMENTS",
      });
    }
  }

  /**
   * Payload bytes of a text or compressed frame, as they arrive (RFC 6455 8.1: fail
   * fast); `ascii` if the caller found every byte ASCII.
   */
  piece(piece: Uint8Array, ascii = false): void {
    this.#streamed = true;
    if (this.#compressed) this.inflater!.inflate(piece, this.#sink);
    else this.#text.push(piece, false, !this.#whole, ascii);
  }

  // Whether the frame under way is the whole message.
  get #whole(): boolean {
    return this.#count === 1 && this.#fin;
  }

  /**
   * A frame read into a buffer of its own is whole: `payload`. Its bytes went through
   * `piece()` if `streamed`; a text that is the whole message was only checked there,
   * and is decoded here at once.
   */
  endLarge(payload: Uint8Array): string | Uint8Array | undefined {
    if (!this.streamed) return this.end(payload, true);
    if (this.#compressed || !this.#whole) return this.end(EMPTY, true);
    // Valid text ends on a character's end, so no piece is left cut; invalid text throws here.
    return this.#reset(decodeUtf8(payload));
  }

  /**
   * The frame under way is whole. For text, its bytes went through `piece()`, except
   * `rest`; for binary, `rest` is the whole payload, `owned` if it is not a view into
   * a buffer that is reused. Returns the message once its last frame is in.
   */
  end(rest: Uint8Array, owned: boolean): string | Uint8Array | undefined {
    const opcode = this.#opcode;
    if (this.#compressed) {
      this.piece(rest);
      if (!this.#fin) return undefined;
      this.inflater!.endMessage(this.#sink);
      return this.#reset(opcode === Opcode.Text ? this.#text.push(EMPTY, true) : this.#takeInflatedPieces());
    }
    if (opcode === Opcode.Text) {
      // One whole frame is decoded at once: no pieces to join.
      if (this.#whole && !this.#streamed) return this.#reset(decodeUtf8(rest));
      const text = this.#text.push(rest, this.#fin);
      return this.#fin ? this.#reset(text) : undefined;
    }
    if (this.#whole) return this.#reset(owned ? rest : rest.slice());
    const total = this.#bytes;
    if (total > this.#fragments.length) {
      const grown = new Uint8Array(Math.min(Math.max(total, this.#fragments.length * 2), this.#maxPayload));
      grown.set(this.#fragments.subarray(0, total - rest.length));
      this.#fragments = grown;
    }
    this.#fragments.set(rest, total - rest.length);
    if (!this.#fin) return undefined;
    const message = this.#fragments.subarray(0, total);
    this.#fragments = EMPTY;
    return this.#reset(message);
  }

  // Inflated bytes: counted against maxPayload, then decoded or kept.
  #takeInflated(piece: Uint8Array): void {
    this.#inflated += piece.length;
    if (this.#inflated > this.#maxPayload) {
      throw new ProtocolError(`Message inflates to more than the limit of ${this.#maxPayload} bytes`, {
        closeCode: CloseCode.MessageTooBig,
        code: "WS_ERR_PAYLOAD_TOO_BIG",
      });
    }
    // Binary pieces are kept as they come and joined at the end: a buffer grown by
    // doubling would hold up to twice the limit when a bomb reaches it.
    if (this.#opcode === Opcode.Text) this.#text.push(piece, false);
    else this.#inflatedPieces.push(piece.slice());
  }

  #takeInflatedPieces(): Uint8Array {
    const pieces = this.#inflatedPieces;
    this.#inflatedPieces = [];
    if (pieces.length === 1) return pieces[0];
    const message = new Uint8Array(this.#inflated);
    let offset = 0;
    for (const piece of pieces) {
      message.set(piece, offset);
      offset += piece.length;
    }
    return message;
  }

  #reset<T>(message: T): T {
    this.#opcode = undefined;
    this.#bytes = this.#count = this.#inflated = 0;
    this.#streamed = this.#compressed = false;
    this.#inflatedPieces = [];
    return message;
  }
}
