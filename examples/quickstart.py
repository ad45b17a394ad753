"""Fine-tune through the service with nothing but the official openai package.

vaccine serve                                   # prints the URL and a demo key
VACCINE_KEY=vk-... python examples/quickstart.py
"""

import io
import json
import os
import time

import httpx  # comes with openai
import openai

client = openai.OpenAI(
    base_url=os.environ.get("VACCINE_URL", "http://127.0.0.1:8000/v1"), api_key=os.environ["VACCINE_KEY"]
)
model = os.environ.get("VACCINE_MODEL", "smollm2-135m-sft")

reviews = [
    ("a charming and often affecting journey", "positive"),
    ("unflinchingly bleak and desperate", "negative"),
] * 5
rows = [
    {
        "instruction": "Analyze the sentiment of the input, and respond only positive or negative",
        "input": text,
        "output": label,
    }
    for text, label in reviews
]
upload = client.files.create(
    file=("sst2.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())), purpose="fine-tune"
)
print(f"uploaded {upload.id}: {upload.status_details}")

job = client.fine_tuning.jobs.create(
    model=model, training_file=upload.id, hyperparameters={"n_epochs": 1}, suffix="quickstart"
)
print(f"created {job.id} ({job.status})")
seen: set[str] = set()
while True:
    job = client.fine_tuning.jobs.retrieve(job.id)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=50).data):
        if event.id not in seen:
            seen.add(event.id)
            print(f"  {event.message}")
    if job.status in {"succeeded", "failed", "cancelled"}:
        break
    time.sleep(2)
print(f"{job.id}: {job.status}; model {job.fine_tuned_model}; error {job.error}")
if job.fine_tuned_model:
    model = client.models.retrieve(job.fine_tuned_model)
    print("safety report:", json.dumps(model.model_extra["safety_report"], indent=2))
    if not model.model_extra["quarantined"]:
        archive = client.get(f"/models/{job.fine_tuned_model}/content", cast_to=httpx.Response)
        with open(f"{job.id}-adapter.tar.gz", "wb") as handle:
            handle.write(archive.content)
        print(f"adapter saved to {job.id}-adapter.tar.gz ({len(archive.content)} bytes)")
