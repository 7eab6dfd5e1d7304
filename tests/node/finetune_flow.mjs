// The whole fine-tuning flow with the real `openai` package for Node, against the service's /v1:
//   node finetune_flow.mjs BASE_URL API_KEY BASE_MODEL TRAIN.jsonl VALID.jsonl
// Prints one JSON line of what it saw; exits non-zero on the first surprise.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, model, trainPath, validPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const seen = {};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function check(condition, what) {
  if (!condition) throw new Error(`not as expected: ${what}`);
}

const training = await client.files.create({ file: fs.createReadStream(trainPath), purpose: "fine-tune" });
const validation = await client.files.create({
  file: await toFile(fs.readFileSync(validPath), "valid.jsonl"),
  purpose: "fine-tune",
});
check(training.id.startsWith("file-") && training.status === "processed", "a processed file");

const job = await client.fineTuning.jobs.create({
  model,
  training_file: training.id,
  validation_file: validation.id,
  suffix: "node",
  metadata: { client: "node" },
  hyperparameters: { n_epochs: 1 },
});
seen.created = job.status;
const listed = [];
for await (const j of client.fineTuning.jobs.list({ limit: 5 })) listed.push(j.id);
check(listed.includes(job.id), "the job in the list");

let done;
for (let i = 0; i < 600; i++) {
  done = await client.fineTuning.jobs.retrieve(job.id);
  if (["succeeded", "failed", "cancelled"].includes(done.status)) break;
  await sleep(500);
}
check(done.status === "succeeded", `succeeded, not ${done.status}`);
const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 100 });
seen.events = events.data.length;
check(events.data[0].message.startsWith("Job succeeded"), "the newest event says succeeded");
const checkpoints = await client.fineTuning.jobs.checkpoints.list(job.id);
seen.checkpoints = checkpoints.data.map((c) => c.step_number);

for (const name of [done.fine_tuned_model, checkpoints.data.at(-1).fine_tuned_model_checkpoint]) {
  const answer = await client.chat.completions.create({
    model: name,
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 3,
  });
  check(answer.choices[0].message.content.length > 0, `an answer from ${name}`);
}
const stream = await client.chat.completions.create({
  model: done.fine_tuned_model,
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 3,
  stream: true,
});
let streamed = "";
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content || "";
check(streamed.length > 0, "a streamed answer");

// Pause one job once it has a checkpoint, and resume it: the same id goes on to succeeded.
const paused = await client.fineTuning.jobs.create({ model, training_file: training.id, suffix: "pause" });
for (let i = 0; i < 600; i++) {
  const points = (await client.fineTuning.jobs.checkpoints.list(paused.id)).data;
  if (points.length) break;
  await sleep(200);
}
seen.paused = (await client.fineTuning.jobs.pause(paused.id)).status;
seen.resumed = (await client.fineTuning.jobs.resume(paused.id)).status;
let after;
for (let i = 0; i < 600; i++) {
  after = await client.fineTuning.jobs.retrieve(paused.id);
  if (["succeeded", "failed", "cancelled"].includes(after.status)) break;
  await sleep(500);
}
check(after.status === "succeeded" && after.id === paused.id, `the resumed job succeeded under its id, not ${after.status}`);

const other = await client.fineTuning.jobs.create({
  model,
  training_file: training.id,
  metadata: { client: "node-cancel" },
  hyperparameters: { n_epochs: 50 },
});
const filtered = [];
for await (const j of client.fineTuning.jobs.list({ metadata: { client: "node-cancel" } })) filtered.push(j.id);
check(filtered.length === 1 && filtered[0] === other.id, "the metadata filter");
seen.cancelled = (await client.fineTuning.jobs.cancel(other.id)).status;

try {
  await client.fineTuning.jobs.create({ model, training_file: training.id, hyperparameters: { batch_size: 0 } });
  check(false, "a bad hyperparameter refused");
} catch (error) {
  check(error instanceof OpenAI.BadRequestError, `BadRequestError, not ${error.constructor.name}`);
  seen.bad_param = error.param ?? error.error?.param;
}
seen.deleted = (await client.models.delete(done.fine_tuned_model)).deleted;
seen.fine_tuned_model = done.fine_tuned_model;
console.log(JSON.stringify(seen));
