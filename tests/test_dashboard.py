"""The operator dashboard in a real headless browser (Debian chromium driven by playwright)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp

from adapters.contracts import encode_call
from deploy.devnet import dev_account
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
            assert await page.get_attribute(f"{row} button[data-copy]", "data-copy") == tid  # the full id, to copy
            await page.wait_for_selector('[data-total="SETTLED"]:has-text("1")', timeout=5_000)  # from the store

            # the health strip: readiness, each chain followed, intake
            for chip in ("ready", "chain-st", "chain-sc", "clock", "intake", "sweep"):
                await page.wait_for_selector(f'[data-health="{chip}"]', timeout=5_000)
            assert "following" in await page.inner_text('[data-health="chain-st"]')
            assert await page.locator('#filter option[value="ONE_SIDED"]').count() == 1

            # a trade whose buyer's key nobody here holds waits for the buyer's SC lock: the page says so and when
            # the ST goes back
            other = dev_account(6)
            await net.sender(net.st, dev_account(0)).transact(net.st_token, encode_call(
                "SecurityToken", "setAllowed", [other.address], True))
            await net.sender(net.sc, dev_account(0)).transact(net.sc_token, encode_call(
                "Stablecoin", "setAllowed", [other.address], True))
            waiting = await net.instruction(stAmount=2, scAmount=2_000, buyerScAccount=other.address,
                                            buyerStAccount=other.address)
            wtid = waiting.instruction.tradeId
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/v1/trades", data=waiting.model_dump_json(),
                                     headers={"Authorization": "Bearer dash-token",
                                              "Content-Type": "application/json"}) as r:
                    assert r.status == 202, await r.text()
            wrow = f'tr[data-id="{wtid}"]'
            await page.wait_for_selector(f'{wrow} .why[data-why="the buyer\'s SC lock"]', timeout=30_000)
            text = await page.inner_text(f"{wrow} .why")
            assert "refunded to the seller at T_st" in text and "(in " in text, text

            # operator actions behind the operator token: pause and resume intake, re-drive the waiting trade
            await page.fill("#token", "dash-token")
            await page.dispatch_event("#token", "change")
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("dashboard test")))
            await page.click("#pause")
            await page.wait_for_selector('[data-health="intake"]:has-text("paused")', timeout=5_000)
            assert "dashboard test" in await page.inner_text('[data-health="intake"]')
            await page.click("#resume")
            await page.wait_for_selector('[data-health="intake"]:has-text("open")', timeout=5_000)
            await page.click(f"{wrow} td:nth-child(3)")
            await page.click("#act-redrive")
            await page.wait_for_selector('#timeline li:has-text("redriven")', timeout=15_000)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await browser.close()
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        assert worker.terminate() == 0
        await store.r.flushdb()
        await store.close()
