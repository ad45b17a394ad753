// The console's only script (served from the service's own origin; the pages allow no other): keeps
// job statuses live by polling, refreshes a running job's loss curve, and asks before a quarantine
// decision. Values from the server are written with textContent, never as markup.
"use strict";

const LIVE = new Set(["validating_files", "queued", "running", "pausing"]);
const EVERY_MS = 2000;

function setText(cell, text) {
  if (cell && cell.textContent !== text) cell.textContent = text;
}

function showJob(row, job) {
  const status = row.querySelector('[data-field="status"]');
  setText(status, job.status);
  if (status) status.className = "status-" + job.status;
  setText(row.querySelector('[data-field="percent"]'), job.percent === null ? "" : job.percent + " %");
  setText(row.querySelector('[data-field="loss"]'), job.loss === null ? "" : job.loss.toFixed(4));
  const result = row.querySelector('[data-field="result"]');
  if (result && job.fine_tuned_model && !result.querySelector("a")) {
    const link = document.createElement("a");
    link.href = "/console/models/" + job.fine_tuned_model;
    link.textContent = job.fine_tuned_model;
    result.replaceChildren(link);
  } else if (result && job.error && !job.fine_tuned_model) {
    setText(result, job.error);
  }
}

async function poll(table) {
  const rows = new Map([...table.querySelectorAll("[data-job]")].map((row) => [row.dataset.job, row]));
  let live = false;
  try {
    const answer = await fetch(table.dataset.poll, { credentials: "same-origin", cache: "no-store" });
    if (answer.ok) {
      for (const job of (await answer.json()).data) {
        const row = rows.get(job.id);
        if (row) showJob(row, job);
        if (row && LIVE.has(job.status)) live = true;
      }
    }
  } catch (error) {
    live = true; // the service is restarting: try again
  }
  const loss = document.getElementById("loss");
  if (loss && (live || loss.dataset.live === "yes")) {
    loss.src = loss.src.replace(/&v=[^&]*$/, "") + "&v=" + Date.now();
    loss.dataset.live = live ? "yes" : "no";
  }
  setTimeout(() => poll(table), EVERY_MS);
}

// The playground: the conversation lives in the page and is sent whole with each message.
function playground(form) {
  const transcript = document.getElementById("transcript");
  let messages = [];
  function say(role, text) {
    const line = document.createElement("li");
    line.className = role;
    line.textContent = role + ": " + text;
    transcript.append(line);
  }
  document.getElementById("chat-reset").addEventListener("click", () => {
    messages = [];
    transcript.replaceChildren();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.elements.message.value;
    messages.push({ role: "user", content: text });
    say("user", text);
    form.elements.message.value = "";
    const answer = await fetch("/console/api/chat", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
      body: JSON.stringify({
        model: form.elements.model.value,
        messages: messages,
        temperature: Number(form.elements.temperature.value),
        max_tokens: Number(form.elements.max_tokens.value),
      }),
    });
    const reply = await answer.json();
    if (!answer.ok) {
      say("error", reply.error || JSON.stringify(reply));
      messages.pop();
      return;
    }
    messages.push({ role: "assistant", content: reply.content });
    say("assistant", reply.content);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const chat = document.getElementById("chat");
  if (chat) playground(chat);
  const table = document.getElementById("jobs");
  if (table && table.dataset.poll) setTimeout(() => poll(table), EVERY_MS);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      const action = event.submitter ? event.submitter.value : "";
      if (!window.confirm(form.dataset.confirm + " (" + action + ")")) event.preventDefault();
    });
  }
});
