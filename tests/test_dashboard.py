"""The operator dashboard in a real headless browser (Debian chromium driven by playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp

from deploy.processes import free_port
from relayer.store import Store
from tests.relayer_kit import Net, Worker

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def test_a_submitted_trade_turns_settled_on_the_page(net: Net, tmp_path):
    from playwright.async_api import async_playwright

    port = free_port()
    settings = net.settings([net.seller, net.buyer], api_port=port, api_tokens="dash-token")
    store = Store.from_url(settings.redis_url)
    await store.r.flushdb()
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await worker.api_up(port)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"],
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 700})
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_selector("#empty:not([hidden])", state="attached")
            signed = await net.instruction(stAmount=4, scAmount=4_000)
            tid = signed.instruction.tradeId
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/v1/trades", data=signed.model_dump_json(),
                                     headers={"Authorization": "Bearer dash-token",
                                              "Content-Type": "application/json"}) as r:
                    assert r.status == 202
            row = f'tr[data-id="{tid}"]'
            await page.wait_for_selector(row, timeout=10_000)
            await page.wait_for_selector(f'{row} .state[data-state="SETTLED"]', timeout=30_000)
            await page.click(row)
            await page.wait_for_selector("#timeline li", timeout=5_000)
            timeline = await page.inner_text("#timeline")
            for step in ("accepted", "lock_st_mined", "lock_sc_mined", "claim_sc_mined", "claim_st_mined"):
                assert step in timeline
            assert await page.locator(f"{row} .steps span.done").count() == 4  # lock+claim on both legs
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await browser.close()
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        assert worker.terminate() == 0
        await store.r.flushdb()
        await store.close()
