// UTF-8 for text messages (RFC 6455 8.1), the module's one place for the rule: text
// is decoded as it arrives, piece by piece, and invalid text fails as soon as an
// invalid sequence is in, even inside a frame; a character cut at a piece's edge is
// not invalid yet, only incomplete. A message that came as one large frame is only
// checked as it arrives, and decoded once it is whole: V8 encodes a 1 MiB string joined
// from pieces in 0.32 ms and a flat one in 0.04 ms, more than the second decode costs
// (0.08-0.13 ms), and an echo or a broadcast encodes it at once.
//
// The lenient decoder is about ten times faster than the strict one in Deno, and marks
// every invalid sequence with U+FFFD; only a piece where it put one is decoded again
// strictly, to tell a genuine U+FFFD from an invalid sequence.

import { FrameError } from "./errors.ts";

// Text keeps a leading U+FEFF: a message is delivered as sent (ignoreBOM).
const lenient = new TextDecoder("utf-8", { ignoreBOM: true });
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const EMPTY = new Uint8Array(0);

/** Decodes whole UTF-8 text strictly; invalid text throws FrameError with 1007. */
export function decodeUtf8(bytes: Uint8Array): string {
  const text = lenient.decode(bytes);
  if (text.includes("\uFFFD")) strictDecode(bytes);
  return text;
}

/** A text message decoded piece by piece; `push` throws FrameError (1007) at the first invalid sequence. */
export class Utf8Stream {
  #text = "";
  // The start of a character cut at the last piece's edge: at most 3 bytes.
  #carry = EMPTY;

  /**
   * Decodes the next piece; `final` on the message's last. Returns the whole text when
   * final. With `keep` false the piece is only checked: a caller that holds the whole
   * message decodes it at once at the end (one flat string, which encodes several times
   * faster than one joined from pieces).
   */
  push(piece: Uint8Array, final: boolean, keep = true): string {
    // ASCII is valid on its own; a scan costs about half a decode.
    if (!keep && this.#carry.length === 0 && isAscii(piece)) return "";
    let bytes = piece;
    if (this.#carry.length > 0) {
      bytes = new Uint8Array(this.#carry.length + piece.length);
      bytes.set(this.#carry);
      bytes.set(piece, this.#carry.length);
    }
    const cut = final ? bytes.length : completeLength(bytes);
    const text = decodeUtf8(bytes.subarray(0, cut));
    if (keep) this.#text += text;
    this.#carry = cut === bytes.length ? EMPTY : bytes.slice(cut);
    // A cut character whose first bytes already cannot start a valid one fails now.
    if (this.#carry.length > 0) strictDecode(this.#carry, true);
    if (!final) return "";
    const whole = this.#text;
    this.#text = "";
    return whole;
  }
}

// Whether every byte is below 0x80, tested a word at a time.
function isAscii(bytes: Uint8Array): boolean {
  let bits = 0;
  let index = 0;
  if (bytes.length >= 32) {
    // Byte-wise up to a 4-byte boundary of the buffer, so that an Int32Array view fits.
    const lead = (4 - (bytes.byteOffset & 3)) & 3;
    for (; index < lead; index++) bits |= bytes[index];
    const words = new Int32Array(bytes.buffer, bytes.byteOffset + lead, (bytes.length - lead) >>> 2);
    const count = words.length;
    let w = 0;
    // Unrolled by 4: V8 runs it faster than one word an iteration.
    for (; w < (count & ~3); w += 4) bits |= words[w] | words[w + 1] | words[w + 2] | words[w + 3];
    for (; w < count; w++) bits |= words[w];
    index = lead + count * 4;
  }
  for (; index < bytes.length; index++) bits |= bytes[index];
  return (bits & 0x80808080) === 0;
}

// The length of `bytes` without a character cut at its end (RFC 3629 3: a lead byte
// says how many continuation bytes, 10xxxxxx, follow it).
function completeLength(bytes: Uint8Array): number {
  const end = bytes.length;
  let lead = end - 1;
  while (lead >= 0 && lead > end - 4 && (bytes[lead] & 0xc0) === 0x80) lead--;
  if (lead < 0) return end;
  const byte = bytes[lead];
  const needed = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
  return end - lead < needed ? lead : end;
}

function strictDecode(bytes: Uint8Array, stream = false): void {
  try {
    // A fresh streaming decoder for a prefix: its state must not carry over.
    if (stream) new TextDecoder("utf-8", { fatal: true }).decode(bytes, { stream: true });
    else strict.decode(bytes);
  } catch (cause) {
    throw new FrameError("Text is not valid UTF-8", { closeCode: 1007, code: "WS_ERR_INVALID_UTF8", cause });
  }
}
