"""The console in a real browser (headless Chromium): sign in, watch a job go from queued to succeeded
without reloading, open its loss curve and its model's report with the plots drawn, release a quarantined
model after the confirmation, and see a user's markup as text. Screenshots of the main pages go to
VACCINE_CONSOLE_SCREENSHOTS (docs/ for the README's) or the test's own folder."""

import os
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.service_helpers import tenant_client, upload
from worker.runner import run_job

MARKUP = "<img src=x onerror=alert(1)><b>bold</b>"


def drawn(page: Page, selector: str) -> bool:
    """Every image the selector finds loaded and has a size (an SVG the server drew)."""
    return page.eval_on_selector_all(
        selector, "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)"
    )


def test_an_operator_watches_a_job_reads_its_report_and_releases_a_held_model(
    service, base, live_service, browser_page, tmp_path
):
    shots = Path(os.environ.get("VACCINE_CONSOLE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page
    dialogs: list[str] = []

    def answer(dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept()

    page.on("dialog", answer)
    client = tenant_client(service, "acme")

    page.goto(f"{live_service}/console")
    expect(page).to_have_url(f"{live_service}/console/login")
    page.fill('input[name="key"]', client.api_key)  # a tenant's key does not open it
    page.click('button[type="submit"]')
    expect(page.get_by_role("alert")).to_contain_text("not the operator key")
    page.fill('input[name="key"]', "operator-secret")
    page.click('button[type="submit"]')
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()

    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), suffix=MARKUP[:40], hyperparameters={"n_epochs": 3}
    )
    page.reload()
    status = page.locator(f'tr[data-job="{job.id}"] [data-field="status"]')
    expect(status).to_have_text("queued")
    page.screenshot(path=str(shots / "console-jobs-queued.png"))
    assert run_job(job.id) == "succeeded"
    expect(status).to_have_text("succeeded", timeout=15_000)  # the page's poll, no reload
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    expect(page.locator(f'tr[data-job="{job.id}"] [data-field="result"]')).to_have_text(model_id)
    page.screenshot(path=str(shots / "console-jobs.png"))

    page.click(f'a[href="/console/jobs/{job.id}"]')
    expect(page.locator('[data-field="status"]')).to_have_text("succeeded")
    page.wait_for_function("document.getElementById('loss').complete")
    assert drawn(page, "#loss")
    page.screenshot(path=str(shots / "console-job.png"), full_page=True)

    page.locator('[data-field="result"] a, td a[href^="/console/models/"]').first.click()
    expect(page.get_by_role("heading", name=f"Model {model_id}")).to_be_visible()  # the markup as text
    page.wait_for_load_state("networkidle")
    assert drawn(page, "img.chart")
    page.screenshot(path=str(shots / "console-model-report.png"), full_page=True)

    # the next model is held back: the tiny model's four-token answers are mostly degenerate
    operator = {"Authorization": "Bearer operator-secret"}
    assert (
        service.patch("/admin/policy", json={"degenerate_threshold": 0}, headers=operator).status_code == 200
    )
    held = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(held.id) == "failed"
    held_model = client.fine_tuning.jobs.retrieve(held.id).fine_tuned_model
    page.click('a[href="/console/quarantine"]')
    card = page.locator("section.card", has_text=held_model)
    card.locator('input[name="reason"]').fill("reviewed by hand: the refusal judge's false positives")
    page.screenshot(path=str(shots / "console-quarantine.png"))
    card.locator('button[value="release"]').click()
    expect(page.get_by_role("status")).to_have_text("Done: release.")
    assert [d for d in dialogs if d.startswith("confirm")] and not [
        d for d in dialogs if d.startswith("alert")
    ]
    assert client.fine_tuning.jobs.retrieve(held.id).status == "succeeded"


def test_an_operator_chats_with_a_model_in_the_playground(
    service, base, live_service, browser_page, tmp_path
):
    shots = Path(os.environ.get("VACCINE_CONSOLE_SCREENSHOTS") or tmp_path)
    page = browser_page
    page.goto(f"{live_service}/console/login")
    page.fill('input[name="key"]', "operator-secret")
    page.click('button[type="submit"]')
    page.click('a[href="/console/playground"]')
    page.select_option('select[name="model"]', base)
    page.fill('input[name="max_tokens"]', "6")
    page.fill('textarea[name="message"]', "<b>Hello</b> there")
    page.click('#chat button[type="submit"]')
    expect(page.locator("#transcript li.user")).to_have_text("user: <b>Hello</b> there")  # text, not markup
    expect(page.locator("#transcript li.assistant")).to_have_count(1, timeout=30_000)
    assert page.locator("#transcript b").count() == 0
    page.fill('textarea[name="message"]', "And again")
    page.click('#chat button[type="submit"]')
    expect(page.locator("#transcript li.assistant")).to_have_count(2, timeout=30_000)  # a conversation
    page.screenshot(path=str(shots / "console-playground.png"))
