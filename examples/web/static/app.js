// The page of examples/web/app.py: posts a job, reads the server-sent events of its answer, and paints
// each update. Plain browser APIs, no build step, nothing loaded from elsewhere.
"use strict";

const form = document.getElementById("imagine-form");
const promptField = document.getElementById("prompt");
const imagineButton = document.getElementById("imagine");
const jobs = document.getElementById("jobs");
const template = document.getElementById("job-card");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = promptField.value.trim();
  if (!prompt) return;
  // One job at a time from this page: a double click must not pay for two.
  imagineButton.disabled = true;
  try {
    const card = newCard("imagine", prompt);
    await follow("/api/imagine", { prompt }, card);
  } finally {
    imagineButton.disabled = false;
  }
});

/** A card for one job, placed first on the page. */
function newCard(kind, title) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.kind = kind;
  card.querySelector(".title").textContent = title;
  const preview = card.querySelector(".preview");
  preview.alt = `progress of: ${title}`;
  // How many previews were painted (one may be replaced by the next before it loads).
  preview.addEventListener("load", () => {
    card.dataset.previewsShown = String(Number(card.dataset.previewsShown ?? 0) + 1);
  });
  card.querySelector(".final").alt = title;
  jobs.prepend(card);
  return card;
}

/**
 * POST `body` to `url` and paint the events of the answer on `card` until the job ends.
 *
 * A POST read with fetch rather than an EventSource: an EventSource reconnects by itself after a
 * dropped connection, and here every request submits a paid job.
 */
async function follow(url, body, card) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch {
    return fail(card, "The server cannot be reached.");
  }
  if (!response.ok) return fail(card, await problem(response));
  setStatus(card, "Waiting for the first update…");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let ended = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const message = parse(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (message !== null) ended = paint(card, message) || ended;
      }
    }
  } catch {
    // A reset connection: reported below, as any stream that ends without its last event.
  }
  if (!ended) fail(card, "The connection to the server was lost before the job ended.");
}

/** One server-sent event frame as {event, data}; null for a comment (the server's keep-alive). */
function parse(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (data.length === 0) return null;
  return { event, data: JSON.parse(data.join("\n")) };
}

/** Show one event on the card; true once the job has ended (done or failed). */
function paint(card, { event, data }) {
  if (event === "progress") {
    const percent = Math.round(data.progress);
    card.querySelector("progress").value = percent;
    card.querySelector(".percent").textContent = `${percent}%`;
    if (data.image) card.querySelector(".preview").src = data.image;
    card.dataset.updates = String(Number(card.dataset.updates) + 1);
    const item = document.createElement("li");
    item.textContent = `${percent}%${data.image ? " · new preview" : ""}`;
    card.querySelector(".updates").append(item);
    setStatus(card, `Painting… task ${data.task_id ?? "(id not known yet)"}`);
    return false;
  }
  if (event === "done") {
    card.querySelector("progress").value = 100;
    card.querySelector(".percent").textContent = "100%";
    const preview = card.querySelector(".preview");
    const final = card.querySelector(".final");
    final.src = data.image;
    final.hidden = false;
    preview.hidden = true;
    card.dataset.taskId = data.task_id;
    card.dataset.state = "done";
    const size = data.width && data.height ? ` · ${data.width}×${data.height}` : "";
    setStatus(card, `Done: task ${data.task_id}${size}`);
    addUpscaleButtons(card, data);
    return true;
  }
  if (event === "failure") {
    fail(card, `${data.error}: ${data.message}`);
    return true;
  }
  return false;
}

/** U1–U4 under a grid: each starts an upscale job, followed on a card of its own. */
function addUpscaleButtons(card, data) {
  const actions = card.querySelector(".actions");
  for (const index of data.upscales) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `U${index}`;
    button.dataset.upscale = String(index);
    button.title = `Upscale image ${index} of the grid`;
    button.addEventListener("click", async () => {
      button.disabled = true; // each upscale once: it is a paid job
      const title = `U${index} of: ${card.querySelector(".title").textContent}`;
      await follow("/api/upscale", { task_id: data.task_id, index }, newCard("upscale", title));
    });
    actions.append(button);
  }
}

function setStatus(card, text) {
  const status = card.querySelector(".status");
  status.classList.remove("error");
  status.textContent = text;
}

/** Show why the job ended without an image: text only, as the server worded it. */
function fail(card, text) {
  card.dataset.state = "failed";
  const status = card.querySelector(".status");
  status.classList.add("error");
  status.textContent = text;
}

/** The message of an error answer ({"message": ...}), else its status line. */
async function problem(response) {
  try {
    const body = await response.json();
    if (typeof body.message === "string") return body.message;
  } catch {
    // not JSON: fall through to the status line
  }
  return `The server answered ${response.status} ${response.statusText}.`;
}
