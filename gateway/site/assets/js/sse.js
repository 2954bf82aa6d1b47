// Server-Sent Events read with fetch(): the browser's EventSource cannot send an Authorization
// header, and the order's stream needs the bearer token. The stream is parsed here as the HTML
// standard describes (fields `id`, `event`, `data`, `retry`; a blank line ends an event; a line
// starting with ":" is a comment, the server's heartbeat), and a broken connection is resumed
// with `Last-Event-ID`, so no entry is missed or shown twice. Nothing is polled: the server pushes.

/** Parse SSE text chunks into events; keeps the partial line between chunks. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastEventId = null;
    this.retryMs = null;
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    // A "\r" at the very end may be the first half of a "\r\n" split across two chunks: keep
    // it until the next chunk says, or it would end the line twice (an empty line: dispatch).
    const held = this.buffer.endsWith("\r") ? "\r" : "";
    const lines = (held ? this.buffer.slice(0, -1) : this.buffer).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + held; // the last piece has no line end yet
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.id !== null) this.lastEventId = this.id;
      if (this.data.length) {
        this.onEvent({ type: this.type || "message", data: this.data.join("\n"),
                       id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
  }
}

/**
 * Follow an SSE URL with a bearer token until `finished()` says the last event came (the
 * order's terminal status) or `signal` aborts. A network error, a 5xx or a stream that ends
 * early reconnects after the server's `retry` delay, sending `Last-Event-ID`; a 4xx other than
 * 429 is final (the caller gets it in onError).
 */
export async function follow(url, { token, onEvent, onState = () => {}, onError = () => {},
                                    finished = () => true, signal }) {
  const parser = new SseParser(onEvent);
  for (;;) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
    if (parser.lastEventId !== null) headers["Last-Event-ID"] = parser.lastEventId;
    try {
      onState("connecting");
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        onError(response.status, await response.text());
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      if (finished()) {
        onState("ended");
        return; // the server closed the stream after the order's last status
      }
      throw new Error("the stream ended early");
    } catch (error) {
      if (signal && signal.aborted) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, parser.retryMs ?? 2000));
    }
  }
}
