// A Node (>= 18) producer with nothing but fetch: submit a job, then follow its SSE stream
// to the end, resuming with Last-Event-ID if the connection drops.
//   JOBCAST_URL=http://127.0.0.1:8080 node examples/node/producer.mjs report '{"rows": 5}'
// Exit code 0 when the job succeeded.
const server = process.env.JOBCAST_URL ?? "http://127.0.0.1:8080";
const auth = process.env.JOBCAST_API_KEY ? { authorization: `Bearer ${process.env.JOBCAST_API_KEY}` } : {};
const [kind = "report", args = '{"rows": 5}'] = process.argv.slice(2);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const submitted = await fetch(`${server}/v1/jobs`, {
  method: "POST",
  headers: { "content-type": "application/json", ...auth },
  body: JSON.stringify({ kind, args: JSON.parse(args) }),
});
if (submitted.status !== 202) {
  console.error(`submit failed: ${submitted.status} ${await submitted.text()}`);
  process.exit(2);
}
const job = await submitted.json();
console.log(`submitted ${job.id}`);

let lastEventId = 0;
let outcome = null;
while (outcome === null) {
  const headers = { accept: "text/event-stream", ...auth };
  if (lastEventId > 0) headers["last-event-id"] = String(lastEventId);
  try {
    const stream = await fetch(`${server}/v1/jobs/${job.id}/events`, { headers });
    if (stream.status === 204) break; // nothing more will come
    if (!stream.ok) throw new Error(`stream answered ${stream.status}`);
    let buffer = "";
    for await (const chunk of stream.body.pipeThrough(new TextDecoderStream())) {
      buffer += chunk.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = { id: null, event: "message", data: "" };
        for (const line of buffer.slice(0, end).split("\n")) {
          const [field, ...rest] = line.split(":");
          const value = rest.join(":").replace(/^ /, "");
          if (field === "id") frame.id = Number(value);
          else if (field === "event") frame.event = value;
          else if (field === "data") frame.data += value;
        }
        buffer = buffer.slice(end + 2);
        if (frame.id === null) continue; // the retry: line, or a keep-alive comment
        lastEventId = frame.id;
        const data = JSON.parse(frame.data);
        const detail = frame.event === "progress" ? `${data.progress.toFixed(0)}% ${data.message ?? ""}` : "";
        console.log(`${frame.id} ${frame.event} ${detail}`.trimEnd());
        if (["succeeded", "failed", "cancelled"].includes(frame.event)) outcome = frame.event;
      }
      if (outcome !== null) break;
    }
  } catch (error) {
    console.error(`stream interrupted (${error.message}); resuming after ${lastEventId}`);
  }
  if (outcome === null) await sleep(1000);
}
process.exit(outcome === "succeeded" ? 0 : 1);
