/** Full jitter, capped exponential backoff: random() * min(cap, base * 2^attempt). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 52));
  return Math.max(0, random() * ceiling);
}
